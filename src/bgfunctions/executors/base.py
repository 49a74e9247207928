"""Executors run background invocations: the public ``Executor`` ABC.

An engine decides *where* an attempt runs (the caller's thread on virtual time, a thread pool,
worker processes, a distributed queue) and how a stuck one is stopped. What happens around an
attempt is the :class:`~bgfunctions.lifecycle.Lifecycle` every executor holds; what happens in
one is :mod:`bgfunctions.attempts`. So every engine records the same attempts, with the same retry
schedule, and fires the same hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from bgfunctions.attempts import Stopping
from bgfunctions.clock import Clock, ClockEventLoop
from bgfunctions.errors import ExecutorShutdownError
from bgfunctions.handles import Binding, Invocation
from bgfunctions.invocation import EventKind, InvocationRecord
from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.lifecycle import Lifecycle
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response

__all__ = ["Binding", "Executor", "ExecutorStats", "Invocation"]

log = logging.getLogger("bgfunctions.executor")


@dataclass(frozen=True, slots=True)
class ExecutorStats:
    """A snapshot of an executor's load."""

    pending: int
    """Accepted or retry-scheduled invocations waiting for their next attempt."""
    running: int
    """Attempts running now."""
    abandoned_threads: int = 0
    """Threads still running a sync handler whose attempt or synchronous call already timed
    out: abandoned, each replaced by a fresh thread, and ended when the handler returns."""
    workers: int = 0
    """Worker threads or processes (not counting abandoned ones)."""
    spawned: int = 0
    """Workers started since the executor started (processes: one more per crash or kill)."""


class Executor(ABC):
    """Runs background invocations and synchronous calls for an App.

    Subclasses implement where attempts run (:meth:`_dispatch`, :meth:`call`,
    :meth:`call_async`, :meth:`shutdown`) and change records only through
    :attr:`lifecycle` (``begin`` and ``end``): the one
    :class:`~bgfunctions.lifecycle.Lifecycle` every executor holds.
    """

    _stopping: Stopping | None = None
    """Tells the engine's own stop from a handler's BaseException (see attempts.Stopping)."""

    def __init__(self, *, clock: Clock, journal: Journal | None = None) -> None:
        self.clock = clock
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.lifecycle = Lifecycle(
            name=type(self).__name__,
            clock=clock,
            journal=self.journal,
            dispatch=self._dispatch,
            cancel_running=self._cancel_running,
            claim_unavailable=self._claim_unavailable,
            waiter=self._wait,
            closed=lambda: self._closed,
        )
        self._closed = False
        lifecycle = self.lifecycle
        # The lifecycle's tables, under the names the engines use (the same objects).
        self._live = lifecycle.live
        self._lock = lifecycle.lock
        self._cancel_requested = lifecycle.cancel_requested
        # Accepts of submit_async handed to the journal and not yet dispatched: they count
        # against a bound on waiting work (ThreadExecutor.max_pending) like dispatched ones.
        self._committing = 0
        self._committing_lock = threading.Lock()

    @property
    def _running_count(self) -> int:
        return self.lifecycle.running

    @_running_count.setter
    def _running_count(self, running: int) -> None:
        self.lifecycle.running = running

    # -- wiring -----------------------------------------------------------------------------------

    def bind(self, binding: Binding) -> None:
        """Called by the App that owns this executor; an executor serves one App."""
        self.lifecycle.binding = binding

    @property
    def binding(self) -> Binding:
        return self.lifecycle.binding

    @property
    def accepting(self) -> bool:
        return not self._closed

    # -- the public surface ---------------------------------------------------------------------

    def submit(self, record: InvocationRecord, request: Request | None = None) -> Invocation:
        """Accept ``record``: journal it, then schedule its first attempt.

        Raises :class:`~bgfunctions.errors.NotAcceptedError` (nothing recorded) when the
        executor cannot take it. When this returns, the journal has the record.
        """
        record, handle = self._admit(record, request)
        try:
            self.journal.accepted(record)
        except BaseException:
            self._live.pop(record.request_id, None)
            raise
        self.lifecycle.emit(EventKind.ACCEPTED, record)
        self._dispatch(handle.record)
        return handle

    def _admit(
        self, record: InvocationRecord, request: Request | None
    ) -> tuple[InvocationRecord, Invocation]:
        """Refuse ``record`` now if this executor cannot take it; else its due record and a
        live handle, registered before it is journaled (so that recover() never takes it for
        someone else's)."""
        self._check_accepting()
        if record.next_run_at is None:
            record = dataclasses.replace(record, next_run_at=record.accepted_at)
        if self.journal.durable:
            # The body waits in the journal, not here: each attempt loads it (_attempt_inputs).
            handle = Invocation(self.lifecycle, record.without_body())
        else:
            handle = Invocation(self.lifecycle, record, request)
        # One dict store is atomic; taking self._lock here would make the accepting thread
        # queue behind workers that hold it (a lock convoy under the GIL).
        self._live[record.request_id] = handle
        return record, handle

    async def submit_async(
        self, record: InvocationRecord, request: Request | None = None
    ) -> Invocation:
        """:meth:`submit` for async hosts: the journal's commit is awaited, and the loop serves
        other requests meanwhile (their accepts then share the commit). No thread waits for
        it: that costs two thread hand-offs per accept. The invocation runs even if the
        awaiting task is cancelled once it was handed to the journal."""
        loop = asyncio.get_running_loop()
        if type(self).submit is not Executor.submit or isinstance(loop, ClockEventLoop):
            # An engine with its own submit (a broker's publish), or a virtual-time loop that
            # must count the commit as real work: the blocking submit, on a thread.
            return await loop.run_in_executor(None, self.submit, record, request)
        record, handle = self._admit(record, request)
        committed: asyncio.Future[None] = loop.create_future()
        with self._committing_lock:
            self._committing += 1

        def resolve(error: Exception | None) -> None:  # on the loop
            if committed.done():
                return
            if error is None:
                committed.set_result(None)
            else:
                committed.set_exception(error)

        def settled(error: Exception | None) -> None:  # on the thread that committed
            # Dispatched here, not on the loop: it runs even if the loop is gone meanwhile.
            with self._committing_lock:
                self._committing -= 1
            if error is None:
                try:
                    self.lifecycle.emit(EventKind.ACCEPTED, record)
                    self._dispatch(handle.record)
                except Exception as exc:
                    error = exc
            else:
                self._live.pop(record.request_id, None)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits
                loop.call_soon_threadsafe(resolve, error)

        try:
            self.journal.accept_later(record, settled)
        except BaseException:
            with self._committing_lock:
                self._committing -= 1
            self._live.pop(record.request_id, None)
            raise
        await asyncio.shield(committed)
        return handle

    def resume(self, record: InvocationRecord) -> Invocation:
        """Take over an unfinished record that is already in the journal (recovery)."""
        return self.lifecycle.resume(record)

    def recover(self) -> int:
        """Take over what a durable journal holds: attempts whose process died are ended as
        ``interrupted`` (a failed attempt; the retry schedule follows from now), and accepted
        or retry-scheduled invocations this executor does not know yet are scheduled at their
        ``next_run_at``. Returns how many invocations were taken over. Safe to call often."""
        return self.lifecycle.recover()

    def get(self, request_id: str) -> Invocation:
        """A handle on a live invocation, or one rebuilt from the journal."""
        return self.lifecycle.get(request_id)

    def cancel(self, request_id: str) -> InvocationRecord:
        """No further attempts; a running attempt finishes (or is cancelled, if the engine can)."""
        return self.lifecycle.cancel(request_id)

    @abstractmethod
    def start(self) -> None:
        """Start workers (idempotent). ``submit`` starts a stopped executor lazily."""

    @abstractmethod
    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """Stop accepting. Running attempts get ``grace`` seconds to finish (``wait=True``: all
        the time they need); work not started stays unfinished in the journal."""

    @abstractmethod
    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        """Run a synchronous function once, within ``sync_timeout``; raise on failure."""

    @abstractmethod
    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        """:meth:`call` for async hosts."""

    @abstractmethod
    def stats(self) -> ExecutorStats:
        """How many invocations wait and run."""

    # -- for engines --------------------------------------------------------------------------

    @abstractmethod
    def _dispatch(self, record: InvocationRecord) -> None:
        """Arrange for the next attempt of ``record`` at ``record.next_run_at``."""

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:  # noqa: B027 - optional
        """The event loop the host server runs on, called from that loop's thread before
        :meth:`start` (``ASGIApp``'s lifespan does). Engines that can run async attempts on the
        server's own loop use it; by default nothing changes."""

    def _claim_unavailable(self, started: InvocationRecord) -> None:  # noqa: B027 - optional
        """The journal could not take the claim of ``started``'s attempt; it may even have
        committed it (a connection that broke after the statement was sent). Engines that will
        not see that row again by themselves arrange to look at it later; the embedded ones do:
        recover() takes up a waiting row, and a committed claim's lease expires unrenewed."""

    def _cancel_running(self, request_id: str) -> None:  # noqa: B027 - optional for engines
        """Stop a running attempt if the engine can; by default it runs to its end."""

    def _wait(self, handle: Invocation, timeout: float | None) -> None:
        """How a caller waits for ``handle``: on the lifecycle's condition (threaded engines)."""
        self.lifecycle.wait_threaded(handle, timeout)

    def _check_accepting(self) -> None:
        if self._closed:
            raise ExecutorShutdownError(f"{type(self).__name__} is shut down")
