"""The thread engine: real time, a pool of worker threads for sync handlers, one event loop
thread (or the server's own loop) for async ones, and one timer thread for retries and sync
deadlines.

What it shares with the process engine (the queue of due records, its worker threads, the
timer thread, journal maintenance) is the :class:`~bgfunctions.executors.workers.WorkerPool` it
holds; what happens around an attempt is its :class:`~bgfunctions.lifecycle.Lifecycle`, and in
one :mod:`bgfunctions.attempts`. This module says where an attempt runs: a sync handler on a
worker thread, an async one on a loop.

A sync handler in a thread cannot be killed. At its deadline its attempt is recorded as timed out
and a warning names the function; the thread is abandoned (it stops counting against
``max_workers``, a replacement is started, and ``stats().abandoned_threads`` counts it until it
returns), and its late result is ignored (:mod:`~bgfunctions.executors.deadlines`). Use the
process executor to kill hung handlers for real. Synchronous functions run as
:mod:`~bgfunctions.executors.sync_calls` describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping

from bgfunctions.attempts import run_sync, timeout_error, warn_ignored_return
from bgfunctions.clock import Clock, ClockEventLoop, SystemClock
from bgfunctions.errors import ConfigError, UnknownFunctionError
from bgfunctions.executors.base import Executor, ExecutorStats
from bgfunctions.executors.calls import LoopThread, finish_tasks
from bgfunctions.executors.deadlines import DeadlineLanes, Running
from bgfunctions.executors.sync_calls import SyncCalls
from bgfunctions.executors.workers import WorkerPool, default_workers
from bgfunctions.invocation import InvocationRecord, Outcome
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import RetryPolicy

__all__ = ["ThreadExecutor"]

log = logging.getLogger("bgfunctions.executor")


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
        # Claims and ends of async attempts on a durable journal: on commit threads, where
        # concurrent ones share a group commit, not one after another on the loop (real time
        # only: a virtual-time loop must not wait for other threads).
        self.lifecycle.commit_off_loop = isinstance(self.clock, SystemClock)
        self._pool = WorkerPool(
            self.lifecycle,
            self.clock,
            owner="ThreadExecutor",
            max_workers=default_workers() if max_workers is None else max_workers,
            max_pending=max_pending,
            target=self._worker_main,
            ready=self._ready,
            maintenance_interval=maintenance_interval,
        )
        self.max_workers = self._pool.max_workers
        self.max_pending = max_pending
        self._blocking_threshold = blocking_threshold
        self._lanes = DeadlineLanes(self.clock, self._pool.timers, self._expired)
        self._loop_thread = LoopThread(
            self.clock,
            on_blocked=self.lifecycle.reports.blocked,
            on_starved=self.lifecycle.reports.starved,
            blocking_threshold=blocking_threshold,
        )
        self._calls = SyncCalls(self.lifecycle, self._loop_thread, max(self.max_workers, 8))
        # The server's loop, its thread, and the attempts running on it (host mode).
        self._host: asyncio.AbstractEventLoop | None = None
        self._host_thread: int | None = None
        self._host_tasks: set[asyncio.Task[None]] = set()
        # Async attempts running on either loop: they count against max_pending.
        self._on_loops = 0
        self._loops_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if not self._closed:
            self._pool.start()

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
        workers = self._pool.stop()
        limit = None if wait and grace is None else (grace or 0.0)
        end = None if limit is None else self.clock.monotonic() + limit
        self._finish_host_tasks(end)
        self._pool.join(workers, end)
        self._loop_thread.stop(None if end is None else max(0.0, end - self.clock.monotonic()))
        self.lifecycle.stop_commits()
        self._calls.shutdown(wait=wait)

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
        pool = self._pool
        return ExecutorStats(
            pending=pool.pending,
            running=self._lanes.running + self._on_loops,
            abandoned_threads=pool.abandoned + self._calls.abandoned,
            workers=pool.workers,
            spawned=pool.spawned,
        )

    # -- accepting and dispatching ------------------------------------------------------------

    def _check_accepting(self) -> None:
        super()._check_accepting()
        # Async attempts hold no worker thread, so nothing else bounds how many run at once
        # (each with its request): they count against max_pending as waiting ones do.
        self._pool.check_room(self._committing, self._on_loops)

    def _dispatch(self, record: InvocationRecord) -> None:
        self._pool.schedule(record)

    def _ready(self, record: InvocationRecord) -> None:
        """The record's next attempt is due now: hand it to a worker or to a loop."""
        try:
            function = self.binding.lookup(record.function)
        except UnknownFunctionError as exc:
            # Its function was removed (a reload): end it as failed rather than strand it.
            self._pool.taken()
            started = self.lifecycle.begin(record)
            if started is not None:
                self.lifecycle.end(started, Outcome.ERROR, exc, retry=RetryPolicy(delays=()))
            return
        if not function.is_async:
            self._pool.put(record)
            return
        host = self._host
        if host is not None and self._start_on_host(host, record):
            return
        self._loop_thread.ensure().call_soon_threadsafe(self._start_async, record)

    # -- async attempts on the loop thread ----------------------------------------------------

    def _start_async(self, record: InvocationRecord) -> None:
        self._count_on_loop(1)
        loop = self._loop_thread.loop
        assert loop is not None
        counted = [True]
        task = loop.create_task(self._run_async(record, counted))
        task.add_done_callback(lambda _: self._leave_loop(counted))

    def _count_on_loop(self, change: int) -> None:
        """An async attempt left the pool's count for a loop (1), or ended there (-1)."""
        if change > 0:
            self._pool.taken()
        with self._loops_lock:
            self._on_loops += change

    def _leave_loop(self, counted: list[bool]) -> None:
        """Once per attempt: when it ended, or (a task cancelled before it ran) when its task
        is done."""
        if counted[0]:
            counted[0] = False
            self._count_on_loop(-1)

    async def _run_async(
        self,
        record: InvocationRecord,
        counted: list[bool],
        watch: float | None = None,
        here: bool = False,
    ) -> None:
        try:
            ended = await self.lifecycle.run_on_loop(
                record, stopping=self._stopping, watch=watch, here=here
            )
        finally:
            self._leave_loop(counted)  # before what follows: a retry counts as waiting again
        if ended is not None:
            self._pool.after(ended)

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
        if self._closed:
            self._pool.taken()
            return  # shutting down: it stays unfinished in the journal
        self._count_on_loop(1)
        assert self._host is not None
        counted = [True]
        # One task per attempt, named as the handler's tasks are (cancel() finds it by name).
        task = self._host.create_task(
            self._run_async(record, counted, watch=self._blocking_threshold, here=True),
            name=f"{record.function}:{record.request_id}:{len(record.attempts) + 1}",
        )
        self._host_tasks.add(task)
        task.add_done_callback(self._host_tasks.discard)
        task.add_done_callback(lambda _: self._leave_loop(counted))

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

    def _worker_main(self) -> None:
        while (record := self._pool.take()) is not None:
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
        function, timeout = prepared.function, prepared.timeout
        token = self._lanes.watch(started, function, prepared.context.deadline or 0.0, timeout)
        result = run_sync(prepared, finish=self._loop_thread.run)
        settled = self._lanes.settle(token)
        self._pool.progress()
        if not settled:
            self._pool.returned(token.thread)
            log.warning(
                "function %r (request %s, attempt %d) returned after its %g s limit; it was "
                "already recorded as timed out, so its result is ignored",
                function.name,
                started.request_id,
                prepared.attempt,
                timeout,
            )
            return False
        warn_ignored_return(function, result.value)
        self._pool.after(
            self.lifecycle.end(started, result.outcome, result.error, ended_at=result.ended_at)
        )
        return True

    def _expired(self, token: Running) -> None:
        """A sync attempt reached its deadline: record it timed out and abandon its thread."""
        self._pool.abandon(token.thread)
        attempt = token.record.attempts[-1].number
        log.warning(
            "function %r (request %s, attempt %d) timed out after %g s; its thread cannot be "
            "stopped and keeps running, and whatever it returns will be ignored",
            token.function.name,
            token.record.request_id,
            attempt,
            token.timeout,
        )
        self._pool.after(
            self.lifecycle.end(
                token.record,
                Outcome.TIMED_OUT,
                timeout_error(token.function, token.timeout, attempt),
                ended_at=token.deadline,
            )
        )

    # -- synchronous functions ----------------------------------------------------------------

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        self._check_open()
        return self._calls.call(function, request, params, request_id)

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        self._check_open()
        return await self._calls.call_async(function, request, params, request_id)

    def _check_open(self) -> None:
        super()._check_accepting()
        self.start()
