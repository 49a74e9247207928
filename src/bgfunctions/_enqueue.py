"""What ``App.enqueue`` takes besides the request: when the first attempt may start
(``delay=`` or ``not_before=``) and the priority among due invocations (``priority=``, -50 to
50, as Netlify's Async Workloads). Checked here, with errors that name the function and the
value; the record keeps both (``enqueue_options``)."""

from __future__ import annotations

import datetime as dt
import math

from bgfunctions._slots import evolve
from bgfunctions.invocation import EnqueueOptions, InvocationRecord

__all__ = ["MAX_PRIORITY", "MIN_PRIORITY", "scheduled"]

MIN_PRIORITY = -50
MAX_PRIORITY = 50


def scheduled(
    record: InvocationRecord,
    *,
    delay: dt.timedelta | float | None,
    not_before: dt.datetime | float | None,
    priority: int,
) -> InvocationRecord:
    """``record`` (just accepted) with its first attempt due at the later of now and the
    start asked for, and ``priority``. TypeError / ValueError naming the function and value."""
    where = f"enqueue({record.function!r})"
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(
            f"{where}: priority: expected an int from {MIN_PRIORITY} to {MAX_PRIORITY}, found "
            f"{priority!r} ({type(priority).__name__})"
        )
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"{where}: priority: expected an int from {MIN_PRIORITY} to {MAX_PRIORITY}, found "
            f"{priority}"
        )
    if delay is not None and not_before is not None:
        raise TypeError(
            f"{where}: expected delay= or not_before=, found both ({delay!r} and {not_before!r})"
        )
    start: float | None = None
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(
                f"{where}: delay: expected seconds (a number) or a timedelta, found {delay!r} "
                f"({type(delay).__name__})"
            )
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(
                f"{where}: delay: expected a finite number of seconds of 0 or more, found {delay!r}"
            )
        start = record.accepted_at + float(seconds)
    elif not_before is not None:
        if isinstance(not_before, dt.datetime):
            if not_before.utcoffset() is None:
                raise ValueError(
                    f"{where}: not_before: expected an aware datetime (with a tzinfo, e.g. "
                    f"timezone.utc), found the naive {not_before!r}"
                )
            start = not_before.timestamp()
        elif isinstance(not_before, bool) or not isinstance(not_before, (int, float)):
            raise TypeError(
                f"{where}: not_before: expected an aware datetime or epoch seconds, found "
                f"{not_before!r} ({type(not_before).__name__})"
            )
        elif not math.isfinite(not_before):
            raise ValueError(
                f"{where}: not_before: expected finite epoch seconds, found {not_before!r}"
            )
        else:
            start = float(not_before)
    if start is None and priority == 0:
        return record
    due = record.accepted_at if start is None else max(record.accepted_at, start)
    options = EnqueueOptions(priority=priority, not_before=start)
    return evolve(record, next_run_at=due, enqueue_options=options)
