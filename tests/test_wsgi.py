"""The WSGI adapter: through werkzeug's test Client, mounted in a real Flask app and a real
Django project with DispatcherMiddleware."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import types
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from bgfunctions import (
    App,
    Context,
    InlineExecutor,
    InvocationRecord,
    Limits,
    MemoryJournal,
    Registry,
    Request,
    Response,
    State,
    ThreadExecutor,
)
from bgfunctions.routing import MAX_PATH_LENGTH
from bgfunctions.wsgi import WSGIApp

BG = "/.netlify/functions/job-background"
Seen = list[tuple[Request, Context]]


def _registry(seen: Seen) -> Registry:
    """A sync echo function, a background function and a function on a custom path."""
    registry = Registry()

    def echo(request: Request, context: Context) -> Response:
        seen.append((request, context))
        return Response.json({"path": request.path, "ip": context.ip, "body": request.text()})

    def job(request: Request, context: Context) -> None:
        seen.append((request, context))

    def item(request: Request, context: Context) -> Response:
        seen.append((request, context))
        return Response.text(f"item {context.params['id']}")

    registry.add("echo", echo)
    registry.add("job-background", job)
    registry.add("item", item, config={"path": "/items/:id"})
    return registry


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
def inline(seen: Seen) -> Iterator[App]:
    app = App(_registry(seen), executor=InlineExecutor(), limits=Limits(background_payload=100))
    yield app
    app.shutdown()


def _client(wsgi: Any) -> Client:
    return Client(wsgi)


def _bgthreads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("bgfunctions")]


# -- through werkzeug's test Client ---------------------------------------------------------------


def test_background_answers_202_empty_with_request_id(inline: App, seen: Seen) -> None:
    """A background request gets an empty 202 with x-nf-request-id and runs later."""
    response = _client(WSGIApp(inline)).post(BG, data=b"payload")
    assert response.status_code == 202
    assert response.data == b""
    assert "content-type" not in response.headers
    request_id = response.headers["x-nf-request-id"]
    assert isinstance(inline.executor, InlineExecutor)
    inline.executor.drain()
    record = inline.invocations.get(request_id)
    assert record is not None
    assert record.state is State.SUCCEEDED
    assert seen[0][0].body == b"payload"


def test_sync_404_400_and_custom_path(inline: App) -> None:
    """Sync responses come back; unknown names 404, invalid names 400; custom paths work."""
    client = _client(WSGIApp(inline))
    response = client.post(
        "/.netlify/functions/echo", data="hi", environ_base={"REMOTE_ADDR": "198.51.100.4"}
    )
    assert response.status_code == 200
    assert response.json == {"path": "/.netlify/functions/echo", "ip": "198.51.100.4", "body": "hi"}
    assert client.get("/.netlify/functions/nope").status_code == 404
    # An unknown name is 404 whatever its characters (issue 11, item 1).
    assert client.get("/.netlify/functions/bad.name").status_code == 404
    assert client.get("/items/5").text == "item 5"


class _Untouchable(io.RawIOBase):
    """A wsgi.input that fails the test if anything reads it."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")

    def readline(self, size: int | None = -1) -> bytes:
        raise AssertionError("the body was read")


def _start() -> tuple[list[str], Any]:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        statuses.append(status)
        # PEP 3333: no hop-by-hop headers from an application.
        assert not {k.lower() for k, _ in headers} & {"connection", "transfer-encoding"}

    return statuses, start_response


def _environ(path: str, **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.1.1.1",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    environ.update(extra)
    return environ


def test_content_length_over_limit_is_413_without_reading(inline: App) -> None:
    """A Content-Length over the limit gets 413 and wsgi.input is never read."""
    statuses, start_response = _start()
    environ = _environ(BG, CONTENT_LENGTH="101", **{"wsgi.input": _Untouchable()})
    body = b"".join(WSGIApp(inline)(environ, start_response))
    assert statuses[0].startswith("413")
    assert b"at most 100 bytes" in body
    assert inline.invocations.list() == []


def test_chunked_body_over_limit_is_refused_once_it_passes(inline: App) -> None:
    """Without a length, a terminated input is read only until it passes the limit."""
    stream = io.BytesIO(b"z" * 10_000)
    statuses, start_response = _start()
    environ = _environ(BG, **{"wsgi.input": stream, "wsgi.input_terminated": True})
    list(WSGIApp(inline)(environ, start_response))
    assert statuses[0].startswith("413")
    assert stream.tell() == 101


def test_no_length_and_not_terminated_reads_nothing(inline: App, seen: Seen) -> None:
    """PEP 3333: without Content-Length (and no input_terminated) the body is not read."""
    statuses, start_response = _start()
    environ = _environ("/.netlify/functions/echo", **{"wsgi.input": _Untouchable()})
    list(WSGIApp(inline)(environ, start_response))
    assert statuses[0].startswith("200")
    assert seen[0][0].body == b""


@pytest.mark.parametrize("length", ["abc", "-1", "\u00b2", "1e3"])
def test_malformed_content_length_is_400(inline: App, length: str) -> None:
    """A Content-Length that is not a number of bytes gets 400, never 500."""
    statuses, start_response = _start()
    environ = _environ(BG, CONTENT_LENGTH=length, **{"wsgi.input": _Untouchable()})
    list(WSGIApp(inline)(environ, start_response))
    assert statuses[0].startswith("400")


def test_truncated_body_is_400_and_not_queued(inline: App) -> None:
    """A body shorter than its Content-Length (the client went away) is never accepted."""
    statuses, start_response = _start()
    environ = _environ(BG, CONTENT_LENGTH="50", **{"wsgi.input": io.BytesIO(b"short")})
    list(WSGIApp(inline)(environ, start_response))
    assert statuses[0].startswith("400")
    assert inline.invocations.list() == []


def test_utf8_header_values_are_accepted_as_latin1(inline: App, seen: Seen) -> None:
    """A header with UTF-8 bytes reaches the handler as Latin-1 text (as over ASGI), not 400."""
    raw = "naïve".encode().decode("latin-1")
    statuses, start_response = _start()
    environ = _environ(
        "/.netlify/functions/echo",
        HTTP_X_NAME=raw,
        CONTENT_LENGTH="0",
        **{"wsgi.input": io.BytesIO()},
    )
    list(WSGIApp(inline)(environ, start_response))
    assert statuses[0].startswith("200")
    assert seen[0][0].headers["x-name"] == raw


# -- mounted in Flask and Django -------------------------------------------------------------------


def test_mounted_in_flask_with_dispatcher_middleware(inline: App, seen: Seen) -> None:
    """DispatcherMiddleware("/fn") serves functions below /fn beside Flask's own routes."""
    flask_app = Flask(__name__)

    @flask_app.route("/")
    def home() -> str:
        return "flask home"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/fn": WSGIApp(inline)}
    )
    client = flask_app.test_client()
    assert client.get("/").text == "flask home"
    response = client.post("/fn/.netlify/functions/echo?a=1&b=%C3%A9", data="x")
    assert response.json == {"path": "/.netlify/functions/echo", "ip": "127.0.0.1", "body": "x"}
    assert seen[-1][0].query["b"] == "é"
    assert seen[-1][0].url == "/.netlify/functions/echo?a=1&b=%C3%A9"
    assert client.get("/fn/items/3").text == "item 3"
    accepted = client.post(f"/fn{BG}", data=b"q")
    assert (accepted.status_code, accepted.data) == (202, b"")
    assert client.get("/fn/nothing").status_code == 404


@pytest.fixture(scope="module")
def django_wsgi() -> Iterable[Any]:
    """A minimal Django project configured in-process, with a URLconf module made here."""
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.http import HttpResponse  # type: ignore[import-untyped]
    from django.urls import path  # type: ignore[import-untyped]

    urls = types.ModuleType("bgfunctions_test_django_urls")

    def hello(request: Any) -> HttpResponse:
        return HttpResponse("django says hi")

    urls.urlpatterns = [path("hello/", hello)]  # type: ignore[attr-defined]
    sys.modules[urls.__name__] = urls
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test",
            ROOT_URLCONF=urls.__name__,
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            USE_TZ=True,
        )
    django.setup()
    from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]

    yield get_wsgi_application()
    del sys.modules[urls.__name__]


def test_mounted_in_django_project(inline: App, django_wsgi: Any, seen: Seen) -> None:
    """A Django project's WSGI handler wrapped by DispatcherMiddleware serves functions at /fn."""
    application = DispatcherMiddleware(django_wsgi, {"/fn": WSGIApp(inline)})
    client = Client(application)
    hello = client.get("/hello/")
    assert (hello.status_code, hello.text) == (200, "django says hi")
    response = client.post(
        "/fn/.netlify/functions/echo", data="dj", environ_base={"REMOTE_ADDR": "192.0.2.8"}
    )
    assert response.json == {"path": "/.netlify/functions/echo", "ip": "192.0.2.8", "body": "dj"}
    assert client.post(f"/fn{BG}").status_code == 202
    assert client.post(f"/fn{BG}", data=b"x" * 200).status_code == 413


# -- lazy start and close ------------------------------------------------------------------------


@pytest.mark.realtime
def test_first_request_starts_executor_and_close_stops_it(seen: Seen) -> None:
    """Building the WSGIApp starts no thread; the first request does; close() stops them."""
    before = set(_bgthreads())
    app = App(_registry(seen), executor=ThreadExecutor(max_workers=2))
    wsgi = WSGIApp(app, grace=5)
    assert set(_bgthreads()) == before
    response = _client(wsgi).post(BG, data=b"1")
    assert response.status_code == 202
    assert set(_bgthreads()) - before
    assert app.get(response.headers["x-nf-request-id"]).wait(10).state is State.SUCCEEDED
    wsgi.close()
    assert set(_bgthreads()) <= before


def test_invocations_view_is_opt_in_over_wsgi() -> None:
    """WSGIApp(invocations_view=True) serves the read-only record; off by default (404)."""
    from werkzeug.test import Client as _Client

    from bgfunctions import App, InlineExecutor, Registry
    from bgfunctions.wsgi import WSGIApp

    registry = Registry()

    @registry.function("fail-background")
    def fail(request: object, context: object) -> None:
        raise RuntimeError("down")

    app = App(registry, executor=InlineExecutor())
    try:
        viewing = _Client(WSGIApp(app, invocations_view=True))
        assert viewing.post("/.netlify/functions/fail-background").status_code == 202
        executor = app.executor
        assert isinstance(executor, InlineExecutor)
        executor.drain()
        listing = viewing.get("/.bgfunctions/invocations?state=failed").get_json()
        assert [i["function"] for i in listing["invocations"]] == ["fail-background"]
        assert len(listing["invocations"][0]["attempts"]) == 3
        assert viewing.head("/.bgfunctions/").get_data() == b""
        assert viewing.post("/.bgfunctions/invocations").status_code == 405
        assert _Client(WSGIApp(app)).get("/.bgfunctions/invocations").status_code == 404
    finally:
        app.shutdown()


# -- the last line of defence: what escapes the App ----------------------------------------------


class Panic(BaseException):
    """A BaseException of the handler's own, outside the Exception tree."""


def _raising_registry() -> Registry:
    registry = Registry()

    def interrupt(request: Request, context: Context) -> Response:
        raise KeyboardInterrupt("secret-token-1234")

    def exit_(request: Request, context: Context) -> Response:
        raise SystemExit("secret-token-1234")

    def panic(request: Request, context: Context) -> Response:
        raise Panic("secret-token-1234")

    def hello(request: Request, context: Context) -> Response:
        return Response.text("hello")

    registry.add("interrupt", interrupt)
    registry.add("exit", exit_)
    registry.add("panic", panic)
    registry.add("hello", hello)
    registry.add("job-background", lambda request, context: None)
    return registry


class BrokenJournal(MemoryJournal):
    """A journal that fails as a full disk might, naming a path the client must never see."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def accepted(self, record: InvocationRecord) -> None:
        raise self.error


@contextlib.contextmanager
def _wsgiref(app: Any) -> Iterator[str]:
    """A real wsgiref server on a free loopback port, serving from a thread of its own."""

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, name="test-wsgiref", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _get(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def _assert_generic_500(status: int, headers: dict[str, str], body: str) -> str:
    request_id = headers["x-nf-request-id"]
    assert status == 500
    assert body == f"Internal Server Error - Request ID: {request_id}\n"
    return request_id


@pytest.mark.server
@pytest.mark.realtime
@pytest.mark.parametrize("name", ["interrupt", "exit", "panic"])
def test_a_base_exception_from_a_handler_is_a_500_with_a_request_id(name: str) -> None:
    """Over a real wsgiref server, KeyboardInterrupt, SystemExit or a custom BaseException from a
    handler answers our 500 with x-nf-request-id, and the server goes on serving."""
    wsgi = WSGIApp(App(_raising_registry(), executor=ThreadExecutor(max_workers=2)), grace=5)
    try:
        with _wsgiref(wsgi) as base:
            status, headers, body = _get(f"{base}/.netlify/functions/{name}")
            assert status == 500
            assert headers["x-nf-request-id"] in body
            assert "secret" not in body
            assert "Traceback" not in body
            assert _get(f"{base}/.netlify/functions/hello")[::2] == (200, "hello")
    finally:
        wsgi.close()


@pytest.mark.server
@pytest.mark.realtime
@pytest.mark.parametrize("error", [RuntimeError("disk full at /var/db/x"), Panic("/var/db/x")])
def test_what_escapes_the_app_itself_is_our_500(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """An App whose own journal raises answers our 500 (generic body, request id); the log
    line names the request id and holds the traceback."""
    executor = ThreadExecutor(max_workers=1, journal=BrokenJournal(error))
    wsgi = WSGIApp(App(_raising_registry(), executor=executor), grace=5)
    try:
        with caplog.at_level(logging.ERROR, logger="bgfunctions.wsgi"), _wsgiref(wsgi) as base:
            request_id = _assert_generic_500(*_get(f"{base}{BG}", data=b"x"))
            assert _get(f"{base}/.netlify/functions/hello")[0] == 200
    finally:
        wsgi.close()
    logged = [r for r in caplog.records if r.name == "bgfunctions.wsgi"]
    assert len(logged) == 1
    assert request_id in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is error


def test_ctrl_c_in_the_main_thread_still_stops_the_server() -> None:
    """A KeyboardInterrupt that escapes the App or the fallback in the main thread, under
    Python's own SIGINT handler, goes on: it may be the operator's Ctrl-C. One a handler
    raises is that attempt's error, a 500 (docs/executors.md)."""

    def fallback(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise KeyboardInterrupt  # lands outside any handler, as a real Ctrl-C may

    wsgi = WSGIApp(App(_raising_registry(), executor=InlineExecutor()), fallback=fallback)
    try:
        failed = _client(wsgi).get("/.netlify/functions/interrupt")
        assert failed.status_code == 500
        assert failed.headers["x-nf-request-id"] in failed.text
        assert "secret-token" not in failed.text
        with pytest.raises(KeyboardInterrupt):
            _client(wsgi).get("/not-a-function")
    finally:
        wsgi.close()


def test_every_response_of_the_adapter_carries_a_request_id(inline: App) -> None:
    """The adapter's own answers (413, 400) and the App's 404 carry x-nf-request-id too."""
    wsgi = WSGIApp(inline)
    for path, length, expected in (
        (BG, "101", "413"),
        (BG, "abc", "400"),
        ("/.netlify/functions/nothing-here", "", "404"),
    ):
        sent: list[tuple[str, dict[str, str]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            sent.append((status, dict(headers)))  # noqa: B023 - used before the loop moves on

        environ = _environ(path, CONTENT_LENGTH=length, **{"wsgi.input": _Untouchable()})
        list(wsgi(environ, start_response))
        assert sent[0][0].startswith(expected)
        assert sent[0][1]["x-nf-request-id"]


def test_a_path_too_long_to_route_is_414_and_skips_the_fallback(inline: App) -> None:
    """The 414 for a path past MAX_PATH_LENGTH is answered, not handed to the fallback app."""

    def fallback(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"from the fallback"]

    client = _client(WSGIApp(inline, fallback=fallback))
    assert client.get("/plain").text == "from the fallback"
    response = client.get("/" + "a/" * (MAX_PATH_LENGTH // 2 + 1))
    assert response.status_code == 414
    assert response.text.startswith("URI Too Long - Request ID: ")
    assert response.headers["x-nf-request-id"] in response.text
