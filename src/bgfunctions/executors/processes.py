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

Choose it when handlers may hang in code that cannot be interrupted (C extensions, blocking
I/O without timeouts), or must not share memory with the server. It costs a process per worker
and a JSON round trip per attempt; the thread executor is lighter for well-behaved handlers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bgfunctions._loader import find_handler, is_async_handler, load_module
from bgfunctions.attempts import (
    PreparedAttempt,
    make_context,
    make_steps,
    record_request,
    run_sync,
    timeout_error,
    to_response,
)
from bgfunctions.clock import Clock, SystemClock
from bgfunctions.config import Config
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.invocation import InvocationRecord, Outcome, error_type_name
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response

__all__ = ["ProcessExecutor"]

log = logging.getLogger("bgfunctions.executor")
_CONTEXT = multiprocessing.get_context("spawn")


class _Worker:
    """One worker process (the leader of its own process group) and the pipe to it."""

    def __init__(self) -> None:
        parent, child = _CONTEXT.Pipe()
        self.conn = parent
        self.process: BaseProcess = _CONTEXT.Process(
            target=_process_main, args=(child,), name="bgfunctions-process", daemon=True
        )
        self.process.start()
        child.close()
        self.timed_out = False
        self.cancelled = False  # killed because its attempt was cancelled
        self.closed = False
        # Wait until it is ready, so that its start-up never eats into an attempt's time.
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], 60)
        if self.conn not in ready:
            self.kill()
            raise RuntimeError(
                f"a bgfunctions worker process did not start: {self.exit_description}"
            )
        self.conn.recv_bytes()

    def run(self, message: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send one attempt; its reply, or None when the process died or ran out of time. Then,
        or when the handler left processes running, the worker and its group are killed."""
        try:
            self.conn.send_bytes(json.dumps(message).encode())
        except (BrokenPipeError, OSError):
            self.kill()
            return None
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], timeout)
        self.timed_out = not ready
        reply: dict[str, Any] | None = None
        if self.conn in ready:
            with contextlib.suppress(EOFError, OSError):
                reply = json.loads(self.conn.recv_bytes())
        if reply is None or reply.get("leftover"):
            self.kill()
        return reply

    @property
    def exit_description(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is None:
            return "the worker process did not answer"
        if code < 0:
            try:
                return f"the worker process was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"the worker process was killed by signal {-code}"
        return f"the worker process exited with code {code}"

    def kill_group(self) -> None:
        """SIGKILL the worker and everything in its process group.

        The group's id is the worker's pid, which no new process can take while the worker is
        unreaped or any member of its group is alive; so this is safe even after a reap."""
        pid = self.process.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def kill(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.kill_group()
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send_bytes(b"null")
        # Wait on the sentinel, not join(): the group is killed before the leader is reaped.
        multiprocessing.connection.wait([self.process.sentinel], 2)
        self.kill()


class ProcessExecutor(ThreadExecutor):
    """Runs every attempt (sync or async handler) in a pool of worker processes."""

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        max_pending: int | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(
            max_workers=max_workers if max_workers is not None else (os.cpu_count() or 1),
            max_pending=max_pending,
            clock=clock if clock is not None else SystemClock(),
            journal=journal,
        )
        self.processes_spawned = 0
        self._processes: set[_Worker] = set()
        self._running_in: dict[str, _Worker] = {}  # request id -> the process running it

    # Every attempt goes to a worker thread, which hands it to its process.
    def _ready(self, record: InvocationRecord) -> None:
        self._enqueue(record)

    def _new_process(self) -> _Worker:
        worker = _Worker()
        with self._lock:
            self.processes_spawned += 1
            self._processes.add(worker)
        return worker

    def _drop_process(self, worker: _Worker) -> None:
        with self._lock:
            self._processes.discard(worker)

    def _worker_main(self) -> None:
        worker: _Worker | None = None
        try:
            while (record := self._next_record()) is not None:
                started = self.lifecycle.begin(record)
                if started is None:
                    continue
                try:
                    function = self.binding.lookup(started.function)
                    timeout = self.binding.limits_for(function).background_timeout
                    deadline = started.attempts[-1].started_at + timeout
                    if worker is None:
                        worker = self._new_process()
                except Exception as exc:
                    # No function (a reload removed it) or no process to run it in: the claimed
                    # attempt still ends, and this thread lives on.
                    self._retry_or_finish(self.lifecycle.end(started, Outcome.ERROR, exc))
                    continue
                with self._lock:
                    self._running_count += 1
                    self._running_in[started.request_id] = worker
                    # A cancel between the claim and here found no process to kill: honour it.
                    early = started.request_id in self.lifecycle.cancel_requested
                try:
                    if early:
                        outcome, error = Outcome.CANCELLED, None
                    else:
                        outcome, error, _ = self._attempt(
                            worker, function, started, timeout, deadline
                        )
                finally:
                    with self._lock:
                        self._running_count -= 1
                        del self._running_in[started.request_id]
                if worker.closed:  # timed out, crashed, or killed with what the handler left
                    self._drop_process(worker)
                    worker = None
                ended_at = deadline if outcome is Outcome.TIMED_OUT else None
                self._retry_or_finish(
                    self.lifecycle.end(started, outcome, error, ended_at=ended_at)
                )
        finally:
            if worker is not None:
                worker.stop()
                self._drop_process(worker)

    def _attempt(
        self,
        worker: _Worker,
        function: Function,
        record: InvocationRecord,
        timeout: float,
        deadline: float,
        *,
        sync_call: bool = False,
    ) -> tuple[Outcome, BaseException | None, dict[str, Any] | None]:
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
        reply = worker.run(message, max(0.0, timeout))
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
            error = _RemoteError(reply["error_type"], reply.get("error_message") or "")
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

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """As the thread executor; processes still running after ``grace`` are killed, and
        their attempts recorded ``crashed`` (a failed attempt, retried on recovery)."""
        if self._closed:
            return
        killer = None
        if grace is not None or not wait:
            killer = threading.Timer(grace or 0.0, self._kill_all)
            killer.daemon = True
            killer.start()
        try:
            super().shutdown(wait=True)
        finally:
            if killer is not None:
                killer.cancel()
            self._kill_all()

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


class _RemoteError(Exception):
    """An exception raised in a worker process, by its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.remote_type = type_name


# -- the worker process ----------------------------------------------------------------------


def _process_main(conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    # Lead a process group of our own: what a handler starts joins it, and dies with it.
    os.setpgid(0, 0)
    _adopt_orphans()
    _exit_with_the_parent()
    cache: dict[tuple[str, int], Function] = {}
    clock = SystemClock()
    conn.send_bytes(b'"ready"')
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message is None:
            return
        reply = _run_one(message, cache, clock)
        if _has_children():
            # The parent kills this process's group, and with it what the handler left running.
            reply["leftover"] = True
        conn.send_bytes(json.dumps(reply).encode())


def _adopt_orphans() -> None:
    """On Linux, become a child subreaper: a process that the handler's children leave behind
    (a daemon that forked twice) is re-parented here, where ``_has_children`` sees it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_PR_SET_CHILD_SUBREAPER = 36


def _has_children() -> bool:
    """Whether a child of this process is still running; finished ones are reaped."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _exit_with_the_parent() -> None:
    """Die as soon as the server that spawned this process dies (kill -9 included).

    Its running attempt is then taken over by recovery (``interrupted``) and retried; left
    alive, the orphan would go on running that attempt next to its retry, for up to the
    15-minute limit. The spawned child holds a sentinel of its parent that becomes ready
    when the parent is gone.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)  # what the handler started goes too
        os._exit(1)

    threading.Thread(target=watch, name="bgfunctions-parent-watch", daemon=True).start()


def _load(message: Mapping[str, Any], cache: dict[tuple[str, int], Function]) -> Function:
    path = Path(message["file"])
    key = (str(path), path.stat().st_mtime_ns)
    function = cache.get(key)
    if function is None:
        # As discovery does: relative imports reach a directory form's siblings, then the
        # functions directory (``from ._shared import x``).
        search = (path.parent, path.parent.parent) if message["package"] else (path.parent,)
        module = load_module(path, function=message["name"], search_path=search)
        handler = find_handler(module, path, function=message["name"])
        function = Function(
            name=message["name"],
            handler=handler,  # type: ignore[arg-type]
            config=Config(),
            background=message["background"],
            file=path,
            is_async=is_async_handler(handler),
        )
        cache[key] = function
    return function


_NO_STEPS = (
    "the process executor cannot store durable steps yet; run this function on the inline, "
    "thread or Celery executor (see docs/workflows.md)"
)


def _run_one(
    message: Mapping[str, Any], cache: dict[tuple[str, int], Function], clock: Clock
) -> dict[str, Any]:
    record = InvocationRecord.from_json(message["record"])
    try:
        function = _load(message, cache)
    except Exception as exc:
        return _failure(Outcome.ERROR, exc)
    request = record_request(record)
    context = make_context(
        function,
        request,
        request_id=record.request_id,
        params=record.params,
        attempt=message["attempt"],
        deadline=message["deadline"],
        clock=clock,
        trust_proxy=message["trust_proxy"],
        site=None,
        # The store would have to reach the parent's journal from here: not built yet.
        step=make_steps(function, record, clock, None, refusal=_NO_STEPS),
    )
    timeout = max(0.0, message["deadline"] - clock.now())
    # Nothing here cancels an attempt (the parent kills the process at the deadline), so a
    # CancelledError is the handler's own; sys.exit() and KeyboardInterrupt are its failure too,
    # reported by this process, which lives on. Only a process that really died is "crashed".
    result = run_sync(PreparedAttempt(function, request, context, timeout))
    if result.outcome is not Outcome.SUCCEEDED:
        assert result.error is not None
        return _failure(result.outcome, result.error)
    value = result.value
    reply: dict[str, Any] = {"outcome": Outcome.SUCCEEDED.value}
    if message["sync_call"]:
        try:
            response = to_response(value, function, context)
        except Exception as exc:
            return _failure(Outcome.ERROR, exc)
        reply["response"] = {
            "status": response.status,
            "headers": [list(p) for p in response.headers.raw],
            "body": base64.b64encode(response.body).decode("ascii"),
        }
    return reply


def _failure(outcome: Outcome, exc: BaseException) -> dict[str, Any]:
    log.warning("attempt failed in worker process", exc_info=exc)
    return {
        "outcome": outcome.value,
        "error_type": error_type_name(exc),
        "error_message": str(exc),
    }
