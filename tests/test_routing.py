"""The router's rules, through Router's public API."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import pytest

from bgfunctions import App, Config, InlineExecutor, Registry, Request
from bgfunctions.errors import DuplicateFunctionError, PatternError
from bgfunctions.routing import (
    FUNCTION_NOT_FOUND,
    INVALID_NAME,
    MAX_PATH_LENGTH,
    Match,
    NoMatch,
    Router,
    RouteSpec,
)


def router(*specs: RouteSpec, case_insensitive_paths: bool = False) -> Router:
    return Router(specs, case_insensitive_paths=case_insensitive_paths)


def served_by(result: Match | NoMatch) -> str | None:
    return result.function if isinstance(result, Match) else None


def test_default_url_serves_function_without_paths() -> None:
    """A function without paths is served at /.netlify/functions/NAME, route = that URL."""
    result = router(RouteSpec(function="hello")).match("GET", "/.netlify/functions/hello")
    assert result == Match("hello", {}, "/.netlify/functions/hello")


@pytest.mark.parametrize(
    "path",
    [
        "/.netlify/functions/hello/",
        "/.netlify/functions/hello/a/b",
        "/.netlify/builders/hello",
        "/.netlify/builders/hello/x",
    ],
)
def test_default_url_serves_sub_paths_and_legacy_prefix(path: str) -> None:
    """Sub-paths of the default URL and the legacy /.netlify/builders prefix reach the function."""
    assert served_by(router(RouteSpec(function="hello")).match("GET", path)) == "hello"


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "patch"])
def test_default_url_accepts_any_method_even_with_methods_declared(method: str) -> None:
    """Methods restrict custom paths only; the default URL takes any method."""
    r = router(RouteSpec(function="hello", methods=("GET",)))
    assert served_by(r.match(method, "/.netlify/functions/hello")) == "hello"


def test_custom_prefix_replaces_default_prefix() -> None:
    """A Router built with another prefix serves functions there."""
    r = Router([RouteSpec(function="f")], prefix="/api/")
    assert r.match("GET", "/api/f") == Match("f", {}, "/api/f")
    assert served_by(r.match("GET", "/.netlify/functions/f")) is None


def test_function_with_paths_is_not_served_at_default_url() -> None:
    """Declaring paths removes the default URL; the message says paths are defined."""
    result = router(RouteSpec(function="f", paths=("/f",))).match("GET", "/.netlify/functions/f")
    assert isinstance(result, NoMatch)
    assert result.reason == "no_route"
    assert result.function == "f"
    assert "custom paths defined" in result.message
    assert "'/f'" in result.message


def test_unknown_name_under_prefix_is_function_not_found() -> None:
    """An unknown name under the default prefix answers 'Function not found...'."""
    result = router(RouteSpec(function="f")).match("GET", "/.netlify/functions/nope")
    assert result == NoMatch(
        reason="function_not_found", message=FUNCTION_NOT_FOUND, function="nope"
    )
    assert FUNCTION_NOT_FOUND == "Function not found..."


def test_catch_all_never_hides_the_default_prefix() -> None:
    """A /* route does not catch /.netlify/functions/... URLs, known or unknown."""
    r = router(RouteSpec(function="all", paths=("/*",)), RouteSpec(function="f"))
    assert served_by(r.match("GET", "/.netlify/functions/f")) == "f"
    unknown = r.match("GET", "/.netlify/functions/nope")
    assert isinstance(unknown, NoMatch)
    assert unknown.reason == "function_not_found"
    assert served_by(r.match("GET", "/anything/else")) == "all"


@pytest.mark.parametrize("name", ["bad.name", "with space", "caf\u00e9", ".secret", "foo.js"])
def test_unknown_name_breaking_the_rule_is_function_not_found(name: str) -> None:
    """An unknown name under the prefix is 404 Function not found, whatever characters it holds."""
    result = router().match("GET", f"/.netlify/functions/{name}")
    assert result == NoMatch(reason="function_not_found", message=FUNCTION_NOT_FOUND, function=name)
    assert INVALID_NAME == (
        "Function name should consist only of alphanumeric characters, hyphen & underscores."
    )


def test_registered_function_with_invalid_name_is_invalid_name() -> None:
    """A registered function marked valid_name=False answers invalid_name, at any of its URLs."""
    r = router(
        RouteSpec(function="a.b", valid_name=False),
        RouteSpec(function="c.d", paths=("/cd",), valid_name=False),
    )
    for path in ("/.netlify/functions/a.b", "/cd"):
        result = r.match("GET", path)
        assert isinstance(result, NoMatch)
        assert result.reason == "invalid_name"


def test_literal_path_and_params_of_patterns() -> None:
    """A literal path has no params; a pattern's names become params; route is the pattern."""
    r = router(
        RouteSpec(function="about", paths=("/about",)),
        RouteSpec(function="guide", paths=("/travel-guide/:city/:country",)),
    )
    assert r.match("GET", "/about") == Match("about", {}, "/about")
    assert r.match("GET", "/travel-guide/paris/france") == Match(
        "guide", {"city": "paris", "country": "france"}, "/travel-guide/:city/:country"
    )
    assert served_by(r.match("GET", "/travel-guide/paris")) is None


def test_unnamed_groups_are_params_under_numbers() -> None:
    """Unnamed groups appear in params as '0', '1', ..."""
    r = router(RouteSpec(function="f", paths=("/files/*/(\\d+)",)))
    result = r.match("GET", "/files/a/b/42")
    assert isinstance(result, Match)
    assert dict(result.params) == {"0": "a/b", "1": "42"}


def test_params_are_read_only() -> None:
    """A Match's params cannot be changed by the handler."""
    result = router(RouteSpec(function="f", paths=("/u/:id",))).match("GET", "/u/1")
    assert isinstance(result, Match)
    with pytest.raises(TypeError):
        result.params["id"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("declared", "requested", "params"),
    [
        ("/a", "/a/", {}),
        ("/a/", "/a", {}),
        ("/a/", "/a/", {}),
        ("/u/:id", "/u/7/", {"id": "7"}),
        ("/w/*", "/w/x/", {"0": "x"}),
        ("/w/*", "/w/", {"0": ""}),
        ("/", "/", {}),
    ],
)
def test_one_optional_trailing_slash(declared: str, requested: str, params: dict[str, str]) -> None:
    """One trailing slash is optional on both the declared path and the request."""
    result = router(RouteSpec(function="f", paths=(declared,))).match("GET", requested)
    assert result == Match("f", params, declared)


@pytest.mark.parametrize(("declared", "requested"), [("/a", "/a//"), ("/u/:id", "/u/7//")])
def test_two_trailing_slashes_do_not_match(declared: str, requested: str) -> None:
    """Only one trailing slash is forgiven."""
    assert (
        served_by(router(RouteSpec(function="f", paths=(declared,))).match("GET", requested))
        is None
    )


def test_paths_are_case_sensitive_by_default() -> None:
    """/About does not match /about unless case_insensitive_paths is set."""
    r = router(RouteSpec(function="f", paths=("/About", "/u/:id")))
    assert served_by(r.match("GET", "/about")) is None
    assert served_by(r.match("GET", "/U/1")) is None


def test_case_insensitive_paths_keeps_param_case() -> None:
    """With case_insensitive_paths literals and patterns ignore case; params keep the path's."""
    r = router(RouteSpec(function="f", paths=("/About", "/u/:id")), case_insensitive_paths=True)
    assert r.match("GET", "/ABOUT") == Match("f", {}, "/About")
    assert r.match("GET", "/U/MiXed") == Match("f", {"id": "MiXed"}, "/u/:id")


def test_literal_routes_beat_pattern_routes() -> None:
    """A literal route wins over a pattern that also matches, whatever the names or lengths."""
    r = router(
        RouteSpec(function="a-pattern", paths=("/blog/:slug-and-more-text",)),
        RouteSpec(function="z-literal", paths=("/blog/x-and-more-text",)),
    )
    assert served_by(r.match("GET", "/blog/x-and-more-text")) == "z-literal"


def test_longer_pattern_wins_then_name() -> None:
    """Among patterns the longer pattern string wins; equal lengths go by function name."""
    r = router(
        RouteSpec(function="a", paths=("/*",)),
        RouteSpec(function="b", paths=("/blog/*",)),
        RouteSpec(function="d", paths=("/blog/:x",)),
        RouteSpec(function="c", paths=("/blog/:y",)),
    )
    assert served_by(r.match("GET", "/blog/post")) == "c"
    assert served_by(r.match("GET", "/blog/a/b")) == "b"
    assert served_by(r.match("GET", "/other")) == "a"


def test_identical_patterns_warn_and_first_name_wins() -> None:
    """Two functions declaring the same path: a warning, and the alphabetically first serves."""
    r = router(
        RouteSpec(function="zeta", paths=("/same", "/p/:x")),
        RouteSpec(function="alpha", paths=("/same", "/p/:x")),
    )
    assert served_by(r.match("GET", "/same")) == "alpha"
    assert served_by(r.match("GET", "/p/1")) == "alpha"
    assert len(r.warnings) == 2
    assert all("'alpha', 'zeta'" in w for w in r.warnings)


def test_no_warnings_for_distinct_paths() -> None:
    """Distinct paths give no warning."""
    assert router(RouteSpec(function="a", paths=("/a",)), RouteSpec(function="b")).warnings == ()


def test_path_under_default_prefix_warns() -> None:
    """A custom path under the default prefix can never match, and the router says so."""
    r = router(RouteSpec(function="f", paths=("/.netlify/functions/x",)))
    assert len(r.warnings) == 1
    assert "never matches" in r.warnings[0]


def test_excluded_path_falls_through_to_next_candidate() -> None:
    """An excluded path stops that function, and matching continues with the next one."""
    r = router(
        RouteSpec(function="pages", paths=("/*",), excluded_paths=("/admin/*",)),
        RouteSpec(function="fallback", paths=("/:a/:b",)),
    )
    assert served_by(r.match("GET", "/blog")) == "pages"
    assert served_by(r.match("GET", "/admin/users")) == "fallback"
    assert served_by(r.match("GET", "/admin/a/b")) is None


def test_excluded_path_ignores_one_trailing_slash() -> None:
    """Excluded paths follow the same trailing-slash rule as paths."""
    r = router(RouteSpec(function="f", paths=("/*",), excluded_paths=("/private",)))
    assert served_by(r.match("GET", "/private/")) is None


def test_wrong_method_is_method_not_allowed_with_sorted_union() -> None:
    """A path whose candidates reject the method gives method_not_allowed with their methods."""
    r = router(
        RouteSpec(function="read", paths=("/items",), methods=("GET", "HEAD")),
        RouteSpec(function="write", paths=("/items",), methods=("POST",)),
    )
    result = r.match("DELETE", "/items")
    assert isinstance(result, NoMatch)
    assert result.reason == "method_not_allowed"
    assert result.allowed == ("GET", "HEAD", "POST")


def test_methods_select_among_functions_sharing_a_path() -> None:
    """The first candidate accepting the method serves; methods compare case-insensitively."""
    r = router(
        RouteSpec(function="read", paths=("/items",), methods=("GET",)),
        RouteSpec(function="write", paths=("/items",), methods=("post",)),
    )
    assert served_by(r.match("post", "/items")) == "write"
    assert served_by(r.match("GET", "/items")) == "read"


def test_head_does_not_imply_get() -> None:
    """A function that accepts GET only does not answer HEAD."""
    r = router(RouteSpec(function="f", paths=("/x",), methods=("GET",)))
    result = r.match("HEAD", "/x")
    assert isinstance(result, NoMatch)
    assert result.allowed == ("GET",)


def test_prefer_static_yields_to_existing_static_file() -> None:
    """With prefer_static, an existing static file makes the function yield to the next one."""
    r = router(
        RouteSpec(function="page", paths=("/docs/*",), prefer_static=True),
        RouteSpec(function="other", paths=("/*",)),
    )
    seen: list[str] = []

    def exists(path: str) -> bool:
        seen.append(path)
        return path == "/docs/index.html"

    assert served_by(r.match("GET", "/docs/index.html", static_exists=exists)) == "other"
    assert served_by(r.match("GET", "/docs/missing", static_exists=exists)) == "page"
    assert served_by(r.match("GET", "/docs/index.html")) == "page"  # no checker: no file
    assert seen == ["/docs/index.html", "/docs/missing"]


def test_prefer_static_alone_is_no_route_naming_the_function() -> None:
    """When the only candidate yields to a static file the result is no_route."""
    r = router(RouteSpec(function="page", paths=("/p",), prefer_static=True))
    result = r.match("GET", "/p", static_exists=lambda _: True)
    assert isinstance(result, NoMatch)
    assert (result.reason, result.function) == ("no_route", "page")


def test_static_check_only_for_functions_that_prefer_static() -> None:
    """A function without prefer_static is served even when a static file exists."""
    r = router(RouteSpec(function="f", paths=("/p",)))
    assert served_by(r.match("GET", "/p", static_exists=lambda _: True)) == "f"


def test_unmatched_path_is_no_route() -> None:
    """A path no route matches is no_route."""
    result = router(RouteSpec(function="f", paths=("/a",))).match("GET", "/b")
    assert isinstance(result, NoMatch)
    assert result.reason == "no_route"
    assert result.function is None


def test_path_matched_as_given_without_decoding() -> None:
    """The router compares the (already decoded) path as given: no percent-decoding."""
    r = router(RouteSpec(function="f", paths=("/caf\u00e9", "/x/:name")))
    assert served_by(r.match("GET", "/caf\u00e9")) == "f"
    assert served_by(r.match("GET", "/caf%C3%A9")) is None
    assert r.match("GET", "/x/a b") == Match("f", {"name": "a b"}, "/x/:name")


def test_invalid_pattern_raises_pattern_error_naming_function() -> None:
    """An invalid path is a PatternError naming the function and quoting Netlify's message."""
    with pytest.raises(PatternError) as info:
        router(RouteSpec(function="shop", paths=("/products(",)))
    message = str(info.value)
    assert "'shop'" in message
    assert "'/products(' is not a valid path according to the URLPattern specification" in message


@pytest.mark.parametrize("field", ["paths", "excluded_paths"])
def test_path_without_leading_slash_is_rejected(field: str) -> None:
    """Paths and excluded paths must start with '/'."""
    spec = RouteSpec(function="f", **{field: ("nope",)})  # type: ignore[arg-type]
    with pytest.raises(PatternError, match="must start with '/'"):
        router(spec)


def test_duplicate_function_names_are_rejected() -> None:
    """Two specs with one name are an error."""
    with pytest.raises(DuplicateFunctionError, match="'f'"):
        router(RouteSpec(function="f"), RouteSpec(function="f", paths=("/f",)))


def test_many_literal_routes_are_looked_up_not_scanned() -> None:
    """Thousands of literal routes each resolve to their own function."""
    specs = [RouteSpec(function=f"f{i}", paths=(f"/page/{i}",)) for i in range(5000)]
    r = Router(specs)
    assert served_by(r.match("GET", "/page/4321")) == "f4321"


# --- through the App: request ids, the custom-paths log line, the path bound ---------------


def _app(*functions: tuple[str, Config | None]) -> App:
    registry = Registry()
    for name, config in functions:
        registry.add(name, lambda request, context: "ok", config=config)
    return App(registry, executor=InlineExecutor())


@pytest.mark.parametrize(
    "path", ["/nowhere", "/.netlify/functions/nope", "/.netlify/functions/.secret"]
)
def test_every_404_carries_a_real_request_id(path: str) -> None:
    """A 404 has a fresh x-nf-request-id, and the plain 404 body names it, never "none"."""
    with _app(("hello", None)) as app:
        first, second = app.handle(Request("GET", path)), app.handle(Request("GET", path))
    assert first.status == second.status == 404
    ids = [r.headers["x-nf-request-id"] for r in (first, second)]
    assert len(ids[0]) == 26
    assert ids[0] != ids[1]
    if path == "/nowhere":
        assert first.body.decode() == f"Not Found - Request ID: {ids[0]}\n"


def test_existing_function_with_a_bad_name_is_400_with_a_request_id() -> None:
    """Only an existing function with an invalid name gets the 400 (with its request id)."""
    registry = Registry()
    registry.add("bad.name", None)
    with App(registry, executor=InlineExecutor()) as app:
        response = app.handle(Request("GET", "/.netlify/functions/bad.name"))
    assert response.status == 400
    assert response.body.decode() == INVALID_NAME
    assert len(response.headers["x-nf-request-id"]) == 26


def test_default_url_of_a_function_with_paths_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The "has paths defined" line goes to bgfunctions.app once per function and process."""
    with caplog.at_level(logging.INFO, logger="bgfunctions.app"):
        for _ in range(2):  # two Apps in one process: still one line
            with _app(("logged-once", Config(path="/logged"))) as app:
                for _ in range(3):
                    response = app.handle(Request("GET", "/.netlify/functions/logged-once"))
                    assert response.status == 404
    lines = [r for r in caplog.records if "custom paths defined" in r.getMessage()]
    assert [r.name for r in lines] == ["bgfunctions.app"]
    assert "'logged-once'" in lines[0].getMessage()
    assert "'/logged'" in lines[0].getMessage()


def test_paths_over_the_bound_are_414_before_any_pattern() -> None:
    """A path longer than MAX_PATH_LENGTH is path_too_long (414); at the bound it is routed."""
    r = router(RouteSpec(function="all", paths=("/*",)))
    at_bound = "/" + "a" * (MAX_PATH_LENGTH - 1)
    assert served_by(r.match("GET", at_bound)) == "all"
    over = r.match("GET", at_bound + "a")
    assert isinstance(over, NoMatch)
    assert over.reason == "path_too_long"
    with _app(("all", Config(path="/*"))) as app:
        response = app.handle(Request("GET", at_bound + "a"))
    assert response.status == 414
    assert response.body.decode().startswith("URI Too Long - Request ID: ")


@pytest.mark.parametrize("path", ["/((?:a+)+)b", "/x/(a+)+", "/((?:a|b)*)*"])
def test_custom_group_with_nested_quantifiers_warns_at_load(path: str) -> None:
    """A custom group whose quantifiers nest gets a warning naming the function and pattern."""
    r = router(RouteSpec(function="risky", paths=(path,)))
    [warning] = r.warnings
    assert warning.startswith(f"function 'risky': the path '{path}' has the custom group")
    assert "quantifiers nest" in warning


@pytest.mark.parametrize("path", ["/(a+)", "/:a+/:b*", "/*/*/*.json", "/(\\d+)/(x{2,3})"])
def test_unambiguous_patterns_do_not_warn(path: str) -> None:
    """Our own repeats (:name+, *) and plain custom groups get no ambiguity warning."""
    assert router(RouteSpec(function="fine", paths=(path,))).warnings == ()


# --- over real HTTP ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.server
@pytest.mark.realtime
def test_a_long_path_does_not_stop_other_requests_over_http(tmp_path: Path) -> None:
    """`bgfunctions serve` (ASGIApp on uvicorn, in its own process) keeps answering while
    requests to /*/*/*.json with 2,000-segment paths are routed (tolerance: 15 s to start,
    10 s per answer; before the fix each long path held the event loop for 15-25 s)."""
    from test_cli_serve import Server

    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "data.py").write_text(
        "def handler(request, context):\n    return 'json'\n\nconfig = {'path': '/*/*/*.json'}\n",
        encoding="utf-8",
    )
    (functions / "hello.py").write_text(
        "def handler(request, context):\n    return 'hello'\n", encoding="utf-8"
    )
    long_path = "/a" * 2000
    request = f"GET {long_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    server = Server(tmp_path, "--no-reload")
    try:
        server.wait_until_listening()
        # The long requests reach the server's sockets before the short one is sent.
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
        for sock in slow:
            sock.sendall(request.encode())
        with httpx.Client(base_url=server.base, timeout=10) as client:
            hello = client.get("/.netlify/functions/hello")
            assert (hello.status_code, hello.text) == (200, "hello")
            assert client.get(long_path + ".json").text == "json"
        for sock in slow:
            with sock:
                assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 404 ")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("path", "served", "params"),
    [
        ("/foo/./bar", "bar", {}),
        ("/foo/baz/../bar", "bar", {}),
        ("/x/../foo/bar", "bar", {}),
        ("/items/a/./b/../7", "item", {"0": "a/7"}),
        ("/../../foo/bar/.", "bar", {}),
    ],
)
def test_dot_segments_of_a_request_are_resolved_before_routing(
    path: str, served: str, params: dict[str, str]
) -> None:
    """`.` and `..` segments are resolved as a browser and URLPattern resolve them."""
    r = router(
        RouteSpec(function="bar", paths=("/foo/bar",)),
        RouteSpec(function="item", paths=("/items/*",)),
    )
    found = r.match("GET", path)
    assert isinstance(found, Match)
    assert (found.function, dict(found.params)) == (served, params)


def test_excluded_paths_cannot_be_dodged_with_dot_segments() -> None:
    """`/x/../admin/secret` is the excluded `/admin/secret`, not a page of `/*`."""
    r = router(RouteSpec(function="pages", paths=("/*",), excluded_paths=("/admin/*",)))
    found = r.match("GET", "/x/../admin/secret")
    assert isinstance(found, NoMatch)
    assert found.reason == "no_route"


def test_literal_paths_with_dot_segments_are_resolved_at_load() -> None:
    """A literal path `/foo/../bar` is the route `/bar`, as URLPattern resolves it."""
    assert served_by(router(RouteSpec(function="f", paths=("/foo/../bar",))).match("GET", "/bar"))


@pytest.mark.parametrize(
    ("path", "warning"),
    [
        ("/foo/../:bar", "has a '.' or '..' segment"),
        ("/caf%C3%A9/:x", "has a %XX escape"),
        ("/caf%C3%A9", "has a %XX escape"),
    ],
)
def test_patterns_that_can_never_match_warn(path: str, warning: str) -> None:
    """A pattern with dot segments or %XX escapes never matches a request: a load warning."""
    r = router(RouteSpec(function="f", paths=(path,)))
    assert [w for w in r.warnings if warning in w and repr(path) in w]


@pytest.mark.server
@pytest.mark.realtime
def test_dev_server_shows_the_custom_paths_line(tmp_path: Path) -> None:
    """`bgfunctions serve` prints the "has paths defined" line of bgfunctions.app, and its 404s
    carry a real request id (tolerance: 15 s to start and to print)."""
    from test_cli_serve import Server

    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "process.py").write_text(
        "def handler(request, context):\n    return 'ok'\n\nconfig = {'path': '/process'}\n",
        encoding="utf-8",
    )
    server = Server(tmp_path, "--no-reload")
    try:
        server.wait_until_listening()
        response = httpx.get(f"{server.base}/.netlify/functions/process", timeout=10)
        assert response.status_code == 404
        assert response.text == f"Not Found - Request ID: {response.headers['x-nf-request-id']}\n"
        page = httpx.get(f"{server.base}/no/such/page", timeout=10)  # the static 404
        assert page.status_code == 404
        assert page.text == f"Not Found - Request ID: {page.headers['x-nf-request-id']}\n"
        line = server.wait_for_line(lambda text: "custom paths defined" in text)
        assert line == (
            "bgfunctions.app: INFO: function 'process' cannot be invoked on "
            "'/.netlify/functions/process' because it has custom paths defined: '/process'"
        )
    finally:
        server.stop()
