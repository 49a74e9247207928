"""What the engines' event loops and attempts say in the log: a handler that blocked its loop,
a loop that fell behind, and a failed attempt with its traceback."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from bgfunctions.clock import Clock
from bgfunctions.invocation import InvocationRecord, State

__all__ = ["LoopReports", "log_failure"]

log = logging.getLogger("bgfunctions.executor")


class LoopReports:
    """The ``on_blocked`` and ``on_starved`` hooks of an engine's loop, and the warning for a
    handler that held a loop the engine does not own."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._starved_said = -math.inf

    def blocked(self, task: asyncio.Task[Any] | None, seconds: float) -> None:
        """The loop's ``on_blocked`` hook: one step of ``task`` held the loop ``seconds``.

        An attempt's handler runs in a task named ``function:request_id:attempt``: that names
        the function. Any other task or callback is the engine's own, and is named as such."""
        name = task.get_name() if task is not None else ""
        function, _, rest = name.partition(":")
        if rest:
            self.blocked_handler(function, seconds, name)
        else:
            log.warning(
                "the executor's own %s held its event loop for %.2f s",
                f"task {name}" if name else "callback",
                seconds,
            )

    def blocked_handler(self, function: str, seconds: float, task: str = "") -> None:
        """One step of ``function``'s async handler held the event loop ``seconds``."""
        log.warning(
            "async handler of function %r blocked the event loop for %.2f s%s; "
            "await asyncio.sleep() or other awaitables instead of blocking calls",
            function,
            seconds,
            f" (task {task})" if task else "",
        )

    def starved(self, seconds: float, callbacks: int) -> None:
        """The loop's ``on_starved`` hook: it fell behind with nothing blocking it. Said at
        most once a minute, at INFO: it describes the machine's load, not a handler's fault."""
        now = self.clock.monotonic()
        if now - self._starved_said < 60.0:
            return
        self._starved_said = now
        log.info(
            "the executor's event loop fell behind: one pass over %d ready callbacks took "
            "%.2f s, none of them long; the process is short of CPU",
            callbacks,
            seconds,
        )


def log_failure(ended: InvocationRecord, error: BaseException) -> None:
    """Log a failed attempt with its traceback: at INFO while retries are left (a handler may
    fail and recover), at WARNING when the invocation failed for good."""
    final = ended.state is State.FAILED
    level = logging.WARNING if final else logging.INFO
    if not log.isEnabledFor(level):
        return  # failures with retries left, unless INFO is on: no formatting, no traceback
    attempt = ended.attempts[-1]
    if final:
        what = "no attempts left"
    elif ended.next_run_at is not None and attempt.ended_at is not None:
        what = f"retry in {ended.next_run_at - attempt.ended_at:g} s"
    else:
        what = str(ended.state)
    log.log(
        level,
        "attempt %d of function %r (request %s) %s: %s: %s; %s",
        attempt.number,
        ended.function,
        ended.request_id,
        attempt.outcome,
        attempt.error_type,
        attempt.error_message,
        what,
        exc_info=error if error.__traceback__ is not None else None,
        # What InvocationFilter adds inside a handler: this is logged just after it.
        extra={
            "bg_function": ended.function,
            "bg_request_id": ended.request_id,
            "bg_attempt": attempt.number,
            "bg_failed_attempt": True,  # what bgfunctions serve shows as a traceback only
        },
    )
