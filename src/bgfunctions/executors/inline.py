"""The inline executor: deterministic, single-threaded, on virtual time. What tests use.

Nothing runs inside ``submit``: work runs when the test advances the clock
(``executor.clock.advance(60)``) or calls :meth:`InlineExecutor.drain`. Async handlers run on the
executor's own virtual-time event loop, so a handler that awaits ``asyncio.sleep(1200)`` is timed
out at exactly 900 virtual seconds, in milliseconds of wall time. Sync handlers run in the
caller's thread and wait with ``context.sleep()``, which moves the virtual clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import Any

from bgfunctions.attempts import (
    AttemptResult,
    PreparedAttempt,
    run_async,
    start_sync,
    to_response,
    warn_ignored_return,
)
from bgfunctions.clock import ClockEventLoop, VirtualClock
from bgfunctions.executors.base import Executor, ExecutorStats, Invocation
from bgfunctions.invocation import InvocationRecord, Outcome
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Runs every attempt in the caller's thread on a :class:`VirtualClock`."""

    clock: VirtualClock

    def __init__(
        self,
        *,
        clock: VirtualClock | None = None,
        journal: Journal | None = None,
        blocking_threshold: float = 1.0,
    ) -> None:
        clock = clock if clock is not None else VirtualClock()
        if not isinstance(clock, VirtualClock):
            raise TypeError(
                f"InlineExecutor runs on a VirtualClock; got {type(clock).__name__}. "
                "Use ThreadExecutor for real time."
            )
        super().__init__(clock=clock, journal=journal)
        self._loop: ClockEventLoop = clock.new_event_loop(
            on_blocked=self.lifecycle.reports.blocked, blocking_threshold=blocking_threshold
        )
        # Epoch due time -> the records whose next attempt falls due then (see _dispatch).
        self._due: dict[float, list[InvocationRecord]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The executor's virtual-time event loop."""
        return self._loop

    def start(self) -> None:
        """Recover a durable journal's unfinished work; otherwise nothing to start: work runs
        when the clock is advanced or the executor drained."""
        if self.journal.durable:
            self.recover()

    # -- scheduling -------------------------------------------------------------------------

    def _dispatch(self, record: InvocationRecord) -> None:
        # Attempts due at the same instant share one loop callback: on virtual time whole
        # batches fall due together (every retry of a burst, at t+60), and one timer per
        # instant keeps the loop's heap small, in order of dispatch within the instant.
        now = self.clock.now()
        due = record.next_run_at if record.next_run_at is not None else now
        if due <= now:
            due = now
        batch = self._due.get(due)
        if batch is not None:
            batch.append(record)
            return
        self._due[due] = [record]
        if due == now:
            self._loop.call_soon(self._run_due, due)
        else:
            self._loop.call_at(self._loop.time() + (due - now), self._run_due, due)

    def _run_due(self, due: float) -> None:
        batch = self._due.pop(due)
        for index, record in enumerate(batch):
            try:
                self._spawn(record)
            except BaseException:
                # The loop's exception handler reports this one; the rest of the batch runs in
                # the next callback, as it would have with a callback per record.
                for rest in batch[index + 1 :]:
                    self._dispatch(rest)
                raise

    def _spawn(self, record: InvocationRecord) -> None:
        try:
            is_async = self.binding.lookup(record.function).is_async
        except LookupError:
            is_async = False  # its function is gone: _prepare ends the attempt as an error
        if is_async:
            self._loop.create_task(self._run(record))
            return
        # A sync handler runs right here, in the loop's thread: no task, no timer (it cannot be
        # interrupted anyway; context.sleep() past the deadline ends it).
        started = self.lifecycle.begin(record)
        if started is None:
            return
        prepared = self.lifecycle.prepare(started)
        if prepared is None:
            return
        result = start_sync(prepared)
        if not isinstance(result, AttemptResult):
            # It left work to await: finish the attempt as a task, within its deadline.
            self._running_count += 1
            self._loop.create_task(self._finish(started, prepared, result))
            return
        self._settled(started, prepared.function, result)
        # ``result`` may hold the handler's exception, whose traceback holds this very frame:
        # drop it, or every failed attempt leaves a reference cycle for the garbage collector.
        del result

    async def _finish(
        self,
        started: InvocationRecord,
        prepared: PreparedAttempt,
        rest: Coroutine[Any, Any, object],
    ) -> None:
        now = self.clock.now()
        left = max(0.0, (prepared.context.deadline or now) - now)
        finishing = replace(prepared, timeout=left, limit=prepared.timeout)
        try:
            result = await run_async(finishing, cancelled=self._cancel_requested, body=rest)
        except asyncio.CancelledError:
            # The executor is shutting down: the attempt was cut short, not finished.
            result = AttemptResult(Outcome.INTERRUPTED, None)
        finally:
            self._running_count -= 1
        self._settled(started, prepared.function, result)

    def _settled(
        self, started: InvocationRecord, function: Function, result: AttemptResult
    ) -> None:
        warn_ignored_return(function, result.value)
        ended = self.lifecycle.end(started, result.outcome, result.error, ended_at=result.ended_at)
        if ended.state.waiting:
            self._dispatch(ended)

    async def _run(self, record: InvocationRecord) -> None:
        ended = await self.lifecycle.run_on_loop(record, stopping=self._stopping)
        if ended is not None and ended.state.waiting:
            self._dispatch(ended)

    def _cancel_running(self, request_id: str) -> None:
        for task in asyncio.all_tasks(self._loop):
            if task.get_name().split(":")[1:2] == [request_id]:
                task.cancel()

    # -- running ------------------------------------------------------------------------------

    def drain(self) -> None:
        """Run, jumping virtual time, until nothing is pending."""
        self._loop.run_until_idle()

    async def drain_async(self) -> None:
        """:meth:`drain` for tests that are themselves async (runs the loop in a thread)."""
        await asyncio.to_thread(self.drain)

    def run_until(self, when: float) -> None:
        """Run everything due up to epoch ``when`` on the clock, then stop the clock there."""
        self.clock.advance(max(0.0, when - self.clock.now()))

    def _wait(self, handle: Invocation, timeout: float | None) -> None:
        if handle.done():  # also after shutdown closed the loop (as ``invoke`` does)
            return
        until = None if timeout is None else self._loop.time() + timeout
        self._loop.run_until_idle(until)
        if not handle.done():
            raise TimeoutError(
                f"invocation {handle.request_id} is still {handle.state.value} after "
                f"{'running until idle' if timeout is None else f'{timeout} virtual s'}"
            )

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        self._check_accepting()
        timeout = self.binding.limits_for(function).sync_timeout
        context = self.lifecycle.sync_context(function, request, params, request_id, timeout)
        result = self._loop.run_until_complete(
            run_async(PreparedAttempt(function, request, context, timeout))
        )
        if result.outcome is not Outcome.SUCCEEDED:
            assert result.error is not None
            raise result.error
        return to_response(result.value, function, context)

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        return await asyncio.to_thread(self.call, function, request, params, request_id)

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """Stop accepting; cancel what is scheduled on the loop and close it."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_closed():
            return
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    def stats(self) -> ExecutorStats:
        with self._lock:
            live = len(self._live)
        return ExecutorStats(pending=live - self._running_count, running=self._running_count)
