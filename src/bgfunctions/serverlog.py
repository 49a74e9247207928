"""What the dev server prints: one line per invocation event, and the log records it shows.

Every line of an invocation starts ``[REQUEST-ID] FUNCTION:``; a handler's own log lines and a
failed attempt's traceback carry the same prefix.
"""

from __future__ import annotations

import logging

from bgfunctions.clock import Clock
from bgfunctions.invocation import Event, EventKind, InvocationRecord

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
    if event.kind in (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED):
        return f"{head}: {event.kind.value} after {len(r.attempts)} attempt(s)"
    return None


class ServerLog(logging.Filter):
    """What the dev server shows of the logging system: warnings from anywhere, and INFO from
    bgfunctions (a failed attempt's traceback) or from code running inside a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_attempt_failure(record) and not record.exc_info:
            return False  # the event line already says it (a timeout, a crash)
        return (
            record.levelno >= logging.WARNING
            or record.name == "bgfunctions"
            or record.name.startswith("bgfunctions.")
            or bool(getattr(record, "bg_request_id", ""))
        )


def _is_attempt_failure(record: logging.LogRecord) -> bool:
    """A failed attempt as the executor logs it (see ``executor._log_failure``)."""
    return getattr(record, "bg_failed_attempt", False) is True


class LineFormatter(logging.Formatter):
    """``[request id] function: message`` inside a handler, as the event lines are; else
    ``logger: LEVEL: message``. Tracebacks follow on their own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "bg_request_id", "")
        if _is_attempt_failure(record):
            # The event line just said how it ended: only the traceback follows.
            return f"[{request_id}] {record.bg_function}: attempt {record.bg_attempt} traceback:"  # type: ignore[attr-defined]
        if request_id:
            return f"[{request_id}] {getattr(record, 'bg_function', '')}: {record.message}"
        return f"{record.name}: {record.levelname}: {record.message}"
