"""The process executor: attempts run in long-lived worker processes that can be killed.

Each worker thread of the pool owns one worker process (started with ``spawn``, never forked
from this threaded process). A process loads each function from its file once and runs many
attempts. When an attempt passes its limit, its process is killed for real (SIGKILL), the
attempt is recorded ``timed_out``, and a fresh process takes its place; a process that dies on its
own (``os._exit``, a signal, out of memory) records the attempt ``crashed``. Either way the
normal retry schedule follows and the pool keeps its full capacity.

Each worker process leads its own process group, so whatever a handler starts (``subprocess``,
``multiprocessing``) is in that group: a process that is still running when its attempt ends,
times out or crashes, or when the executor shuts down, is killed with the whole group, and the
worker is replaced. On Linux the worker is also a child subreaper, so a daemon that forked twice
is still seen. Only a process that leaves the group on purpose (``start_new_session=True``,
``setsid``) is out of reach.

What it shares with the thread engine (the queue of due records, the worker threads, the timer
thread, journal maintenance) is the :class:`~bgfunctions.executors.workers.WorkerPool` it holds;
the processes themselves, both sides of the pipe, are :mod:`~bgfunctions.executors.process_worker`.

Durable steps (``context.step.run``) work here as on the other engines: a worker process never
opens the journal, so it sends each step to this process, which commits it through the lifecycle
before the handler goes on; each attempt is sent with the steps committed so far.

Choose it when handlers may hang in code that cannot be interrupted (C extensions, blocking
I/O without timeouts), or must not share memory with the server. It costs a process per worker
and a JSON round trip per attempt; the thread executor is lighter for well-behaved handlers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from bgfunctions.attempts import timeout_error
from bgfunctions.clock import Clock, SystemClock
from bgfunctions.executors.base import Executor, ExecutorStats
from bgfunctions.executors.process_worker import RemoteError, WorkerProcess
from bgfunctions.executors.workers import WorkerPool
from bgfunctions.invocation import InvocationRecord, Outcome, Step
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response

__all__ = ["ProcessExecutor"]

log = logging.getLogger("bgfunctions.executor")


class ProcessExecutor(Executor):
    """Runs every attempt (sync or async handler) in a pool of worker processes."""

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        max_pending: int | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        maintenance_interval: float = 1.0,
    ) -> None:
        """``max_workers``: worker processes (default: one per CPU), each driven by a worker
        thread. ``maintenance_interval``: as :class:`~bgfunctions.ThreadExecutor`'s."""
        super().__init__(clock=clock if clock is not None else SystemClock(), journal=journal)
        self._pool = WorkerPool(
            self.lifecycle,
            self.clock,
            owner="ProcessExecutor",
            max_workers=max_workers if max_workers is not None else (os.cpu_count() or 1),
            max_pending=max_pending,
            target=self._worker_main,
            maintenance_interval=maintenance_interval,
        )
        self.max_workers = self._pool.max_workers
        self.max_pending = max_pending
        self.maintenance_interval = maintenance_interval
        self.processes_spawned = 0
        self._processes: set[WorkerProcess] = set()
        self._running_in: dict[str, WorkerProcess] = {}  # request id -> the process running it

    # -- starting, stopping, figures ----------------------------------------------------------

    def start(self) -> None:
        if not self._closed:
            self._pool.start()

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """Stop accepting and stop the worker threads, each with its process. Attempts already
        running get ``grace`` seconds (all they need with ``wait=True`` and no grace); processes
        still running after that are killed, and their attempts recorded ``crashed`` (a failed
        attempt, retried on recovery). Invocations not started stay unfinished in the journal."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        killer = None
        if grace is not None or not wait:
            killer = threading.Timer(grace or 0.0, self._kill_all)
            killer.daemon = True
            killer.start()
        try:
            self._pool.join(self._pool.stop(), None)
        finally:
            if killer is not None:
                killer.cancel()
            self._kill_all()

    def stats(self) -> ExecutorStats:
        pool = self._pool
        return ExecutorStats(
            pending=pool.pending,
            running=self._running_count,
            workers=pool.workers,
            spawned=pool.spawned,
        )

    # -- accepting and dispatching ------------------------------------------------------------

    def _check_accepting(self) -> None:
        super()._check_accepting()
        self._pool.check_room(self._committing)

    def _check_open(self) -> None:
        """For a synchronous call: open (no bound on waiting work), and started."""
        super()._check_accepting()
        self.start()

    def _dispatch(self, record: InvocationRecord) -> None:
        self._pool.schedule(record)  # every attempt goes to a worker thread and its process

    # -- attempts in worker processes ---------------------------------------------------------

    def _new_process(self) -> WorkerProcess:
        worker = WorkerProcess()
        with self._lock:
            self.processes_spawned += 1
            self._processes.add(worker)
        return worker

    def _drop_process(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._processes.discard(worker)

    def _worker_main(self) -> None:
        """A worker thread: it owns one process at a time, and replaces it when killed."""
        worker: WorkerProcess | None = None
        try:
            while (record := self._pool.take()) is not None:
                worker = self._run(record, worker)
        finally:
            if worker is not None:
                worker.stop()
                self._drop_process(worker)

    def _run(self, record: InvocationRecord, worker: WorkerProcess | None) -> WorkerProcess | None:
        """Run ``record``'s next attempt in ``worker`` (started if None); the process to use
        next (None when this one was killed)."""
        # The process starts before the claim: its start-up (a spawn, a second or more on a
        # loaded machine) must not eat into the attempt's time limit.
        no_process: Exception | None = None
        if worker is None:
            try:
                worker = self._new_process()
            except Exception as exc:
                no_process = exc
        started = self.lifecycle.begin(record)
        if started is None:
            return worker
        try:
            if no_process is not None:
                raise no_process
            assert worker is not None
            function = self.binding.lookup(started.function)
            timeout = self.binding.limits_for(function).background_timeout
            deadline = started.attempts[-1].started_at + timeout
        except Exception as exc:
            # No function (a reload removed it) or no process to run it in: the claimed
            # attempt still ends, and this thread lives on.
            self._pool.after(self.lifecycle.end(started, Outcome.ERROR, exc))
            return worker
        with self._lock:
            self._running_count += 1
            self._running_in[started.request_id] = worker
            # A cancel between the claim and here found no process to kill: honour it.
            early = started.request_id in self.lifecycle.cancel_requested
        stored: list[Step] = []  # the durable steps this attempt committed
        try:
            if early:
                outcome, error = Outcome.CANCELLED, None
            else:
                outcome, error, _ = self._attempt(
                    worker, function, started, timeout, deadline, steps=stored
                )
        finally:
            with self._lock:
                self._running_count -= 1
                del self._running_in[started.request_id]
        if worker.closed:  # timed out, crashed, or killed with what the handler left
            self._drop_process(worker)
            worker = None
        ended_at = deadline if outcome is Outcome.TIMED_OUT else None
        # Committed steps stay committed however the attempt ended: the next one replays them.
        ended = started.with_steps((*started.steps, *stored))
        self._pool.after(self.lifecycle.end(ended, outcome, error, ended_at=ended_at))
        return worker

    def _attempt(
        self,
        worker: WorkerProcess,
        function: Function,
        record: InvocationRecord,
        timeout: float,
        deadline: float,
        *,
        sync_call: bool = False,
        steps: list[Step] | None = None,
    ) -> tuple[Outcome, BaseException | None, dict[str, Any] | None]:
        """Run one attempt in ``worker``: how it ended, and the worker's reply. Each durable
        step the handler commits is stored through the lifecycle, then added to ``steps``."""
        if function.file is None:
            return (
                Outcome.ERROR,
                RuntimeError(
                    f"function {function.name!r} was added in code, not loaded from a file; the "
                    "process executor can only run functions from their files"
                ),
                None,
            )
        try:
            loaded = self.journal.with_body(record)  # a durable journal keeps it until now
        except Exception as exc:
            return Outcome.ERROR, exc, None
        message: dict[str, Any] = {
            "file": str(function.file),
            "package": function.file.parent.name == function.name,
            "name": function.name,
            "background": function.background,
            "record": loaded.to_json(),
            "attempt": record.attempts[-1].number if record.attempts else 1,
            "deadline": deadline,
            "trust_proxy": self.binding.trust_proxy,
            "sync_call": sync_call,
        }

        def store(step: Step) -> str | None:
            if steps is None:
                return "a synchronous function's call stores no steps"
            try:
                self.lifecycle.store_step(record.request_id, step)
            except Exception as exc:
                return str(exc)
            steps.append(step)
            return None

        reply = worker.run(message, max(0.0, timeout), store)
        if reply is None:
            if worker.cancelled:
                return Outcome.CANCELLED, None, None
            if worker.timed_out:
                log.warning(
                    "function %r (request %s) ran past its %g s limit; its worker process was "
                    "killed and will be replaced",
                    function.name,
                    record.request_id,
                    timeout,
                )
                return Outcome.TIMED_OUT, timeout_error(function, timeout, message["attempt"]), None
            return (
                Outcome.CRASHED,
                RuntimeError(f"function {function.name!r}: {worker.exit_description}"),
                None,
            )
        if reply.get("leftover"):
            log.warning(
                "function %r (request %s) left processes running after its attempt; they were "
                "killed with its worker process's group",
                function.name,
                record.request_id,
            )
        outcome = Outcome(reply["outcome"])
        error = None
        if reply.get("error_type"):
            error = RemoteError(reply["error_type"], reply.get("error_message") or "")
        return outcome, error, reply

    # -- synchronous functions, also in a process -----------------------------------------

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        self._check_open()
        timeout = self.binding.limits_for(function).sync_timeout
        now = self.clock.now()
        record = InvocationRecord.of_request(
            request, request_id=request_id, function=function.name, params=params, accepted_at=now
        )
        worker = self._new_process()
        try:
            outcome, error, reply = self._attempt(
                worker, function, record, timeout, now + timeout, sync_call=True
            )
        finally:
            worker.stop()
            self._drop_process(worker)
        if outcome is not Outcome.SUCCEEDED or reply is None:
            raise error or RuntimeError(f"function {function.name!r} failed")
        data = reply["response"]
        return Response(
            base64.b64decode(data["body"]),
            status=data["status"],
            headers=[tuple(pair) for pair in data["headers"]],
        )

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        return await asyncio.to_thread(self.call, function, request, params, request_id)

    def _cancel_running(self, request_id: str) -> None:
        """A running attempt was cancelled: kill its process (and what the handler started);
        the attempt ends ``cancelled`` and a new process takes the old one's place."""
        with self._lock:
            worker = self._running_in.get(request_id)
            if worker is None or worker.closed:
                return  # it ended meanwhile, or has not reached its process yet
            worker.cancelled = True
            worker.kill_group()
        log.info("attempt of %s cancelled: its worker process was killed", request_id)

    def _kill_all(self) -> None:
        with self._lock:
            workers = list(self._processes)
        for worker in workers:
            worker.kill_group()
