"""What the dev server prints: one line per invocation event, and the log records it shows.

Every line of an invocation starts ``[REQUEST-ID] FUNCTION:``; a handler's own log lines and a
failed attempt's traceback carry the same prefix, in :class:`~bgfunctions.logs.LineFormatter`'s
format (the one ``bgfunctions invoke`` prints with).
"""

from __future__ import annotations

import logging

from bgfunctions.clock import Clock
from bgfunctions.invocation import Event, EventKind, InvocationRecord
from bgfunctions.logs import LineFormatter, is_attempt_failure

__all__ = ["LineFormatter", "ServerLog", "format_event", "queued"]


def queued(record: InvocationRecord) -> str:
    """``queued``, saying which invocation a replay replays."""
    return f"queued (replay of {record.replay_of})" if record.replay_of else "queued"


def format_event(event: Event, clock: Clock) -> str | None:
    """One line per invocation event, each with the request id; None for events not shown."""
    r = event.record
    head = f"[{r.request_id}] {r.function}"
    attempt = r.last_attempt
    if event.kind is EventKind.ACCEPTED:
        return f"{head}: {queued(r)}"
    if event.kind is EventKind.ATTEMPT_STARTED and attempt is not None:
        return f"{head}: attempt {attempt.number} started"
    if event.kind is EventKind.ATTEMPT_ENDED and attempt is not None and attempt.outcome:
        took = f"{attempt.duration:.3f} s" if attempt.duration is not None else "?"
        error = f" ({attempt.error_type}: {attempt.error_message})" if attempt.error_type else ""
        return f"{head}: attempt {attempt.number} {attempt.outcome.value} in {took}{error}"
    if event.kind is EventKind.RETRY_SCHEDULED and r.next_run_at is not None:
        delay = r.next_run_at - clock.now()
        return f"{head}: retry scheduled in {max(0.0, delay):.1f} s"
    if event.kind is EventKind.SLEEPING and r.next_run_at is not None:
        wake = r.next_run_at - clock.now()
        return f"{head}: sleeping, wakes in {max(0.0, wake):.1f} s"
    if event.kind in (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED):
        return f"{head}: {event.kind.value} after {len(r.attempts)} attempt(s)"
    return None


class ServerLog(logging.Filter):
    """What the dev server shows of the logging system: warnings from anywhere, and INFO from
    bgfunctions (a failed attempt's traceback) or from code running inside a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_attempt_failure(record) and not record.exc_info:
            return False  # the event line already says it (a timeout, a crash)
        return (
            record.levelno >= logging.WARNING
            or record.name == "bgfunctions"
            or record.name.startswith("bgfunctions.")
            or bool(getattr(record, "bg_request_id", ""))
        )
