"""The ASGI adapter: through httpx's ASGI transport, mounted in Starlette and FastAPI, and
behind a real uvicorn server."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

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
    RetryPolicy,
    State,
    SystemClock,
    ThreadExecutor,
)
from bgfunctions.asgi import ASGIApp

BG = "/.netlify/functions/job-background"
Seen = list[tuple[Request, Context]]
Message = MutableMapping[str, Any]


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


def _call(asgi: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request through httpx's ASGI transport (client address 203.0.113.9)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi, client=("203.0.113.9", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, url, **kwargs)

    return asyncio.run(go())


def _bgthreads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("bgfunctions")]


# -- through httpx.ASGITransport ------------------------------------------------------------------


def test_background_answers_202_empty_with_request_id(inline: App, seen: Seen) -> None:
    """A background request gets an empty 202 with x-nf-request-id, and runs later."""
    response = _call(ASGIApp(inline), "POST", BG, content=b'{"a":1}')
    assert response.status_code == 202
    assert response.content == b""
    assert "content-type" not in response.headers
    request_id = response.headers["x-nf-request-id"]
    assert seen == []
    assert isinstance(inline.executor, InlineExecutor)
    inline.executor.drain()
    record = inline.invocations.get(request_id)
    assert record is not None
    assert record.state is State.SUCCEEDED
    assert seen[0][0].body == b'{"a":1}'


def test_sync_function_answers_its_response(inline: App) -> None:
    """A sync function's response comes back with its status, body and request id."""
    response = _call(ASGIApp(inline), "POST", "/.netlify/functions/echo", content="hi")
    assert response.status_code == 200
    assert response.json() == {
        "path": "/.netlify/functions/echo",
        "ip": "203.0.113.9",
        "body": "hi",
    }
    assert response.headers["x-nf-request-id"]


def test_unknown_function_404_invalid_name_400_custom_path(inline: App) -> None:
    """Unknown functions get 404, invalid names 400, and custom paths reach their function."""
    asgi = ASGIApp(inline)
    assert _call(asgi, "GET", "/.netlify/functions/nope").status_code == 404
    assert _call(asgi, "GET", "/nowhere").status_code == 404
    # An unknown name is 404 whatever its characters (issue 11, item 1); only an existing
    # function with a bad name is 400 (tests/test_routing.py).
    assert _call(asgi, "GET", "/.netlify/functions/bad.name").status_code == 404
    response = _call(asgi, "GET", "/items/42")
    assert (response.status_code, response.text) == (200, "item 42")


def test_background_body_over_limit_is_413_and_not_queued(inline: App) -> None:
    """A background body over the limit gets 413 and nothing is accepted."""
    response = _call(ASGIApp(inline), "POST", BG, content=b"x" * 101)
    assert response.status_code == 413
    assert inline.invocations.list() == []
    assert _call(ASGIApp(inline), "POST", BG, content=b"x" * 100).status_code == 202


def _scope(
    path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("10.0.0.1", 1),
        "server": None,
    }
    scope.update(extra)
    return scope


class _Stream:
    """A receive() that serves ``count`` chunks of ``size`` bytes and counts what was pulled."""

    def __init__(self, count: int, size: int, *, disconnect_after: int | None = None) -> None:
        self.count, self.size, self.pulled = count, size, 0
        self.disconnect_after = disconnect_after
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.disconnect_after is not None and self.pulled >= self.disconnect_after:
            return {"type": "http.disconnect"}
        self.pulled += 1
        more = self.pulled < self.count
        return {"type": "http.request", "body": b"y" * self.size, "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return int(starts[0]["status"]) if starts else None


def test_streaming_body_over_limit_refused_before_the_rest_is_read(inline: App) -> None:
    """A streamed background body gets 413 once it passes the limit; the rest stays unread."""
    stream = _Stream(count=50, size=30)  # 1500 bytes offered, limit 100
    asyncio.run(ASGIApp(inline)(_scope(BG), stream.receive, stream.send))
    assert stream.status() == 413
    assert stream.pulled == 4  # 120 bytes > 100: the 5th..50th chunks are never pulled
    assert inline.invocations.list() == []


def test_declared_content_length_over_limit_refused_unread(inline: App) -> None:
    """A Content-Length over the limit gets 413 without pulling any of the body."""
    stream = _Stream(count=1, size=500)
    scope = _scope(BG, headers=[(b"content-length", b"500")])
    asyncio.run(ASGIApp(inline)(scope, stream.receive, stream.send))
    assert (stream.status(), stream.pulled) == (413, 0)


def test_client_disconnect_mid_body_accepts_nothing(inline: App) -> None:
    """A client that disconnects before its body is complete gets no invocation queued."""
    stream = _Stream(count=3, size=10, disconnect_after=1)
    asyncio.run(ASGIApp(inline)(_scope(BG), stream.receive, stream.send))
    assert stream.status() is None
    assert inline.invocations.list() == []


def test_raw_path_escapes_survive_and_unicode_is_not_double_encoded(
    inline: App, seen: Seen
) -> None:
    """Request.path is the decoded path and raw_path keeps the client's escapes (%2F, é)."""
    stream = _Stream(count=1, size=0)
    raw = b"/items/a%2Fb%C3%A9"
    scope = _scope("/items/a/bé", method="GET", raw_path=raw)
    registry = Registry()

    def catch(request: Request, context: Context) -> str:
        seen.append((request, context))
        return "ok"

    registry.add("catch", catch, config={"path": "/items/*"})
    app = App(registry, executor=InlineExecutor())
    asyncio.run(ASGIApp(app)(scope, stream.receive, stream.send))
    app.shutdown()
    assert stream.status() == 200
    request = seen[0][0]
    assert request.raw_path == "/items/a%2Fb%C3%A9"
    assert request.path == "/items/a/bé"


# -- mounted in Starlette and FastAPI ------------------------------------------------------------


def test_mounted_in_starlette_sees_path_below_mount(inline: App, seen: Seen) -> None:
    """Under Mount("/fn") functions see the path below the mount; other routes still work."""
    functions = ASGIApp(inline)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    site = Starlette(routes=[Route("/", home), Mount("/fn", app=functions)])
    response = _call(site, "POST", "/fn/.netlify/functions/echo?x=1", content="b")
    assert response.status_code == 200
    assert response.json()["path"] == "/.netlify/functions/echo"
    assert seen[-1][0].url == "/.netlify/functions/echo?x=1"
    assert _call(site, "GET", "/fn/items/7").text == "item 7"
    assert _call(site, "POST", f"/fn{BG}").status_code == 202
    assert _call(site, "GET", "/").text == "home"
    assert _call(site, "GET", "/fn/nothing-here").status_code == 404


def test_mounted_in_fastapi(inline: App) -> None:
    """FastAPI's app.mount("/fn", ...) serves functions beside FastAPI's own routes."""
    api = FastAPI()

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"ok": "yes"}

    api.mount("/fn", ASGIApp(inline))
    assert _call(api, "GET", "/health").json() == {"ok": "yes"}
    assert _call(api, "GET", "/fn/items/9").text == "item 9"
    response = _call(api, "POST", f"/fn{BG}", content=b"z")
    assert (response.status_code, response.content) == (202, b"")


# -- lifespan and lazy start ---------------------------------------------------------------------


def _thread_app(seen: Seen, **kwargs: Any) -> App:
    return App(_registry(seen), executor=ThreadExecutor(max_workers=2), **kwargs)


@pytest.mark.realtime
def test_lifespan_starts_and_stops_the_executor(seen: Seen) -> None:
    """lifespan.startup starts the executor's threads; lifespan.shutdown stops them."""
    before = set(_bgthreads())
    asgi = ASGIApp(_thread_app(seen), grace=5)
    assert set(_bgthreads()) == before  # creating it starts nothing
    sent: list[Message] = []
    steps = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    seen_during: list[set[str]] = []

    async def receive() -> Message:
        message = next(steps)
        if message["type"] == "lifespan.shutdown":
            seen_during.append(set(_bgthreads()))
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(asgi({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen_during[0] - before  # a bgfunctions thread ran between startup and shutdown
    assert set(_bgthreads()) <= before


@pytest.mark.realtime
def test_starlette_lifespan_context_starts_and_stops(seen: Seen) -> None:
    """Starlette(lifespan=functions.lifespan) starts the executor with the app and stops it."""
    before = set(_bgthreads())
    functions = ASGIApp(_thread_app(seen), grace=5)
    site = Starlette(routes=[Mount("/fn", app=functions)], lifespan=functions.lifespan)

    async def run() -> set[str]:
        async with site.router.lifespan_context(site):
            return set(_bgthreads())

    during = asyncio.run(run())
    assert during - before
    assert set(_bgthreads()) <= before


@pytest.mark.realtime
def test_first_request_starts_the_executor(seen: Seen) -> None:
    """No thread starts when the adapter is built; the first request starts the executor."""
    before = set(_bgthreads())
    app = _thread_app(seen)
    asgi = ASGIApp(app)
    assert set(_bgthreads()) == before
    assert _call(asgi, "POST", BG).status_code == 202
    assert set(_bgthreads()) - before
    app.shutdown(grace=5)


@pytest.mark.realtime
def test_graceful_shutdown_finishes_running_and_keeps_postponed_attempts() -> None:
    """Shutdown lets a running attempt finish within grace; a retry scheduled for later keeps
    its attempt count (tolerance: the running attempt takes ~0.2 s of a 10 s grace)."""
    registry = Registry()
    started = threading.Event()

    def slow(request: Request, context: Context) -> None:
        started.set()
        threading.Event().wait(0.2)

    def flaky(request: Request, context: Context) -> None:
        raise RuntimeError("fails once, retried 1 h later")

    registry.add("slow-background", slow)
    registry.add("flaky-background", flaky)
    app = App(registry, executor=ThreadExecutor(max_workers=2), retry=RetryPolicy(delays=(3600.0,)))
    asgi = ASGIApp(app, grace=10)
    flaky_id = _call(asgi, "POST", "/.netlify/functions/flaky-background").headers[
        "x-nf-request-id"
    ]
    slow_id = _call(asgi, "POST", "/.netlify/functions/slow-background").headers["x-nf-request-id"]
    assert started.wait(5)
    clock = SystemClock()
    deadline = clock.monotonic() + 5
    while (r := app.invocations.get(flaky_id)) is not None and r.state is not State.RETRY_SCHEDULED:
        assert clock.monotonic() < deadline, r
        clock.sleep(0.01)

    async def stop() -> None:
        async with asgi.lifespan():
            pass

    asyncio.run(stop())
    slow_record = app.invocations.get(slow_id)
    assert slow_record is not None
    assert slow_record.state is State.SUCCEEDED
    flaky_record = app.invocations.get(flaky_id)
    assert flaky_record is not None
    assert flaky_record.state is State.RETRY_SCHEDULED
    assert len(flaky_record.attempts) == 1


# -- a real uvicorn server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(app: Callable[..., Awaitable[None]]) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    clock = SystemClock()
    deadline = clock.monotonic() + 10
    while not server.started:
        assert clock.monotonic() < deadline, "uvicorn did not start within 10 s"
        assert thread.is_alive(), "uvicorn exited during startup"
        clock.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive()


@pytest.mark.server
@pytest.mark.realtime
def test_real_uvicorn_server(seen: Seen) -> None:
    """Over real sockets: 202 for background, the sync response, the client address in
    context.ip, and threads stopped when the server stops (tolerance: 10 s to start)."""
    before = set(_bgthreads())
    functions = ASGIApp(_thread_app(seen, limits=Limits(background_payload=1000)), grace=5)
    site = Starlette(routes=[Mount("/fn", app=functions)], lifespan=functions.lifespan)
    for base in _serve(site):
        with httpx.Client(base_url=base, timeout=10) as client:
            response = client.post("/fn/.netlify/functions/echo", content="hello")
            assert response.status_code == 200
            assert response.json() == {
                "path": "/.netlify/functions/echo",
                "ip": "127.0.0.1",
                "body": "hello",
            }
            accepted = client.post(f"/fn{BG}", content=b"q")
            assert (accepted.status_code, accepted.content) == (202, b"")
            request_id = accepted.headers["x-nf-request-id"]
            assert functions.app.get(request_id).wait(10).state is State.SUCCEEDED
            big = client.post(f"/fn{BG}", content=b"x" * 5000)
            assert big.status_code == 413
    assert seen[0][1].ip == "127.0.0.1"
    assert set(_bgthreads()) <= before


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


def _assert_generic_500(response: httpx.Response) -> str:
    request_id = response.headers["x-nf-request-id"]
    assert response.status_code == 500
    assert request_id in response.text
    for leak in ("secret", "Traceback", "/var/db", "Panic", "Interrupt", "SystemExit"):
        assert leak not in response.text
    return request_id


@pytest.mark.server
@pytest.mark.realtime
@pytest.mark.parametrize("name", ["interrupt", "exit", "panic"])
def test_a_base_exception_from_a_handler_is_a_500_with_a_request_id_over_uvicorn(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """KeyboardInterrupt, SystemExit or a custom BaseException from a handler answers a 500
    with x-nf-request-id and a generic body, and the server goes on serving."""
    functions = ASGIApp(App(_raising_registry(), executor=ThreadExecutor(max_workers=2)), grace=5)
    for base in _serve(functions):
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(2):
                _assert_generic_500(client.get(f"/.netlify/functions/{name}"))
            hello = client.get("/.netlify/functions/hello")
            assert (hello.status_code, hello.text) == (200, "hello")
            assert hello.headers["x-nf-request-id"]
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]


@pytest.mark.server
@pytest.mark.realtime
@pytest.mark.parametrize("error", [RuntimeError("disk full at /var/db/x"), Panic("/var/db/x")])
def test_what_escapes_the_app_itself_is_our_500_over_uvicorn(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """An App whose own journal raises answers our 500: a generic body with the request id,
    which the log line names along with the traceback."""
    executor = ThreadExecutor(max_workers=1, journal=BrokenJournal(error))
    functions = ASGIApp(App(_raising_registry(), executor=executor), grace=5)
    with caplog.at_level(logging.ERROR, logger="bgfunctions.asgi"):
        for base in _serve(functions):
            with httpx.Client(base_url=base, timeout=10) as client:
                response = client.post(BG, content=b"x")
                assert response.text == (
                    f"Internal Server Error - Request ID: {_assert_generic_500(response)}\n"
                )
                assert client.get("/.netlify/functions/hello").status_code == 200
    request_id = response.headers["x-nf-request-id"]
    logged = [r for r in caplog.records if r.name == "bgfunctions.asgi"]
    assert len(logged) == 1
    assert request_id in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is error
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]


def test_every_response_of_the_adapter_carries_a_request_id(inline: App) -> None:
    """The adapter's own answers (413, 400) and the App's 404 carry x-nf-request-id too."""
    asgi = ASGIApp(inline)
    for response in (
        _call(asgi, "POST", BG, content=b"x" * 500),
        _call(asgi, "GET", "/.netlify/functions/nothing-here"),
        _call(asgi, "GET", "/.netlify/functions/.secret"),
    ):
        assert response.status_code in (400, 404, 413)
        assert response.headers["x-nf-request-id"]


def test_a_cancelled_request_is_not_answered(inline: App) -> None:
    """When the server cancels a request's task, the cancellation goes on; no 500 is sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(60)  # the client's body never comes
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    async def go() -> None:
        task = asyncio.ensure_future(ASGIApp(inline)(_scope(BG), receive, send))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert sent == []


@pytest.mark.server
@pytest.mark.realtime
def test_the_dev_server_answers_our_500_for_a_base_exception(tmp_path: Any) -> None:
    """The dev server's ASGI app (what `bgfunctions serve` runs on uvicorn) answers a handler's
    custom BaseException with a 500 that carries x-nf-request-id and no traceback."""
    import io
    import textwrap

    from bgfunctions.devserver import DevServer, ServeOptions

    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "panic.py").write_text(
        textwrap.dedent(
            """
            class Panic(BaseException):
                pass

            def handler(request, context):
                raise Panic("secret-token-1234")
            """
        )
    )
    server = DevServer(tmp_path, ServeOptions(reload=False), out=io.StringIO())
    for base in _serve(server.asgi):
        with httpx.Client(base_url=base, timeout=10) as client:
            response = client.get("/.netlify/functions/panic")
            assert response.status_code == 500
            assert response.headers["x-nf-request-id"] in response.text
            assert "secret" not in response.text
            assert "Traceback" not in response.text
    server.app.journal.close()
