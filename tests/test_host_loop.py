"""ThreadExecutor's host mode: async background attempts on the server's own event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bgfunctions import (
    App,
    ConfigError,
    Context,
    Limits,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    SQLiteJournal,
    State,
    ThreadExecutor,
    VirtualClock,
)
from bgfunctions.asgi import ASGIApp

pytestmark = pytest.mark.realtime

Where = dict[str, Any]


def _app(where: Where, **executor: Any) -> App:
    """Functions that note where they ran, block, wait, or raise."""
    registry = Registry()
    release = asyncio.Event()
    where["release"] = release

    async def note(request: Request, context: Context) -> None:
        where["thread"] = threading.get_ident()
        where["loop"] = asyncio.get_running_loop()

    async def block(request: Request, context: Context) -> None:
        time.sleep(0.15)  # blocks the loop it runs on: the point of the test

    async def hang(request: Request, context: Context) -> None:
        await asyncio.Event().wait()

    async def interrupt(request: Request, context: Context) -> None:
        raise KeyboardInterrupt

    async def self_cancel(request: Request, context: Context) -> None:
        await asyncio.sleep(0)
        raise asyncio.CancelledError("its own")

    async def swallow(request: Request, context: Context) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            where["swallowed"] = where.get("swallowed", 0) + 1
        await asyncio.sleep(0)  # the attempt's task goes on awaiting: no cancellation left

    registry.add("note-background", note)
    registry.add("block-background", block)
    registry.add("hang-background", hang)
    registry.add("interrupt-background", interrupt)
    registry.add("self-cancel-background", self_cancel)
    registry.add("swallow-background", swallow)
    return App(
        registry,
        executor=ThreadExecutor(max_workers=2, blocking_threshold=0.1, **executor),
        retry=RetryPolicy(delays=(0.05,)),
        limits=Limits(background_timeout=0.2),
    )


async def _post(asgi: ASGIApp, name: str) -> str:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(f"/.netlify/functions/{name}")
    assert response.status_code == 202, response.text
    return response.headers["x-nf-request-id"]


def _serve(asgi: ASGIApp, scenario: Callable[[ASGIApp], Awaitable[Any]]) -> Any:
    """Run ``scenario`` inside the app's lifespan, on one asyncio loop (the "server's")."""

    async def main() -> Any:
        async with asgi.lifespan():
            return await asyncio.wait_for(scenario(asgi), 10)

    return asyncio.run(main())


def test_async_attempts_run_on_the_servers_own_loop() -> None:
    """With the default ``loop="host"`` and a memory journal, an async background handler runs
    on the loop and thread the ASGI app is served on."""
    where: Where = {}
    app = _app(where)

    async def scenario(asgi: ASGIApp) -> tuple[int, asyncio.AbstractEventLoop]:
        rid = await _post(asgi, "note-background")
        record = await app.executor.get(rid).wait_async()
        assert record.state is State.SUCCEEDED
        return threading.get_ident(), asyncio.get_running_loop()

    thread, loop = _serve(ASGIApp(app), scenario)
    assert where["thread"] == thread
    assert where["loop"] is loop


@pytest.mark.parametrize("case", ["thread-mode", "durable-journal"])
def test_isolated_loop_when_asked_or_when_commits_would_block(case: str, tmp_path: Path) -> None:
    """``loop="thread"`` keeps async attempts on the executor's own loop thread, and so does a
    durable journal, whose claims and ends are blocking commits."""
    where: Where = {}
    if case == "thread-mode":
        app = _app(where, loop="thread")
    else:
        app = _app(where, journal=SQLiteJournal(tmp_path / "journal.db"))

    async def scenario(asgi: ASGIApp) -> int:
        rid = await _post(asgi, "note-background")
        record = await app.executor.get(rid).wait_async()
        assert record.state is State.SUCCEEDED
        return threading.get_ident()

    thread = _serve(ASGIApp(app), scenario)
    assert where["thread"] != thread


def test_a_loop_on_another_clock_is_not_used() -> None:
    """An executor on a virtual clock does not run its attempts on a real-time server loop."""
    executor = ThreadExecutor(clock=VirtualClock())

    async def hand_over() -> None:
        executor.serve_on(asyncio.get_running_loop())

    asyncio.run(hand_over())
    assert executor.host_loop is None


def test_blocking_handler_on_the_host_loop_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that holds the server's loop past ``blocking_threshold`` is named in a warning
    with the function's name; the attempt itself still succeeds."""
    where: Where = {}
    app = _app(where)

    async def scenario(asgi: ASGIApp) -> None:
        rid = await _post(asgi, "block-background")
        record = await app.executor.get(rid).wait_async()
        assert record.state is State.SUCCEEDED

    with caplog.at_level(logging.WARNING, logger="bgfunctions.executor"):
        _serve(ASGIApp(app), scenario)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "async handler of function 'block-background' blocked the event loop" in m for m in messages
    ), messages


def test_time_outs_and_retries_on_the_host_loop() -> None:
    """A hung handler times out at its limit on the server's loop and is retried on schedule:
    two attempts, both timed out, then failed."""
    where: Where = {}
    app = _app(where)

    async def scenario(asgi: ASGIApp) -> Any:
        rid = await _post(asgi, "hang-background")
        return await app.executor.get(rid).wait_async()

    record = _serve(ASGIApp(app), scenario)
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT, Outcome.TIMED_OUT]
    first, second = record.attempts
    assert first.ended_at is not None
    assert second.started_at >= first.ended_at + 0.05  # the retry waited its delay


def test_base_exception_from_a_handler_leaves_the_server_loop_working() -> None:
    """A handler's KeyboardInterrupt on the server's loop is its attempt's error, retried; the
    loop goes on serving and running attempts."""
    where: Where = {}
    app = _app(where)

    async def scenario(asgi: ASGIApp) -> Any:
        rid = await _post(asgi, "interrupt-background")
        record = await app.executor.get(rid).wait_async()
        later = await _post(asgi, "note-background")
        assert (await app.executor.get(later).wait_async()).state is State.SUCCEEDED
        return record

    record = _serve(ASGIApp(app), scenario)
    assert record.state is State.FAILED
    assert [(a.outcome, a.error_type) for a in record.attempts] == [
        (Outcome.ERROR, "KeyboardInterrupt")
    ] * 2


def test_a_handlers_own_cancelled_error_on_the_host_loop_is_its_error() -> None:
    """An attempt runs in one task on the server's loop: a ``CancelledError`` the handler
    raises itself (nobody cancelled the task) is its attempt's error, retried on schedule;
    the loop goes on serving."""
    where: Where = {}
    app = _app(where)

    async def scenario(asgi: ASGIApp) -> Any:
        rid = await _post(asgi, "self-cancel-background")
        record = await app.executor.get(rid).wait_async()
        later = await _post(asgi, "note-background")
        assert (await app.executor.get(later).wait_async()).state is State.SUCCEEDED
        return record

    record = _serve(ASGIApp(app), scenario)
    assert record.state is State.FAILED
    assert [(a.outcome, a.error_type, a.error_message) for a in record.attempts] == [
        (Outcome.ERROR, "asyncio.exceptions.CancelledError", "its own")
    ] * 2


def test_a_handler_that_swallows_its_deadline_has_timed_out() -> None:
    """A handler that catches the deadline's cancellation and returns later has still timed
    out (at its deadline); the next attempt's task is not cancelled by what was left."""
    where: Where = {}
    app = _app(where)

    async def scenario(asgi: ASGIApp) -> Any:
        rid = await _post(asgi, "swallow-background")
        return await app.executor.get(rid).wait_async()

    record = _serve(ASGIApp(app), scenario)
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT] * 2
    assert where["swallowed"] == 2
    for attempt in record.attempts:
        assert attempt.ended_at is not None
        assert attempt.ended_at == pytest.approx(attempt.started_at + 0.2, abs=1e-6)


def test_cancel_while_running_on_the_host_loop() -> None:
    """``cancel`` stops an attempt running on the server's loop; it is recorded cancelled."""
    where: Where = {}
    app = _app(where)
    app.limits = Limits(background_timeout=30)

    async def scenario(asgi: ASGIApp) -> Any:
        rid = await _post(asgi, "hang-background")
        while app.executor.get(rid).state is not State.RUNNING:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(app.executor.cancel, rid)
        return await app.executor.get(rid).wait_async()

    record = _serve(ASGIApp(app), scenario)
    assert record.state is State.CANCELLED


def test_shutdown_interrupts_what_outlives_the_grace() -> None:
    """At lifespan shutdown an attempt still running on the server's loop after ``grace`` is
    cancelled and recorded interrupted, not left running."""
    where: Where = {}
    app = _app(where)
    app.limits = Limits(background_timeout=30)
    rid: list[str] = []

    async def scenario(asgi: ASGIApp) -> None:
        rid.append(await _post(asgi, "hang-background"))
        while app.executor.get(rid[0]).state is not State.RUNNING:
            await asyncio.sleep(0.005)

    _serve(ASGIApp(app, grace=0.1), scenario)
    record = app.invocations.get(rid[0])
    assert record is not None
    assert record.state is not State.RUNNING
    assert [a.outcome for a in record.attempts] == [Outcome.INTERRUPTED]


@pytest.mark.parametrize("loop", ["host", "thread"])
def test_async_attempts_running_count_against_max_pending(loop: str) -> None:
    """Async attempts hold no worker thread, so max_pending bounds them: with max_pending=3,
    three hanging async attempts running on either loop make the fourth request a 503 (with
    Retry-After, and no row); once one ends, a new request is accepted again."""
    where: Where = {}
    app = _app(where, loop=loop, max_pending=3)
    app.limits = Limits(background_timeout=30)

    async def scenario(asgi: ASGIApp) -> tuple[int, str, str, int]:
        held = [await _post(asgi, "hang-background") for _ in range(3)]
        for rid in held:
            while app.executor.get(rid).state is not State.RUNNING:
                await asyncio.sleep(0.005)
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            refused = await http.post("/.netlify/functions/hang-background")
        await asyncio.to_thread(app.executor.cancel, held[0])
        await app.executor.get(held[0]).wait_async()
        while app.executor.stats().running > 2:  # its task may end just after its record
            await asyncio.sleep(0.005)
        again = await _post(asgi, "note-background")
        record = await app.executor.get(again).wait_async()
        rows = len(app.invocations.list())
        return refused.status_code, refused.headers["retry-after"], record.state.value, rows

    status, retry_after, state, rows = _serve(ASGIApp(app, grace=0.1), scenario)
    assert (status, state, rows) == (503, "succeeded", 4)
    assert int(retry_after) >= 1


def test_loop_must_be_host_or_thread() -> None:
    """A wrong ``loop`` is refused with what was expected and what was found."""
    with pytest.raises(
        ConfigError, match=r"ThreadExecutor.loop: expected 'host' or 'thread'; got 'x'"
    ):
        ThreadExecutor(loop="x")


def test_on_uvicorn_with_uvloop_the_attempt_runs_on_the_servers_loop() -> None:
    """Served by real uvicorn on uvloop and httptools, an async background handler runs on the
    server's own uvloop loop, in the server's thread; shutdown stops it cleanly."""
    import socket

    import uvicorn

    where: Where = {}
    app = _app(where)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        ASGIApp(app),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            assert thread.is_alive(), "uvicorn exited during startup"
            time.sleep(0.01)
        response = httpx.post(f"http://127.0.0.1:{port}/.netlify/functions/note-background")
        assert response.status_code == 202
        record = app.executor.get(response.headers["x-nf-request-id"]).wait(10)
        assert record.state is State.SUCCEEDED
    finally:
        server.should_exit = True
        thread.join(15)
    assert not thread.is_alive()
    assert where["thread"] == thread.ident
    assert type(where["loop"]).__module__.startswith("uvloop")
