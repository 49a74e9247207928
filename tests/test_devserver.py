"""The dev server behind `bgfunctions serve`, in process: its ASGI app through httpx.

Static files behind the functions, ``prefer_static``, 404s, path traversal, one printed line per
invocation event, and reload without dropping accepted invocations.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from bgfunctions.cli import main
from bgfunctions.devserver import (
    DEFAULT_MAX_PENDING,
    JOURNAL_FILE,
    DevServer,
    ServeOptions,
    StaticFiles,
    open_sqlite_journal,
)
from bgfunctions.errors import BgFunctionsError
from bgfunctions.journals.sqlite import SQLiteJournal
from bgfunctions.routing import MAX_PATH_LENGTH

NETLIFY_TOML = """\
[build]
publish = "public"

[functions]
directory = "netlify/functions"
"""
SECRET = "TOP-SECRET-OUTSIDE-THE-PUBLISH-DIR"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_function(site: Path, name: str, text: str) -> Path:
    path = write(site, f"netlify/functions/{name}.py", text)
    # Reload tests rewrite a file within the same second; a distinct mtime keeps any
    # mtime-keyed cache honest.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A small site: sync and background functions, a publish dir, a secret beside it."""
    root = tmp_path / "site"
    write(root, "netlify.toml", NETLIFY_TOML)
    write(root, "secret.txt", SECRET)
    write(tmp_path, "outside.html", SECRET)
    write(root, "public/index.html", "<h1>home</h1>")
    write(root, "public/about.html", "<h1>about page</h1>")
    write(root, "public/docs/index.html", "<h1>docs</h1>")
    write(root, "public/style.css", "body {}")
    write_function(
        root,
        "hello",
        "def handler(request, context):\n    return 'hello v1'\n",
    )
    write_function(
        root,
        "boom",
        "def handler(request, context):\n    raise RuntimeError('database password is hunter2')\n",
    )
    write_function(
        root,
        "page",
        "from bgfunctions import Config\n"
        "def handler(request, context):\n    return 'from the function'\n"
        "config = Config(path=['/about', '/only-function'], prefer_static=True)\n",
    )
    write_function(
        root,
        "flaky-background",
        "def handler(request, context):\n"
        "    if context.attempt == 1:\n"
        "        raise RuntimeError('first attempt fails')\n",
    )
    write_function(
        root,
        "doomed-background",
        "def handler(request, context):\n    raise ValueError('always')\n",
    )
    return root


@pytest.fixture
def make_server(site: Path) -> Iterator[Callable[..., DevServer]]:
    """Build DevServers over ``site`` that print into a StringIO; shut them down afterwards."""
    servers: list[DevServer] = []

    def make(**options: object) -> DevServer:
        server = DevServer(site, ServeOptions(**options), out=io.StringIO())  # type: ignore[arg-type]
        server.app.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.app.shutdown(True, grace=5.0)


def output(server: DevServer) -> str:
    assert isinstance(server.out, io.StringIO)
    return server.out.getvalue()


def request(server: DevServer, method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request through httpx's ASGI transport (which normalises ``..`` segments)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=server.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


def raw_request(server: DevServer, method: str, raw_path: str) -> tuple[int, bytes]:
    """A request whose path reaches the app as a server would pass it: not normalised,
    percent-decoded in ``path``, as sent in ``raw_path``."""
    # A loopback Host, as the dev server requires: another would be refused with 400 before
    # the path is even looked at.
    status, _, chunks = asgi_call(server, method, raw_path, [(b"host", b"localhost")])
    return status, b"".join(chunks)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll for a condition a background thread brings about (not a schedule under test)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError("condition not reached in time")


# -- static files -------------------------------------------------------------------------------


def test_root_and_directories_serve_their_index_html(make_server: Callable[..., DevServer]) -> None:
    """`/` and `/docs/` serve index.html of the publish dir, as text/html."""
    server = make_server()
    home = request(server, "GET", "/")
    assert home.status_code == 200
    assert home.text == "<h1>home</h1>"
    assert home.headers["content-type"].startswith("text/html")
    assert request(server, "GET", "/docs/").text == "<h1>docs</h1>"
    assert request(server, "GET", "/docs").text == "<h1>docs</h1>"


def test_static_files_by_name_and_without_html_extension(
    make_server: Callable[..., DevServer],
) -> None:
    """A file is served by its path; `/NAME` serves NAME.html."""
    server = make_server()
    css = request(server, "GET", "/style.css")
    assert (css.status_code, css.text) == (200, "body {}")
    assert css.headers["content-type"].startswith("text/css")
    assert request(server, "GET", "/index.html").text == "<h1>home</h1>"


def test_head_gets_the_headers_without_a_body(make_server: Callable[..., DevServer]) -> None:
    """HEAD on a static file: 200, the real content-length, no body."""
    server = make_server()
    head = request(server, "HEAD", "/style.css")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len("body {}"))
    assert head.content == b""


def test_anything_else_is_a_plain_404(make_server: Callable[..., DevServer]) -> None:
    """No function and no static file: 404; a POST to a static file is a 404 too."""
    server = make_server()
    missing = request(server, "GET", "/no/such/page")
    assert missing.status_code == 404
    assert "Not Found" in missing.text
    assert request(server, "POST", "/style.css").status_code == 404
    assert request(server, "GET", "/.netlify/functions/no-such-function").status_code == 404


def test_functions_are_served_before_static_files(make_server: Callable[..., DevServer]) -> None:
    """A sync function answers at its URL with its own body and a request id."""
    server = make_server()
    response = request(server, "GET", "/.netlify/functions/hello")
    assert (response.status_code, response.text) == (200, "hello v1")
    assert response.headers["x-nf-request-id"]


def test_prefer_static_yields_to_an_existing_static_file(
    make_server: Callable[..., DevServer],
) -> None:
    """prefer_static: /about (about.html exists) is the file; /only-function is the function."""
    server = make_server()
    assert request(server, "GET", "/about").text == "<h1>about page</h1>"
    assert request(server, "GET", "/only-function").text == "from the function"


def test_no_publish_dir_means_404_for_everything_but_functions(tmp_path: Path) -> None:
    """A site without [build] publish serves its functions and 404 elsewhere."""
    write_function(tmp_path, "hello", "def handler(request, context):\n    return 'hi'\n")
    server = DevServer(tmp_path, ServeOptions(), out=io.StringIO())
    try:
        assert request(server, "GET", "/").status_code == 404
        assert request(server, "GET", "/.netlify/functions/hello").text == "hi"
    finally:
        server.app.shutdown()


# -- safety -------------------------------------------------------------------------------------


def test_a_traceback_never_reaches_the_client(
    make_server: Callable[..., DevServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A sync function that raises gives a 500 naming the function, not its exception."""
    server = make_server()
    response = request(server, "GET", "/.netlify/functions/boom")
    assert response.status_code == 500
    assert "boom" in response.text
    assert "Traceback" not in response.text
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text


@pytest.mark.parametrize(
    "raw_path",
    [
        "/.netlify/functions/../../secret.txt",
        "/.netlify/functions/../../../outside.html",
        "/.netlify/functions/%2e%2e/%2e%2e/secret.txt",
        "/.netlify/functions/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/.netlify/functions/..%2f..%2f..%2foutside",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/%2e%2e/outside.html",
        "/%2e%2e/%2e%2e/outside",
    ],
)
def test_paths_out_of_the_publish_dir_are_refused(
    make_server: Callable[..., DevServer], raw_path: str
) -> None:
    """`..` in any spelling gives 404/400, never a file outside the publish directory."""
    server = make_server()
    for method in ("GET", "POST"):
        status, body = raw_request(server, method, raw_path)
        assert status in (400, 404), (method, raw_path, status)
        assert SECRET.encode() not in body
        assert b"Host" not in body  # refused for its path, not for its Host header


def test_functions_are_looked_up_by_name_never_by_a_path_from_the_url(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """A handler file outside the functions directory is never run, whatever the URL."""
    marker = site / "ran.txt"
    write(
        site,
        "netlify/evil.py",
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "def handler(request, context):\n    return 'evil'\n",
    )
    server = make_server()
    for raw_path in (
        "/.netlify/functions/../evil",
        "/.netlify/functions/%2e%2e/evil",
        "/.netlify/functions/..%2fevil",
        "/.netlify/functions/%2e%2e%2fevil.py",
    ):
        status, body = raw_request(server, "GET", raw_path)
        assert status in (400, 404), raw_path
        assert b"evil" not in body
        assert b"Host" not in body  # refused for its path, not for its Host header
    assert not marker.exists()


def test_static_files_never_follow_a_symlink_out_of_the_publish_dir(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """Symlinks to outside files, as a file, as NAME.html or as index.html, are not served."""
    public = site / "public"
    outside = site.parent / "outside.html"
    try:
        (public / "link.txt").symlink_to(outside)
        (public / "hidden.html").symlink_to(outside)
        (public / "sub").mkdir()
        (public / "sub" / "index.html").symlink_to(outside)
        (public / "escape").symlink_to(site.parent, target_is_directory=True)
    except OSError:  # pragma: no cover - a file system without symlinks
        pytest.skip("symlinks are not available here")
    server = make_server()
    for path in ("/link.txt", "/hidden", "/hidden.html", "/sub/", "/sub", "/escape/outside.html"):
        response = request(server, "GET", path)
        assert response.status_code == 404, path
        assert SECRET not in response.text


def test_static_files_find_returns_none_for_unservable_paths(site: Path) -> None:
    """NUL bytes, names too long for the file system and `..` find nothing."""
    static = StaticFiles(site / "public")
    assert static.find("/index.html") == (site / "public" / "index.html").resolve()
    assert static.find("/a\x00b") is None
    assert static.find("/" + "x" * 5000) is None
    assert static.find("/../secret.txt") is None
    assert static.find("/about.v2") is None  # not about.html: only a missing ".html" is added
    assert StaticFiles(None).find("/index.html") is None
    assert StaticFiles(site / "no-such-dir").find("/") is None


def test_unknown_executor_is_refused() -> None:
    """ServeOptions(executor=...) other than thread/process is a one-line error."""
    with pytest.raises(BgFunctionsError, match="expected 'thread' or 'process'; got 'fork'"):
        DevServer(Path("examples/site"), ServeOptions(executor="fork"), out=io.StringIO())


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.10", True),
        ("example.com", True),
    ],
)
def test_a_public_address_prints_a_warning(site: Path, host: str, warned: bool) -> None:
    """warn_if_public warns for anything but a loopback address."""
    server = DevServer(site, ServeOptions(host=host), out=io.StringIO())
    try:
        server.warn_if_public()
        text = output(server)
        assert ("warning: serving on" in text) is warned
        if warned:
            assert host in text
            assert "not a loopback address" in text
    finally:
        server.app.shutdown()


# -- event lines --------------------------------------------------------------------------------


def test_each_invocation_event_is_one_line_with_the_request_id(
    make_server: Callable[..., DevServer],
) -> None:
    """queued, each attempt's outcome and duration, retry scheduled, succeeded: one line each."""
    server = make_server(retry_delays=(0.05,))
    response = request(server, "POST", "/.netlify/functions/flaky-background", content=b"{}")
    assert response.status_code == 202
    request_id = response.headers["x-nf-request-id"]
    record = server.app.get(request_id).wait(10)
    assert record.state.value == "succeeded"
    lines = [line for line in output(server).splitlines() if request_id in line]
    prefix = f"[{request_id}] flaky-background: "
    assert all(line.startswith(prefix) for line in lines)
    steps = [line[len(prefix) :] for line in lines]
    assert steps[0] == "queued"
    assert steps[1] == "attempt 1 started"
    assert re.fullmatch(
        r"attempt 1 error in \d+\.\d{3} s \(RuntimeError: first attempt fails\)", steps[2]
    )
    assert re.fullmatch(r"retry scheduled in 0\.\d s", steps[3])
    assert steps[4] == "attempt 2 started"
    assert re.fullmatch(r"attempt 2 succeeded in \d+\.\d{3} s", steps[5])
    assert steps[6:] == ["succeeded after 2 attempt(s)"]


def test_a_failed_invocation_prints_failed(make_server: Callable[..., DevServer]) -> None:
    """With no retries left, the last line says failed and how many attempts ran."""
    server = make_server(retry_delays=())
    response = request(server, "POST", "/.netlify/functions/doomed-background")
    request_id = response.headers["x-nf-request-id"]
    assert server.app.get(request_id).wait(10).state.value == "failed"
    last = [line for line in output(server).splitlines() if request_id in line][-1]
    assert last == f"[{request_id}] doomed-background: failed after 1 attempt(s)"


# -- reload -------------------------------------------------------------------------------------


def test_reload_serves_the_new_code_of_a_sync_function(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """After reload() a changed function answers with its new code, and new ones appear."""
    server = make_server()
    write_function(site, "hello", "def handler(request, context):\n    return 'hello v2'\n")
    write_function(site, "added", "def handler(request, context):\n    return 'new'\n")
    assert request(server, "GET", "/.netlify/functions/added").status_code == 404
    assert server.reload() is True
    assert request(server, "GET", "/.netlify/functions/hello").text == "hello v2"
    assert request(server, "GET", "/.netlify/functions/added").text == "new"
    assert "reloaded 6 function(s)" in output(server)


def test_an_attempt_that_starts_after_a_reload_runs_the_new_code(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """Attempt 1 fails on the old code; reload; the retry (already accepted) runs the new code."""
    write_function(
        site,
        "change-background",
        "def handler(request, context):\n    raise RuntimeError('old code')\n",
    )
    server = make_server(retry_delays=(0.3,))
    response = request(server, "POST", "/.netlify/functions/change-background")
    assert response.status_code == 202
    request_id = response.headers["x-nf-request-id"]
    # The reload must come after attempt 1 ended, and before the retry is due.
    wait_until(lambda: "retry scheduled" in output(server))
    write_function(site, "change-background", "def handler(request, context):\n    return None\n")
    assert server.reload() is True
    record = server.app.get(request_id).wait(10)
    assert [a.outcome.value for a in record.attempts if a.outcome] == ["error", "succeeded"]
    assert record.attempts[0].error_message == "old code"
    assert record.state.value == "succeeded"


def test_a_broken_file_on_reload_keeps_the_old_functions_and_says_why(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """A syntax error on reload: reload() is False, the old code still serves, the file is named."""
    server = make_server()
    broken = write_function(site, "hello", "def handler(request, context)\n    return 'x'\n")
    assert server.reload() is False
    text = output(server)
    assert "reload failed, still serving the previous functions" in text
    assert str(broken) in text
    assert "SyntaxError" in text
    assert request(server, "GET", "/.netlify/functions/hello").text == "hello v1"


def test_a_broken_netlify_toml_on_reload_keeps_the_old_site(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """Invalid TOML on reload: the old functions and static files are still served."""
    server = make_server()
    write(site, "netlify.toml", "[build\npublish = ")
    assert server.reload() is False
    assert "netlify.toml" in output(server)
    assert request(server, "GET", "/").text == "<h1>home</h1>"
    assert request(server, "GET", "/.netlify/functions/hello").text == "hello v1"


def test_reload_follows_a_new_publish_dir(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """A changed [build] publish in netlify.toml serves the new directory after reload()."""
    server = make_server()
    write(site, "dist/index.html", "<h1>dist</h1>")
    write(site, "netlify.toml", NETLIFY_TOML.replace('"public"', '"dist"'))
    assert server.reload() is True
    assert request(server, "GET", "/").text == "<h1>dist</h1>"
    assert request(server, "GET", "/style.css").status_code == 404


def test_watched_paths_are_the_functions_dir_and_netlify_toml(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """The watcher looks at the functions directory and netlify.toml."""
    server = make_server()
    watched = {p.resolve() for p in server.watched_paths()}
    assert watched == {(site / "netlify/functions").resolve(), (site / "netlify.toml").resolve()}


def test_reload_that_removes_a_function_with_pending_retries_says_so(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """Removing a function whose retry is still due prints a warning with the request id."""
    server = make_server(retry_delays=(60.0,))
    response = request(server, "POST", "/.netlify/functions/doomed-background")
    request_id = response.headers["x-nf-request-id"]
    wait_until(lambda: "retry scheduled" in output(server))
    (site / "netlify/functions/doomed-background.py").unlink()
    assert server.reload() is True
    assert (
        f"[{request_id}] doomed-background: warning: the function was removed by the reload"
        in output(server)
    )


def test_the_default_prefix_answers_for_itself(make_server: Callable[..., DevServer]) -> None:
    """Under /.netlify/functions an unknown name is Netlify's 404, a bad name the 400."""
    server = make_server()
    unknown = request(server, "GET", "/.netlify/functions/nope")
    assert unknown.status_code == 404
    assert unknown.text.startswith("Function not found")
    # An unknown name is 404 whatever its characters (issue 11, item 1).
    invalid = request(server, "GET", "/.netlify/functions/bad.name")
    assert invalid.status_code == 404
    assert invalid.text.startswith("Function not found")


# -- facing the world: hosts, limits, streaming ---------------------------------------------


def asgi_call(
    server: DevServer, method: str, raw_path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], list[bytes]]:
    """A request sent to the server's ASGI app as uvicorn would (the path not normalised,
    percent-decoded in ``path``, as sent in ``raw_path``): status, headers, body chunks."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8888),
    }
    sent: list[dict[str, object]] = []

    requested: list[bool] = []

    async def receive() -> dict[str, object]:
        # As a server does: the request once, then nothing until the client goes away.
        if requested:
            await asyncio.Event().wait()
        requested.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(server.asgi(scope, receive, send))  # type: ignore[arg-type]
    status = sent[0]["status"]
    assert isinstance(status, int)
    head = dict(sent[0]["headers"])  # type: ignore[call-overload]
    chunks = [m["body"] for m in sent[1:] if m.get("body")]
    return status, head, chunks  # type: ignore[return-value]


def asgi_get(
    server: DevServer, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], list[bytes]]:
    """A GET sent to the server's ASGI app as uvicorn would: status, headers, body chunks."""
    return asgi_call(server, "GET", path, headers)


@pytest.mark.parametrize(
    "path", ["/.netlify/functions/hello", "/style.css", "/.bgfunctions/invocations"]
)
def test_a_foreign_host_gets_400_with_a_request_id_everywhere(
    make_server: Callable[..., DevServer], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Host: attacker.example gets 400 and a request id for functions, static files, the view."""
    server = make_server()
    status, headers, chunks = asgi_get(server, path, [(b"host", b"attacker.example:8888")])
    assert status == 400
    body = b"".join(chunks).decode()
    request_id = headers[b"x-nf-request-id"].decode()
    assert body.startswith("Bad Request: Host 'attacker.example:8888' is not allowed here")
    assert "--allowed-hosts" in body
    assert body.endswith(f"Request ID: {request_id}\n")
    assert f"refused a request for Host 'attacker.example:8888' (request {request_id})" in (
        caplog.text
    )


@pytest.mark.parametrize("host", [b"localhost:8888", b"127.0.0.1:8888", b"[::1]:8888"])
def test_loopback_hosts_are_served(make_server: Callable[..., DevServer], host: bytes) -> None:
    """localhost, 127.0.0.1 and [::1], with a port, reach the functions."""
    status, _, chunks = asgi_get(make_server(), "/.netlify/functions/hello", [(b"host", host)])
    assert (status, b"".join(chunks)) == (200, b"hello v1")


def test_allowed_hosts_and_the_bound_address_widen_the_rule(
    make_server: Callable[..., DevServer],
) -> None:
    """allowed_hosts adds names; a specific --host address is allowed; 0.0.0.0 adds nothing."""
    server = make_server(host="192.168.1.10", allowed_hosts=(".dev.test",))
    for host in (b"192.168.1.10:8888", b"app.dev.test", b"localhost"):
        assert asgi_get(server, "/style.css", [(b"host", host)])[0] == 200
    assert asgi_get(server, "/style.css", [(b"host", b"other.test")])[0] == 400
    wildcard = make_server(host="0.0.0.0")
    assert asgi_get(wildcard, "/style.css", [(b"host", b"0.0.0.0:8888")])[0] == 400
    anyone = make_server(allowed_hosts=("*",))
    assert asgi_get(anyone, "/style.css", [(b"host", b"attacker.example")])[0] == 200


def test_a_wildcard_address_says_how_to_allow_this_machines_name(site: Path) -> None:
    """--host 0.0.0.0 without --allowed-hosts: a note says which Host names are answered."""
    server = DevServer(site, ServeOptions(host="0.0.0.0"), out=io.StringIO())
    try:
        server.warn_if_public()
        assert "note: requests must name one of localhost, 127.0.0.1, [::1] as their Host" in (
            output(server)
        )
        assert "--allowed-hosts" in output(server)
    finally:
        server.app.shutdown()


def test_waiting_work_is_bounded_and_answers_503_past_it(
    make_server: Callable[..., DevServer],
) -> None:
    """The default bound is set; past max_pending a background request gets 503 + Retry-After."""
    assert make_server().app.executor.max_pending == DEFAULT_MAX_PENDING  # type: ignore[attr-defined]
    server = make_server(max_pending=1, retry_delays=(3600.0,))
    first = request(server, "POST", "/.netlify/functions/doomed-background")
    assert first.status_code == 202
    record = server.app.get(first.headers["x-nf-request-id"])
    wait_until(lambda: record.state.value == "retry_scheduled")  # its retry waits for an hour
    refused = request(server, "POST", "/.netlify/functions/doomed-background")
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert request(server, "GET", "/.netlify/functions/hello").status_code == 200


def test_static_files_honour_range_requests(make_server: Callable[..., DevServer]) -> None:
    """Range: bytes=2-4 gets 206 with those bytes; a range past the end gets 416."""
    server = make_server()
    part = request(server, "GET", "/style.css", headers={"range": "bytes=2-4"})
    assert (part.status_code, part.content) == (206, b"dy ")
    assert part.headers["content-range"] == "bytes 2-4/7"
    assert request(server, "GET", "/style.css", headers={"range": "bytes=50-60"}).status_code == 416


def test_every_static_answer_carries_a_request_id(make_server: Callable[..., DevServer]) -> None:
    """200, 206, 304, 416 and Starlette's 400 for a malformed Range all carry x-nf-request-id."""
    server = make_server()
    full = request(server, "GET", "/style.css")
    answers = [
        full,
        request(server, "GET", "/style.css", headers={"range": "bytes=2-4"}),
        request(server, "GET", "/style.css", headers={"if-none-match": full.headers["etag"]}),
        request(server, "GET", "/style.css", headers={"range": "bytes=50-60"}),
        request(server, "GET", "/style.css", headers={"range": "garbage"}),
        request(server, "HEAD", "/style.css"),
    ]
    assert [a.status_code for a in answers] == [200, 206, 304, 416, 400, 200]
    ids = [a.headers.get("x-nf-request-id") for a in answers]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)


def test_static_files_answer_conditional_requests_with_304(
    make_server: Callable[..., DevServer],
) -> None:
    """If-None-Match with the ETag, or If-Modified-Since its Last-Modified, gets an empty 304."""
    server = make_server()
    full = request(server, "GET", "/style.css")
    etag, modified = full.headers["etag"], full.headers["last-modified"]
    again = request(server, "GET", "/style.css", headers={"if-none-match": etag})
    assert (again.status_code, again.content) == (304, b"")
    since = request(server, "GET", "/style.css", headers={"if-modified-since": modified})
    assert since.status_code == 304
    stale = request(server, "GET", "/style.css", headers={"if-none-match": '"other"'})
    assert (stale.status_code, stale.text) == (200, "body {}")


def test_a_large_static_file_streams_in_bounded_chunks(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """A 16 MiB file goes out in 64 KiB chunks, never read whole (peak allocation < 2 MiB)."""
    size = 16 * 1024 * 1024
    with (site / "public" / "big.bin").open("wb") as big:
        big.truncate(size)  # sparse: no 16 MiB written by the test either
    server = make_server()
    tracemalloc.start()
    try:
        status, headers, chunks = asgi_get(server, "/big.bin", [(b"host", b"localhost")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200
    assert headers[b"content-length"] == str(size).encode()
    assert sum(len(c) for c in chunks) == size
    assert max(len(c) for c in chunks) <= 64 * 1024
    assert len(chunks) == size // (64 * 1024)
    # The chunks list the test keeps holds the file; what the server held is the peak minus it.
    assert peak - size < 2 * 1024 * 1024


def test_well_known_is_published_but_other_dotfiles_are_not(
    site: Path, make_server: Callable[..., DevServer]
) -> None:
    """/.well-known/* is served (as Netlify does); .env and dotfiles inside .well-known are not."""
    write(site, "public/.well-known/security.txt", "Contact: mailto:sec@example.com")
    write(site, "public/.well-known/.secret", SECRET)
    write(site, "public/.env", SECRET)
    server = make_server()
    found = request(server, "GET", "/.well-known/security.txt")
    assert (found.status_code, found.text) == (200, "Contact: mailto:sec@example.com")
    assert request(server, "GET", "/.well-known/.secret").status_code == 404
    assert request(server, "GET", "/.env").status_code == 404
    assert request(server, "GET", "/docs/.well-known/security.txt").status_code == 404


def test_the_journal_folder_gets_a_gitignore(site: Path, tmp_path: Path) -> None:
    """With the site's journal, .bgfunctions/.gitignore ignores all; a user's own is kept."""
    DevServer(site, ServeOptions(journal=site / JOURNAL_FILE), out=io.StringIO()).app.shutdown()
    ignore = site / ".bgfunctions" / ".gitignore"
    assert ignore.read_text(encoding="utf-8").splitlines()[-1] == "*"
    ignore.write_text("journal.sqlite3\n", encoding="utf-8")
    DevServer(site, ServeOptions(journal=site / JOURNAL_FILE), out=io.StringIO()).app.shutdown()
    assert ignore.read_text(encoding="utf-8") == "journal.sqlite3\n"
    elsewhere = tmp_path / "journals" / "j.sqlite3"
    DevServer(site, ServeOptions(journal=elsewhere), out=io.StringIO()).app.shutdown()
    assert not (elsewhere.parent / ".gitignore").exists()


def test_a_replay_added_by_the_cli_is_announced_as_queued(
    site: Path, make_server: Callable[..., DevServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """`bgfunctions replay` from another process: the server prints "queued (replay of ID)"."""
    server = make_server(journal=site / JOURNAL_FILE, retry_delays=())
    first = request(server, "POST", "/.netlify/functions/doomed-background")
    old = first.headers["x-nf-request-id"]
    assert server.app.get(old).wait(10).state.value == "failed"
    assert main(["replay", old, "--site", str(site)]) == 0
    new = capsys.readouterr().out.strip()
    line = f"[{new}] doomed-background: queued (replay of {old})"
    wait_until(lambda: f"[{new}] doomed-background: failed" in output(server))
    lines = output(server).splitlines()
    assert lines.count(line) == 1
    assert lines.index(line) < lines.index(f"[{new}] doomed-background: attempt 1 started")


def test_an_in_process_replay_is_queued_once(make_server: Callable[..., DevServer]) -> None:
    """App.replay: one "queued (replay of ID)" line, from its accepted event."""
    server = make_server(retry_delays=())
    old = request(server, "POST", "/.netlify/functions/doomed-background")
    old_id = old.headers["x-nf-request-id"]
    server.app.get(old_id).wait(10)
    new = server.app.replay(old_id)
    new.wait(10)
    line = f"[{new.request_id}] doomed-background: queued (replay of {old_id})"
    assert output(server).splitlines().count(line) == 1


def test_a_path_too_long_to_route_is_414_not_a_static_file_look_up(
    make_server: Callable[..., DevServer],
) -> None:
    """A path past MAX_PATH_LENGTH gets the 414 with its request id, not the static 404."""
    server = make_server()
    # Many segments: resolving such a path on the file system took seconds, on the loop.
    status, body = raw_request(server, "GET", "/" + "a/" * (MAX_PATH_LENGTH // 2 + 1))
    assert status == 414
    assert body.startswith(b"URI Too Long - Request ID: ")


def test_the_dev_server_and_invoke_share_one_line_formatter() -> None:
    """The dev server's lines and `bgfunctions invoke`'s come from one LineFormatter."""
    from bgfunctions import logs, serverlog

    assert serverlog.LineFormatter is logs.LineFormatter


def test_the_journal_size_cap_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BGFUNCTIONS_JOURNAL_MAX_SIZE caps the served journal (bytes); a bad value is refused."""
    monkeypatch.setenv("BGFUNCTIONS_JOURNAL_MAX_SIZE", str(64 * 4096))
    journal = open_sqlite_journal(tmp_path / "state" / "journal.sqlite3")
    try:
        assert isinstance(journal, SQLiteJournal)
        assert journal.max_size_bytes == 64 * 4096
    finally:
        journal.close()
    monkeypatch.setenv("BGFUNCTIONS_JOURNAL_MAX_SIZE", "64 pages")
    with pytest.raises(BgFunctionsError, match=r"BGFUNCTIONS_JOURNAL_MAX_SIZE.*'64 pages'"):
        open_sqlite_journal(tmp_path / "other" / "journal.sqlite3")
