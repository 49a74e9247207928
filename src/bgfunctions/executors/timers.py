"""The timer thread of the thread and process engines: retries that are due later, sync
attempts' deadlines, stall checks and journal maintenance, on one thread and one heap.

Times are the clock's ``monotonic()``; waits go through the clock, so a virtual clock's
``advance()`` wakes the thread as real time would.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bgfunctions.clock import Clock

__all__ = ["TimerThread"]

log = logging.getLogger("bgfunctions.executor")


@dataclass(order=True, slots=True)
class _Timer:
    when: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class TimerThread:
    """Runs actions at their times, in time order, on one thread of its own."""

    def __init__(self, clock: Clock, name: str = "bgfunctions-timers") -> None:
        self.clock = clock
        self.name = name
        self._timers: list[_Timer] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def add(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at ``when`` (the clock's monotonic time) or as soon after as it can.
        Actions run on the timer thread: they must be short, and not raise (a raise is logged)."""
        timer = _Timer(when, next(self._seq), action)
        with self._cond:
            heapq.heappush(self._timers, timer)
            if self._timers[0] is timer:
                self._cond.notify()

    def stop(self) -> None:
        """Run no more actions (those due stay unrun); :meth:`join` waits for the thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _main(self) -> None:
        while True:
            due: list[_Timer] = []
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    now = self.clock.monotonic()
                    while self._timers and self._timers[0].when <= now:
                        due.append(heapq.heappop(self._timers))
                    if due:
                        break
                    timeout = self._timers[0].when - now if self._timers else None
                    self.clock.wait(self._cond, timeout)
            for timer in due:
                try:
                    timer.action()
                except Exception:  # pragma: no cover - a bug, never the user's
                    log.exception("bgfunctions timer action failed")
