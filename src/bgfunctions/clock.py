"""Time, injected: the only module in bgfunctions that reads or waits on time.

A :class:`Clock` answers "what time is it" (:meth:`Clock.now`, :meth:`Clock.monotonic`),
waits (:meth:`Clock.sleep`, :meth:`Clock.wait`) and makes event loops whose time follows it
(:meth:`Clock.new_event_loop`). Two implementations:

- :class:`SystemClock` is real time.
- :class:`VirtualClock` is time that moves only when told (:meth:`VirtualClock.advance`) or,
  with ``autojump`` (the default), whenever everything is waiting on a timer: a 900 s timeout
  then takes milliseconds of wall time. Its loops are :class:`ClockEventLoop`\\ s, real asyncio
  selector loops whose ``time()`` is the clock; no part of asyncio is patched.

Rules of a virtual loop (see :class:`ClockEventLoop` for details):

- it jumps to its next timer only when no callback is ready, no file descriptor other than its
  own self-pipe is registered, and no ``run_in_executor``/``to_thread`` work is running;
  otherwise it waits for real and the clock moves by the real time that passed (never past the
  next timer, so timers fire exactly at their time);
- :func:`run_until_idle` runs it until nothing is left to do up to a virtual time;
- a callback that holds the loop longer than ``blocking_threshold`` real seconds is reported to
  ``on_blocked`` with the task that was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import selectors
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, Generic, TypeVar

from typing_extensions import TypeVarTuple, Unpack

__all__ = [
    "DEFAULT_BLOCKING_THRESHOLD",
    "DEFAULT_START",
    "BlockedHook",
    "Clock",
    "ClockEventLoop",
    "StarvedHook",
    "SystemClock",
    "VirtualClock",
    "cpu_and_wall",
    "run_until_idle",
    "timed_steps",
]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

BlockedHook = Callable[["asyncio.Task[Any] | None", float], None]
"""``on_blocked(task, seconds)``: the task whose step held the loop (None for a plain callback)
and how long that one step ran, in real seconds."""

StarvedHook = Callable[[float, int], None]
"""``on_starved(seconds, callbacks)``: one pass of the loop over ``callbacks`` ready callbacks
took ``seconds`` real seconds, although none of them alone held it past the threshold: the
loop's thread was short of CPU (or of the GIL), nothing blocked it."""

DEFAULT_START = 1767225600.0
"""The default start of a :class:`VirtualClock`: 2026-01-01T00:00:00Z, in UTC epoch seconds."""

DEFAULT_BLOCKING_THRESHOLD = 1.0
"""Real seconds one callback (a task's step) may hold the loop before ``on_blocked`` is
called."""

# Real time, for the few places that must measure it even on a virtual clock.
_real_monotonic = time.monotonic
_real_perf = time.perf_counter


def _check_seconds(value: float, where: str, *, positive: bool = False) -> float:
    """Return ``value`` as a float, or raise ValueError naming it and ``where``."""
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (positive and seconds == 0):
        expected = "a positive number" if positive else "a number >= 0"
        raise ValueError(f"{where}: expected {expected} of seconds, got {value!r}")
    return seconds


class Clock(ABC):
    """Where bgfunctions gets the time from, and how it waits."""

    __slots__ = ()

    @abstractmethod
    def now(self) -> float:
        """UTC epoch seconds: what records and schedules store."""

    @abstractmethod
    def monotonic(self) -> float:
        """Seconds for measuring durations; moves at the same rate as :meth:`now`."""

    @abstractmethod
    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` on this clock."""

    @abstractmethod
    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        """``condition.wait(timeout)`` on this clock (the caller holds the lock).

        Returns False when the timeout passed, True when notified.
        """

    @abstractmethod
    def new_event_loop(
        self,
        *,
        on_blocked: BlockedHook | None = None,
        blocking_threshold: float = DEFAULT_BLOCKING_THRESHOLD,
        on_starved: StarvedHook | None = None,
    ) -> asyncio.AbstractEventLoop:
        """A new event loop whose ``time()`` follows this clock.

        With ``on_blocked``, a callback (a task's step) that holds the loop longer than
        ``blocking_threshold`` real seconds is reported to it; with ``on_starved`` too, a pass
        over the ready callbacks that took that long without any one of them holding the loop
        (see :class:`ClockEventLoop`).
        """


class SystemClock(Clock):
    """Real time: :func:`time.time`, :func:`time.monotonic`, :func:`time.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        """UTC epoch seconds from the system clock."""
        return time.time()

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Really sleep; refuses a negative or NaN duration with ValueError."""
        time.sleep(_check_seconds(seconds, "SystemClock.sleep"))

    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        """``condition.wait(timeout)``, in real time."""
        return condition.wait(timeout)

    def new_event_loop(
        self,
        *,
        on_blocked: BlockedHook | None = None,
        blocking_threshold: float = DEFAULT_BLOCKING_THRESHOLD,
        on_starved: StarvedHook | None = None,
    ) -> asyncio.AbstractEventLoop:
        """A plain asyncio loop; a :class:`ClockEventLoop` on real time if ``on_blocked``."""
        if on_blocked is None:
            return asyncio.new_event_loop()
        return ClockEventLoop(
            self,
            on_blocked=on_blocked,
            blocking_threshold=blocking_threshold,
            on_starved=on_starved,
        )


class VirtualClock(Clock):
    """Time that moves only when told to, or (``autojump``) when everything is waiting.

    ``now()`` starts at ``start`` (UTC epoch seconds) and ``monotonic()`` at 0.0; both move
    together. The clock is thread-safe and never moves backwards.
    """

    __slots__ = ("__weakref__", "_autojump", "_lock", "_loops", "_mono", "_start")

    def __init__(self, start: float = DEFAULT_START, *, autojump: bool = True) -> None:
        if not math.isfinite(start):
            raise ValueError(f"VirtualClock(start=...): expected a finite epoch, got {start!r}")
        self._start = float(start)
        self._mono = 0.0
        self._autojump = autojump
        self._lock = threading.Lock()
        self._loops: weakref.WeakSet[ClockEventLoop] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"VirtualClock(now={self.now()!r}, autojump={self._autojump!r})"

    @property
    def autojump(self) -> bool:
        """Whether loops jump to their next timer when everything is waiting."""
        return self._autojump

    def now(self) -> float:
        """Virtual UTC epoch seconds."""
        return self._start + self._mono

    def monotonic(self) -> float:
        """Virtual seconds since the clock was made (starts at 0.0)."""
        return self._mono

    def _move_to(self, mono: float) -> None:
        """Move the monotonic time forward to ``mono`` (never backwards)."""
        with self._lock:
            if mono > self._mono:
                self._mono = mono

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running this clock's idle loops on the way.

        Called where no event loop is running, every loop of this clock that is not running is
        run up to the new time: due timers fire in time order across the loops, and whatever
        they schedule that is due runs too; then the clock stands at exactly ``now + seconds``.
        Called from inside a running loop (a sync callback) it only moves time; that loop
        catches up with overdue timers when the callback returns. Loops running in other
        threads are woken. ``run_in_executor``/``to_thread`` work of the loops it runs is
        waited for (see :meth:`ClockEventLoop.run_until_idle`). Refuses a negative or NaN
        ``seconds`` with ValueError.
        """
        target = self._mono + _check_seconds(seconds, "VirtualClock.advance")
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if not in_loop:
            self._run_idle_loops(target)
        self._move_to(target)
        self._wake_running_loops()

    def _run_idle_loops(self, target: float) -> None:
        """Run the loops that are not running up to ``target``, timers in global time order."""
        while True:
            loops = [lp for lp in list(self._loops) if not lp.is_closed() and not lp.is_running()]
            if not loops:
                return
            for lp in loops:
                lp.run_until_idle(until=self._mono)
            nexts = [w for w in (lp.next_timer() for lp in loops) if w is not None]
            if not nexts or min(nexts) > target:
                return
            self._move_to(min(nexts))

    def _wake_running_loops(self) -> None:
        for lp in list(self._loops):
            if lp.is_running() and not lp.is_closed():
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    lp.call_soon_threadsafe(_noop)

    def sleep(self, seconds: float) -> None:
        """Virtual sleep: the same as :meth:`advance` (single-threaded tests)."""
        self.advance(_check_seconds(seconds, "VirtualClock.sleep"))

    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        """``condition.wait(timeout)`` on virtual time; the caller holds the lock.

        With ``autojump`` and a timeout, nothing else could notify in a single-threaded test,
        so the clock advances by ``timeout`` and this returns False at once. With
        ``timeout=None`` it waits for a notification for real. Without ``autojump`` it waits
        for real until notified (True) or until another thread advanced the clock past the
        deadline (False), checking every 10 ms.
        """
        if timeout is None:
            return condition.wait()
        deadline = self._mono + _check_seconds(timeout, "VirtualClock.wait")
        if self._autojump:
            self.advance(timeout)
            return False
        while self._mono < deadline:
            if condition.wait(0.01):
                return True
        return False

    def new_event_loop(
        self,
        *,
        on_blocked: BlockedHook | None = None,
        blocking_threshold: float = DEFAULT_BLOCKING_THRESHOLD,
        on_starved: StarvedHook | None = None,
    ) -> ClockEventLoop:
        """A :class:`ClockEventLoop` on this clock (kept by weak reference for advance)."""
        loop = ClockEventLoop(
            self,
            on_blocked=on_blocked,
            blocking_threshold=blocking_threshold,
            on_starved=on_starved,
        )
        self._loops.add(loop)
        return loop


def _noop() -> None:
    """Wakes a loop: scheduling anything thread-safely writes to its self-pipe."""


class _Work:
    """One piece of executor work, counted until it finished or was abandoned unstarted."""

    __slots__ = ("abandoned", "started")

    def __init__(self) -> None:
        self.started = False
        self.abandoned = False


class _ClockSelector(selectors.BaseSelector):
    """Wraps the real selector; ``select(timeout)`` is where time is decided.

    asyncio calls ``select`` once per loop iteration, just before it runs that iteration's
    callbacks, so this is also where an iteration's real duration is measured.
    """

    def __init__(self, loop: ClockEventLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop: ClockEventLoop | None = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._loop = None
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self._loop
        if loop is None:
            return self._real.select(timeout)
        if loop._watched:
            loop._end_iteration()
        if timeout == 0:  # ready callbacks: the fast path, as in a plain loop
            events = self._real.select(0)
        elif loop._virtual is None:  # real time, watched only
            events = self._real.select(timeout)
        else:
            events = loop._virtual_select(self._real, timeout)
        if loop._watched:
            loop._pass_started = _real_perf()
        return events


class ClockEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is a clock's :meth:`Clock.monotonic`.

    On a :class:`VirtualClock`:

    - ``asyncio.sleep``, ``wait_for``, ``timeout``, ``call_later``/``call_at`` run in virtual
      time. With ``autojump``, when no callback is ready the loop jumps the clock to its next
      timer, exactly to its ``when``.
    - It does not jump while real I/O is pending: a file descriptor other than its self-pipe is
      registered, or ``run_in_executor``/``to_thread`` work is running. It then waits for real
      up to the next timer and moves the clock by the real time that passed (capped at that
      timer). Without ``autojump`` it never moves the clock itself; it waits until another
      thread advances the clock.
    - :meth:`run_until_idle` runs it until nothing is due up to a virtual time.

    Blocking detection: with ``on_blocked``, every callback the loop runs (each step of a task,
    each wake-up) is timed in real seconds. One that ran longer than ``blocking_threshold`` is
    reported right after it returns, from the loop thread: ``on_blocked(task, seconds)`` with
    the task whose step it was (None for a plain callback). What is measured is that step's own
    time, from its resumption to its next ``await``: a busy loop whose many short callbacks
    together take long is not blocked. With ``on_starved`` too, such a pass (longer than the
    threshold, no callback in it over the threshold) is reported as
    ``on_starved(seconds, callbacks)``: the loop's thread was short of CPU or of the GIL.

    With ``autojump`` and nothing pending at all (no ready callback, no timer, no real I/O) it
    waits like any asyncio loop: only another thread can wake it.

    Timers closer together than asyncio's clock resolution (1 ns) fire in the same iteration,
    as on any asyncio loop. This reads one private attribute of asyncio's base loop,
    ``_scheduled`` (the timer heap, unchanged since Python 3.4), to jump exactly to a timer.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        on_blocked: BlockedHook | None = None,
        blocking_threshold: float = DEFAULT_BLOCKING_THRESHOLD,
        on_starved: StarvedHook | None = None,
    ) -> None:
        self._clock = clock
        self._virtual: VirtualClock | None = clock if isinstance(clock, VirtualClock) else None
        self._on_blocked = on_blocked
        self._on_starved = on_starved
        self._threshold = DEFAULT_BLOCKING_THRESHOLD
        self._watched = on_blocked is not None
        # The real start of the current pass over ready callbacks (None while the loop waits
        # in select), how many callbacks it ran, and whether one of them was reported.
        self._pass_started: float | None = None
        self._pass_callbacks = 0
        self._pass_blocked = False
        self._work_lock = threading.Lock()
        self._work_pending = 0
        self._idle_until: float | None = None  # set only inside run_until_idle
        self._own_fds = 0
        selector = _ClockSelector(self)
        super().__init__(selector)
        # Whatever is registered now is the loop's own (the self-pipe); more is real I/O.
        self._own_fds = len(selector.get_map())
        try:  # validated after asyncio's __init__ so that a refused loop can be closed cleanly
            self._threshold = _check_seconds(
                blocking_threshold, "ClockEventLoop(blocking_threshold=...)", positive=True
            )
        except ValueError:
            self.close()
            raise

    def __repr__(self) -> str:
        return (
            f"<ClockEventLoop time={self.time()!r} running={self.is_running()} "
            f"closed={self.is_closed()}>"
        )

    @property
    def clock(self) -> Clock:
        """The clock this loop's time follows."""
        return self._clock

    def time(self) -> float:
        """The clock's monotonic time."""
        return self._clock.monotonic()

    def next_timer(self) -> float | None:
        """The ``when`` of the earliest timer that is not cancelled, or None."""
        timers = self._timers()
        if timers and not timers[0].cancelled():
            return timers[0].when()  # the heap's head is its minimum
        return min((h.when() for h in timers if not h.cancelled()), default=None)

    def _timers(self) -> list[asyncio.TimerHandle]:
        return self._scheduled  # type: ignore[attr-defined,no-any-return]

    # -- time --------------------------------------------------------------------------------

    def _virtual_select(
        self, real: selectors.BaseSelector, timeout: float | None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        """Decide what happens to time when no callback is ready (``timeout != 0``)."""
        clock = self._virtual
        assert clock is not None
        timers = self._timers()
        # After asyncio's clean-up in _run_once the head of the heap is not cancelled.
        when = timers[0].when() if timers else None
        until = self._idle_until
        if until is not None and when is not None and when > until:
            when = None  # beyond the horizon: as if there were no timer
        # run_until_idle is an explicit request to move time: only executor work holds it.
        real_io = self._work_pending > 0 or (until is None and len(real.get_map()) > self._own_fds)
        if not real_io:
            events = real.select(0)
            if events:
                return events
            if when is not None and (until is not None or clock.autojump):
                clock._move_to(when)
            elif until is not None:
                self.stop()  # idle: nothing ready, nothing due up to `until`
            else:
                return real.select(None)  # only another thread (advance) can wake us
            return events
        if not clock.autojump and until is None:
            return real.select(None)  # time moves only when another thread advances it
        # Real work pending: wait for real, virtual time following real time, but never past
        # the next timer (so it fires exactly on time) nor past the horizon of run_until_idle.
        now = clock.monotonic()
        cap = when if when is not None else math.inf
        if until is not None:
            cap = min(cap, until)
        wait = cap - now if cap > now else None if when is None else 0.0
        if wait == math.inf:
            wait = None
        started = _real_monotonic()
        events = real.select(wait)
        clock._move_to(min(now + (_real_monotonic() - started), cap))
        return events

    def run_until_idle(self, until: float | None = None) -> None:
        """Run until no callback is ready and no timer is due at or before ``until``.

        ``until`` is a virtual ``loop.time()`` (None: no limit). Timers up to ``until`` are
        jumped to whatever ``autojump`` says; executor work is waited for (for real, the clock
        following real time but stopping at ``until``); registered file descriptors do not
        keep the loop busy. Raises RuntimeError if the loop is running or on a real clock.
        """
        if self._virtual is None:
            raise RuntimeError(
                "ClockEventLoop.run_until_idle: expected a loop on a VirtualClock, "
                f"found one on {type(self._clock).__name__}"
            )
        if self.is_running():
            raise RuntimeError("ClockEventLoop.run_until_idle: the loop is already running")
        self._idle_until = math.inf if until is None else until
        try:
            self.run_forever()
        finally:
            self._idle_until = None

    # -- executor work -----------------------------------------------------------------------

    def run_in_executor(
        self,
        executor: Any,
        func: Callable[[Unpack[_Ts]], _T],
        *args: Unpack[_Ts],
    ) -> asyncio.Future[_T]:
        """``run_in_executor``, counted as real work so that time does not jump past it."""
        work = _Work()

        def call() -> _T:
            with self._work_lock:
                if work.abandoned:  # cancelled before it started: already uncounted
                    raise asyncio.CancelledError
                work.started = True
            try:
                return func(*args)
            finally:
                with self._work_lock:
                    self._work_pending -= 1

        def on_done(fut: asyncio.Future[_T]) -> None:
            with self._work_lock:
                if not work.started and not work.abandoned:
                    work.abandoned = True
                    self._work_pending -= 1

        with self._work_lock:
            self._work_pending += 1
        try:
            future = super().run_in_executor(executor, call)
        except BaseException:
            with self._work_lock:
                self._work_pending -= 1
            raise
        future.add_done_callback(on_done)
        return future

    # -- blocking detection ------------------------------------------------------------------

    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """``call_soon``; on a watched loop the callback is timed (see the class docstring).

        Every task step and wake-up comes through here: asyncio's tasks and futures schedule
        them with ``loop.call_soon``."""
        if self._watched:
            return super().call_soon(self._timed, callback, args, context=context)
        return super().call_soon(callback, *args, context=context)

    def _timed(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        started = _real_perf()
        try:
            callback(*args)
        finally:
            seconds = _real_perf() - started
            self._pass_callbacks += 1
            if seconds > self._threshold:
                self._pass_blocked = True
                owner = getattr(callback, "__self__", None)
                self._report_blocked(owner if isinstance(owner, asyncio.Task) else None, seconds)

    def _report_blocked(self, task: asyncio.Task[Any] | None, seconds: float) -> None:
        hook = self._on_blocked
        if hook is None:
            return
        try:
            hook(task, seconds)
        except Exception as exc:
            self.call_exception_handler(
                {"message": "on_blocked hook raised", "exception": exc, "loop": self}
            )

    def run_forever(self) -> None:
        """``run_forever``; time between runs is not a pass over callbacks."""
        try:
            super().run_forever()
        finally:
            if self._watched:
                self._end_iteration()

    def _end_iteration(self) -> None:
        """Called at the start of each select: the previous pass's callbacks are done."""
        started, self._pass_started = self._pass_started, None
        callbacks, self._pass_callbacks = self._pass_callbacks, 0
        blocked, self._pass_blocked = self._pass_blocked, False
        if started is None or blocked or self._on_starved is None:
            return
        seconds = _real_perf() - started
        if seconds > self._threshold:
            try:
                self._on_starved(seconds, callbacks)
            except Exception as exc:
                self.call_exception_handler(
                    {"message": "on_starved hook raised", "exception": exc, "loop": self}
                )


class _TimedSteps(Generic[_T]):
    """The awaitable :func:`timed_steps` returns: it drives ``coro`` one step at a time."""

    __slots__ = ("_coro", "_report", "_threshold")

    def __init__(
        self, coro: Coroutine[Any, Any, _T], threshold: float, report: Callable[[float], None]
    ) -> None:
        self._coro = coro
        self._threshold = threshold
        self._report = report

    def __await__(self) -> Generator[Any, Any, _T]:
        coro, threshold = self._coro, self._threshold
        send, throw = coro.send, coro.throw
        value: Any = None
        error: BaseException | None = None
        while True:
            started = _real_perf()
            try:
                yielded = send(value) if error is None else throw(error)
            except StopIteration as stop:
                self._check(started, threshold)
                result: _T = stop.value
                return result
            except BaseException:
                self._check(started, threshold)
                raise
            finally:
                error = None  # no reference to an exception from one step to the next
            self._check(started, threshold)
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, or what the awaited future raised
                error, value = exc, None

    def _check(self, started: float, threshold: float) -> None:
        seconds = _real_perf() - started
        if seconds > threshold:
            self._report(seconds)


def timed_steps(
    coro: Coroutine[Any, Any, _T], threshold: float, report: Callable[[float], None]
) -> Awaitable[_T]:
    """Await ``coro``, timing each of its steps: from a resumption to its next suspension.

    A step that runs longer than ``threshold`` real seconds held the event loop that long;
    ``report(seconds)`` is called right after it, from the loop's thread. It works on any loop
    (uvloop included), and only the coroutine's own time counts, not how late the loop ran it.
    Exceptions, cancellations and the coroutine's result pass through unchanged.
    """
    return _TimedSteps(coro, threshold, report)


def cpu_and_wall() -> tuple[float, float]:
    """The CPU seconds this process has used (all its threads) and a real monotonic time, read
    together: their changes over a while say how busy the process kept the CPU (whatever clock
    the caller's executor keeps)."""
    return time.process_time(), time.perf_counter()


def run_until_idle(loop: asyncio.AbstractEventLoop, until: float | None = None) -> None:
    """Run a :class:`ClockEventLoop` until nothing is due at or before ``until``.

    See :meth:`ClockEventLoop.run_until_idle`. Raises TypeError for any other loop.
    """
    if not isinstance(loop, ClockEventLoop):
        raise TypeError(f"run_until_idle: expected a ClockEventLoop, got {type(loop).__name__}")
    loop.run_until_idle(until)
