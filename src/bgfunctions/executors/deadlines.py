"""How the thread engine stops a stuck sync attempt: it cannot kill a thread, so at the deadline
it records the attempt timed out and abandons the thread (see
:meth:`~bgfunctions.executors.workers.WorkerPool.abandon`).

:class:`DeadlineLanes` watches the sync attempts running on worker threads. Whoever settles an
attempt first, its worker (the handler returned) or its deadline, records how it ended. Within
one time limit attempts reach their deadlines in the order they started, so one timer per limit
(for the oldest attempt of that *lane*) watches them all, instead of a timer per attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bgfunctions.clock import Clock
from bgfunctions.executors.timers import TimerThread
from bgfunctions.invocation import InvocationRecord
from bgfunctions.registry import Function

__all__ = ["DeadlineLanes", "Running"]

log = logging.getLogger("bgfunctions.executor")


@dataclass(eq=False, slots=True)
class Running:
    """A sync attempt running in a worker thread."""

    record: InvocationRecord
    function: Function
    thread: threading.Thread
    deadline: float
    """The deadline on the clock's epoch time (what the record says)."""
    timeout: float
    due: float = 0.0
    """The deadline on the clock's monotonic time."""
    settled: bool = False


class DeadlineLanes:
    """The running sync attempts, by time limit; ``expired`` is called (on the timer thread)
    for each attempt its deadline settled."""

    def __init__(
        self, clock: Clock, timers: TimerThread, expired: Callable[[Running], None]
    ) -> None:
        self.clock = clock
        self._timers = timers
        self._expired = expired
        # A lock of its own, held for a few operations, so workers never queue on another.
        self._lock = threading.Lock()
        self._running: dict[int, Running] = {}
        self._lanes: dict[float, dict[int, Running]] = {}
        self._armed: set[float] = set()  # limits with a timer armed

    @property
    def running(self) -> int:
        return len(self._running)

    def watch(
        self, record: InvocationRecord, function: Function, deadline: float, timeout: float
    ) -> Running:
        """The calling worker thread starts ``record``'s attempt, which may run ``timeout``
        seconds from now."""
        token = Running(record, function, threading.current_thread(), deadline, timeout)
        with self._lock:
            # Read under the lock: each lane stays in deadline order.
            token.due = self.clock.monotonic() + timeout
            self._running[id(token)] = token
            lane = self._lanes.get(timeout)
            if lane is None:
                lane = self._lanes[timeout] = {}
            lane[id(token)] = token
            arm = timeout not in self._armed
            if arm:
                self._armed.add(timeout)
        if arm:
            self._timers.add(token.due, lambda: self._check_lane(timeout))
        return token

    def settle(self, token: Running) -> bool:
        """The handler returned: True when its worker records how it ended, False when its
        deadline already did (the thread was abandoned)."""
        with self._lock:
            if token.settled:
                return False
            token.settled = True
            del self._running[id(token)]
            del self._lanes[token.timeout][id(token)]
        return True

    def _check_lane(self, timeout: float) -> None:
        """On the timer thread: expire the attempts of this time limit past their deadline,
        then wait for the oldest one left (if any)."""
        expired: list[Running] = []
        next_due: float | None = None
        with self._lock:
            now = self.clock.monotonic()
            for token in self._lanes.get(timeout, {}).values():
                if token.due > now:
                    next_due = token.due
                    break
                expired.append(token)
            if next_due is None:
                self._armed.discard(timeout)
        try:
            for token in expired:
                try:
                    if self.settle(token):
                        self._expired(token)
                except Exception:  # a bug or a journal error: the other attempts still expire
                    log.exception("ending timed-out attempt of %s failed", token.record.request_id)
        finally:
            if next_due is not None:  # the lane stays armed: it must keep its timer
                self._timers.add(next_due, lambda: self._check_lane(timeout))
