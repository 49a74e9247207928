"""How an attempt runs on an event loop, for :meth:`Lifecycle.run_on_loop
<bgfunctions.lifecycle.Lifecycle.run_on_loop>`: claim it, run the handler on the loop (in the
current task, or one of its own), end it; with a durable journal and ``commit_off_loop``, the
claim and the end commit on the lifecycle's commit threads (:mod:`bgfunctions.commits`),
awaited, so that the loop goes on serving while the disk syncs.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import TYPE_CHECKING

from bgfunctions.attempts import AttemptResult, Stopping, run_async, run_here, warn_ignored_return
from bgfunctions.errors import ExecutorShutdownError
from bgfunctions.invocation import InvocationRecord, Outcome

if TYPE_CHECKING:
    from bgfunctions.lifecycle import Lifecycle

__all__ = ["run_on_loop"]

_CANCELLING = sys.version_info >= (3, 11)
"""Whether tasks count the cancellations asked of them (what ``run_here`` needs)."""


async def run_on_loop(
    lc: Lifecycle,
    record: InvocationRecord,
    *,
    stopping: Stopping | None = None,
    watch: float | None = None,
    here: bool = False,
) -> InvocationRecord | None:
    """Run the next attempt of ``record`` on the running loop; the ended record, or None
    when it was cancelled before it started. Engines schedule what follows.

    ``watch``: on a loop the executor does not own (no ``on_blocked`` hook of ours), time
    the handler's own steps and warn, naming the function, when one holds the loop longer
    than this many seconds. ``here``: the current task was made for this attempt alone;
    on Python >= 3.11 the handler runs in it (:func:`~bgfunctions.attempts.run_here`)."""
    off_loop = lc.commit_off_loop and lc.journal.durable
    started = await _begin_off_loop(lc, record) if off_loop else lc.begin(record)
    if started is None:
        return None
    if off_loop and record.request_id in lc.cancel_requested:
        # cancel() came while the claim committed on another thread: no task had this
        # attempt's name yet, so nothing cancelled it; it must not start.
        return await _end_off_loop(lc, started, AttemptResult(Outcome.CANCELLED))
    prepared = lc.prepare(started)
    if prepared is None:
        return None
    function, context = prepared.function, prepared.context
    lc.running += 1
    try:
        result = await (run_here if here and _CANCELLING else run_async)(
            prepared,
            cancelled=lc.cancel_requested,
            stopping=stopping,
            watch=None
            if watch is None
            else (watch, lambda seconds: lc.reports.blocked_handler(function.name, seconds)),
        )
    except asyncio.CancelledError:
        if not lc.closed:
            raise
        # Cut off by shutdown past its grace: record it rather than leave it "running".
        # None: nothing more is scheduled; the journal keeps it for recovery.
        lc.end(
            started,
            Outcome.INTERRUPTED,
            ExecutorShutdownError(
                f"{lc.name} shut down while attempt {context.attempt} of "
                f"function {function.name!r} ran"
            ),
        )
        return None
    finally:
        lc.running -= 1
    warn_ignored_return(function, result.value)
    if off_loop:
        return await _end_off_loop(lc, started, result)
    return lc.end(started, result.outcome, result.error, ended_at=result.ended_at)


async def _begin_off_loop(lc: Lifecycle, record: InvocationRecord) -> InvocationRecord | None:
    """:meth:`Lifecycle.begin` on a commit thread. Cancelled meanwhile (a shutdown, or
    ``cancel()`` of the attempt the claim just started): a claim that went through is ended at
    once, so that nothing is left running that nobody runs."""
    future = lc.commits.submit(lc.begin, record)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if future.cancelled():
            raise  # never claimed
        try:
            started = future.result()  # claimed or refused meanwhile: a commit, on the way out
        except Exception:
            raise asyncio.CancelledError from None  # the claim failed: nothing was started
        if started is not None:
            cancelled = record.request_id in lc.cancel_requested
            lc.end(
                started,
                Outcome.CANCELLED if cancelled else Outcome.INTERRUPTED,
                None
                if cancelled
                else ExecutorShutdownError(f"{lc.name} shut down as the attempt began"),
            )
        raise


async def _end_off_loop(
    lc: Lifecycle, started: InvocationRecord, result: AttemptResult
) -> InvocationRecord | None:
    """:meth:`Lifecycle.end` on a commit thread; a cancellation meanwhile does not stop it (at
    a shutdown the engine then schedules nothing: the journal keeps what follows)."""
    end = functools.partial(lc.end, ended_at=result.ended_at)
    future = lc.commits.submit(end, started, result.outcome, result.error)
    try:
        return await asyncio.shield(asyncio.wrap_future(future))
    except asyncio.CancelledError:
        if lc.closed:
            raise
        # cancel() raced the end's commit: the attempt is over, and what follows it (a retry,
        # a wake) must still be scheduled. Wait for the commit (a moment) and go on.
        return future.result()
