"""Both adapters hand handlers the same Request and Context as App.handle, and arbitrary
requests never get a 500 or an ERROR log line from the library.

The requests are hostile on purpose (issue 10): paths long enough to make a backtracking
router stall, foreign and malformed Host headers in front of the invocations view, and handlers
that raise ``BaseException``s. Whatever arrives, the answer comes, carries a request id, shows
nothing internal, and every 202 names an invocation the App still has."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from bgfunctions import App, Context, InlineExecutor, Limits, Registry, Request, Response
from bgfunctions.asgi import ASGIApp
from bgfunctions.wsgi import WSGIApp

Seen = list[tuple[Request, Context]]


def _registry(seen: Seen) -> Registry:
    """A sync function, a background function and a pattern function; none of them fails."""
    registry = Registry()

    def echo(request: Request, context: Context) -> Response:
        seen.append((request, context))
        return Response(request.body, headers={"content-type": "application/octet-stream"})

    def job(request: Request, context: Context) -> None:
        seen.append((request, context))

    def item(request: Request, context: Context) -> str:
        seen.append((request, context))
        return "item"

    def interrupt(request: Request, context: Context) -> str:
        raise KeyboardInterrupt

    def leave(request: Request, context: Context) -> None:
        raise SystemExit(3)

    async def panic(request: Request, context: Context) -> None:
        raise Panic("no")

    registry.add("echo", echo)
    registry.add("job-background", job)
    registry.add("item", item, config={"path": "/items/:id/*"})
    # Patterns that a backtracking matcher takes seconds on, for a long path that misses.
    registry.add("globs", item, config={"path": "/*/*/*.json"})
    registry.add("pluses", item, config={"path": "/:a+/:b+/:c+/x"})
    registry.add("interrupt", interrupt)
    registry.add("exit-background", leave)
    registry.add("panic-background", panic)
    return registry


class Panic(BaseException):
    """What a careless handler may raise: not an Exception."""


RAISING_SYNC = "/.netlify/functions/interrupt"
"""The one synchronous function that fails: its 500 is the handler's, not the library's."""


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
def app(seen: Seen) -> Iterator[App]:
    app = App(
        _registry(seen),
        executor=InlineExecutor(),
        limits=Limits(background_payload=64, sync_payload=128),
    )
    yield app
    app.shutdown()


# -- the same Request and Context everywhere ------------------------------------------------------

URL = "/items/a%20b/c%2Fd/%C3%A9?q=%C3%A9&q=2&x=y%26z"
HEADERS = {"x-custom": "v1", "cookie": "s=1; t=2", "content-type": "text/plain"}
BODY = b"hello body"
CLIENT = "203.0.113.77"
COMPARED = ("x-custom", "cookie", "content-type")


def _view(request: Request, context: Context) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "query": request.query.multi_items(),
        "headers": {name: request.headers.get(name) for name in COMPARED},
        "body": request.body,
        "client": request.client,
        "ip": context.ip,
        "params": dict(context.params),
        "cookies": context.cookies.get("t"),
        "function": context.function,
    }


def test_asgi_wsgi_and_app_hand_the_same_request_and_context(app: App, seen: Seen) -> None:
    """Method, path, query, headers, body, client ip and params agree across all three."""
    app.handle(Request("PUT", URL, headers=HEADERS, body=BODY, client=CLIENT))

    async def over_asgi() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIApp(app), client=(CLIENT, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
            return await client.put(URL, headers=HEADERS, content=BODY)

    assert asyncio.run(over_asgi()).status_code == 200
    wsgi = Client(WSGIApp(app), use_cookies=False).put(
        URL, headers=HEADERS, data=BODY, environ_base={"REMOTE_ADDR": CLIENT}
    )
    assert wsgi.status_code == 200
    direct, via_asgi, via_wsgi = (_view(r, c) for r, c in seen)
    assert direct["params"] == {"id": "a b", "0": "c/d/é"}
    assert direct["ip"] == CLIENT
    assert via_asgi == direct
    # WSGI cannot tell %2F from "/" (PATH_INFO is decoded): only raw_path may differ.
    assert {**via_wsgi, "raw_path": direct["raw_path"]} == direct
    assert via_wsgi["raw_path"] == "/items/a%20b/c/d/%C3%A9"


# -- fuzz ----------------------------------------------------------------------------------------

_token = st.text(
    alphabet="!#$%&'*+-.^_`|~ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    min_size=1,
    max_size=10,
)
_valid_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "get"])
# Mostly methods that reach a handler, then any token, then junk.
methods = st.one_of(_valid_methods, _valid_methods, _valid_methods, _token, st.text(max_size=8))
_segment = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "%2F",
            "%2e%2E",
            "%",
            "%zz",
            "%C3%A9",
            "%FF",
            "é",
            "x y",
            "?",
            "#",
            "%00",
            "items",
            "1",
        ]
    ),
    st.text(max_size=6),
)
paths = st.builds(
    lambda prefix, sep, segments: prefix + (sep + "/".join(segments) if segments else ""),
    st.sampled_from(
        [
            "/.netlify/functions/echo",
            "/.netlify/functions/echo",
            "/.netlify/functions/job-background",
            "/.netlify/functions/job-background",
            RAISING_SYNC,
            "/.netlify/functions/exit-background",
            "/.netlify/functions/panic-background",
            "/.bgfunctions/invocations",
            "/.bgfunctions/",
            "/items/1/",
            "/.netlify/functions/",
            "/items/",
            "//",
            "/",
            "",
        ]
    ),
    st.sampled_from(["/", ""]),
    st.lists(_segment, max_size=4),
)
# Long and adversarial: 2,000 segments that miss /*/*/*.json, 2 KB that misses /:a+/:b+/:c+/x,
# a path past the routing bound, and dot segments that climb out of a prefix.
_long_paths = st.sampled_from(
    [
        "/a" * 2000 + ".jsonx",
        "/" + "a/" * 1024,
        "/" + "b" * 9000,
        "/.netlify/functions/echo/" + "../" * 300 + "etc/passwd",
        "/items/1/" + "%2e%2e/" * 200,
    ]
)
paths = st.one_of(paths, paths, paths, _long_paths)
_known_names = st.sampled_from(
    [
        b"content-type",
        b"content-length",
        b"cookie",
        b"host",
        b"x-nf-request-id",
        b"x-nf-client-connection-ip",
        b"transfer-encoding",
    ]
)
header_names = st.one_of(_known_names, _known_names, st.binary(max_size=8))
_hosts = st.sampled_from(
    [b"attacker.example:8888", b"localhost:8888", b"[::1]", b"127.0.0.1.nip.io", b"", b"a" * 300]
)
# Values: mostly visible Latin-1 text (valid), sometimes any bytes (controls, CR/LF).
_values = st.one_of(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=12,
    ).map(lambda v: v.encode("latin-1")),
    st.binary(max_size=12),
)
headers = st.lists(
    st.one_of(st.tuples(header_names, _values), st.tuples(st.just(b"host"), _hosts)), max_size=4
)
bodies = st.one_of(st.binary(max_size=40), st.binary(min_size=60, max_size=200))
queries = st.binary(max_size=20)
FUZZ = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _library_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR lines of the library, except the one that reports a failed synchronous handler."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("bgfunctions")
        and r.levelno >= logging.ERROR
        and not r.getMessage().startswith("function 'interrupt' failed")
    ]


def _check_answer(app: App, path: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """What every answer promises: a request id, nothing internal, a 500 only from the one
    failing handler, and a 202 whose invocation the App has recorded (nothing lost)."""
    event(f"status {status}")
    assert status in (200, 202, 204, 400, 404, 405, 413, 414, 500), (path[:80], status)
    assert headers.get("x-nf-request-id"), (path[:80], status, headers)
    text = body.decode("latin-1")
    assert "Traceback" not in text
    assert "/work/" not in text
    assert "site-packages" not in text
    if status == 500:
        assert path.startswith(RAISING_SYNC), (path[:80], body[:200])
    if status == 202:
        assert app.get(headers["x-nf-request-id"]).record.function.endswith("-background")


def _wire_path(path: str) -> bytes:
    """What a client puts on the wire: UTF-8, with spaces, '?' and '#' escaped."""
    return (
        path.encode("utf-8", "surrogatepass")
        .replace(b" ", b"%20")
        .replace(b"?", b"%3F")
        .replace(b"#", b"%23")
    )


@FUZZ
@given(
    method=methods, path=paths, hdrs=headers, body=bodies, query=queries, chunks=st.integers(1, 4)
)
def test_asgi_never_answers_500(
    app: App,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    hdrs: list[tuple[bytes, bytes]],
    body: bytes,
    query: bytes,
    chunks: int,
) -> None:
    """Arbitrary methods, paths, headers and bodies over ASGI: never 500, no ERROR log."""
    caplog.clear()
    raw = _wire_path(path)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote_to_bytes(raw).decode("utf-8", "replace"),
        "raw_path": raw,
        "query_string": query.replace(b"#", b"%23"),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in hdrs],
        "client": ("192.0.2.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def answer() -> None:
        # A hung request would fail here, not stall the suite.
        await asyncio.wait_for(ASGIApp(app, invocations_view=True)(scope, receive, send), 30)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(answer())
    start = next(m for m in sent if m["type"] == "http.response.start")
    head = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    body_sent = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    _check_answer(app, path, start["status"], head, body_sent)
    assert _library_errors(caplog) == []


@FUZZ
@given(method=methods, path=paths, hdrs=headers, body=bodies, query=queries, declare=st.booleans())
def test_wsgi_never_answers_500(
    app: App,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    hdrs: list[tuple[bytes, bytes]],
    body: bytes,
    query: bytes,
    declare: bool,
) -> None:
    """Arbitrary methods, paths, headers and bodies over WSGI: never 500, no ERROR log."""
    caplog.clear()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method.encode("utf-8", "surrogatepass").decode("latin-1"),
        "PATH_INFO": unquote_to_bytes(_wire_path(path)).decode("latin-1"),
        "SCRIPT_NAME": "",
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.2",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": not declare,
    }
    for name, value in hdrs:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if key not in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
            environ[key] = value.decode("latin-1")
    if declare:
        environ["CONTENT_LENGTH"] = str(len(body))
    statuses: list[str] = []
    answered: dict[str, str] = {}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> None:
        statuses.append(status)
        answered.update((k.lower(), v) for k, v in response_headers)

    with caplog.at_level(logging.DEBUG):
        body_sent = b"".join(WSGIApp(app, invocations_view=True)(environ, start_response))
    _check_answer(app, path, int(statuses[0][:3]), answered, body_sent)
    assert _library_errors(caplog) == []
