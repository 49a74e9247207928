"""Handlers that misbehave: hung sync calls, BaseExceptions, blocking calls in async handlers.

A handler may hang, raise ``KeyboardInterrupt``/``SystemExit``/its own ``CancelledError``/a
custom ``BaseException``, or block its event loop; the executor records a failed attempt, keeps
its threads and loops, and every other request is still answered.

The inline tests run on virtual time. The thread-executor tests are ``realtime``: limits are
short (0.05-0.2 s) and every wait has a 10 s tolerance, so only a hang fails them. A hung
handler waits on a ``threading.Event`` that the test sets at its end, so no thread outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bgfunctions import (
    App,
    Context,
    InlineExecutor,
    Limits,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    State,
    SystemClock,
    ThreadExecutor,
)
from bgfunctions.asgi import ASGIApp
from test_asgi import _serve
from test_cli_serve import Server, write

WAIT = 10.0


class Custom(BaseException):
    """A BaseException of the handler's own."""


def _exit() -> BaseException:
    return SystemExit(3)


# What a handler raises, and the error type its attempt records.
KINDS: dict[str, tuple[Callable[[], BaseException], str]] = {
    "keyboard-interrupt": (KeyboardInterrupt, "KeyboardInterrupt"),
    "system-exit": (_exit, "SystemExit"),
    "cancelled": (asyncio.CancelledError, "asyncio.exceptions.CancelledError"),
    "generator-exit": (GeneratorExit, "GeneratorExit"),
    "custom": (Custom, f"{Custom.__module__}.Custom"),
}


def _raiser(kind: str, is_async: bool) -> Callable[[Request, Context], Any]:
    make = KINDS[kind][0]

    def handler(request: Request, context: Context) -> None:
        raise make()

    async def ahandler(request: Request, context: Context) -> None:
        await asyncio.sleep(0)
        raise make()

    return ahandler if is_async else handler


async def _aok(request: Request, context: Context) -> str:
    return "async ok"


def _registry(kind: str, is_async: bool) -> Registry:
    registry = Registry()
    registry.add("raise-background", _raiser(kind, is_async))
    registry.add("raise", _raiser(kind, is_async))
    registry.add("ok-background", lambda request, context: None)
    registry.add("aok-background", _aok)
    registry.add("hello", lambda request, context: "Hello")
    registry.add("ahello", _aok)
    return registry


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.shutdown()


def _answers_500_with_its_request_id(app: App, path: str) -> None:
    for response in (
        app.handle(Request("GET", path)),
        asyncio.run(app.handle_async(Request("GET", path))),
    ):
        assert response.status == 500
        assert response.headers["x-nf-request-id"]
        assert b"Traceback" not in response.body


# -- item 3: a BaseException is a failed attempt ------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inline_records_a_base_exception_as_an_error_and_retries_it(
    kind: str, is_async: bool, apps: list[App]
) -> None:
    """Inline: a BaseException is an error attempt with its type, retried at t=0, 60, 180."""
    executor = InlineExecutor()
    app = App(_registry(kind, is_async), executor=executor)
    apps.append(app)
    start = app.clock.now()
    invocation = app.enqueue("raise-background")
    executor.drain()
    record = invocation.record
    assert record.state is State.FAILED
    expected = KINDS[kind][1]
    assert [(a.outcome, a.error_type) for a in record.attempts] == [(Outcome.ERROR, expected)] * 3
    assert all(a.error_message for a in record.attempts)
    assert [a.started_at - start for a in record.attempts] == [0, 60, 180]
    _answers_500_with_its_request_id(app, "/.netlify/functions/raise")
    assert app.handle(Request("GET", "/.netlify/functions/hello")).status == 200
    ok = app.enqueue("aok-background")
    executor.drain()
    assert ok.state is State.SUCCEEDED


@pytest.mark.realtime
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_thread_executor_records_a_base_exception_and_keeps_its_threads(
    kind: str, is_async: bool, apps: list[App]
) -> None:
    """Threads: a BaseException is an error attempt at once, retried; the loop thread and the
    worker threads live on, and a sync function raising it answers 500 with its request id."""
    app = App(
        _registry(kind, is_async),
        executor=ThreadExecutor(max_workers=1),
        retry=RetryPolicy(delays=(0.01, 0.01)),
    )
    apps.append(app)
    record = app.enqueue("raise-background").wait(WAIT)
    assert record.state is State.FAILED
    expected = KINDS[kind][1]
    assert [(a.outcome, a.error_type) for a in record.attempts] == [(Outcome.ERROR, expected)] * 3
    assert app.enqueue("ok-background").wait(WAIT).state is State.SUCCEEDED
    assert app.enqueue("aok-background").wait(WAIT).state is State.SUCCEEDED
    _answers_500_with_its_request_id(app, "/.netlify/functions/raise")
    for name in ("hello", "ahello"):
        assert app.handle(Request("GET", f"/.netlify/functions/{name}")).status == 200


def test_a_handlers_own_cancelled_error_is_not_a_time_out() -> None:
    """CancelledError raised by a handler is an error; a cancellation at the deadline stays
    timed_out, and one asked for by cancel() is cancelled."""

    async def raises(request: Request, context: Context) -> None:
        raise asyncio.CancelledError("the handler's own")

    async def sleeps(request: Request, context: Context) -> None:
        await asyncio.sleep(1200)

    registry = Registry()
    registry.add("raises-background", raises)
    registry.add("sleeps-background", sleeps)
    executor = InlineExecutor()
    app = App(registry, executor=executor, retry=RetryPolicy(delays=()))
    try:
        own = app.enqueue("raises-background")
        slow = app.enqueue("sleeps-background")
        stopped = app.enqueue("sleeps-background")
        executor.run_until(app.clock.now() + 10)
        app.cancel(stopped.request_id)
        executor.drain()
    finally:
        app.shutdown()
    assert [a.outcome for a in own.attempts] == [Outcome.ERROR]
    assert own.attempts[0].error_type == "asyncio.exceptions.CancelledError"
    assert [a.outcome for a in slow.attempts] == [Outcome.TIMED_OUT]
    assert slow.attempts[0].duration == 900
    assert stopped.state is State.CANCELLED


# -- item 2: hung sync calls give their threads back ---------------------------------------------


@pytest.mark.realtime
def test_sync_functions_answer_after_20_hung_calls(apps: list[App]) -> None:
    """Of 20 calls to a function that hangs, the first 4 (half the 8 call threads) run past
    sync_timeout (each a 500) and keep their abandoned threads; the next are refused at once
    (503, Retry-After, no thread taken) until one returns. /hello answers 200 throughout; once
    the hung calls return, the function is called again."""
    release = threading.Event()
    entered: list[int] = []

    def hang(request: Request, context: Context) -> str:
        entered.append(1)
        release.wait(WAIT)
        return "too late"

    registry = Registry()
    registry.add("hang", hang)
    registry.add("hello", lambda request, context: "Hello")
    executor = ThreadExecutor(max_workers=2)
    app = App(registry, executor=executor, limits=Limits(sync_timeout=0.1))
    apps.append(app)

    async def hung_async(count: int) -> list[int]:
        calls = [app.handle_async(Request("GET", "/.netlify/functions/hang")) for _ in range(count)]
        return [r.status for r in await asyncio.gather(*calls)]

    clock = SystemClock()
    try:
        statuses = [
            app.handle(Request("GET", "/.netlify/functions/hang")).status for _ in range(10)
        ]
        statuses += asyncio.run(hung_async(10))
        assert statuses == [500] * 4 + [503] * 16
        refused = app.handle(Request("GET", "/.netlify/functions/hang"))
        assert int(refused.headers["retry-after"]) >= 1
        assert b"hang" not in refused.body  # the reason goes to the log, not to the client
        hello = app.handle(Request("GET", "/.netlify/functions/hello"))
        assert (hello.status, hello.body) == (200, b"Hello")
        assert (
            asyncio.run(app.handle_async(Request("GET", "/.netlify/functions/hello"))).status == 200
        )
        # A call that timed out while still queued never runs; one that started is abandoned
        # (its thread may take a moment to enter the handler once marked running).
        deadline = clock.monotonic() + WAIT
        while executor.stats().abandoned_threads != len(entered) and clock.monotonic() < deadline:
            release.wait(0.01)
        assert executor.stats().abandoned_threads == len(entered) == 4
    finally:
        release.set()
    deadline = clock.monotonic() + WAIT
    while executor.stats().abandoned_threads and clock.monotonic() < deadline:
        release.wait(0.01)  # the released threads end on their own
    assert executor.stats().abandoned_threads == 0
    again = app.handle(Request("GET", "/.netlify/functions/hang"))
    assert (again.status, again.body) == (200, b"too late")


def test_abandoned_call_threads_are_bounded(apps: list[App]) -> None:
    """Handlers that always hang cannot grow the threads without bound: 12 such functions, 4
    hung calls each at most (then 503), would hold 48 threads; once the 8 call threads and
    4 x 8 replacements are all abandoned, no more start and later calls answer 500 from the
    queue; once the hung calls return, sync functions answer again."""
    release = threading.Event()
    entered: list[int] = []

    def hang(request: Request, context: Context) -> str:
        entered.append(1)
        release.wait(WAIT)
        return "too late"

    registry = Registry()
    for n in range(12):
        registry.add(f"hang{n}", hang)
    registry.add("hello", lambda request, context: "Hello")
    executor = ThreadExecutor(max_workers=2)
    app = App(registry, executor=executor, limits=Limits(sync_timeout=0.05))
    apps.append(app)
    before = threading.active_count()
    clock = SystemClock()
    try:
        statuses = [
            app.handle(Request("GET", f"/.netlify/functions/hang{n}")).status
            for n in range(12)
            for _ in range(5)
        ]
        assert set(statuses) == {500, 503}
        assert statuses[:5] == [500] * 4 + [503]  # the first function: its own bound
        # 8 call threads and 32 replacements at most: the other calls never ran.
        assert len(entered) <= 8 + 32
        assert executor.stats().abandoned_threads <= 8 + 32
        assert threading.active_count() - before <= 8 + 32 + 2  # + the executor's own
    finally:
        release.set()
    deadline = clock.monotonic() + WAIT
    while executor.stats().abandoned_threads and clock.monotonic() < deadline:
        release.wait(0.01)  # the released threads end on their own
    hello = app.handle(Request("GET", "/.netlify/functions/hello"))
    assert (hello.status, hello.body) == (200, b"Hello")


@pytest.mark.realtime
def test_a_call_whose_thread_cannot_start_is_a_500_and_never_runs() -> None:
    """When the OS refuses a thread for a sync call, that call answers 500 and never runs
    later; the calls after it are served as usual, and shutdown does not wait for the thread
    that never started."""
    ran: list[int] = []

    def hello(request: Request, context: Context) -> str:
        ran.append(1)
        return "Hello"

    registry = Registry()
    registry.add("hello", hello)
    app = App(registry, executor=ThreadExecutor(max_workers=2))
    app.start()
    previous = threading.stack_size(2**46)  # no such stack: "can't start new thread"
    try:
        refused = app.handle(Request("GET", "/.netlify/functions/hello"))
    finally:
        threading.stack_size(previous)
    assert refused.status == 500
    statuses = [app.handle(Request("GET", "/.netlify/functions/hello")).status for _ in range(5)]
    assert statuses == [200] * 5
    assert len(ran) == 5
    stopping = threading.Thread(target=app.shutdown, daemon=True)
    stopping.start()
    stopping.join(WAIT)  # a bound for a hang, not a measurement
    assert not stopping.is_alive()


@pytest.mark.realtime
def test_background_work_waits_out_a_worker_thread_the_os_refuses() -> None:
    """When the OS refuses a worker thread, the accepted invocation waits in the queue and runs
    once a thread can start; shutdown does not wait for the thread that never started."""
    registry = Registry()
    registry.add("job-background", lambda request, context: None)
    app = App(registry, executor=ThreadExecutor(max_workers=1))
    app.start()
    previous = threading.stack_size(2**46)  # no such stack: "can't start new thread"
    try:
        invocation = app.enqueue("job-background")
    finally:
        threading.stack_size(previous)
    assert invocation.wait(WAIT).state is State.SUCCEEDED
    stopping = threading.Thread(target=app.shutdown, daemon=True)
    stopping.start()
    stopping.join(WAIT)  # a bound for a hang, not a measurement
    assert not stopping.is_alive()


@pytest.mark.realtime
def test_shutdown_does_not_wait_for_a_hung_sync_call() -> None:
    """shutdown(wait=True) during a hung sync call returns once the call's caller gave up on it
    (its 500 at sync_timeout), not when the handler returns."""
    release, entered, returned = threading.Event(), threading.Event(), threading.Event()

    def hang(request: Request, context: Context) -> str:
        entered.set()
        release.wait(WAIT)
        returned.set()
        return "too late"

    registry = Registry()
    registry.add("hang", hang)
    app = App(registry, executor=ThreadExecutor(), limits=Limits(sync_timeout=0.2))
    statuses: list[int] = []
    caller = threading.Thread(
        target=lambda: statuses.append(
            app.handle(Request("GET", "/.netlify/functions/hang")).status
        )
    )
    try:
        caller.start()
        assert entered.wait(WAIT)
        app.shutdown(wait=True)
        stopped_first = not returned.is_set()
    finally:
        release.set()
        caller.join(WAIT)
    assert stopped_first
    assert statuses == [500]


@pytest.mark.realtime
@pytest.mark.server
def test_sync_functions_answer_after_20_hung_calls_over_http() -> None:
    """On real uvicorn: 20 concurrent hung calls each get a 500 (timed out) or a 503 (refused
    once 4 hung) with a request id, then /hello answers 200."""
    release = threading.Event()

    def hang(request: Request, context: Context) -> str:
        release.wait(WAIT)
        return "too late"

    registry = Registry()
    registry.add("hang", hang)
    registry.add("hello", lambda request, context: "Hello")
    app = App(registry, executor=ThreadExecutor(max_workers=2), limits=Limits(sync_timeout=0.1))

    async def hung(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=WAIT) as client:
            calls = [client.get("/.netlify/functions/hang") for _ in range(20)]
            return await asyncio.gather(*calls)

    try:
        for base in _serve(ASGIApp(app, grace=0)):
            responses = asyncio.run(hung(base))
            # 500 when it timed out; 503 when it came once 4 others hung (its own bound)
            assert {r.status_code for r in responses} <= {500, 503}
            assert 500 in {r.status_code for r in responses}
            assert all(r.headers["x-nf-request-id"] for r in responses)
            hello = httpx.get(f"{base}/.netlify/functions/hello", timeout=WAIT)
            assert (hello.status_code, hello.text) == (200, "Hello")
            release.set()
    finally:
        release.set()


# -- item 4: an async handler that blocks its loop -----------------------------------------------


def _blocking_registry(
    entered: threading.Event, release: threading.Event
) -> tuple[Registry, threading.Event]:
    """``block``, an async function that blocks in a call until ``release``; the second event
    is set once it returned."""
    returned = threading.Event()

    async def block(request: Request, context: Context) -> str:
        entered.set()
        release.wait(WAIT)  # the bug under test: a blocking call inside async def
        returned.set()
        return "too late"

    registry = Registry()
    registry.add("block", block)
    registry.add("hello", lambda request, context: "Hello")
    registry.add("job-background", lambda request, context: None)
    registry.add("aok-background", _aok)
    return registry, returned


@pytest.mark.realtime
def test_a_blocking_async_sync_function_holds_neither_the_host_loop_nor_its_time_out(
    apps: list[App], caplog: pytest.LogCaptureFixture
) -> None:
    """An async sync function stuck in a blocking call: the host's loop answers other requests,
    the caller gets its 500 at sync_timeout, and a warning names the function."""
    entered, release = threading.Event(), threading.Event()
    registry, returned = _blocking_registry(entered, release)
    app = App(
        registry,
        executor=ThreadExecutor(blocking_threshold=0.05),
        limits=Limits(sync_timeout=0.2),
    )
    apps.append(app)

    async def scenario() -> tuple[int, int, int, bool]:
        blocked = asyncio.ensure_future(
            app.handle_async(Request("GET", "/.netlify/functions/block"))
        )
        assert await asyncio.to_thread(entered.wait, WAIT)
        hello = await app.handle_async(Request("GET", "/.netlify/functions/hello"))
        job = await app.handle_async(Request("POST", "/.netlify/functions/job-background"))
        answer = await blocked
        return hello.status, job.status, answer.status, returned.is_set()

    with caplog.at_level(logging.WARNING, logger="bgfunctions"):
        try:
            assert asyncio.run(scenario()) == (200, 202, 500, False)
        finally:
            release.set()
        # Runs on the executor's loop once the blocking call returned: its report is out by then.
        assert app.enqueue("aok-background").wait(WAIT).state is State.SUCCEEDED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'block'" in m and "blocked the event loop" in m for m in warnings)


@pytest.mark.realtime
@pytest.mark.server
def test_a_blocking_async_sync_function_holds_no_other_request_over_http() -> None:
    """On real uvicorn: while an async function blocks, /hello answers 200; the blocked request
    gets a 500 with its request id at sync_timeout, before the handler returns."""
    entered, release = threading.Event(), threading.Event()
    registry, returned = _blocking_registry(entered, release)
    app = App(registry, executor=ThreadExecutor(), limits=Limits(sync_timeout=0.2))
    try:
        for base in _serve(ASGIApp(app, grace=0)):
            with httpx.Client(base_url=base, timeout=WAIT) as client:
                answers: list[httpx.Response] = []

                def call_block(into: list[httpx.Response] = answers) -> None:
                    into.append(client.get("/.netlify/functions/block"))

                caller = threading.Thread(target=call_block)
                caller.start()
                assert entered.wait(WAIT)
                hello = client.get("/.netlify/functions/hello")
                assert (hello.status_code, hello.text) == (200, "Hello")
                caller.join(WAIT)
                assert [a.status_code for a in answers] == [500]
                assert answers[0].headers["x-nf-request-id"]
                assert not returned.is_set()
            release.set()
    finally:
        release.set()


# -- item 3 over HTTP: `bgfunctions serve` --------------------------------------------------------

SERVED = {
    "keyboard-interrupt": "raise KeyboardInterrupt",
    "system-exit": "sys.exit(3)",
    "cancelled": "raise asyncio.CancelledError()",
    "custom": "raise Custom()",
}


def _served_site(root: Path) -> Path:
    """A site whose functions raise each kind, as async and sync handlers, background or not."""
    write(root, "netlify/functions/hello.py", "def handler(request, context):\n    return 'hi'\n")
    for kind, statement in SERVED.items():
        for prefix, define in (("a", "async def"), ("s", "def")):
            source = (
                "import asyncio\nimport sys\n\n\nclass Custom(BaseException):\n    pass\n\n\n"
                f"{define} handler(request, context):\n    {statement}\n"
            )
            write(root, f"netlify/functions/{prefix}-{kind}.py", source)
            write(root, f"netlify/functions/{prefix}-{kind}-background.py", source)
    return root


@pytest.mark.server
@pytest.mark.realtime
@pytest.mark.parametrize(
    ("executor", "stop"),
    [("thread", signal.SIGINT), ("thread", signal.SIGTERM), ("process", signal.SIGINT)],
    ids=["thread-SIGINT", "thread-SIGTERM", "process-SIGINT"],
)
def test_serve_survives_base_exceptions_and_still_stops_on_a_signal(
    tmp_path: Path, executor: str, stop: signal.Signals
) -> None:
    """`bgfunctions serve`: each BaseException is a 500 with a request id (sync functions) or
    three error attempts with its type (background ones); the server answers on, and SIGINT
    or SIGTERM still stops it."""
    site = _served_site(tmp_path / "site")
    server = Server(site, "--retry-delays", "0.01,0.01", "--no-reload", "--executor", executor)
    try:
        server.wait_until_listening()
        with httpx.Client(base_url=server.base, timeout=WAIT) as client:
            for kind in SERVED:
                for prefix in ("a", "s"):
                    response = client.get(f"/.netlify/functions/{prefix}-{kind}")
                    assert response.status_code == 500, (prefix, kind)
                    assert response.headers["x-nf-request-id"]
                    assert "Traceback" not in response.text
                    accepted = client.post(f"/.netlify/functions/{prefix}-{kind}-background")
                    assert accepted.status_code == 202
                    rid = accepted.headers["x-nf-request-id"]
                    head = f"[{rid}] {prefix}-{kind}-background: "
                    server.wait_for_line(f"{head}failed after 3 attempt(s)".__eq__)
                    type_name = KINDS[kind][1].replace(f"{Custom.__module__}.", "")
                    errors = [
                        line
                        for line in server.lines
                        if line.startswith(head + "attempt ") and " error in " in line
                    ]
                    assert len(errors) == 3, server.lines
                    assert all(f"{type_name}: " in line for line in errors), errors
            hello = client.get("/.netlify/functions/hello")
            assert (hello.status_code, hello.text) == (200, "hi")
        assert server.process.poll() is None
    finally:
        status = server.stop(stop)
    # uvicorn shuts down gracefully, then re-raises the signal (or exits 0 after Ctrl-C).
    assert status in (0, -stop)


@pytest.mark.server
@pytest.mark.realtime
def test_sigterm_stops_serve_while_a_sync_call_hangs(tmp_path: Path) -> None:
    """`bgfunctions serve` stops on SIGTERM while a synchronous call hangs, without waiting
    out the call's --sync-timeout (here 600 s)."""
    site = tmp_path / "site"
    entered = tmp_path / "entered"
    write(
        site,
        "netlify/functions/hang.py",
        "import pathlib\nimport threading\n\n\ndef handler(request, context):\n"
        f"    pathlib.Path({str(entered)!r}).touch()\n    threading.Event().wait()\n",
    )
    server = Server(site, "--no-reload", "--sync-timeout", "600")
    caller = None
    try:
        server.wait_until_listening()

        def call() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{server.base}/.netlify/functions/hang", timeout=WAIT * 3)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        clock = SystemClock()
        deadline = clock.monotonic() + WAIT
        while not entered.exists() and clock.monotonic() < deadline:
            clock.sleep(0.01)  # polling for the call to be under way, not a schedule
        assert entered.exists()
    finally:
        status = server.stop(signal.SIGTERM)  # it kills the process after 15 s
        if caller is not None:
            caller.join(WAIT)
    assert status in (0, -signal.SIGTERM)
