"""Tests for bgfunctions.clock: the clocks and the virtual-time event loop."""

from __future__ import annotations

import asyncio
import gc
import math
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgfunctions.clock import (
    DEFAULT_START,
    Clock,
    ClockEventLoop,
    SystemClock,
    VirtualClock,
    run_until_idle,
    timed_steps,
)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a loop the way asyncio.run does, so that no executor thread outlives it."""
    if not loop.is_closed():
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def loop(clock: VirtualClock) -> Iterator[ClockEventLoop]:
    lp = clock.new_event_loop()
    yield lp
    close_loop(lp)


# -- the clocks ------------------------------------------------------------------------------


def test_virtual_clock_starts_at_the_fixed_epoch() -> None:
    """A new VirtualClock reads 2026-01-01T00:00:00Z and monotonic 0.0."""
    clock = VirtualClock()
    assert clock.now() == DEFAULT_START == 1767225600.0
    assert clock.monotonic() == 0.0
    assert VirtualClock(start=1000.0).now() == 1000.0


def test_now_and_monotonic_move_together(clock: VirtualClock) -> None:
    """advance() moves now() and monotonic() by the same amount."""
    clock.advance(90.5)
    assert clock.now() == DEFAULT_START + 90.5
    assert clock.monotonic() == 90.5
    clock.sleep(9.5)
    assert clock.monotonic() == 100.0


@pytest.mark.parametrize("bad", [-1.0, -0.001, math.nan])
def test_advance_refuses_negative_and_nan(clock: VirtualClock, bad: float) -> None:
    """advance() and sleep() refuse a negative or NaN duration with a message naming it."""
    with pytest.raises(ValueError, match=r"VirtualClock\.advance.*got") as info:
        clock.advance(bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match=r"VirtualClock\.sleep"):
        clock.sleep(bad)
    assert clock.monotonic() == 0.0


def test_virtual_clock_refuses_infinite_start() -> None:
    """The start must be a finite epoch."""
    with pytest.raises(ValueError, match="finite"):
        VirtualClock(start=math.inf)


def test_system_clock_reads_real_time() -> None:
    """SystemClock.now() is epoch time and monotonic() does not go backwards."""
    clock: Clock = SystemClock()
    assert clock.now() > DEFAULT_START - 10 * 365 * 86400
    first = clock.monotonic()
    assert clock.monotonic() >= first
    with pytest.raises(ValueError, match=r"SystemClock\.sleep"):
        clock.sleep(-1)


@pytest.mark.realtime
def test_system_clock_sleeps_for_real() -> None:
    """SystemClock.sleep blocks for about the time asked (tolerance: at least 0.05 s)."""
    clock = SystemClock()
    start = clock.monotonic()
    clock.sleep(0.05)
    assert clock.monotonic() - start >= 0.05


def test_system_clock_new_event_loop_is_plain_asyncio() -> None:
    """Without on_blocked, SystemClock.new_event_loop() is an ordinary asyncio loop."""
    loop = SystemClock().new_event_loop()
    try:
        assert not isinstance(loop, ClockEventLoop)
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        close_loop(loop)


def test_virtual_wait_with_autojump_times_out_at_once(clock: VirtualClock) -> None:
    """VirtualClock.wait with autojump advances by the timeout and returns False."""
    condition = threading.Condition()
    with condition:
        assert clock.wait(condition, 30.0) is False
    assert clock.monotonic() == 30.0


def test_virtual_wait_without_autojump_is_notified() -> None:
    """Without autojump, wait() returns True when another thread notifies."""
    clock = VirtualClock(autojump=False)
    condition = threading.Condition()
    flag: list[bool] = []

    def notify() -> None:
        with condition:
            flag.append(True)
            condition.notify_all()

    with condition:
        thread = threading.Thread(target=notify)
        thread.start()
        assert clock.wait(condition, 5.0) is True
    thread.join()
    assert flag == [True]
    assert clock.monotonic() == 0.0


def test_virtual_wait_without_autojump_times_out_when_advanced() -> None:
    """Without autojump, wait() returns False once another thread advances past the timeout."""
    clock = VirtualClock(autojump=False)
    condition = threading.Condition()

    def advance_once_waiting() -> None:
        with condition:  # acquired only once wait() has released it
            pass
        clock.advance(10.0)

    thread = threading.Thread(target=advance_once_waiting)
    with condition:
        thread.start()
        assert clock.wait(condition, 5.0) is False
    thread.join()


# -- virtual time in the loop ----------------------------------------------------------------


def test_loop_time_follows_the_clock(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """loop.time() is clock.monotonic(), and moves with advance()."""
    assert loop.time() == clock.monotonic() == 0.0
    clock.advance(42.0)
    assert loop.time() == 42.0
    assert loop.clock is clock


def test_asyncio_sleep_is_virtual(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """asyncio.sleep(3600) completes at exactly 3600 virtual seconds."""

    async def main() -> float:
        await asyncio.sleep(3600)
        return loop.time()

    assert loop.run_until_complete(main()) == 3600.0
    assert clock.now() == DEFAULT_START + 3600.0


def test_wait_for_times_out_at_exactly_900(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """wait_for(sleep(1200), 900) times out at exactly 900 virtual seconds."""

    async def main() -> float:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(1200), 900)
        return loop.time()

    assert loop.run_until_complete(main()) == 900.0
    assert clock.monotonic() == 900.0
    assert clock.now() == DEFAULT_START + 900.0


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_is_virtual(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """asyncio.timeout(60) cancels a long sleep at exactly 60 virtual seconds."""

    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(60):  # type: ignore[attr-defined,unused-ignore]
                await asyncio.sleep(10_000)
        return loop.time()

    assert loop.run_until_complete(main()) == 60.0


@pytest.mark.skipif(not hasattr(asyncio, "Runner"), reason="asyncio.Runner is 3.11+")
def test_runner_with_the_clock_as_loop_factory(clock: VirtualClock) -> None:
    """asyncio.Runner(loop_factory=clock.new_event_loop) runs a coroutine in virtual time."""

    async def main() -> float:
        await asyncio.sleep(86_400)
        return asyncio.get_running_loop().time()

    with asyncio.Runner(loop_factory=clock.new_event_loop) as runner:  # type: ignore[attr-defined,unused-ignore]
        assert runner.run(main()) == 86_400.0
    assert clock.now() == DEFAULT_START + 86_400.0


def test_call_later_runs_in_time_order(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """call_later/call_at callbacks run in order of their times, each at its time."""
    seen: list[tuple[str, float]] = []
    done = loop.create_future()
    loop.call_later(30, lambda: seen.append(("c", loop.time())))
    loop.call_later(10, lambda: seen.append(("a", loop.time())))
    loop.call_at(20, lambda: seen.append(("b", loop.time())))
    loop.call_later(40, done.set_result, None)
    loop.run_until_complete(done)
    assert seen == [("a", 10.0), ("b", 20.0), ("c", 30.0)]


def test_advance_from_outside_fires_due_timers_in_order(
    clock: VirtualClock, loop: ClockEventLoop
) -> None:
    """advance() outside a loop runs its due timers in order, then stands at exactly now+s."""
    seen: list[tuple[str, float]] = []
    loop.call_later(50, lambda: seen.append(("late", loop.time())))
    loop.call_later(5, lambda: seen.append(("first", loop.time())))

    def second() -> None:
        seen.append(("second", loop.time()))
        loop.call_later(2, lambda: seen.append(("chained", loop.time())))

    loop.call_later(7, second)
    clock.advance(10)
    assert seen == [("first", 5.0), ("second", 7.0), ("chained", 9.0)]
    assert clock.monotonic() == 10.0
    clock.advance(40)
    assert seen[-1] == ("late", 50.0)
    assert clock.monotonic() == 50.0


def test_advance_orders_timers_across_loops(clock: VirtualClock) -> None:
    """Two loops on one clock share its time; advance() interleaves their timers by time."""
    first, second = clock.new_event_loop(), clock.new_event_loop()
    seen: list[tuple[str, float]] = []
    try:
        first.call_later(3, lambda: seen.append(("one@3", first.time())))
        second.call_later(1, lambda: seen.append(("two@1", second.time())))
        second.call_later(4, lambda: seen.append(("two@4", second.time())))
        first.call_later(2, lambda: seen.append(("one@2", first.time())))
        clock.advance(5)
        assert seen == [("two@1", 1.0), ("one@2", 2.0), ("one@3", 3.0), ("two@4", 4.0)]
        assert first.time() == second.time() == 5.0
    finally:
        close_loop(first)
        close_loop(second)


def test_advance_inside_a_running_loop_only_moves_time(
    clock: VirtualClock, loop: ClockEventLoop
) -> None:
    """advance() from a sync callback moves time; the loop then runs the overdue timers."""
    seen: list[tuple[str, float]] = []

    async def main() -> None:
        loop.call_later(5, lambda: seen.append(("timer", loop.time())))
        clock.advance(100)  # as a sync handler calling clock.sleep would
        seen.append(("after advance", loop.time()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert seen == [("after advance", 100.0), ("timer", 100.0)]


def test_advance_after_close_does_not_error(clock: VirtualClock) -> None:
    """A closed loop is skipped by advance()."""
    lp = clock.new_event_loop()
    lp.call_later(1, lambda: None)
    close_loop(lp)
    clock.advance(10)
    assert clock.monotonic() == 10.0


def test_clock_keeps_loops_weakly(clock: VirtualClock) -> None:
    """A loop that is closed and dropped is not kept alive by its clock."""
    lp = clock.new_event_loop()
    close_loop(lp)
    del lp
    gc.collect()
    assert list(clock._loops) == []


def test_run_until_idle_stops_at_the_horizon(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """run_until_idle(until) fires timers up to until and leaves later ones pending."""
    seen: list[float] = []
    for delay in (1, 2, 30):
        loop.call_later(delay, lambda: seen.append(loop.time()))
    run_until_idle(loop, until=10.0)
    assert seen == [1.0, 2.0]
    assert loop.next_timer() == 30.0
    run_until_idle(loop)
    assert seen == [1.0, 2.0, 30.0]
    assert loop.next_timer() is None


def test_run_until_idle_refuses_other_loops() -> None:
    """run_until_idle names the loop type it expected."""
    plain = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError, match="expected a ClockEventLoop"):
            run_until_idle(plain)
    finally:
        plain.close()


def test_three_attempts_with_900s_timeouts(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """The whole 3-attempt story (900 s timeouts, retries after 60 s and 120 s) runs at once."""
    attempts: list[tuple[int, float, float]] = []

    async def handler() -> None:
        await asyncio.sleep(1200)

    async def story() -> None:
        for attempt, backoff in ((1, 60), (2, 120), (3, None)):
            start = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(handler(), 900)
            attempts.append((attempt, start, loop.time()))
            if backoff is not None:
                await asyncio.sleep(backoff)

    loop.run_until_complete(story())
    assert attempts == [(1, 0.0, 900.0), (2, 960.0, 1860.0), (3, 1980.0, 2880.0)]
    assert clock.now() == DEFAULT_START + 2880.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9).map(lambda ms: ms / 1000), max_size=30))
def test_random_sleeps_finish_in_order_at_their_times(delays: list[float]) -> None:
    """Concurrent sleeps (ms granularity) finish in sorted order, each at exactly its delay.

    Timers closer than asyncio's clock resolution (1 ns) fire together, as on any loop.
    """
    clock = VirtualClock()
    lp = clock.new_event_loop()
    finished: list[tuple[float, float]] = []

    async def sleeper(delay: float, start: float) -> None:
        await asyncio.sleep(delay)
        finished.append((delay, lp.time() - start))

    async def main() -> None:
        start = lp.time()
        await asyncio.gather(*(sleeper(d, start) for d in delays))

    try:
        lp.run_until_complete(main())
    finally:
        close_loop(lp)
    assert [d for d, _ in finished] == sorted(delays)
    assert all(elapsed == delay for delay, elapsed in finished)


# -- real I/O holds virtual time back --------------------------------------------------------


@pytest.mark.realtime
def test_no_jump_while_a_socket_is_registered(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """With a socket registered, a 0.3 s sleep waits for real (tolerance: 0.25 to 5 s)."""
    left, right = socket.socketpair()
    real = SystemClock()

    async def main() -> bytes:
        reader, writer = await asyncio.open_connection(sock=left)
        loop.call_later(0.3, right.send, b"hi")
        data = await reader.read(2)
        writer.close()
        await writer.wait_closed()
        return data

    try:
        started = real.monotonic()
        assert loop.run_until_complete(main()) == b"hi"
        took = real.monotonic() - started
    finally:
        right.close()
    assert 0.25 <= took < 5
    assert 0.25 <= clock.monotonic() < 5  # the clock moved by about the real time


@pytest.mark.realtime
def test_no_jump_while_to_thread_runs(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """A 1000 s virtual timeout does not fire while a to_thread call runs for real (0.2 s)."""
    release = threading.Event()

    async def main() -> str:
        loop.call_later(0.2, release.set)  # a timer still fires while waiting for real
        return await asyncio.wait_for(asyncio.to_thread(_wait_then, release, "done"), 1000)

    assert loop.run_until_complete(main()) == "done"
    assert 0.15 <= clock.monotonic() < 5  # moved by about the real time, not by 1000 s


def _wait_then(event: threading.Event, result: str) -> str:
    if not event.wait(5):
        raise AssertionError("the timer that releases the thread never fired")
    return result


@pytest.mark.realtime
def test_timer_fires_while_waiting_for_a_thread(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """A short virtual timer fires on time during a real wait on a thread (tolerance: 5 s)."""
    fired: list[float] = []
    release = threading.Event()

    async def main() -> None:
        loop.call_later(0.05, lambda: fired.append(loop.time()))
        loop.call_later(0.1, release.set)
        await asyncio.to_thread(_wait_then, release, "x")

    loop.run_until_complete(main())
    assert fired == [0.05]


def test_run_until_idle_waits_for_executor_work(clock: VirtualClock, loop: ClockEventLoop) -> None:
    """run_until_idle does not return while to_thread work is still running."""
    release = threading.Event()
    results: list[str] = []

    async def main() -> None:
        results.append(await asyncio.to_thread(_wait_then, release, "done"))

    loop.create_task(main())
    loop.call_soon(release.set)
    run_until_idle(loop)
    assert results == ["done"]


# -- blocking detection ----------------------------------------------------------------------


@pytest.mark.realtime
def test_blocking_handler_is_detected_and_named(clock: VirtualClock) -> None:
    """A coroutine that time.sleeps 0.2 s is reported with its task (threshold 0.05 s)."""
    reports: list[tuple[asyncio.Task[Any] | None, float, threading.Thread]] = []
    real = SystemClock()

    def on_blocked(task: asyncio.Task[Any] | None, seconds: float) -> None:
        reports.append((task, seconds, threading.current_thread()))

    lp = clock.new_event_loop(on_blocked=on_blocked, blocking_threshold=0.05)

    async def blocker() -> None:
        real.sleep(0.2)  # blocks the loop, as a careless handler would

    async def polite() -> None:
        await asyncio.sleep(10)

    try:
        task = lp.create_task(blocker(), name="the-blocker")
        lp.run_until_complete(asyncio.gather(task, lp.create_task(polite())))
    finally:
        close_loop(lp)
    assert len(reports) == 1
    reported, seconds, thread = reports[0]
    assert reported is task
    assert reported is not None
    assert reported.get_name() == "the-blocker"
    assert 0.2 <= seconds < 5
    assert thread is threading.current_thread()  # called from the loop thread


@pytest.mark.realtime
def test_many_short_callbacks_are_a_starved_loop_not_a_blocked_one(clock: VirtualClock) -> None:
    """100 callbacks of 8 ms in one pass (0.8 s) under a 0.5 s threshold: no step blocked the
    loop, so nothing is named as blocking; the pass is reported as starved, once, with its
    count. (The false alarm of a loaded server: a slow pass blamed on whichever task ran.)"""
    real = SystemClock()
    blocked: list[tuple[asyncio.Task[Any] | None, float]] = []
    starved: list[tuple[float, int]] = []
    lp = clock.new_event_loop(
        on_blocked=lambda task, seconds: blocked.append((task, seconds)),
        blocking_threshold=0.5,
        on_starved=lambda seconds, callbacks: starved.append((seconds, callbacks)),
    )

    async def short_steps() -> None:
        for _ in range(2):
            real.sleep(0.008)
            await asyncio.sleep(0)

    try:
        for _ in range(100):
            lp.call_soon(real.sleep, 0.008)
        lp.run_until_complete(lp.create_task(short_steps(), name="short"))
    finally:
        close_loop(lp)
    assert blocked == []
    assert len(starved) == 1
    seconds, callbacks = starved[0]
    assert seconds > 0.5
    assert callbacks >= 100


@pytest.mark.realtime
def test_a_blocking_plain_callback_is_reported_without_a_task(clock: VirtualClock) -> None:
    """A callback that is no task's step is timed too, and reported with task None; the pass
    it was in is not reported again as starved."""
    real = SystemClock()
    blocked: list[tuple[asyncio.Task[Any] | None, float]] = []
    starved: list[tuple[float, int]] = []
    lp = clock.new_event_loop(
        on_blocked=lambda task, seconds: blocked.append((task, seconds)),
        blocking_threshold=0.05,
        on_starved=lambda seconds, callbacks: starved.append((seconds, callbacks)),
    )
    try:
        lp.call_soon(real.sleep, 0.2)
        lp.run_until_complete(asyncio.sleep(0))
    finally:
        close_loop(lp)
    assert [task for task, _ in blocked] == [None]
    assert 0.2 <= blocked[0][1] < 5
    assert starved == []


def test_blocking_threshold_must_be_positive(clock: VirtualClock) -> None:
    """A zero or negative blocking_threshold is refused, naming the value."""
    with pytest.raises(ValueError, match=r"blocking_threshold.*got 0"):
        clock.new_event_loop(on_blocked=lambda task, seconds: None, blocking_threshold=0)


def test_watchdog_threads_do_not_leak() -> None:
    """Loops with a watchdog, and their executors, leave no thread behind once closed."""
    before = set(threading.enumerate())
    clock = VirtualClock()
    for _ in range(3):
        lp = clock.new_event_loop(on_blocked=lambda task, seconds: None, blocking_threshold=0.05)
        lp.run_until_complete(asyncio.sleep(100))
        lp.run_until_complete(asyncio.to_thread(lambda: None))
        close_loop(lp)
    assert set(threading.enumerate()) - before == set()


def test_system_clock_loop_with_hook_detects_nothing_on_a_polite_task() -> None:
    """A SystemClock loop with on_blocked runs normally and reports no blocking."""
    reports: list[float] = []
    lp = SystemClock().new_event_loop(
        on_blocked=lambda task, seconds: reports.append(seconds), blocking_threshold=1.0
    )
    try:
        assert isinstance(lp, ClockEventLoop)
        assert lp.run_until_complete(asyncio.sleep(0.01, result="ok")) == "ok"
    finally:
        close_loop(lp)
    assert reports == []


# -- timed_steps: the handler's own time, on any loop ------------------------------------------


def _loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    import uvloop  # the test extra installs uvicorn[standard]: uvloop is what servers run on

    return [asyncio.new_event_loop, uvloop.new_event_loop]


@pytest.mark.realtime
@pytest.mark.parametrize("new_loop", _loops(), ids=["asyncio", "uvloop"])
def test_timed_steps_reports_the_step_that_blocks(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """One step of 0.2 s among polite ones (threshold 0.05 s): reported once, the result and
    the other steps untouched."""
    real = SystemClock()
    reports: list[float] = []

    async def handler() -> str:
        await asyncio.sleep(0.01)
        real.sleep(0.2)  # blocks, as a careless handler would
        await asyncio.sleep(0.01)
        return "done"

    loop = new_loop()
    try:
        result = loop.run_until_complete(timed_steps(handler(), 0.05, reports.append))
    finally:
        loop.close()
    assert result == "done"
    assert len(reports) == 1
    assert 0.2 <= reports[0] < 5


@pytest.mark.realtime
@pytest.mark.parametrize("new_loop", _loops(), ids=["asyncio", "uvloop"])
def test_timed_steps_does_not_count_the_loop_lateness(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Other callbacks hold the loop 0.8 s in all (100 x 8 ms) while the timed coroutine waits
    to be resumed: its own steps are short, so nothing is reported."""
    real = SystemClock()
    reports: list[float] = []

    async def polite() -> int:
        for _ in range(3):
            await asyncio.sleep(0)
        return 3

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for _ in range(100):
            loop.call_soon(real.sleep, 0.008)
        return await timed_steps(polite(), 0.5, reports.append)

    loop = new_loop()
    try:
        assert loop.run_until_complete(main()) == 3
    finally:
        loop.close()
    assert reports == []


def test_timed_steps_passes_errors_and_cancellation_through() -> None:
    """An exception raised after an await reaches the caller as it is; a cancelled task
    cancels the coroutine inside (its ``finally`` runs) and ends cancelled."""
    cleaned: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("inner")

    async def waits() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("finally")

    async def main() -> None:
        with pytest.raises(KeyError, match="inner"):
            await timed_steps(fails(), 1.0, lambda seconds: None)
        task = asyncio.ensure_future(timed_steps(waits(), 1.0, lambda seconds: None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == ["finally"]
