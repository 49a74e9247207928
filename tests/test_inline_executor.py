"""The inline executor: nothing runs until virtual time moves; schedules in virtual seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from bgfunctions import (
    App,
    Config,
    Context,
    ExecutorShutdownError,
    InlineExecutor,
    InvocationRecord,
    MemoryJournal,
    Outcome,
    Registry,
    Request,
    State,
    VirtualClock,
)

BG = Config(background=True)


class Harness:
    """An App on an InlineExecutor whose handlers append the virtual time they started at."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.executor = InlineExecutor(clock=self.clock)
        self.registry = Registry()
        self.app = App(self.registry, executor=self.executor)
        self.t0 = self.clock.now()
        self.calls: list[float] = []

    def since(self, when: float | None) -> float:
        assert when is not None
        return when - self.t0

    def mark(self) -> None:
        self.calls.append(self.since(self.clock.now()))


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.app.shutdown()


def test_submit_runs_nothing(h: Harness) -> None:
    """Accepting an invocation runs no handler code and moves no time."""

    def handler(request: Request, context: Context) -> None:
        h.mark()

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    assert h.calls == []
    assert invocation.state is State.ACCEPTED
    assert h.clock.now() == h.t0
    assert h.executor.stats().pending == 1


def test_advance_runs_what_is_due(h: Harness) -> None:
    """Advancing the clock runs the first attempt, then each retry when its time comes."""

    def handler(request: Request, context: Context) -> None:
        h.mark()
        raise RuntimeError("boom")

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    h.clock.advance(0)
    assert h.calls == [0]
    assert invocation.state is State.RETRY_SCHEDULED
    h.clock.advance(59)
    assert h.calls == [0]
    h.clock.advance(1)
    assert h.calls == [0, 60]
    h.clock.advance(119.5)
    assert h.calls == [0, 60]
    h.clock.advance(0.5)
    assert (h.calls, invocation.state) == ([0, 60, 180], State.FAILED)
    assert h.clock.now() == h.t0 + 180


def test_drain_runs_everything(h: Harness) -> None:
    """drain() jumps virtual time until nothing is pending: three attempts at 0, 60 and 180 s."""

    def handler(request: Request, context: Context) -> None:
        h.mark()
        raise ValueError("nope")

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    h.executor.drain()
    assert h.calls == [0, 60, 180]
    record = invocation.record
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR] * 3
    assert {a.error_type for a in record.attempts} == {"ValueError"}
    assert h.executor.stats().pending == 0


def test_async_handler_sleeps_on_virtual_time(h: Harness) -> None:
    """asyncio.sleep, wait_for and loop.call_later in an async handler all run in virtual time."""
    seen: list[tuple[str, float]] = []

    async def handler(request: Request, context: Context) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(30, lambda: seen.append(("call_later", h.since(h.clock.now()))))
        await asyncio.sleep(10)
        seen.append(("sleep", h.since(h.clock.now())))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(1000), timeout=50)
        seen.append(("wait_for", h.since(h.clock.now())))

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    h.executor.drain()
    assert seen == [("sleep", 10), ("call_later", 30), ("wait_for", 60)]
    assert invocation.state is State.SUCCEEDED
    assert h.since(invocation.record.finished_at) == 60


def test_drain_async_from_an_async_test(h: Harness) -> None:
    """`await executor.drain_async()` runs virtual time from inside another event loop."""

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(300)
        h.mark()

    h.registry.add("job", handler, config=BG)

    async def main() -> State:
        invocation = h.app.enqueue("job")
        await h.executor.drain_async()
        return invocation.state

    assert asyncio.run(main()) is State.SUCCEEDED
    assert h.calls == [300]


def test_sync_sleep_past_deadline_times_out_at_the_deadline(h: Harness) -> None:
    """A sync handler's context.sleep() past its deadline ends the attempt timed out at 900 s."""

    def handler(request: Request, context: Context) -> None:
        h.mark()
        context.sleep(100)
        context.sleep(2000)
        h.calls.append(-1)  # never reached

    h.registry.add("job", handler, config=BG, retry=None)
    invocation = h.app.enqueue("job")
    h.clock.advance(900)
    first = invocation.record.attempts[0]
    assert first.outcome is Outcome.TIMED_OUT
    assert h.since(first.started_at) == 0
    assert h.since(first.ended_at) == 900
    assert -1 not in h.calls


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_three_timeouts_take_exactly_the_schedule(h: Harness, kind: str) -> None:
    """A handler sleeping 1,200 s times out at 900 each time; it ends at 900+60+900+120+900."""

    async def async_handler(request: Request, context: Context) -> None:
        h.mark()
        await asyncio.sleep(1200)

    def sync_handler(request: Request, context: Context) -> None:
        h.mark()
        context.sleep(1200)

    h.registry.add("job", async_handler if kind == "async" else sync_handler, config=BG)
    invocation = h.app.enqueue("job")
    h.executor.drain()
    record = invocation.record
    assert record.state is State.FAILED
    assert [(h.since(a.started_at), h.since(a.ended_at)) for a in record.attempts] == [
        (0, 900),
        (960, 1860),
        (1980, 2880),
    ]
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT] * 3
    assert h.calls == [0, 960, 1980]
    assert h.since(record.finished_at) == 900 + 60 + 900 + 120 + 900
    assert h.since(h.clock.now()) == 2880


def test_success_on_second_attempt(h: Harness) -> None:
    """A handler that fails once succeeds at 60 s, and the context numbers its attempts."""
    attempts: list[int] = []

    def handler(request: Request, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("first try fails")

    h.registry.add("job", handler, config=BG)
    record = h.app.enqueue("job").wait()
    assert attempts == [1, 2]
    assert record.state is State.SUCCEEDED
    assert [h.since(a.started_at) for a in record.attempts] == [0, 60]


def test_wait_drains_until_done(h: Harness) -> None:
    """Invocation.wait() runs virtual time until the invocation finished; returns its record."""

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(500)

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    record = invocation.wait()
    assert invocation.done()
    assert record.state is State.SUCCEEDED
    assert h.since(record.finished_at) == 500
    assert h.app.invocations.get(invocation.request_id) == record


def test_wait_with_timeout_raises_when_not_done(h: Harness) -> None:
    """wait(timeout) gives up after that many virtual seconds with TimeoutError."""

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(500)

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    with pytest.raises(TimeoutError, match=invocation.request_id):
        invocation.wait(timeout=100)
    assert invocation.state is State.RUNNING
    assert invocation.wait().state is State.SUCCEEDED


def test_sync_call_runs_at_once(h: Harness) -> None:
    """A synchronous function answers through the App right away, on the virtual clock."""

    def handler(request: Request, context: Context) -> str:
        return "hi"

    h.registry.add("hello", handler)
    response = h.app.handle(Request("GET", "/.netlify/functions/hello"))
    assert response.status == 200
    assert response.body == b"hi"


def test_shutdown_is_clean(h: Harness) -> None:
    """shutdown() cancels what is scheduled, refuses new work, and is idempotent."""
    started: list[int] = []

    async def handler(request: Request, context: Context) -> None:
        started.append(context.attempt)
        await asyncio.sleep(10_000)

    h.registry.add("job", handler, config=BG)
    invocation = h.app.enqueue("job")
    h.clock.advance(10)
    assert invocation.state is State.RUNNING
    h.app.shutdown()
    h.app.shutdown()
    assert h.executor.loop.is_closed()
    with pytest.raises(ExecutorShutdownError):
        h.app.enqueue("job")
    response = h.app.handle(Request("POST", "/.netlify/functions/job"))
    assert response.status == 503
    assert started == [1]


def test_needs_a_virtual_clock() -> None:
    """An InlineExecutor refuses a real clock, naming the executor to use instead."""
    from bgfunctions import SystemClock

    with pytest.raises(TypeError, match="ThreadExecutor"):
        InlineExecutor(clock=SystemClock())  # type: ignore[arg-type]


def test_each_attempt_gets_its_own_context(h: Harness) -> None:
    """A retry sees the request's data again, but not the cookies or state of the attempt
    before it: its own number, deadline and a fresh logger."""
    seen: list[tuple[int, float | None, str | None, str | None, dict[str, object]]] = []

    def flaky(request: Request, context: Context) -> None:
        seen.append(
            (
                context.attempt,
                h.since(context.deadline),
                context.cookies.get("theme"),
                context.cookies.get("set-here"),
                dict(context.log.extra or {}),
            )
        )
        context.cookies.set("set-here", str(context.attempt))
        if context.attempt < 3:
            raise RuntimeError("not yet")

    h.registry.add("flaky", flaky, config=BG)
    request = Request("POST", "/.netlify/functions/flaky", headers={"cookie": "theme=dark"})
    handle = h.app.enqueue("flaky", request)
    h.executor.drain()
    assert handle.state is State.SUCCEEDED
    assert [(n, deadline, theme, mine) for n, deadline, theme, mine, _ in seen] == [
        (1, 900.0, "dark", None),
        (2, 960.0, "dark", None),
        (3, 1080.0, "dark", None),
    ]
    assert [extra["attempt"] for *_, extra in seen] == [1, 2, 3]


def test_failed_attempts_are_logged_with_their_traceback(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO with the traceback while retries are left, WARNING when none are; the records
    carry the invocation as InvocationFilter's fields."""

    def broken(request: Request, context: Context) -> None:
        raise ValueError(f"bad input {context.attempt}")

    h.registry.add("broken", broken, config=BG)
    with caplog.at_level(logging.INFO, logger="bgfunctions.executor"):
        handle = h.app.enqueue("broken")
        h.executor.drain()
    assert handle.state is State.FAILED
    failures = [r for r in caplog.records if r.name == "bgfunctions.executor"]
    assert [(r.levelno, r.bg_attempt) for r in failures] == [  # type: ignore[attr-defined]
        (logging.INFO, 1),
        (logging.INFO, 2),
        (logging.WARNING, 3),
    ]
    assert all(r.bg_request_id == handle.request_id for r in failures)  # type: ignore[attr-defined]
    assert "ValueError: bad input 1; retry in 60 s" in failures[0].getMessage()
    assert "no attempts left" in failures[2].getMessage()
    for record in failures:
        assert record.exc_info is not None
        assert record.exc_info[0] is ValueError


class _FailsOnce(MemoryJournal):
    """A journal whose first attempt_ended raises: a bug or a broken disk, not a client error."""

    failed = False

    def attempt_ended(self, record: InvocationRecord) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("the journal broke once")
        super().attempt_ended(record)


def test_an_error_in_one_attempt_does_not_drop_the_others_due_with_it() -> None:
    """Attempts due at the same instant still run when one of them fails inside the
    executor; that one is reported by the loop's exception handler."""
    executor = InlineExecutor(journal=_FailsOnce())
    registry = Registry()
    registry.add("job", lambda request, context: None, config=BG)
    app = App(registry, executor=executor)
    reported: list[object] = []
    executor.loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        handles = [app.enqueue("job") for _ in range(3)]
        executor.drain()
        assert [h.state for h in handles] == [State.RUNNING, State.SUCCEEDED, State.SUCCEEDED]
        assert len(reported) == 1
    finally:
        app.shutdown()
