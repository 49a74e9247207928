"""Executors run background invocations: the ``Executor`` ABC and what every engine shares.

An engine decides *where* an attempt runs (the caller's thread on virtual time, a thread pool,
worker processes, a distributed queue); this module decides *what happens*: each state change of
an invocation goes through :class:`InvocationRecord`'s state machine, then the journal, then the
``on_event`` listeners, in that order, in one place (:meth:`Executor._transition`). So every
engine records the same attempts, with the same retry schedule, and fires the same hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgfunctions.attempts import (
    PreparedAttempt,
    Stopping,
    make_context,
    record_request,
    run_async,
    warn_ignored_return,
)
from bgfunctions.clock import Clock, ClockEventLoop
from bgfunctions.context import Context, Site
from bgfunctions.errors import (
    ExecutorShutdownError,
    InvocationNotFoundError,
    JournalUnavailableError,
)
from bgfunctions.invocation import (
    Attempt,
    Event,
    EventKind,
    InvocationRecord,
    OnEvent,
    OnFailure,
    Outcome,
    State,
    error_type_name,
)
from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy

__all__ = ["Binding", "Executor", "ExecutorStats", "Invocation"]

log = logging.getLogger("bgfunctions.executor")


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


class Invocation:
    """A handle on one accepted invocation: read its state and attempts, or wait for it."""

    __slots__ = ("_context", "_executor", "_guard", "_record", "_request")

    def __init__(
        self, executor: Executor, record: InvocationRecord, request: Request | None = None
    ) -> None:
        self._executor = executor
        self._record = record
        # Serialises this invocation's claim (_begin) against cancel(): one small lock per
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
        self._executor._wait(self, timeout)
        return self._record

    async def wait_async(self) -> InvocationRecord:
        """Await until it is finished."""
        await self._executor._wait_async(self)
        return self._record

    def __repr__(self) -> str:
        r = self._record
        return (
            f"<Invocation {r.request_id} {r.function} {r.state.value} attempts={len(r.attempts)}>"
        )


class Executor(ABC):
    """Runs background invocations and synchronous calls for an App.

    Subclasses implement where attempts run (:meth:`_dispatch`, :meth:`call`,
    :meth:`call_async`, :meth:`shutdown`) and change records only through
    :meth:`_begin` and :meth:`_end`.
    """

    _stopping: Stopping | None = None
    """Tells the engine's own stop from a handler's BaseException (see attempts.Stopping)."""

    def __init__(self, *, clock: Clock, journal: Journal | None = None) -> None:
        self.clock = clock
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self._binding: Binding | None = None
        self._live: dict[str, Invocation] = {}
        # Accepts of submit_async handed to the journal and not yet dispatched: they count
        # against a bound on waiting work (ThreadExecutor.max_pending) like dispatched ones.
        self._committing = 0
        self._committing_lock = threading.Lock()
        self._lock = threading.RLock()
        self._finished = threading.Condition(self._lock)
        self._waiters = 0
        self._cancel_requested: set[str] = set()
        self._closed = False
        self._running_count = 0
        self._starved_said = -math.inf

    # -- wiring -----------------------------------------------------------------------------------

    def bind(self, binding: Binding) -> None:
        """Called by the App that owns this executor; an executor serves one App."""
        self._binding = binding

    @property
    def binding(self) -> Binding:
        if self._binding is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to an App; pass it to App(registry, "
                "executor=...) first"
            )
        return self._binding

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
        self._emit(EventKind.ACCEPTED, record)
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
            handle = Invocation(self, record.without_body())
        else:
            handle = Invocation(self, record, request)
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
                    self._emit(EventKind.ACCEPTED, record)
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
        handle = Invocation(self, record)
        with self._lock:
            self._live[record.request_id] = handle
        self._dispatch(record)
        return handle

    def recover(self) -> int:
        """Take over what a durable journal holds: attempts whose process died are ended as
        ``interrupted`` (a failed attempt; the retry schedule follows from now), and accepted
        or retry-scheduled invocations this executor does not know yet are scheduled at their
        ``next_run_at``. Returns how many invocations were taken over. Safe to call often."""
        if self._closed:
            return 0
        taken = 0
        for record in self.journal.expire_leases():
            live = self._live.get(record.request_id)
            if live is not None and live.state is State.RUNNING:
                continue  # ours and still running (a late heartbeat): the claim renewed it
            self._interrupted(record)
            taken += 1
        for record in self.journal.unfinished():
            if record.state is State.RUNNING:
                continue  # leased by a live process (maybe this one)
            with self._lock:
                known = record.request_id in self._live
            if not known:
                self.resume(record)
                taken += 1
        return taken

    def _interrupted(self, record: InvocationRecord) -> None:
        """End an attempt found dead (its lease expired) as interrupted."""
        with self._lock:
            self._live.setdefault(record.request_id, Invocation(self, record))
        attempt = record.last_attempt
        error = RuntimeError(
            f"attempt {attempt.number if attempt else '?'} of function {record.function!r} was "
            "running when its process stopped or vanished"
        )
        try:
            retry = self.binding.retry_for(self.binding.lookup(record.function))
        except LookupError:
            retry = RetryPolicy(delays=())  # its function is gone: nothing to retry with
        ended = self._end(record, Outcome.INTERRUPTED, error, retry=retry)
        if ended.state is State.RETRY_SCHEDULED:
            self._dispatch(ended)

    def _heartbeat(self) -> None:
        """Renew the leases of this executor's running attempts (durable journals)."""
        with self._lock:
            # submit() adds entries without the lock. dict.copy() is one C call with no
            # allocation mid-way; list(items()) could grow its list, run the garbage
            # collector, let another thread in, and fail with "changed size during iteration".
            live = self._live.copy()
        running = [rid for rid, h in live.items() if h.state is State.RUNNING]
        if running:
            self.journal.heartbeat(running)

    def get(self, request_id: str) -> Invocation:
        """A handle on a live invocation, or one rebuilt from the journal."""
        with self._lock:
            live = self._live.get(request_id)
        if live is not None:
            return live
        record = self.journal.get(request_id)
        if record is None:
            raise InvocationNotFoundError(f"no invocation with request id {request_id!r}")
        return Invocation(self, record)

    def cancel(self, request_id: str) -> InvocationRecord:
        """No further attempts; a running attempt finishes (or is cancelled, if the engine can)."""
        handle = self._live.get(request_id)
        guard = handle._guard if handle is not None else threading.Lock()
        with guard:  # no claim of this invocation can slip in between
            record = handle.record if handle is not None else self.journal.get(request_id)
            if record is None:
                raise InvocationNotFoundError(f"no invocation with request id {request_id!r}")
            if record.state.finished:
                return record
            if record.state is State.RUNNING:
                with self._lock:
                    self._cancel_requested.add(request_id)
                self._cancel_running(request_id)
                return record
            cancelled = record.cancel(self.clock.now())
            self.journal.finished(cancelled)
            with self._lock:
                self._store(cancelled)
        self._emit(EventKind.CANCELLED, cancelled)
        return cancelled

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

    def _prepare(self, started: InvocationRecord) -> PreparedAttempt | None:
        """:meth:`_attempt_inputs`, or None after ending the attempt as an error when they
        cannot be had: a claimed attempt always ends, and the thread that claimed it lives on.
        The function's retry schedule follows (a durable journal's body read can fail for a
        moment), except when the function is gone (removed by a reload): then none."""
        try:
            return self._attempt_inputs(started)
        except Exception as exc:
            ended = self._end(started, Outcome.ERROR, exc)  # no retries for a function gone
            if ended.state is State.RETRY_SCHEDULED:
                self._dispatch(ended)
            return None

    def _attempt_inputs(self, started: InvocationRecord) -> PreparedAttempt:
        """The function, Request, Context and time limit of ``started``'s newest attempt."""
        function = self.binding.lookup(started.function)
        timeout = self.binding.limits_for(function).background_timeout
        attempt = started.attempts[-1]
        handle = self._live.get(started.request_id)
        deadline = attempt.started_at + timeout
        if handle is not None and handle._context is not None:
            made_for, previous = handle._context
            if made_for is function and handle._request is not None:
                context = previous._for_attempt(attempt.number, deadline)
                handle._context = (function, context)
                return PreparedAttempt(function, handle._request, context, timeout)
        request = handle._request if handle is not None else None
        if request is None:
            request = record_request(self.journal.with_body(started))
        context = make_context(
            function,
            request,
            request_id=started.request_id,
            params=started.params,
            attempt=attempt.number,
            deadline=deadline,
            clock=self.clock,
            trust_proxy=self.binding.trust_proxy,
            site=self.binding.site,
        )
        if handle is not None:
            if not self.journal.durable:  # else the body stays in the journal between attempts
                handle._request = request
            handle._context = (function, context)
        return PreparedAttempt(function, request, context, timeout)

    def _sync_context(
        self,
        function: Function,
        request: Request,
        params: Mapping[str, str],
        request_id: str,
        timeout: float,
    ) -> Context:
        """The Context of a synchronous function's one attempt, due in ``timeout`` s."""
        return make_context(
            function,
            request,
            request_id=request_id,
            params=params,
            attempt=1,
            deadline=self.clock.now() + timeout,
            clock=self.clock,
            trust_proxy=self.binding.trust_proxy,
            site=self.binding.site,
        )

    async def _attempt_on_loop(self, record: InvocationRecord) -> InvocationRecord | None:
        """Run the next attempt of ``record`` on the running loop; the ended record, or None
        when it was cancelled before it started. Engines schedule what follows."""
        started = self._begin(record)
        if started is None:
            return None
        prepared = self._prepare(started)
        if prepared is None:
            return None
        function, context = prepared.function, prepared.context
        self._running_count += 1
        try:
            result = await run_async(
                prepared, cancelled=self._cancel_requested, stopping=self._stopping
            )
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # Cut off by shutdown past its grace: record it rather than leave it "running".
            # None: nothing more is scheduled; the journal keeps it for recovery.
            self._end(
                started,
                Outcome.INTERRUPTED,
                ExecutorShutdownError(
                    f"{type(self).__name__} shut down while attempt {context.attempt} of "
                    f"function {function.name!r} ran"
                ),
            )
            return None
        finally:
            self._running_count -= 1
        warn_ignored_return(function, result.value)
        return self._end(started, result.outcome, result.error, ended_at=result.ended_at)

    def _report_blocked(self, task: asyncio.Task[Any] | None, seconds: float) -> None:
        """The loop's ``on_blocked`` hook: one step of ``task`` held the loop ``seconds``.

        An attempt's handler runs in a task named ``function:request_id:attempt``: that names
        the function. Any other task or callback is the engine's own, and is named as such."""
        name = task.get_name() if task is not None else ""
        function, _, rest = name.partition(":")
        if rest:
            log.warning(
                "async handler of function %r blocked the event loop for %.2f s (task %s); "
                "await asyncio.sleep() or other awaitables instead of blocking calls",
                function,
                seconds,
                name,
            )
        else:
            log.warning(
                "the executor's own %s held its event loop for %.2f s",
                f"task {name}" if name else "callback",
                seconds,
            )

    def _report_starved(self, seconds: float, callbacks: int) -> None:
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

    def _claim_unavailable(self, started: InvocationRecord) -> None:  # noqa: B027 - optional
        """The journal could not take the claim of ``started``'s attempt; it may even have
        committed it (a connection that broke after the statement was sent). Engines that will
        not see that row again by themselves arrange to look at it later; the embedded ones do:
        recover() takes up a waiting row, and a committed claim's lease expires unrenewed."""

    def _cancel_running(self, request_id: str) -> None:  # noqa: B027 - optional for engines
        """Stop a running attempt if the engine can; by default it runs to its end."""

    def _check_accepting(self) -> None:
        if self._closed:
            raise ExecutorShutdownError(f"{type(self).__name__} is shut down")

    def _current(self, request_id: str, fallback: InvocationRecord) -> InvocationRecord:
        handle = self._live.get(request_id)
        return handle.record if handle is not None else fallback

    def _begin(self, record: InvocationRecord) -> InvocationRecord | None:
        """Claim and start the next attempt; None when it is not ours to run (cancelled,
        finished, already running, or claimed by another process sharing the journal)."""
        rid = record.request_id
        handle = self._live.get(rid)
        if handle is None:
            # _store drops the live handle once finished (e.g. cancelled while waiting),
            # so the record we were dispatched with may be stale: trust the journal.
            stored = self.journal.get(rid)
            if stored is None or stored.state.finished:
                return None
            handle = self._live.setdefault(rid, Invocation(self, stored))
        # The invocation's own lock, not the executor's: threads running different
        # invocations never wait on each other (under the GIL that became a lock convoy).
        with handle._guard:
            current = handle._record
            if current.state not in (State.ACCEPTED, State.RETRY_SCHEDULED):
                if current.state.finished:
                    self._forget(handle)
                return None  # finished, or a second dispatch of a running attempt
            started = current.start_attempt(self.clock.now())
            try:
                claimed = self.journal.attempt_started(started)
            except JournalUnavailableError as exc:
                # The journal cannot take the claim now (locked, full): the row still waits
                # in it. Forget it here so that recover() takes it up again once the journal
                # works, rather than let the exception end this worker.
                log.warning("cannot start %s (%s) now: %s", rid, current.function, exc)
                self._claim_unavailable(started)
                claimed = False
            if not claimed:
                self._forget(handle)
                return None
            handle._record = started
        self._emit(EventKind.ATTEMPT_STARTED, started)
        return started

    def _end(
        self,
        record: InvocationRecord,
        outcome: Outcome,
        error: BaseException | None = None,
        *,
        ended_at: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> InvocationRecord:
        """End the running attempt; the record then is retry-scheduled or finished."""
        if retry is None:
            try:
                retry = self.binding.retry_for(self.binding.lookup(record.function))
            except LookupError:
                retry = RetryPolicy(delays=())  # its function is gone (a reload): no retries
        now = self.clock.now() if ended_at is None else ended_at
        cancel = record.request_id in self._cancel_requested
        ended = record.end_attempt(
            now,
            outcome,
            RetryPolicy(delays=()) if cancel else retry,
            error_type=None if error is None else error_type_name(error),
            error_message=None if error is None else str(error),
        )
        if cancel and ended.state is State.FAILED:
            ended = dataclasses.replace(ended, state=State.CANCELLED)
        if not ended.state.finished:
            with self._lock:
                if record.request_id in self._cancel_requested:
                    ended = ended.cancel(now)  # cancelled while this attempt ended
                else:
                    self._store(ended)
        try:
            if ended.state.finished:
                self.journal.finished(ended)
            else:
                self.journal.scheduled(ended)
        except JournalUnavailableError as exc:
            # The journal still says running, leased to us. Stop renewing that lease: once it
            # expires, recover() ends the attempt as interrupted and the schedule goes on
            # (at least once), instead of the row staying running for ever.
            log.warning(
                "cannot record the end of %s (%s) now: %s; it will be retried as interrupted",
                ended.request_id,
                ended.function,
                exc,
            )
            with self._lock:
                self._live.pop(ended.request_id, None)
            return ended
        self._emit(EventKind.ATTEMPT_ENDED, ended)
        if error is not None and outcome.failed:
            _log_failure(ended, error)  # after the event: its line, then the traceback
        state = ended.state
        if state is State.RETRY_SCHEDULED:
            self._emit(EventKind.RETRY_SCHEDULED, ended)
        elif state is State.SUCCEEDED:
            self._emit(EventKind.SUCCEEDED, ended)
        elif state is State.CANCELLED:
            self._emit(EventKind.CANCELLED, ended)
        elif state is State.FAILED:
            self._emit(EventKind.FAILED, ended)
            for hook in self.binding.on_failure:
                try:
                    hook(ended)
                except Exception:
                    log.exception(
                        "on_failure hook %r raised for %s (%s); ignored",
                        hook,
                        ended.request_id,
                        ended.function,
                    )
        if state.finished:
            # Waiters wake only now, so that when wait() returns the journal has the final
            # record and the hooks have seen it.
            self._cancel_requested.discard(ended.request_id)
            self._store(ended)
        return ended

    def _forget(self, handle: Invocation) -> None:
        """Drop ``handle`` from the live table, if it is still the one there."""
        with self._lock:
            if self._live.get(handle.request_id) is handle:
                del self._live[handle.request_id]

    def _store(self, record: InvocationRecord) -> None:
        """Update the live handle; wake waiters when it finished.

        Single dict and attribute stores are atomic, so no lock is needed but to notify: a
        waiter counts itself (under the lock) before it looks at the record, and the record is
        stored before ``_waiters`` is read here, so no wake-up is lost."""
        handle = self._live.get(record.request_id)
        if handle is not None:
            handle._record = record
            if record.state.finished:
                self._live.pop(record.request_id, None)
                handle._context = None  # no attempt follows; users may keep the handle
        if record.state.finished and self._waiters:
            with self._lock:
                self._finished.notify_all()

    def _emit(self, kind: EventKind, record: InvocationRecord) -> None:
        listeners = self._binding.on_event if self._binding is not None else ()
        if not listeners:
            return
        event = Event(kind, record, self.clock.now())
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception(
                    "on_event listener %r raised for %s %s; ignored",
                    listener,
                    kind.value,
                    record.request_id,
                )

    def _wait(self, handle: Invocation, timeout: float | None) -> None:
        """Wait for ``handle`` on a threaded engine; the inline executor overrides this."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        with self._lock:
            self._waiters += 1
            try:
                while not handle.done():
                    followed = self._live.get(handle.request_id) is not handle
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

    async def _wait_async(self, handle: Invocation) -> None:
        """Await ``handle`` from any event loop, without blocking it."""
        if not handle.done():
            await asyncio.get_running_loop().run_in_executor(None, self._wait, handle, None)


def _log_failure(ended: InvocationRecord, error: BaseException) -> None:
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
