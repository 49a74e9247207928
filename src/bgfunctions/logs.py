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
"""

from __future__ import annotations

import contextvars
import logging
from typing import NamedTuple

__all__ = ["InvocationFilter", "InvocationInfo", "current_invocation", "invocation_scope", "logger"]

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
