"""Log lines written while a handler runs carry its function, request id and attempt.

While an attempt runs, bgfunctions sets a context variable; :class:`InvocationFilter` copies it
onto every ``logging.LogRecord`` as ``bg_function``, ``bg_request_id`` and ``bg_attempt`` (empty
strings outside a handler), so users can put them in their own format::

    handler = logging.StreamHandler()
    handler.addFilter(InvocationFilter())
    handler.setFormatter(
        logging.Formatter("%(bg_function)s %(bg_request_id)s #%(bg_attempt)s %(message)s")
    )

It works for sync handlers in worker threads and for async handlers and the tasks they start.

:class:`LineFormatter` is the library's own line format (``bgfunctions invoke`` prints with it):
``[request id] function: message``, and for a failed attempt ``[request id] function: attempt N
traceback:`` followed by the traceback.
"""

from __future__ import annotations

import contextvars
import logging
from typing import NamedTuple

__all__ = [
    "InvocationFilter",
    "InvocationInfo",
    "LineFormatter",
    "current_invocation",
    "invocation_scope",
    "logger",
]

logger = logging.getLogger("bgfunctions")
"""The library's own logger; attempt outcomes are logged on ``bgfunctions.executor``."""


class InvocationInfo(NamedTuple):
    """What the current log context says about the running attempt."""

    function: str
    request_id: str
    attempt: int


_current: contextvars.ContextVar[InvocationInfo | None] = contextvars.ContextVar(
    "bgfunctions_invocation", default=None
)


def current_invocation() -> InvocationInfo | None:
    """The attempt running in this thread or task, if any."""
    return _current.get()


class invocation_scope:  # lower case: used like the function it was
    """Mark the code inside ``with invocation_scope(function, request_id, attempt) as info:``
    as running ``attempt`` of ``request_id``. (A class, not a generator: it wraps every attempt.)
    """

    __slots__ = ("_info", "_token")

    def __init__(self, function: str, request_id: str, attempt: int) -> None:
        self._info = InvocationInfo(function, request_id, attempt)
        self._token: contextvars.Token[InvocationInfo | None] | None = None

    def __enter__(self) -> InvocationInfo:
        self._token = _current.set(self._info)
        return self._info

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None


class InvocationFilter(logging.Filter):
    """Adds ``bg_function``, ``bg_request_id`` and ``bg_attempt`` to every record.

    It never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = _current.get()
        if not hasattr(record, "bg_request_id"):
            record.bg_function = info.function if info else ""
            record.bg_request_id = info.request_id if info else ""
            record.bg_attempt = info.attempt if info else ""
        return True


def is_attempt_failure(record: logging.LogRecord) -> bool:
    """Whether ``record`` is a failed attempt as the executor logs it (its traceback attached)."""
    return getattr(record, "bg_failed_attempt", False) is True


class LineFormatter(logging.Formatter):
    """``[request id] function: message`` for records about an attempt, else ``logger: LEVEL:
    message``. A failed attempt's record (whose summary a table or an event line already
    showed) reads ``[request id] function: attempt N traceback:``; tracebacks follow on their
    own lines. Use it with :class:`InvocationFilter`, which fills in the request id."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "bg_request_id", "")
        function = getattr(record, "bg_function", "")
        if is_attempt_failure(record):
            attempt = getattr(record, "bg_attempt", "")
            return f"[{request_id}] {function}: attempt {attempt} traceback:"
        if request_id:
            return f"[{request_id}] {function}: {record.message}"
        return f"{record.name}: {record.levelname}: {record.message}"
