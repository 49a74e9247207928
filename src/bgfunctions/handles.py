"""What an App hands its engine (:class:`Binding`), what a caller holds on an accepted
invocation (:class:`Invocation`), and the table of those a process runs (:class:`LiveTable`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bgfunctions.clock import Clock
from bgfunctions.context import Context, Site
from bgfunctions.invocation import Attempt, InvocationRecord, OnEvent, OnFailure, State
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.retry import Limits, RetryPolicy

if TYPE_CHECKING:
    from bgfunctions.lifecycle import Lifecycle

__all__ = ["Binding", "Invocation", "LiveTable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """What an App hands its executor: how to find functions, and the rules they run under."""

    lookup: Callable[[str], Function]
    """The function of a name (raises ``UnknownFunctionError``)."""
    limits: Limits = field(default_factory=Limits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_event: Sequence[OnEvent] = ()
    on_failure: Sequence[OnFailure] = ()
    trust_proxy: bool = False
    """Whether ``x-nf-*`` request headers fill the Context (a trusted proxy sits in front)."""
    site: Site | None = None

    def limits_for(self, function: Function) -> Limits:
        return function.limits or self.limits

    def retry_for(self, function: Function) -> RetryPolicy:
        return function.retry or self.retry


class Invocation:
    """A handle on one accepted invocation: read its state and attempts, or wait for it."""

    __slots__ = ("_context", "_guard", "_lifecycle", "_record", "_request")

    def __init__(
        self, lifecycle: Lifecycle, record: InvocationRecord, request: Request | None = None
    ) -> None:
        self._lifecycle = lifecycle
        self._record = record
        # Serialises this invocation's claim (Lifecycle.begin) against cancel(): one small lock per
        # invocation, so threads working on different invocations never wait on each other.
        self._guard = threading.Lock()
        # The accepted Request, reused by every attempt in this process (records carry the same
        # data, for journals and other processes).
        self._request = request
        # The Context of its latest attempt here and the Function it was made for: the next
        # attempt's is a copy (a reload makes new Functions, and so new Contexts).
        self._context: tuple[Function, Context] | None = None

    @property
    def record(self) -> InvocationRecord:
        """The latest record."""
        return self._record

    @property
    def request_id(self) -> str:
        return self._record.request_id

    @property
    def function(self) -> str:
        return self._record.function

    @property
    def state(self) -> State:
        return self._record.state

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return self._record.attempts

    def done(self) -> bool:
        """True once no further attempt will run."""
        return self._record.state.finished

    def wait(self, timeout: float | None = None) -> InvocationRecord:
        """Block until it is finished (on the inline executor: run virtual time until it is).

        Raises ``TimeoutError`` when ``timeout`` seconds (on the executor's clock) pass first.
        """
        self._lifecycle.wait(self, timeout)
        return self._record

    async def wait_async(self) -> InvocationRecord:
        """Await until it is finished."""
        await self._lifecycle.wait_async(self)
        return self._record

    def __repr__(self) -> str:
        r = self._record
        return (
            f"<Invocation {r.request_id} {r.function} {r.state.value} attempts={len(r.attempts)}>"
        )


class LiveTable:
    """The invocations this process runs, by request id, until they finish; and the callers
    waiting for them."""

    def __init__(self, lock: threading.RLock, clock: Clock, journal: Journal) -> None:
        self._lock = lock
        self.clock = clock
        self.journal = journal
        self.live: dict[str, Invocation] = {}
        self._finished = threading.Condition(lock)
        self._waiters = 0

    def forget(self, handle: Invocation) -> None:
        """Drop ``handle`` from the live table, if it is still the one there."""
        with self._lock:
            if self.live.get(handle.request_id) is handle:
                del self.live[handle.request_id]

    def store(self, record: InvocationRecord) -> None:
        """Update the live handle; wake waiters when it finished.

        Single dict and attribute stores are atomic, so no lock is needed but to notify: a
        waiter counts itself (under the lock) before it looks at the record, and the record is
        stored before ``_waiters`` is read here, so no wake-up is lost."""
        handle = self.live.get(record.request_id)
        if handle is not None:
            handle._record = record
            if record.state.finished:
                self.live.pop(record.request_id, None)
                handle._context = None  # no attempt follows; users may keep the handle
        if record.state.finished and self._waiters:
            with self._lock:
                self._finished.notify_all()

    def wait(self, handle: Invocation, timeout: float | None) -> None:
        """Wait until ``handle`` is finished, woken by :meth:`store` (or, for a handle this
        process does not run, by looking at the journal again)."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        with self._lock:
            self._waiters += 1
            try:
                while not handle.done():
                    followed = self.live.get(handle.request_id) is not handle
                    if followed:
                        # Not updated by this executor (rebuilt from the journal, or run by
                        # another process sharing it): follow the journal instead.
                        stored = self.journal.get(handle.request_id)
                        if stored is not None:
                            handle._record = stored
                            if handle.done():
                                break
                    left = None if deadline is None else deadline - self.clock.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(
                            f"invocation {handle.request_id} not finished after {timeout} s "
                            f"(state {handle.state.value})"
                        )
                    if followed:  # nothing here will notify: look at the journal again soon
                        left = 0.5 if left is None else min(left, 0.5)
                    self.clock.wait(self._finished, left)
            finally:
                self._waiters -= 1
