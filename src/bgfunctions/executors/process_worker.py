"""The worker processes of the process engine, both sides of the pipe.

The parent side is :class:`WorkerProcess`: one process (started with ``spawn``, never forked from
the threaded server), the leader of its own process group, and the pipe to it; the parent kills
the whole group when an attempt times out, is cancelled, or leaves processes behind. The child
side (:func:`_process_main`) loads each function from its file once and runs attempts through
the one runner (:func:`bgfunctions.attempts.run_sync`), replying with how each ended.

Messages are JSON: the parent sends an attempt (:func:`attempt_message`), the child answers with
a reply (``outcome``, the error's type and message, a synchronous call's response).
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping
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
    to_response,
)
from bgfunctions.clock import Clock, SystemClock
from bgfunctions.config import Config
from bgfunctions.errors import JournalError
from bgfunctions.invocation import InvocationRecord, Outcome, Step, error_type_name
from bgfunctions.registry import Function

__all__ = ["RemoteError", "WorkerProcess"]

log = logging.getLogger("bgfunctions.executor")
_CONTEXT = multiprocessing.get_context("spawn")
_REAL_TIME = SystemClock()  # the pipe's waits are in real time, whatever the executor's clock


class WorkerProcess:
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

    def run(
        self,
        message: Mapping[str, Any],
        timeout: float,
        on_step: Callable[[Step], str | None] | None = None,
    ) -> dict[str, Any] | None:
        """Send one attempt; its reply, or None when the process died or ran out of time. Then,
        or when the handler left processes running, the worker and its group are killed.

        Each durable step the attempt commits comes first, as a message of its own: ``on_step``
        stores it (None) or says why it could not (a text), and the worker waits for that
        answer before its handler goes on."""
        try:
            self.conn.send_bytes(json.dumps(message).encode())
        except (BrokenPipeError, OSError):
            self.kill()
            return None
        end = _REAL_TIME.monotonic() + timeout
        reply: dict[str, Any] | None = None
        while True:
            left = max(0.0, end - _REAL_TIME.monotonic())
            ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], left)
            self.timed_out = not ready
            if self.conn not in ready:
                break  # out of time, or the process died without a word
            try:
                received = json.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                break
            if not (isinstance(received, dict) and "step" in received):
                reply = received
                break
            refused: str | None = "this attempt cannot store steps"
            if on_step is not None:
                refused = on_step(Step.from_json(received["step"]))
            try:
                self.conn.send_bytes(json.dumps({"refused": refused}).encode())
            except (BrokenPipeError, OSError):
                break
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


class RemoteError(Exception):
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
        reply = _run_one(message, cache, clock, _ParentStore(conn))
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


class _ParentStore:
    """How a worker process stores a durable step: it sends the step to the parent, which
    commits it in the journal, and waits for the answer before the handler goes on."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def __call__(self, step: Step) -> None:
        self.conn.send_bytes(json.dumps({"step": step.to_json()}).encode())
        refused = json.loads(self.conn.recv_bytes())["refused"]
        if refused is not None:
            raise JournalError(refused)


def _run_one(
    message: Mapping[str, Any],
    cache: dict[tuple[str, int], Function],
    clock: Clock,
    store: _ParentStore,
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
        # A synchronous function's steps stay in its one attempt, as on the other engines.
        step=None if message["sync_call"] else make_steps(function, record, clock, store),
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
