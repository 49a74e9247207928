"""Host checking against DNS rebinding: the patterns, and the invocations view of ASGIApp and
WSGIApp (the view answers allowed hosts only; functions answer any host)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bgfunctions import App, InlineExecutor, Registry
from bgfunctions.asgi import ASGIApp
from bgfunctions.clock import VirtualClock
from bgfunctions.hosts import LOOPBACK_HOSTS, AllowedHosts, host_name
from bgfunctions.wsgi import WSGIApp


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("localhost", True),
        ("localhost:8888", True),
        ("LocalHost.:80", True),
        ("127.0.0.1:8888", True),
        ("[::1]:8888", True),
        ("[0:0:0:0:0:0:0:1]", True),
        ("attacker.example:8888", False),
        ("localhost.attacker.example", False),
        ("127.0.0.1.nip.io", False),
        ("[::2]", False),
        ("localhost:http", False),
        ("local host", False),
        ("localhost@attacker.example", False),
        ("", False),
    ],
)
def test_only_loopback_names_are_allowed_by_default(header: str, allowed: bool) -> None:
    """By default a Host header must name localhost, 127.0.0.1 or [::1], with any port."""
    assert AllowedHosts().allows([header]) is allowed


@pytest.mark.parametrize(
    ("patterns", "header", "allowed"),
    [
        (["example.com"], "example.com:443", True),
        (["example.com"], "www.example.com", False),
        ([".example.com"], "example.com", True),
        ([".example.com"], "a.b.example.com", True),
        ([".example.com"], "badexample.com", False),
        (["*.example.com"], "www.example.com", True),
        (["*.example.com"], "example.com", False),
        (["10.0.0.5"], "10.0.0.5:8888", True),
        (["::1"], "[::1]", True),
        (["*"], "anything.at.all:1", True),
        (["*"], "", True),
        (["example.com"], "localhost:8888", True),
    ],
)
def test_patterns_add_to_the_loopback_names(
    patterns: list[str], header: str, allowed: bool
) -> None:
    """Exact names, Django's ".domain", Starlette's "*.domain" and "*" (any) add to loopback."""
    assert AllowedHosts(patterns).allows([header]) is allowed


def test_a_missing_or_repeated_host_is_refused() -> None:
    """No Host header, or two of them, is refused unless "*" is allowed."""
    hosts = AllowedHosts()
    assert not hosts.allows([])
    assert not hosts.allows(["localhost", "attacker.example"])
    assert AllowedHosts(["*"]).allows(["localhost", "attacker.example"])


def test_the_refusal_says_what_host_was_sent() -> None:
    """The 400 quotes the one Host sent, or says there was none, or how many there were."""
    hosts = AllowedHosts()
    clock = VirtualClock()

    def text(headers: list[str]) -> str:
        return hosts.refusal(headers, clock, hint="h").body.decode()

    assert text(["evil.example"]).startswith("Bad Request: Host 'evil.example' is not allowed")
    assert text([]).startswith("Bad Request: no Host header; expected one of localhost,")
    assert text(["a", "b"]).startswith("Bad Request: 2 Host headers; expected one of localhost,")


@pytest.mark.parametrize("pattern", ["example.com:80", "http://example.com", "a b", "*x.com", ""])
def test_a_malformed_pattern_is_an_error_naming_it(pattern: str) -> None:
    """A pattern with a port, a scheme or a space is a ValueError that quotes it."""
    with pytest.raises(ValueError, match="allowed_hosts: expected a host name") as caught:
        AllowedHosts([pattern])
    assert repr(pattern) in str(caught.value)


def test_one_string_instead_of_a_list_is_refused() -> None:
    """allowed_hosts="example.com" is a TypeError, not nine one-letter patterns."""
    with pytest.raises(TypeError, match="a list of host patterns"):
        AllowedHosts("example.com")


def test_host_name_strips_port_case_and_trailing_dot() -> None:
    """host_name() gives the comparable name, or None for what is no host."""
    assert host_name("Example.COM.:8080") == "example.com"
    assert host_name("[0::1]:1") == "[::1]"
    assert host_name("[zz::1]") is None
    assert host_name("a/b") is None
    assert LOOPBACK_HOSTS == ("localhost", "127.0.0.1", "[::1]")


# -- the adapters ---------------------------------------------------------------------------


def _app() -> App:
    registry = Registry()
    registry.add("hello", lambda request, context: "hello")
    return App(registry, executor=InlineExecutor())


def _get(asgi: ASGIApp, url: str, host: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.get(url)

    return asyncio.run(go())


def test_asgi_view_refuses_a_foreign_host_with_400_and_a_request_id() -> None:
    """ASGIApp's view answers 400 to Host: attacker.example, with the request id; not the JSON."""
    app = _app()
    try:
        asgi = ASGIApp(app, invocations_view=True)
        refused = _get(asgi, "/.bgfunctions/invocations", "attacker.example:8888")
        assert refused.status_code == 400
        request_id = refused.headers["x-nf-request-id"]
        assert refused.text.startswith("Bad Request: Host 'attacker.example:8888' is not allowed")
        assert f"Request ID: {request_id}" in refused.text
        assert "invocations" not in refused.text
        assert _get(asgi, "/.bgfunctions/invocations", "localhost:8888").status_code == 200
    finally:
        app.shutdown()


def test_asgi_functions_answer_any_host_and_allowed_hosts_widen_the_view() -> None:
    """A mounted ASGIApp's functions are the site's API (any Host); allowed_hosts opens the view."""
    app = _app()
    try:
        asgi = ASGIApp(app, invocations_view=True, allowed_hosts=[".example.com"])
        assert _get(asgi, "/.netlify/functions/hello", "api.other.test").text == "hello"
        assert _get(asgi, "/.bgfunctions/invocations", "ops.example.com").status_code == 200
        assert _get(asgi, "/.bgfunctions/invocations", "other.test").status_code == 400
    finally:
        app.shutdown()


def test_wsgi_view_checks_the_host_too() -> None:
    """WSGIApp's view refuses a foreign Host with 400; functions still answer it."""
    from werkzeug.test import Client

    app = _app()
    try:
        client = Client(WSGIApp(app, invocations_view=True, allowed_hosts=["ops.example.com"]))
        foreign = {"Host": "attacker.example"}
        refused = client.get("/.bgfunctions/invocations", headers=foreign)
        assert refused.status_code == 400
        assert refused.headers["x-nf-request-id"] in refused.get_data(as_text=True)
        assert client.get("/.netlify/functions/hello", headers=foreign).status_code == 200
        ops = {"Host": "ops.example.com"}
        assert client.get("/.bgfunctions/invocations", headers=ops).status_code == 200
        assert client.get("/.bgfunctions/invocations").status_code == 200  # localhost
    finally:
        app.shutdown()
