"""The ThreadExecutor on the real clock.

Every test here is ``realtime``. Limits are short (0.2 s timeouts, 0.05/0.1 s retry delays) and
every wait is ``Invocation.wait(10)`` or ``Event.wait(10)``: 10 s is the tolerance for work that
takes milliseconds, so only a hang fails a test. Retry gaps must be at least the configured delay
(minus 10 ms for the wall/monotonic clock difference) and at most the delay plus 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from bgfunctions import (
    App,
    Context,
    Event,
    EventKind,
    InvocationRecord,
    Limits,
    MemoryJournal,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    State,
    ThreadExecutor,
)

pytestmark = pytest.mark.realtime

WAIT = 10.0
SHORT = Limits(background_timeout=0.2, sync_timeout=0.2)


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.shutdown()


def _app(registry: Registry, apps: list[App], executor: ThreadExecutor, **kw: object) -> App:
    app = App(registry, executor=executor, **kw)  # type: ignore[arg-type]
    apps.append(app)
    return app


def _boom(request: Request, context: Context) -> None:
    raise RuntimeError("boom")


def test_success(registry: Registry, apps: list[App]) -> None:
    """A sync background handler runs on a worker thread and succeeds."""
    threads: list[str] = []
    registry.add("job-background", lambda req, ctx: threads.append(threading.current_thread().name))
    app = _app(registry, apps, ThreadExecutor())
    response = app.handle(Request("POST", "/.netlify/functions/job-background"))
    assert response.status == 202
    record = app.get(response.headers["x-nf-request-id"]).wait(WAIT)
    assert record.state is State.SUCCEEDED
    assert threads
    assert threads[0].startswith("bgfunctions-worker")


def test_retries_on_schedule(registry: Registry, apps: list[App]) -> None:
    """A failing handler is retried after each delay, counted from the previous attempt's end."""
    delays = (0.05, 0.1)
    registry.add("job-background", _boom)
    app = _app(registry, apps, ThreadExecutor(), retry=RetryPolicy(delays=delays))
    record = app.enqueue("job-background").wait(WAIT)
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR] * 3
    for before, after, delay in zip(record.attempts, record.attempts[1:], delays, strict=False):
        assert before.ended_at is not None
        gap = after.started_at - before.ended_at
        assert delay - 0.01 <= gap <= delay + 2.0


def test_async_handlers_run_on_its_loop(registry: Registry, apps: list[App]) -> None:
    """Async handlers of every invocation run on the executor's one loop thread."""
    seen: list[tuple[str, asyncio.AbstractEventLoop]] = []

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(0)
        seen.append((threading.current_thread().name, asyncio.get_running_loop()))

    registry.add("job-background", handler)
    app = _app(registry, apps, ThreadExecutor())
    one, two = app.enqueue("job-background"), app.enqueue("job-background")
    assert one.wait(WAIT).state is State.SUCCEEDED
    assert two.wait(WAIT).state is State.SUCCEEDED
    assert len(seen) == 2
    assert seen[0][0] == seen[1][0] == "bgfunctions-loop"
    assert seen[0][1] is seen[1][1]


def test_async_handler_timed_out_at_deadline(registry: Registry, apps: list[App]) -> None:
    """An async handler past background_timeout is cancelled and recorded timed out."""
    cancelled = threading.Event()

    async def handler(request: Request, context: Context) -> None:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry.add("job-background", handler)
    app = _app(registry, apps, ThreadExecutor(), limits=SHORT, retry=RetryPolicy(delays=()))
    record = app.enqueue("job-background").wait(WAIT)
    (attempt,) = record.attempts
    assert attempt.outcome is Outcome.TIMED_OUT
    assert attempt.duration == pytest.approx(0.2)
    assert cancelled.is_set()


def test_hung_sync_handler_is_abandoned(
    registry: Registry, apps: list[App], caplog: pytest.LogCaptureFixture
) -> None:
    """A hung sync handler times out at its deadline, is abandoned, and its result ignored."""
    release = threading.Event()
    hung: list[threading.Thread] = []
    other_ran = threading.Event()

    def hang(request: Request, context: Context) -> str:
        hung.append(threading.current_thread())
        release.wait(WAIT)
        return "late"

    registry.add("hang-background", hang)
    registry.add("quick-background", lambda req, ctx: other_ran.set())
    executor = ThreadExecutor(max_workers=1)
    app = _app(registry, apps, executor, limits=SHORT, retry=RetryPolicy(delays=()))
    try:
        with caplog.at_level(logging.WARNING, logger="bgfunctions"):
            record = app.enqueue("hang-background").wait(WAIT)
        (attempt,) = record.attempts
        assert record.state is State.FAILED
        assert attempt.outcome is Outcome.TIMED_OUT
        assert attempt.duration == pytest.approx(0.2)
        assert any(
            "'hang-background'" in r.getMessage() and r.levelno == logging.WARNING
            for r in caplog.records
        )
        stats = executor.stats()
        assert stats.abandoned_threads == 1
        assert stats.workers == 0
        # The abandoned thread no longer counts against max_workers=1.
        quick = app.enqueue("quick-background").wait(WAIT)
        assert quick.state is State.SUCCEEDED
        assert other_ran.is_set()
    finally:
        release.set()
    hung[0].join(WAIT)
    assert not hung[0].is_alive()
    assert executor.stats().abandoned_threads == 0
    late = app.invocations.get(record.request_id)
    assert late == record  # the late "late" changed nothing


def test_every_hung_attempt_times_out_at_its_own_limit(registry: Registry, apps: list[App]) -> None:
    """Attempts under two limits, some quick and some hung, each end at their own deadline."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def hang(request: Request, context: Context) -> None:
        started.release()
        release.wait(WAIT)

    registry.add("hang-background", hang)
    registry.add("slow-hang-background", hang, limits=Limits(background_timeout=0.4))
    registry.add("quick-background", lambda req, ctx: None)
    executor = ThreadExecutor(max_workers=6)
    app = _app(registry, apps, executor, limits=SHORT, retry=RetryPolicy(delays=()))
    try:
        quick = app.enqueue("quick-background")
        hung = []
        for name in ("hang-background", "slow-hang-background") * 2:
            hung.append(app.enqueue(name))
            assert started.acquire(timeout=WAIT)  # one after the other: staggered deadlines
        assert quick.wait(WAIT).state is State.SUCCEEDED
        records = [handle.wait(WAIT) for handle in hung]
    finally:
        release.set()
    for record in records:
        (attempt,) = record.attempts
        assert (record.state, attempt.outcome) == (State.FAILED, Outcome.TIMED_OUT)
        limit = 0.2 if record.function == "hang-background" else 0.4
        assert attempt.duration == pytest.approx(limit)


class _FailsOnceOnTimeout(MemoryJournal):
    """A journal whose first record of a timed-out attempt raises: a bug, not a client error."""

    failed = False

    def attempt_ended(self, record: InvocationRecord) -> None:
        attempt = record.last_attempt
        if not self.failed and attempt is not None and attempt.outcome is Outcome.TIMED_OUT:
            self.failed = True
            raise RuntimeError("the journal broke once")
        super().attempt_ended(record)


def test_an_error_ending_one_timed_out_attempt_leaves_the_deadlines_working(
    registry: Registry, apps: list[App]
) -> None:
    """When ending one timed-out attempt fails inside the executor, the attempts of the same
    limit started with it and after it still time out at their deadlines."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def hang(request: Request, context: Context) -> None:
        started.release()
        release.wait(WAIT)

    registry.add("hang-background", hang)
    failed = threading.Semaphore(0)

    def on_event(event: Event) -> None:
        if event.kind is EventKind.FAILED:
            failed.release()

    executor = ThreadExecutor(max_workers=8, journal=_FailsOnceOnTimeout())
    app = _app(
        registry, apps, executor, limits=SHORT, retry=RetryPolicy(delays=()), on_event=on_event
    )
    try:
        first = [app.enqueue("hang-background") for _ in range(3)]
        for _ in first:
            assert started.acquire(timeout=WAIT)
        # Two end as timed out; the third one's end could not be recorded.
        assert failed.acquire(timeout=WAIT)
        assert failed.acquire(timeout=WAIT)
        later = app.enqueue("hang-background")
        assert started.acquire(timeout=WAIT)
        assert later.wait(WAIT).attempts[0].outcome is Outcome.TIMED_OUT
    finally:
        release.set()
    assert sorted(h.state.value for h in first) == ["failed", "failed", "running"]


def test_max_pending_gives_503(registry: Registry, apps: list[App]) -> None:
    """Past max_pending the App answers 503 with Retry-After and records nothing."""
    started = threading.Event()
    release = threading.Event()

    def block(request: Request, context: Context) -> None:
        started.set()
        release.wait(WAIT)

    registry.add("job-background", block)
    app = _app(registry, apps, ThreadExecutor(max_workers=1, max_pending=1))
    url = "/.netlify/functions/job-background"
    try:
        first = app.handle(Request("POST", url))
        assert first.status == 202
        assert started.wait(WAIT)
        second = app.handle(Request("POST", url))
        assert second.status == 202
        third = app.handle(Request("POST", url))
        assert third.status == 503
        assert int(third.headers["retry-after"]) >= 1
        recorded = {r.request_id for r in app.invocations.list()}
        assert len(recorded) == 2
        assert third.headers["x-nf-request-id"] not in recorded  # an id for the log, no row
    finally:
        release.set()
    for response in (first, second):
        assert app.get(response.headers["x-nf-request-id"]).wait(WAIT).state is State.SUCCEEDED


def test_shutdown_leaves_no_threads(registry: Registry) -> None:
    """shutdown(wait=True) joins every thread it started: workers, loop, timers, call pool."""
    before = set(threading.enumerate())

    async def async_job(request: Request, context: Context) -> None:
        await asyncio.sleep(0.01)

    registry.add("sync-background", lambda req, ctx: None)
    registry.add("async-background", async_job)
    registry.add("failing-background", _boom)
    registry.add("f", lambda req, ctx: "hi")
    executor = ThreadExecutor(blocking_threshold=0.5)
    app = App(registry, executor=executor, retry=RetryPolicy(delays=(0.05,)))
    handles = [
        app.enqueue(n) for n in ("sync-background", "async-background", "failing-background")
    ]
    assert app.handle(Request("GET", "/.netlify/functions/f")).body == b"hi"
    for handle in handles:
        handle.wait(WAIT)
    assert len(set(threading.enumerate()) - before) > 0
    app.shutdown(wait=True)
    left = [t.name for t in set(threading.enumerate()) - before]
    assert left == []


def test_blocking_async_handler_is_reported(
    registry: Registry, apps: list[App], caplog: pytest.LogCaptureFixture
) -> None:
    """An async handler that blocks its loop is reported by a warning naming the function."""

    async def blocker(request: Request, context: Context) -> None:
        time.sleep(0.3)  # the bug under test: a blocking call inside async def

    registry.add("blocker-background", blocker)
    app = _app(registry, apps, ThreadExecutor(blocking_threshold=0.05))
    with caplog.at_level(logging.WARNING, logger="bgfunctions"):
        record = app.enqueue("blocker-background").wait(WAIT)
    assert record.state is State.SUCCEEDED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'blocker-background'" in m and "blocked" in m for m in warnings)


def test_sync_function_call_and_timeout(registry: Registry, apps: list[App]) -> None:
    """Sync functions answer from the pool; one past sync_timeout gets a plain 500."""
    release = threading.Event()

    def slow(request: Request, context: Context) -> str:
        release.wait(WAIT)
        return "too late"

    async def aslow(request: Request, context: Context) -> str:
        await asyncio.sleep(WAIT)
        return "too late"

    registry.add("fast", lambda req, ctx: {"ok": True})
    registry.add("slow", slow)
    registry.add("aslow", aslow)
    app = _app(registry, apps, ThreadExecutor(), limits=SHORT)
    try:
        fast = app.handle(Request("GET", "/.netlify/functions/fast"))
        assert fast.status == 200
        assert b"ok" in fast.body
        for name in ("slow", "aslow"):
            response = app.handle(Request("GET", f"/.netlify/functions/{name}"))
            assert response.status == 500
            assert b"too late" not in response.body

        async def via_async() -> int:
            return (await app.handle_async(Request("GET", "/.netlify/functions/slow"))).status

        assert asyncio.run(via_async()) == 500
    finally:
        release.set()


def test_shutdown_executor_answers_503(registry: Registry) -> None:
    """After shutdown, background requests get 503 and nothing is recorded."""
    registry.add("job-background", lambda req, ctx: None)
    app = App(registry, executor=ThreadExecutor())
    app.shutdown()
    response = app.handle(Request("POST", "/.netlify/functions/job-background"))
    assert response.status == 503
    assert "retry-after" in response.headers
    assert app.invocations.list() == []


def test_on_failure_from_worker_threads(registry: Registry, apps: list[App]) -> None:
    """on_failure is called once per invocation that used up its attempts, on real threads."""
    failed: list[InvocationRecord] = []
    registry.add("job-background", _boom)
    app = _app(
        registry,
        apps,
        ThreadExecutor(),
        retry=RetryPolicy(delays=(0.01,)),
        on_failure=failed.append,
    )
    handles = [app.enqueue("job-background") for _ in range(5)]
    for handle in handles:
        assert handle.wait(WAIT).state is State.FAILED
    assert sorted(r.request_id for r in failed) == sorted(h.request_id for h in handles)


def test_wait_returns_after_journal_and_hooks(registry: Registry, apps: list[App]) -> None:
    """When wait() returns, on_failure has run and the journal holds the final record."""
    failed: list[str] = []

    def slow_hook(record: InvocationRecord) -> None:
        threading.Event().wait(0.05)  # a slow dead-letter write
        failed.append(record.request_id)

    registry.add("job-background", _boom)
    app = _app(registry, apps, ThreadExecutor(), retry=RetryPolicy(delays=()), on_failure=slow_hook)
    handle = app.enqueue("job-background")
    record = handle.wait(WAIT)
    assert failed == [handle.request_id]
    assert app.invocations.get(handle.request_id) == record


def test_shutdown_past_grace_records_interrupted(registry: Registry) -> None:
    """An async attempt still running when shutdown's grace ends is recorded interrupted."""
    started = threading.Event()

    async def slow(request: Request, context: Context) -> None:
        started.set()
        await asyncio.sleep(WAIT)

    registry.add("job-background", slow)
    app = App(registry, executor=ThreadExecutor())
    handle = app.enqueue("job-background")
    assert started.wait(WAIT)
    app.shutdown(wait=True, grace=0.05)
    record = app.invocations.get(handle.request_id)
    assert record is not None
    assert record.state is State.RETRY_SCHEDULED  # unfinished: recovery runs it again
    (attempt,) = record.attempts
    assert attempt.outcome is Outcome.INTERRUPTED


def test_handlers_that_wait_on_io_get_more_workers(registry: Registry, apps: list[App]) -> None:
    """Sync background handlers that wait (20 ms of I/O each) and finish steadily still get
    more workers, up to max_workers: busy workers on an idle CPU are waiting, not computing.
    (Before, a worker that kept finishing attempts never got company, and 80 such handlers ran
    one at a time.)"""
    inside = 0
    peak = 0
    lock = threading.Lock()

    def waits(request: Request, context: Context) -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.02)  # the handler's own I/O (an API call), not a test's wait
        with lock:
            inside -= 1

    registry.add("io-background", waits)
    app = _app(registry, apps, ThreadExecutor(max_workers=4))
    handles = [app.enqueue("io-background") for _ in range(80)]
    assert all(h.wait(WAIT).state is State.SUCCEEDED for h in handles)
    assert peak == 4
