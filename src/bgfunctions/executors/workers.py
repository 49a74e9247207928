"""The worker pool that the thread and process engines both hold: due records wait on one queue,
and up to ``max_workers`` worker threads take them; retries due later wait on one timer thread;
a durable journal's leases are renewed, and its unclaimed work taken up, on the same timer.

An engine gives the pool two things: ``target``, what a worker thread does (take records with
:meth:`WorkerPool.take` and run them where the engine runs attempts: in this thread, or in the
worker process the thread owns), and ``ready``, where a record goes when its attempt falls due
(by default the queue; the thread engine sends async handlers to an event loop instead).

Workers start as work waits. While every worker is busy, more start only when none of them
finished anything for a moment (:data:`STALL_CHECK`), or when they keep finishing but the
process left the CPU mostly idle meanwhile (:data:`IDLE_CPU_SHARE`): handlers that block or wait
on I/O get parallel threads, and quick ones are not slowed by threads fighting for the GIL. A
worker whose attempt cannot be stopped may be *abandoned* (:meth:`WorkerPool.abandon`): it
leaves the pool, and another takes its place.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable

from bgfunctions.clock import Clock, cpu_and_wall
from bgfunctions.errors import ConfigError, QueueFullError
from bgfunctions.executors.timers import TimerThread
from bgfunctions.invocation import InvocationRecord, State
from bgfunctions.lifecycle import Lifecycle

__all__ = ["IDLE_CPU_SHARE", "STALL_CHECK", "WorkerPool", "default_workers"]

log = logging.getLogger("bgfunctions.executor")

_FROM_HEAP = InvocationRecord(request_id="", function="", method="", url="", accepted_at=0.0)
"""What the queue carries for a record that waits in the priority heap."""

IDLE_CPU_SHARE = 0.5
"""Below this share of one CPU used by the whole process between two stall checks, busy
workers are waiting (on I/O, a sleep, a commit) rather than computing: more may start."""
STALL_CHECK = 0.05
"""Seconds between checks that busy workers still finish attempts; when none finished, more
start. Longer than the GIL's switch interval (5 ms), so a worker merely waiting for the GIL
is not taken for a stalled one."""


def default_workers() -> int:
    """The thread engine's default ``max_workers``: as ``ThreadPoolExecutor``'s."""
    return min(32, (os.cpu_count() or 1) + 4)


class WorkerPool:
    """Due records, the worker threads that take them, and the timer thread of one engine."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        clock: Clock,
        *,
        owner: str,
        max_workers: int,
        max_pending: int | None,
        target: Callable[[], None],
        ready: Callable[[InvocationRecord], None] | None = None,
        maintenance_interval: float = 1.0,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"{owner}.max_workers: expected an int >= 1; got {max_workers!r}")
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        ):
            raise ConfigError(
                f"{owner}.max_pending: expected None or an int >= 1; got {max_pending!r}"
            )
        self.lifecycle = lifecycle
        self.clock = clock
        self.owner = owner
        self.max_workers = max_workers
        self.max_pending = max_pending
        self.maintenance_interval = maintenance_interval
        self.timers = TimerThread(clock)
        self._target = target
        self._ready = ready if ready is not None else self.put
        # A C queue: workers block in get() without the GIL or any lock of ours, so handing
        # work over costs no lock convoy between the accepting thread and the workers.
        self._queue: queue.SimpleQueue[InvocationRecord | None] = queue.SimpleQueue()
        # Records with a priority other than 0 (enqueue(priority=)) wait in a heap; the queue
        # carries _FROM_HEAP for each, so that it still counts every waiting record.
        self._heap: list[tuple[int, int, InvocationRecord]] = []
        self._heap_lock = threading.Lock()
        self._heap_order = itertools.count()
        self._lock = threading.Lock()  # the worker sets
        self._workers: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        # Counters only (pending, idle): a lock of their own, never held for more than an
        # addition, so the accepting thread never waits behind a worker.
        self._count_lock = threading.Lock()
        self.pending = 0
        """Records scheduled and not yet taken by a worker (or a loop)."""
        self._idle = 0
        self._reserved = 0
        self.spawned = 0
        """Worker threads started so far."""
        self._stall_check_armed = False
        self._finished = 0  # attempts finished (approximate: a progress signal)
        self._last_progress = -1
        # The process's CPU time and the wall time at the last stall check: busy workers that
        # leave the CPU mostly idle are blocked (I/O, sleeps, commits), not fighting for it.
        self._last_cpu = cpu_and_wall()
        self._started = False
        self._closed = False

    # -- starting and stopping --------------------------------------------------------------

    def start(self) -> None:
        """Start the timer thread (idempotent); with a durable journal, take over its unfinished
        work and keep its leases renewed."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self.timers.start()
        if self.lifecycle.journal.durable:
            self.lifecycle.recover()
            self.timers.add(self.clock.monotonic() + self.maintenance_interval, self._maintain)

    @property
    def started(self) -> bool:
        return self._started

    def _maintain(self) -> None:
        """Every ``maintenance_interval``: renew leases, take over work of dead processes and
        work other processes added to the shared journal."""
        if self._closed:
            return
        try:
            self.lifecycle.heartbeat()
            self.lifecycle.recover()
        except Exception:
            log.warning("journal maintenance failed; retrying", exc_info=True)
        self.timers.add(self.clock.monotonic() + self.maintenance_interval, self._maintain)

    def stop(self) -> list[threading.Thread]:
        """Take no more records and run no more timers; each worker stops once its attempt is
        done. Returns the workers, for :meth:`join`."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)  # one stop signal per worker
        self.timers.stop()
        return workers

    def join(self, workers: list[threading.Thread], end: float | None) -> None:
        """Wait for ``workers`` until ``end`` (the clock's monotonic time; None: as long as
        they need), then for the timer thread."""
        for thread in workers:
            thread.join(None if end is None else max(0.0, end - self.clock.monotonic()))
        self.timers.join()

    # -- accepting and scheduling ---------------------------------------------------------------

    def check_room(self, committing: int, on_loops: int = 0) -> None:
        """Raise :class:`QueueFullError` when ``max_pending`` invocations are already held
        (``committing``: accepts handed to the journal, about to be scheduled; ``on_loops``:
        async attempts running on an event loop, which no worker thread bounds)."""
        if not self._started:
            self.start()
        held = self.pending + committing + on_loops
        if self.max_pending is not None and held >= self.max_pending:
            running = f" and {on_loops} async attempts running" if on_loops else ""
            error = QueueFullError(
                f"{self.owner} has {held - on_loops} invocations waiting{running} "
                f"(max_pending={self.max_pending})"
            )
            error.retry_after = 5.0
            raise error

    def schedule(self, record: InvocationRecord) -> None:
        """Hand ``record`` to ``ready`` at its ``next_run_at`` (now, or on the timer thread)."""
        now = self.clock.now()
        delay = (record.next_run_at if record.next_run_at is not None else now) - now
        if delay > 0 and (
            record.state is State.SLEEPING
            or (record.state is State.ACCEPTED and record.not_before is not None)
        ):
            # A durable sleep, or a first attempt delayed at enqueue (days, perhaps), is not
            # work waiting for a worker: it counts as pending (max_pending, stats) only once it
            # is due. The timer re-checks the time on the wall clock, so it never starts early.
            self.timers.add(self.clock.monotonic() + delay, lambda: self.schedule(record))
            return
        with self._count_lock:  # held for one addition only: never contended for long
            self.pending += 1
        if delay > 0:
            self.timers.add(self.clock.monotonic() + delay, lambda: self._ready(record))
        else:
            self._ready(record)

    def after(self, ended: InvocationRecord) -> None:
        """An attempt ended: schedule the next one if a retry (or a sleep's wake) is due."""
        if ended.state.waiting:
            self.schedule(ended)

    def taken(self) -> None:
        """A scheduled record was taken elsewhere than the queue (an event loop)."""
        with self._count_lock:
            self.pending -= 1

    def put(self, record: InvocationRecord) -> None:
        """Queue a due record for the workers, starting one if none is idle."""
        if self._closed:
            self.taken()  # it stays unfinished in the journal
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
                    self._spawn()
            return
        # Every worker is busy. If they are getting through the queue, one more thread would
        # only fight them for the GIL; if none finishes anything for a moment (handlers that
        # block), start another. Checked on the timer thread, one check at a time.
        self._arm_stall_check()

    # -- for worker threads -----------------------------------------------------------------

    def take(self) -> InvocationRecord | None:
        """The next queued record for this worker thread, or None: the thread must end."""
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
                self.pending -= 1
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

    def progress(self) -> None:
        """An attempt finished: the workers are getting through the queue."""
        self._finished += 1

    def abandon(self, thread: threading.Thread) -> None:
        """``thread`` runs an attempt that cannot be stopped: it leaves the pool (it ends when
        the attempt returns, calling :meth:`returned`), and another takes its place."""
        with self._lock:
            self._workers.discard(thread)
            self._abandoned.add(thread)
            if not self._queue.empty() and not self._closed:
                self._fill_one()

    def returned(self, thread: threading.Thread) -> None:
        """An abandoned ``thread``'s attempt returned: the thread ends."""
        with self._lock:
            self._abandoned.discard(thread)

    # -- figures ----------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def abandoned(self) -> int:
        """Abandoned threads still running their attempt."""
        with self._lock:
            return sum(1 for t in self._abandoned if t.is_alive())

    # -- starting workers -------------------------------------------------------------------

    def _fill_one(self) -> None:
        if len(self._workers) < self.max_workers:
            self._spawn()

    def _arm_stall_check(self) -> None:
        if not self._stall_check_armed:
            self._stall_check_armed = True
            # The CPU share is measured from now: an idle pause before this burst is not
            # taken for busy workers leaving the CPU idle.
            self._last_cpu = cpu_and_wall()
            self.timers.add(self.clock.monotonic() + STALL_CHECK, self._check_stall)

    def _check_stall(self) -> None:
        """Start workers while work waits and every worker is busy: enough for what waits when
        no attempt finished since the last check (handlers that block); twice as many when
        attempts finish but the process left the CPU mostly idle meanwhile (handlers that
        wait on I/O between short bursts: API calls, durable steps' commits). Busy workers on
        a busy CPU get no company: one more thread would only fight them for the GIL."""
        self._stall_check_armed = False
        cpu, wall = cpu_and_wall()
        last_cpu, last_wall = self._last_cpu
        self._last_cpu = (cpu, wall)
        if self._closed or self._queue.empty():
            return
        finished = self._finished
        if self._idle <= 0:
            waiting = self._queue.qsize()
            if finished == self._last_progress:  # stalled
                wanted = waiting
            elif cpu - last_cpu < IDLE_CPU_SHARE * (wall - last_wall):  # waiting on I/O
                wanted = min(waiting, len(self._workers))
            else:
                wanted = 0
            if wanted > 0:
                with self._lock:
                    for _ in range(min(wanted, self.max_workers - len(self._workers))):
                        self._spawn()
        self._last_progress = finished
        if len(self._workers) < self.max_workers:
            self._arm_stall_check()

    def _spawn(self) -> None:
        """Start a worker (lock held). When the OS refuses a thread, the work stays queued and
        the stall check tries again while it waits."""
        self.spawned += 1
        thread = threading.Thread(
            target=self._target, name=f"bgfunctions-worker-{self.spawned}", daemon=True
        )
        self._workers.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:
            # Never started: not a worker, which dispatch would count on and shutdown join.
            self._workers.discard(thread)
            log.warning("cannot start a worker thread (%s); queued work waits for one", exc)
            self._arm_stall_check()
