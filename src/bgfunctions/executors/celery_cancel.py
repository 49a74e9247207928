"""Cancelling a running attempt on Celery: from the web tier to the child that runs it.

The web tier (:meth:`CeleryExecutor.cancel`) broadcasts the remote-control command
``bgfunctions_cancel(request_id, attempt)`` to the workers. Each worker's main process posts the
pair on its :class:`CancelBoard`, memory it shares with its prefork children, and sends
:data:`CANCEL_SIGNAL` to the child running a message of that invocation, if any. The child reads
the board and, when the attempt it runs is the one posted, marks the cancel in its lifecycle and
stops the handler: an async handler's task is cancelled on the child's loop; a sync handler gets
:class:`AttemptCancelled` raised where it is (as Ctrl-C raises ``KeyboardInterrupt``). The
attempt then ends ``cancelled``, with no further attempts, as on every engine. A child that
starts a posted attempt later (the cancel came first) cancels it before the handler runs.

A broadcast can miss (the attempt was between two states, a worker was reconnecting): the web
tier looks at the journal again and repeats it until the invocation is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import mmap
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from celery.signals import worker_process_init
from celery.worker import state as worker_state
from celery.worker.control import control_command

from bgfunctions.executors.celery_config import TASK_NAME
from bgfunctions.registry import Function

__all__ = [
    "CANCEL_COMMAND",
    "CANCEL_SIGNAL",
    "AttemptCancelled",
    "CancelBoard",
    "Cancellable",
    "install_signal_handler",
    "listen",
    "register_board",
]

log = logging.getLogger("bgfunctions.celery")

CANCEL_COMMAND = "bgfunctions_cancel"
CANCEL_SIGNAL = signal.SIGUSR2
"""Sent by a worker to the child running an attempt to cancel (Celery and billiard leave it
alone in the children)."""


class AttemptCancelled(BaseException):
    """Raised in a sync handler whose attempt was cancelled while it ran: it ends the handler
    (its ``finally`` blocks run), and the attempt is recorded ``cancelled``."""


class CancelBoard:
    """The attempts a worker was told to cancel, ``(request_id, attempt)`` pairs, in an
    anonymous shared mapping made before the worker forks its children: the main process posts,
    the children read. The newest ``SLOTS`` posts are kept (older ones have long ended)."""

    SLOTS = 128
    WIDTH = 64

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, self.SLOTS * self.WIDTH)
        self._next = 0
        self._lock = threading.Lock()

    def _key(self, request_id: str, attempt: int) -> bytes:
        key = f"{attempt} {request_id}".encode()[: self.WIDTH - 1]
        return key.ljust(self.WIDTH, b"\0")

    def post(self, request_id: str, attempt: int) -> None:
        key = self._key(request_id, attempt)
        with self._lock:
            start = (self._next % self.SLOTS) * self.WIDTH
            self._next += 1
            self._map[start : start + self.WIDTH] = key

    def posted(self, request_id: str, attempt: int) -> bool:
        key = self._key(request_id, attempt)
        found = self._map.find(key)
        while found != -1:
            if found % self.WIDTH == 0:
                return True
            found = self._map.find(key, found + 1)
        return False


class Cancellable:
    """Functions whose handlers a cancel can stop in this process: ``lookup`` gives the
    function with its handler wrapped. A wrapped handler does not start when its request id is
    in ``cancelled`` already, and a sync one marks, while it runs, that :class:`AttemptCancelled`
    may be raised into it (:attr:`in_sync`)."""

    def __init__(self, lookup: Callable[[str], Function], cancelled: set[str]) -> None:
        self._lookup = lookup
        self._cancelled = cancelled
        self._wrapped: dict[int, tuple[Function, Function]] = {}
        self.in_sync: str | None = None
        """The request id whose sync handler runs now, if any."""

    def lookup(self, name: str) -> Function:
        function = self._lookup(name)
        cached = self._wrapped.get(id(function))
        if cached is not None and cached[0] is function:
            return cached[1]  # the same object each time: the lifecycle reuses its Context
        handler = function.handler
        if handler is None:
            return function
        wrapped = dataclasses.replace(function, handler=self._wrap(handler))
        self._wrapped[id(function)] = (function, wrapped)
        return wrapped

    def _wrap(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        cancelled = self._cancelled
        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def run_async(request: Any, context: Any) -> Any:
                if context.request_id in cancelled:
                    raise asyncio.CancelledError  # cancelled before it started
                return await handler(request, context)

            return run_async

        @functools.wraps(handler)
        def run_sync(request: Any, context: Any) -> Any:
            rid = context.request_id
            self.in_sync = rid
            try:
                if rid in cancelled:
                    raise AttemptCancelled(f"invocation {rid} was cancelled before it started")
                return handler(request, context)
            finally:
                self.in_sync = None

        return run_sync


_BOARDS: weakref.WeakKeyDictionary[Any, CancelBoard] = weakref.WeakKeyDictionary()
_LISTENERS: list[weakref.WeakMethod[Callable[[], None]]] = []
_LISTENERS_LOCK = threading.Lock()


def register_board(app: Any, board: CancelBoard) -> None:
    """``board`` is the one of Celery ``app``'s workers."""
    _BOARDS[app] = board


def bgfunctions_cancel(state: Any, request_id: str, attempt: int, **_: Any) -> dict[str, str]:
    """Cancel attempt ``attempt`` of bgfunctions invocation ``request_id`` if it runs here."""
    board = _BOARDS.get(state.consumer.app)
    if board is None:
        return {"ok": "no bgfunctions app in this worker"}
    board.post(request_id, int(attempt))
    signalled = 0
    for request in list(worker_state.active_requests):
        if request.task_name != TASK_NAME or list(request.args[:1]) != [request_id]:
            continue
        pid = request.worker_pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, CANCEL_SIGNAL)
                signalled += 1
    log.info("cancel of attempt %s of %s: %d child(ren) told", attempt, request_id, signalled)
    return {"ok": f"posted; {signalled} running here"}


# Registered with every worker of this process (Celery's control commands are global).
_register: Any = control_command(
    name=CANCEL_COMMAND, args=[("request_id", str), ("attempt", int)],
    signature="<request_id> <attempt>",
)  # fmt: skip
_register(bgfunctions_cancel)


def listen(callback: Callable[[], None]) -> None:
    """Call the bound method ``callback`` when this process gets :data:`CANCEL_SIGNAL` (held
    weakly: it goes with its object)."""
    with _LISTENERS_LOCK:
        _LISTENERS[:] = [ref for ref in _LISTENERS if ref() is not None]
        _LISTENERS.append(weakref.WeakMethod(callback))


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for ref in list(_LISTENERS):
        callback = ref()
        if callback is not None:
            callback()  # may raise AttemptCancelled into the handler it interrupted


def install_signal_handler(**_: Any) -> None:
    """Handle :data:`CANCEL_SIGNAL` in this process (a worker child, at its start)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may; a prefork child's task runs on it
    if signal.getsignal(CANCEL_SIGNAL) is not _on_signal:
        signal.signal(CANCEL_SIGNAL, _on_signal)


worker_process_init.connect(install_signal_handler, weak=False)
