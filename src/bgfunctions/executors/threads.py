"""The thread executor: real time, a pool of worker threads for sync handlers, one event loop
thread for async ones, and one timer thread for retries and sync deadlines.

A sync handler in a thread cannot be killed. At its deadline its attempt is recorded as timed out
and a warning names the function; the thread is abandoned (it stops counting against
``max_workers``, a replacement is started, and ``stats().abandoned_threads`` counts it until it
returns), and its late result is ignored. Use the process executor to kill hung handlers for real.

Synchronous functions: sync handlers run on a :class:`~bgfunctions.executors.calls.CallPool`, which
abandons a call's thread at ``sync_timeout`` the same way; async handlers run on the loop thread,
never on the caller's loop, so a blocking call in one holds that loop and not the server's, and
the caller enforces the time-out from its side of the hand-off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import os
import queue
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bgfunctions.attempts import (
    AttemptResult,
    PreparedAttempt,
    run_async,
    run_sync,
    timeout_error,
    to_response,
    warn_ignored_return,
)
from bgfunctions.clock import Clock, ClockEventLoop, SystemClock
from bgfunctions.context import Context
from bgfunctions.errors import (
    ConfigError,
    QueueFullError,
    UnknownFunctionError,
)
from bgfunctions.executors.base import Executor, ExecutorStats
from bgfunctions.executors.calls import CallPool, LoopThread, finish_tasks
from bgfunctions.executors.timers import TimerThread
from bgfunctions.invocation import InvocationRecord, Outcome, State
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import RetryPolicy

__all__ = ["ThreadExecutor"]

_FROM_HEAP = InvocationRecord(request_id="", function="", method="", url="", accepted_at=0.0)
"""What the queue carries for a record that waits in the priority heap."""

log = logging.getLogger("bgfunctions.executor")

STALL_CHECK = 0.05
"""Seconds between checks that busy workers still finish attempts; when none finished, more
start. Longer than the GIL's switch interval (5 ms), so a worker merely waiting for the GIL
is not taken for a stalled one."""
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Running:
    """A sync attempt running in a worker thread; whoever settles it first (the worker or the
    deadline timer) records how it ended."""

    record: InvocationRecord
    function: Function
    thread: threading.Thread
    deadline: float
    timeout: float
    due: float = 0.0
    """The deadline on the clock's monotonic time."""
    settled: bool = False


class ThreadExecutor(Executor):
    """Runs background invocations on threads, in real time (or on any injected clock)."""

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        max_pending: int | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        blocking_threshold: float = 1.0,
        maintenance_interval: float = 1.0,
        loop: str = "host",
    ) -> None:
        """``maintenance_interval``: seconds between lease renewals and polls of a durable
        journal (keep it well below the journal's lease).

        ``loop``: where async background attempts run once a server hands its loop over with
        :meth:`serve_on` (``ASGIApp``'s lifespan does): ``"host"`` runs them on the server's
        own loop, as Starlette's ``BackgroundTasks`` do (no thread hand-off; a handler that
        blocks holds the server's requests too, and is named in a warning); ``"thread"`` keeps
        them on the executor's own loop thread (isolated). Host mode applies only with a
        non-durable journal (a durable journal's claims and ends are blocking commits, which
        must not hold the server's loop) and a loop on the executor's clock; otherwise, and
        until ``serve_on``, attempts run on the loop thread."""
        super().__init__(clock=clock if clock is not None else SystemClock(), journal=journal)
        if loop not in ("host", "thread"):
            raise ConfigError(f"ThreadExecutor.loop: expected 'host' or 'thread'; got {loop!r}")
        self.loop_mode = loop
        self.maintenance_interval = maintenance_interval
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(
                f"ThreadExecutor.max_workers: expected an int >= 1; got {max_workers!r}"
            )
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        ):
            raise ConfigError(
                f"ThreadExecutor.max_pending: expected None or an int >= 1; got {max_pending!r}"
            )
        self.max_workers = max_workers
        self.max_pending = max_pending
        self._blocking_threshold = blocking_threshold
        # A C queue: workers block in get() without the GIL or any lock of ours, so handing
        # work over costs no lock convoy between the accepting thread and the workers.
        self._queue: queue.SimpleQueue[InvocationRecord | None] = queue.SimpleQueue()
        # Records with a priority other than 0 wait in a heap; the queue carries _FROM_HEAP
        # for each, so that it still counts every waiting record (see _by_priority).
        self._heap: list[tuple[int, int, InvocationRecord]] = []
        self._heap_lock = threading.Lock()
        self._heap_order = itertools.count()
        self._workers: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        self._idle = 0
        self._pending = 0
        # Counters only (pending, idle): a lock of their own, never held for more than an
        # addition, so the accepting thread never waits behind a worker holding self._lock.
        self._count_lock = threading.Lock()
        # Who settles a running sync attempt first, its worker or its deadline: a lock of its
        # own, held for a few operations, so workers never queue on the executor lock.
        self._running_lock = threading.Lock()
        self._stall_check_armed = False
        self._finished_count = 0  # sync attempts finished (approximate: a progress signal)
        self._last_progress = -1
        self._reserved = 0
        self._spawned = 0
        self._sync_running: dict[int, _Running] = {}
        # The running sync attempts again, by time limit: within one limit, attempts reach
        # their deadlines in the order they started, so one timer per limit (for the oldest)
        # watches them all, instead of a timer per attempt. Limits with a timer armed:
        self._lanes: dict[float, dict[int, _Running]] = {}
        self._lanes_armed: set[float] = set()
        self._timers = TimerThread(self.clock)
        self._loop_thread = LoopThread(
            self.clock,
            on_blocked=self.lifecycle.reports.blocked,
            on_starved=self.lifecycle.reports.starved,
            blocking_threshold=blocking_threshold,
        )
        self._call_pool: CallPool | None = None
        self._started = False
        # The server's loop, its thread, and the attempts running on it (host mode).
        self._host: asyncio.AbstractEventLoop | None = None
        self._host_thread: int | None = None
        self._host_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._timers.start()
        if self.journal.durable:
            self.recover()
            self._timers.add(self.clock.monotonic() + self.maintenance_interval, self._maintain)

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run async attempts on ``loop``, the server's own, from now on (``loop="host"``;
        see the constructor for when it applies). Call it from ``loop``'s thread."""
        if self.loop_mode != "host" or self.journal.durable:
            return
        if isinstance(loop, ClockEventLoop):
            if loop.clock is not self.clock:
                return  # another clock's loop: its timers would not keep our time
        elif not isinstance(self.clock, SystemClock):
            return  # a virtual clock needs a loop that keeps its time
        with self._lock:
            self._host, self._host_thread = loop, threading.get_ident()

    @property
    def host_loop(self) -> asyncio.AbstractEventLoop | None:
        """The server's loop that async attempts run on, or None: they run on the executor's
        own loop thread (``loop="thread"``, a durable journal, another clock, or no
        :meth:`serve_on` yet)."""
        return self._host

    def _maintain(self) -> None:
        """Every ``maintenance_interval``: renew leases, take over work of dead processes and
        work other processes added to the shared journal."""
        if self._closed:
            return
        try:
            self.lifecycle.heartbeat()
            self.recover()
        except Exception:
            log.warning("journal maintenance failed; retrying", exc_info=True)
        self._timers.add(self.clock.monotonic() + self.maintenance_interval, self._maintain)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_thread.ensure()

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """Stop accepting and stop the threads.

        Attempts already running get ``grace`` seconds (all they need with ``wait=True`` and no
        grace) to finish; an async attempt still running after that is cancelled and recorded
        as ``interrupted``. Invocations not started stay unfinished in the journal.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)  # one stop signal per worker
        self._timers.stop()
        limit = None if wait and grace is None else (grace or 0.0)
        end = None if limit is None else self.clock.monotonic() + limit
        self._finish_host_tasks(end)
        for thread in workers:
            thread.join(None if end is None else max(0.0, end - self.clock.monotonic()))
        self._loop_thread.stop(None if end is None else max(0.0, end - self.clock.monotonic()))
        self._timers.join()
        if self._call_pool is not None:
            self._call_pool.shutdown(wait=wait)

    def _finish_host_tasks(self, end: float | None) -> None:
        """At shutdown: give the attempts running on the server's loop until ``end`` (None:
        all they need), then cancel them (recorded ``interrupted``)."""
        host, tasks = self._host, set(self._host_tasks)
        if host is None or not tasks or host.is_closed():
            return
        left = None if end is None else max(0.0, end - self.clock.monotonic())
        if threading.get_ident() == self._host_thread or not host.is_running():
            # Called on the server's loop itself (or with it stopped): it cannot wait here.
            for task in tasks:
                host.call_soon_threadsafe(task.cancel)
            return
        asyncio.run_coroutine_threadsafe(finish_tasks(tasks, left), host).result()

    def stats(self) -> ExecutorStats:
        with self._lock:
            return ExecutorStats(
                pending=self._pending,
                running=len(self._sync_running) + self._running_count,
                abandoned_threads=sum(1 for t in self._abandoned if t.is_alive())
                + (self._call_pool.abandoned if self._call_pool is not None else 0),
                workers=len(self._workers),
                spawned=self._spawned,
            )

    # -- accepting and dispatching ------------------------------------------------------------

    def _check_accepting(self) -> None:
        super()._check_accepting()
        if not self._started:
            self.start()
        waiting = self._pending + self._committing  # dispatched, and about to be
        if self.max_pending is not None and waiting >= self.max_pending:
            error = QueueFullError(
                f"ThreadExecutor has {waiting} invocations waiting (max_pending={self.max_pending})"
            )
            error.retry_after = 5.0
            raise error

    def _dispatch(self, record: InvocationRecord) -> None:
        due = record.next_run_at if record.next_run_at is not None else self.clock.now()
        delay = due - self.clock.now()
        if delay > 0 and record.state is State.SLEEPING:
            # A durable sleep (days, perhaps) is not work waiting for a worker: it counts as
            # pending (max_pending, stats) only once it wakes.
            self._timers.add(self.clock.monotonic() + delay, lambda: self._dispatch(record))
            return
        with self._count_lock:  # held for one addition only: never contended for long
            self._pending += 1
        if delay > 0:
            self._timers.add(self.clock.monotonic() + delay, lambda: self._ready(record))
        else:
            self._ready(record)

    def _ready(self, record: InvocationRecord) -> None:
        """The record's next attempt is due now: hand it to a worker or to the loop."""
        try:
            function = self.binding.lookup(record.function)
        except UnknownFunctionError as exc:
            # Its function was removed (a reload): end it as failed rather than strand it.
            with self._count_lock:
                self._pending -= 1
            started = self.lifecycle.begin(record)
            if started is not None:
                self.lifecycle.end(started, Outcome.ERROR, exc, retry=RetryPolicy(delays=()))
            return
        if function.is_async:
            host = self._host
            if host is not None and self._start_on_host(host, record):
                return
            loop = self._ensure_loop()
            loop.call_soon_threadsafe(self._start_async, record)
            return
        self._enqueue(record)

    def _enqueue(self, record: InvocationRecord) -> None:
        """Queue a due sync attempt for the workers, starting one if none is idle."""
        if self._closed:
            with self._count_lock:
                self._pending -= 1  # stays unfinished in the journal
            return
        # Each queued record takes one idle worker for itself (a reservation), so two records
        # queued at once never both count on the same idle worker.
        with self._count_lock:
            reserved = self._idle > 0
            if reserved:
                self._idle -= 1
                self._reserved += 1
        options = record.enqueue_options
        if options is not None and options.priority:
            self._push(record)
            self._queue.put(_FROM_HEAP)
        else:
            self._queue.put(record)
        if reserved or len(self._workers) >= self.max_workers:
            return
        if not self._workers:
            with self._lock:
                if not self._workers:
                    self._spawn_worker()
            return
        # Every worker is busy. If they are getting through the queue, one more thread would
        # only fight them for the GIL; if none finishes anything for a moment (handlers that
        # block), start another. Checked on the timer thread, one check at a time.
        if not self._stall_check_armed:
            self._stall_check_armed = True
            self._timers.add(self.clock.monotonic() + STALL_CHECK, self._check_stall)

    def _check_stall(self) -> None:
        """Start a worker when work waits and no attempt finished since the last check."""
        self._stall_check_armed = False
        if self._closed or self._queue.empty():
            return
        finished = self._finished_count
        if finished == self._last_progress and self._idle <= 0:
            # Stalled: enough workers for what waits (handlers that block, such as I/O).
            with self._lock:
                wanted = min(self._queue.qsize(), self.max_workers - len(self._workers))
                for _ in range(wanted):
                    self._spawn_worker()
        self._last_progress = finished
        if len(self._workers) < self.max_workers:
            self._stall_check_armed = True
            self._timers.add(self.clock.monotonic() + STALL_CHECK, self._check_stall)

    def _spawn_worker(self) -> None:
        """Start a worker (lock held). When the OS refuses a thread, the work stays queued and
        the stall check tries again while it waits."""
        self._spawned += 1
        thread = threading.Thread(
            target=self._worker_main, name=f"bgfunctions-worker-{self._spawned}", daemon=True
        )
        self._workers.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:
            # Never started: not a worker, which dispatch would count on and shutdown join.
            self._workers.discard(thread)
            log.warning("cannot start a worker thread (%s); queued work waits for one", exc)
            if not self._stall_check_armed:
                self._stall_check_armed = True
                self._timers.add(self.clock.monotonic() + STALL_CHECK, self._check_stall)

    def _retry_or_finish(self, ended: InvocationRecord) -> None:
        if ended.state.waiting:
            self._dispatch(ended)

    # -- async attempts on the loop thread ----------------------------------------------------

    def _start_async(self, record: InvocationRecord) -> None:
        with self._count_lock:
            self._pending -= 1
        loop = self._loop_thread.loop
        assert loop is not None
        loop.create_task(self._run_async(record))

    async def _run_async(self, record: InvocationRecord, watch: float | None = None) -> None:
        ended = await self.lifecycle.run_on_loop(record, stopping=self._stopping, watch=watch)
        if ended is not None:
            self._retry_or_finish(ended)

    # -- async attempts on the server's loop (host mode) --------------------------------------

    def _start_on_host(self, host: asyncio.AbstractEventLoop, record: InvocationRecord) -> bool:
        """Start ``record``'s async attempt on the server's loop: at once when called on it,
        else through the loop's queue. False when that loop is gone (the loop thread runs it)."""
        if threading.get_ident() == self._host_thread:
            self._start_host_task(record)
            return True
        try:
            host.call_soon_threadsafe(self._start_host_task, record)
        except RuntimeError:  # closed: the server stopped without a lifespan shutdown
            with self._lock:
                self._host = None
            return False
        return True

    def _start_host_task(self, record: InvocationRecord) -> None:
        with self._count_lock:
            self._pending -= 1
        if self._closed:
            return  # shutting down: it stays unfinished in the journal
        assert self._host is not None
        task = self._host.create_task(self._run_async(record, watch=self._blocking_threshold))
        self._host_tasks.add(task)
        task.add_done_callback(self._host_tasks.discard)

    def _cancel_running(self, request_id: str) -> None:
        def cancel(loop: asyncio.AbstractEventLoop) -> None:
            for task in asyncio.all_tasks(loop):
                if task.get_name().split(":")[1:2] == [request_id]:
                    task.cancel()

        for loop in (self._loop_thread.loop, self._host):
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    loop.call_soon_threadsafe(cancel, loop)

    # -- sync attempts on worker threads ------------------------------------------------------

    def _next_record(self) -> InvocationRecord | None:
        """The next queued record for a worker thread, or None when shutting down."""
        with self._count_lock:
            self._idle += 1
        record = self._queue.get()
        with self._count_lock:
            # This wake-up used either a reservation made for an idle worker or our own slot.
            if self._reserved:
                self._reserved -= 1
            else:
                self._idle -= 1
            if record is not None:
                self._pending -= 1
        if record is None or self._closed:
            with self._lock:
                self._workers.discard(threading.current_thread())
            return None
        if record is _FROM_HEAP or self._heap:
            return self._by_priority(record)
        return record

    def _push(self, record: InvocationRecord) -> None:
        with self._heap_lock:
            heapq.heappush(self._heap, (-record.priority, next(self._heap_order), record))

    def _by_priority(self, got: InvocationRecord) -> InvocationRecord:
        """The due record to run of ``got`` (taken from the queue) and those in the heap: the
        highest priority, the first queued among equals. Records of priority 0 wait in the
        queue in order; the others in the heap. A record of the queue outranked by the heap
        joins the heap instead of running; a record of negative priority yields to one of
        priority 0 still queued (it goes back to the heap, its token to the end)."""
        with self._heap_lock:
            if got is not _FROM_HEAP:
                if not self._heap or -self._heap[0][0] <= got.priority:
                    return got
                heapq.heappush(self._heap, (-got.priority, next(self._heap_order), got))
            best = heapq.heappop(self._heap)[2]
        if best.priority >= 0:
            return best
        try:
            other = self._queue.get_nowait()
        except queue.Empty:
            return best
        if other is None or other is _FROM_HEAP:
            self._queue.put(other)  # a stop, or another heap record: none outranks best
            return best
        self._push(best)
        self._queue.put(_FROM_HEAP)
        return other

    def _worker_main(self) -> None:
        while (record := self._next_record()) is not None:
            try:
                if not self._run_sync(record):
                    return  # abandoned at its deadline: a replacement took this thread's place
            except Exception:  # pragma: no cover - a bug of ours; the pool must not shrink
                log.exception("bgfunctions worker failed on %s; continuing", record.request_id)

    def _run_sync(self, record: InvocationRecord) -> bool:
        """Run one sync attempt; False when this thread was abandoned meanwhile."""
        started = self.lifecycle.begin(record)
        if started is None:
            return True
        prepared = self.lifecycle.prepare(started)
        if prepared is None:
            return True
        function, context, timeout = prepared.function, prepared.context, prepared.timeout
        attempt = started.attempts[-1]
        token = _Running(
            started, function, threading.current_thread(), context.deadline or 0.0, timeout
        )
        with self._running_lock:
            # Read under the lock: each lane stays in deadline order.
            token.due = self.clock.monotonic() + timeout
            self._sync_running[id(token)] = token
            lane = self._lanes.get(timeout)
            if lane is None:
                lane = self._lanes[timeout] = {}
            lane[id(token)] = token
            arm = timeout not in self._lanes_armed
            if arm:
                self._lanes_armed.add(timeout)
        if arm:
            self._timers.add(token.due, lambda: self._check_lane(timeout))
        result = run_sync(prepared, finish=self._on_loop)
        with self._running_lock:
            abandoned = token.settled
            if not abandoned:
                token.settled = True
                del self._sync_running[id(token)]
                del lane[id(token)]
        self._finished_count += 1
        if abandoned:
            with self._lock:
                self._abandoned.discard(token.thread)
        if abandoned:
            log.warning(
                "function %r (request %s, attempt %d) returned after its %g s limit; it was "
                "already recorded as timed out, so its result is ignored",
                function.name,
                started.request_id,
                attempt.number,
                timeout,
            )
            return False
        warn_ignored_return(function, result.value)
        self._retry_or_finish(
            self.lifecycle.end(started, result.outcome, result.error, ended_at=result.ended_at)
        )
        return True

    def _check_lane(self, timeout: float) -> None:
        """On the timer thread: expire the attempts of this time limit past their deadline,
        then wait for the oldest one left (if any)."""
        expired: list[_Running] = []
        next_due: float | None = None
        with self._running_lock:
            now = self.clock.monotonic()
            for token in self._lanes.get(timeout, {}).values():
                if token.due > now:
                    next_due = token.due
                    break
                expired.append(token)
            if next_due is None:
                self._lanes_armed.discard(timeout)
        try:
            for token in expired:
                try:
                    self._expire(token)
                except Exception:  # a bug or a journal error: the other attempts still expire
                    log.exception("ending timed-out attempt of %s failed", token.record.request_id)
        finally:
            if next_due is not None:  # the lane stays armed: it must keep its timer
                self._timers.add(next_due, lambda: self._check_lane(timeout))

    def _expire(self, token: _Running) -> None:
        """A sync attempt reached its deadline: record it timed out and abandon its thread."""
        with self._running_lock:
            if token.settled:
                return
            token.settled = True
            del self._sync_running[id(token)]
            del self._lanes[token.timeout][id(token)]
        with self._lock:
            self._workers.discard(token.thread)
            self._abandoned.add(token.thread)
            if (
                not self._queue.empty()
                and not self._closed
                and len(self._workers) < self.max_workers
            ):
                self._spawn_worker()
        attempt = token.record.attempts[-1].number
        log.warning(
            "function %r (request %s, attempt %d) timed out after %g s; its thread cannot be "
            "stopped and keeps running, and whatever it returns will be ignored",
            token.function.name,
            token.record.request_id,
            attempt,
            token.timeout,
        )
        self._retry_or_finish(
            self.lifecycle.end(
                token.record,
                Outcome.TIMED_OUT,
                timeout_error(token.function, token.timeout, attempt),
                ended_at=token.deadline,
            )
        )

    def _run_sync_call(self, prepared: PreparedAttempt) -> AttemptResult:
        """A synchronous function's sync handler, on a thread of the call pool."""
        return run_sync(prepared, finish=self._on_loop)

    def _on_loop(self, coro: Coroutine[Any, Any, object]) -> object:
        """Run a coroutine on the loop thread and wait for its result (from a worker)."""
        loop = self._ensure_loop()
        return self._wait_future(asyncio.run_coroutine_threadsafe(coro, loop), None)

    def _wait_future(self, future: concurrent.futures.Future[T], timeout: float | None) -> T:
        """``future.result(timeout)``, waiting on the executor's clock."""
        done = threading.Condition()
        future.add_done_callback(lambda _: _notify(done))
        with done:
            if not future.done() and not self.clock.wait(done, timeout) and not future.done():
                raise concurrent.futures.TimeoutError
        return future.result()

    # -- synchronous functions ----------------------------------------------------------------

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        self._check_open()
        timeout = self.binding.limits_for(function).sync_timeout
        context = self.lifecycle.sync_context(function, request, params, request_id, timeout)
        prepared = PreparedAttempt(function, request, context, timeout)
        if function.is_async:
            future = asyncio.run_coroutine_threadsafe(run_async(prepared), self._ensure_loop())
        else:
            future = self._pool().submit(self._run_sync_call, prepared)
        try:
            # Enforced here too, not only on the loop: a handler that blocks the loop thread
            # cannot be cancelled there, and the caller must still get its answer on time.
            result: AttemptResult = self._wait_future(future, timeout)
        except concurrent.futures.TimeoutError:
            raise self._gave_up(function, future, request_id, timeout) from None
        return _response(result, function, context)

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        self._check_open()
        timeout = self.binding.limits_for(function).sync_timeout
        context = self.lifecycle.sync_context(function, request, params, request_id, timeout)
        prepared = PreparedAttempt(function, request, context, timeout)
        if function.is_async:
            # On the executor's loop, not the caller's: a handler that blocks (time.sleep)
            # then holds that loop, not the server's, and the time-out below still answers.
            future = asyncio.run_coroutine_threadsafe(run_async(prepared), self._ensure_loop())
        else:
            future = self._pool().submit(self._run_sync_call, prepared)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise self._gave_up(function, future, request_id, timeout) from None
        except asyncio.CancelledError:
            # The caller was cancelled (the server stopping it at shutdown): nobody waits for
            # this call any more, and shutdown must not wait for its thread either.
            future.cancel()
            if not function.is_async:
                self._pool().abandon(future)
            raise
        return _response(result, function, context)

    def _gave_up(
        self,
        function: Function,
        future: concurrent.futures.Future[AttemptResult],
        request_id: str,
        timeout: float,
    ) -> TimeoutError:
        """A synchronous call ran out of time: stop waiting for it, and free its thread."""
        future.cancel()  # still queued: it must not run after the client got its 500
        if not function.is_async and self._pool().abandon(future):
            log.warning(
                "function %r (request %s) timed out after %g s; its thread cannot be stopped "
                "and keeps running, another takes its place, and whatever it returns will be "
                "ignored",
                function.name,
                request_id,
                timeout,
            )
        return timeout_error(function, timeout, 1)

    def _check_open(self) -> None:
        super()._check_accepting()
        if not self._started:
            self.start()

    def _pool(self) -> CallPool:
        with self._lock:
            if self._call_pool is None:
                self._call_pool = CallPool(max(self.max_workers, 8), "bgfunctions-call")
            return self._call_pool


def _notify(condition: threading.Condition) -> None:
    with condition:
        condition.notify_all()


def _response(result: AttemptResult, function: Function, context: Context) -> Response:
    if result.outcome is not Outcome.SUCCEEDED:
        assert result.error is not None
        raise result.error
    return to_response(result.value, function, context)
