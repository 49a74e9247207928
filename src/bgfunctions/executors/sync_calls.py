"""Synchronous functions on the thread engine: sync handlers run on a
:class:`~bgfunctions.executors.calls.CallPool`, which abandons a call's thread at ``sync_timeout``;
async handlers run on the executor's loop thread, never on the caller's loop, so a blocking call
in one holds that loop and not the server's, and the caller enforces the time-out from its side
of the hand-off.

One function cannot take every thread with calls that hang: once ``max_hung`` of its calls run
on past their time-out (abandoned threads), its next calls are refused at once (503 with
``Retry-After``, no thread taken) until one of them returns. Other functions keep the pool, and
the pool's bound on abandoned threads is left for the next function that hangs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Mapping

from bgfunctions.attempts import (
    AttemptResult,
    PreparedAttempt,
    run_async,
    run_sync,
    timeout_error,
    to_response,
)
from bgfunctions.context import Context
from bgfunctions.errors import QueueFullError
from bgfunctions.executors.calls import CallPool, LoopThread, wait_future
from bgfunctions.invocation import Outcome
from bgfunctions.lifecycle import Lifecycle
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response

__all__ = ["SyncCalls"]

log = logging.getLogger("bgfunctions.executor")


class SyncCalls:
    """Runs synchronous functions' calls within their ``sync_timeout``."""

    def __init__(self, lifecycle: Lifecycle, loop_thread: LoopThread, threads: int) -> None:
        self.lifecycle = lifecycle
        self.clock = lifecycle.clock
        self._loop_thread = loop_thread
        self._threads = threads
        self._lock = threading.Lock()
        self._call_pool: CallPool | None = None  # started on the first sync handler's call
        self.max_hung = max(1, threads // 2)
        """Calls of one function running on past their time-out before its calls are refused."""
        self._hung: dict[str, int] = {}  # function name -> its abandoned calls still running

    @property
    def abandoned(self) -> int:
        """Threads still running a call whose caller gave up on it."""
        return self._call_pool.abandoned if self._call_pool is not None else 0

    def shutdown(self, wait: bool) -> None:
        if self._call_pool is not None:
            self._call_pool.shutdown(wait=wait)

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        prepared = self._prepare(function, request, params, request_id)
        future = self._submit(prepared)
        try:
            # Enforced here too, not only on the loop: a handler that blocks the loop thread
            # cannot be cancelled there, and the caller must still get its answer on time.
            result = wait_future(self.clock, future, prepared.timeout)
        except concurrent.futures.TimeoutError:
            raise self._gave_up(function, future, request_id, prepared.timeout) from None
        return _response(result, function, prepared.context)

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        prepared = self._prepare(function, request, params, request_id)
        future = self._submit(prepared)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), prepared.timeout)
        except asyncio.TimeoutError:
            raise self._gave_up(function, future, request_id, prepared.timeout) from None
        except asyncio.CancelledError:
            # The caller was cancelled (the server stopping it at shutdown): nobody waits for
            # this call any more, and shutdown must not wait for its thread either.
            future.cancel()
            if not function.is_async:
                self._pool().abandon(future)
            raise
        return _response(result, function, prepared.context)

    def _prepare(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> PreparedAttempt:
        timeout = self.lifecycle.binding.limits_for(function).sync_timeout
        hung = self._hung.get(function.name, 0)
        if hung >= self.max_hung:
            error = QueueFullError(
                f"function {function.name!r} has {hung} calls still running past their "
                f"{timeout:g} s time-out (at most {self.max_hung}): refused until one returns"
            )
            error.retry_after = max(1.0, timeout)
            raise error
        context = self.lifecycle.sync_context(function, request, params, request_id, timeout)
        return PreparedAttempt(function, request, context, timeout)

    def _submit(self, prepared: PreparedAttempt) -> concurrent.futures.Future[AttemptResult]:
        if prepared.function.is_async:
            # On the executor's loop, not the caller's: a handler that blocks (time.sleep)
            # then holds that loop, not the server's, and the time-out still answers.
            loop = self._loop_thread.ensure()
            return asyncio.run_coroutine_threadsafe(run_async(prepared), loop)
        return self._pool().submit(self._run_sync, prepared)

    def _run_sync(self, prepared: PreparedAttempt) -> AttemptResult:
        """A synchronous function's sync handler, on a thread of the call pool."""
        return run_sync(prepared, finish=self._loop_thread.run)

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
            self._count_hung(function.name, 1)
            future.add_done_callback(lambda _: self._count_hung(function.name, -1))
            log.warning(
                "function %r (request %s) timed out after %g s; its thread cannot be stopped "
                "and keeps running, another takes its place, and whatever it returns will be "
                "ignored",
                function.name,
                request_id,
                timeout,
            )
        return timeout_error(function, timeout, 1)

    def _count_hung(self, name: str, change: int) -> None:
        with self._lock:
            hung = self._hung.get(name, 0) + change
            if hung > 0:
                self._hung[name] = hung
            else:
                self._hung.pop(name, None)

    def _pool(self) -> CallPool:
        with self._lock:
            if self._call_pool is None:
                self._call_pool = CallPool(self._threads, "bgfunctions-call")
            return self._call_pool


def _response(result: AttemptResult, function: Function, context: Context) -> Response:
    if result.outcome is not Outcome.SUCCEEDED:
        assert result.error is not None
        raise result.error
    return to_response(result.value, function, context)
