"""The lifecycle of an invocation, one object every engine holds.

An engine decides *where* an attempt runs (the caller's thread on virtual time, a thread pool,
worker processes, a Celery child) and how a stuck one is stopped; :class:`Lifecycle` decides
*what happens around it*: each state change of an invocation (accepted -> running -> succeeded |
retry_scheduled | failed | cancelled) goes through :class:`InvocationRecord`'s state machine,
then the journal, then the ``on_event`` listeners and hooks, in that order, in one place. So
every engine records the same attempts, with the same retry schedule, and fires the same hooks.
A durable sleep (``context.step.sleep``) ends an attempt as ``suspended``, whatever the handler
made of the :class:`~bgfunctions.errors.Suspended` it raised: the record sleeps until the wake
time, and the engine schedules it then as it schedules a retry (``State.waiting``).
What happens *in* an attempt is :mod:`bgfunctions.attempts`.

An engine gives its lifecycle three things (:class:`Engine`): how to schedule a record's next
attempt, how to stop a running one (optional) and what to do when the journal could not take a
claim (optional).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from bgfunctions._slots import copier
from bgfunctions.attempts import (
    PreparedAttempt,
    Stopping,
    make_context,
    make_steps,
    record_request,
)
from bgfunctions.clock import Clock
from bgfunctions.commits import Commits
from bgfunctions.context import Context
from bgfunctions.errors import (
    InvocationNotFoundError,
    JournalUnavailableError,
)
from bgfunctions.handles import Binding, Invocation, LiveTable
from bgfunctions.invocation import (
    Event,
    EventKind,
    InvocationRecord,
    Outcome,
    State,
    Step,
    error_type_name,
)
from bgfunctions.journals.base import Journal
from bgfunctions.loop_attempts import run_on_loop
from bgfunctions.registry import Function
from bgfunctions.reports import LoopReports, log_failure
from bgfunctions.requests import Request
from bgfunctions.retry import RetryPolicy

__all__ = ["Lifecycle"]

log = logging.getLogger("bgfunctions.executor")


_BLANK_EVENT = Event(
    EventKind.ACCEPTED,
    InvocationRecord(request_id="", function="", method="GET", url="/", accepted_at=0.0),
    0.0,
)
_new_event: Callable[[Event, EventKind, InvocationRecord, float], Event] = copier(
    Event, ("kind", "record", "at")
)
"""Event(kind, record, at) without the frozen dataclass's __init__: up to four per invocation."""


_MAY_SLEEP = frozenset((Outcome.SUCCEEDED, Outcome.ERROR, Outcome.SUSPENDED))
"""Outcomes a durable sleep turns into ``suspended`` (a handler may catch ``Suspended``)."""


def _pending_wake(record: InvocationRecord) -> float | None:
    """The wake time of a sleep that suspended ``record``'s running attempt, read from its
    steps, for engines whose handler ran elsewhere (a worker process): a sleep step that wakes
    after the attempt started is the one that ended it (a sleep past returns at once)."""
    attempt = record.last_attempt
    if attempt is None:
        return None
    wakes = [
        s.ended_at
        for s in record.steps
        # Stored by this attempt, and a real sleep: sleep(0) or sleep_until(a time past)
        # stores its step too (wake = when it was called) but returns at once.
        if s.kind == "sleep" and s.attempt == attempt.number and s.ended_at > s.started_at
    ]
    return min(wakes) if wakes else None


def _nothing(_: Any) -> None:
    """An engine hook the engine does not need."""


class Lifecycle:
    """The state machine, journal writes, events, hooks and waiters of one engine's
    invocations. Engines change records only through :meth:`begin` and :meth:`end`."""

    def __init__(
        self,
        *,
        name: str,
        clock: Clock,
        journal: Journal,
        dispatch: Callable[[InvocationRecord], None],
        cancel_running: Callable[[str], None] = _nothing,
        claim_unavailable: Callable[[InvocationRecord], None] = _nothing,
        waiter: Callable[[Invocation, float | None], None] | None = None,
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        """``dispatch``: arrange the next attempt of a record at its ``next_run_at``.
        ``cancel_running``: stop a running attempt, if the engine can (else it runs to its
        end). ``claim_unavailable``: the journal could not take a claim (it may even have
        committed it); engines that will not see that row again by themselves arrange to look
        at it later. ``waiter``: how a caller waits for an invocation (default: on a condition
        the engine's threads notify). ``closed``: whether the engine was shut down."""
        self.name = name
        self.clock = clock
        self.journal = journal
        self._dispatch = dispatch
        self._on_cancel_running = cancel_running
        self._on_claim_unavailable = claim_unavailable
        self._waiter = waiter if waiter is not None else self.wait_threaded
        self._binding: Binding | None = None
        self.lock = threading.RLock()
        self.table = LiveTable(self.lock, clock, journal)
        self.live = self.table.live
        """The invocations this process knows, by request id, until they finish."""
        self.cancel_requested: set[str] = set()
        self._engine_closed = closed
        self.running = 0
        """Attempts running on a loop (engines add their own counts)."""
        self.reports = LoopReports(clock)
        self.commits = Commits()
        """The threads a durable journal's writes for loop attempts run on."""
        self.commit_off_loop = False
        """Whether :meth:`run_on_loop` claims and ends attempts on a durable journal on commit
        threads (real-time engines) rather than on the loop (a virtual-time loop must not wait
        for other threads)."""
        """The hooks of the engine's loops (a blocked handler, a loop that fell behind)."""

    @property
    def closed(self) -> bool:
        """Whether the engine was shut down: no recovery, and an attempt cut off is recorded
        ``interrupted``."""
        return self._engine_closed()

    @property
    def binding(self) -> Binding:
        if self._binding is None:
            raise RuntimeError(
                f"{self.name} is not bound to an App; pass it to App(registry, executor=...) first"
            )
        return self._binding

    @binding.setter
    def binding(self, binding: Binding) -> None:
        self._binding = binding

    def resume(self, record: InvocationRecord) -> Invocation:
        """Take over an unfinished record that is already in the journal (recovery)."""
        handle = Invocation(self, record)
        with self.lock:
            self.live[record.request_id] = handle
        self._dispatch(record)
        return handle

    def recover(self) -> int:
        """Take over what a durable journal holds: attempts whose process died are ended as
        ``interrupted`` (a failed attempt; the retry schedule follows from now), and accepted
        or retry-scheduled invocations this executor does not know yet are scheduled at their
        ``next_run_at``. Returns how many invocations were taken over. Safe to call often."""
        if self.closed:
            return 0
        taken = 0
        for record in self.journal.expire_leases():
            live = self.live.get(record.request_id)
            if live is not None and live.state is State.RUNNING:
                continue  # ours and still running (a late heartbeat): the claim renewed it
            self.interrupted(record)
            taken += 1
        for record in self.journal.unfinished():
            if record.state is State.RUNNING:
                continue  # leased by a live process (maybe this one)
            with self.lock:
                known = record.request_id in self.live
            if not known:
                self.resume(record)
                taken += 1
        return taken

    def interrupted(self, record: InvocationRecord) -> None:
        """End an attempt found dead (its lease expired) as interrupted."""
        with self.lock:
            self.live.setdefault(record.request_id, Invocation(self, record))
        attempt = record.last_attempt
        error = RuntimeError(
            f"attempt {attempt.number if attempt else '?'} of function {record.function!r} was "
            "running when its process stopped or vanished"
        )
        try:
            retry = self.binding.retry_for(self.binding.lookup(record.function))
        except LookupError:
            retry = RetryPolicy(delays=())  # its function is gone: nothing to retry with
        ended = self.end(record, Outcome.INTERRUPTED, error, retry=retry)
        if ended.state.waiting:
            self._dispatch(ended)

    def heartbeat(self) -> None:
        """Renew the leases of this executor's running attempts (durable journals)."""
        with self.lock:
            # submit() adds entries without the lock. dict.copy() is one C call with no
            # allocation mid-way; list(items()) could grow its list, run the garbage
            # collector, let another thread in, and fail with "changed size during iteration".
            live = self.live.copy()
        running = [rid for rid, h in live.items() if h.state is State.RUNNING]
        if running:
            self.journal.heartbeat(running)

    def get(self, request_id: str) -> Invocation:
        """A handle on a live invocation, or one rebuilt from the journal."""
        with self.lock:
            live = self.live.get(request_id)
        if live is not None:
            return live
        record = self.journal.get(request_id)
        if record is None:
            raise InvocationNotFoundError(f"no invocation with request id {request_id!r}")
        return Invocation(self, record)

    def cancel(self, request_id: str) -> InvocationRecord:
        """No further attempts; a running attempt finishes (or is cancelled, if the engine can)."""
        handle = self.live.get(request_id)
        guard = handle._guard if handle is not None else threading.Lock()
        with guard:  # no claim of this invocation can slip in between
            record = handle.record if handle is not None else self.journal.get(request_id)
            if record is None:
                raise InvocationNotFoundError(f"no invocation with request id {request_id!r}")
            if record.state.finished:
                return record
            if record.state is State.RUNNING:
                with self.lock:
                    self.cancel_requested.add(request_id)
                self._on_cancel_running(request_id)
                return record
            cancelled = record.cancel(self.clock.now())
            self.journal.finished(cancelled)
            with self.lock:
                self.table.store(cancelled)
        self.emit(EventKind.CANCELLED, cancelled)
        return cancelled

    def prepare(self, started: InvocationRecord) -> PreparedAttempt | None:
        """:meth:`_attempt_inputs`, or None after ending the attempt as an error when they
        cannot be had: a claimed attempt always ends, and the thread that claimed it lives on.
        The function's retry schedule follows (a durable journal's body read can fail for a
        moment), except when the function is gone (removed by a reload): then none."""
        try:
            return self._attempt_inputs(started)
        except Exception as exc:
            ended = self.end(started, Outcome.ERROR, exc)  # no retries for a function gone
            if ended.state.waiting:
                self._dispatch(ended)
            return None

    def _attempt_inputs(self, started: InvocationRecord) -> PreparedAttempt:
        """The function, Request, Context and time limit of ``started``'s newest attempt."""
        function = self.binding.lookup(started.function)
        timeout = self.binding.limits_for(function).background_timeout
        attempt = started.attempts[-1]
        handle = self.live.get(started.request_id)
        deadline = attempt.started_at + timeout
        # Durable steps: the attempt replays started.steps and stores new ones in the journal;
        # end() puts them on the ended record (_with_steps).
        store = self._step_store(started.request_id)
        steps = make_steps(
            function,
            started,
            self.clock,
            store,
            store_async=self._off_loop(store)
            if function.is_async and self.commit_off_loop and self.journal.durable
            else None,
        )
        if handle is not None and handle._context is not None:
            made_for, previous = handle._context
            if made_for is function and handle._request is not None:
                context = previous._for_attempt(attempt.number, deadline, steps)
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
            step=steps,
        )
        if handle is not None:
            if not self.journal.durable:  # else the body stays in the journal between attempts
                handle._request = request
            handle._context = (function, context)
        return PreparedAttempt(function, request, context, timeout)

    def _step_store(self, request_id: str) -> Callable[[Step], None]:
        """How an attempt of ``request_id`` stores a committed step: in the journal, durably,
        before the handler goes on."""
        return functools.partial(self.journal.step_completed, request_id)

    def store_step(self, request_id: str, step: Step) -> None:
        """Commit ``step`` of ``request_id``'s running attempt, for an engine whose handler runs
        elsewhere (a worker process sends it here): returns once it is durable, raises when it
        cannot be stored (the step then counts as not committed). The engine puts the steps it
        stored on the record it ends (``record.with_steps``)."""
        self._step_store(request_id)(step)

    def _with_steps(self, record: InvocationRecord) -> tuple[InvocationRecord, float | None, bool]:
        """``record`` with the steps its running attempt committed (the live Context's), the
        wake time when a durable sleep suspended that attempt, and whether this process knew
        that attempt's Context (else: its handler ran elsewhere, or never started)."""
        handle = self.live.get(record.request_id)
        if handle is None or handle._context is None:
            return record, None, False
        context = handle._context[1]
        if context.attempt != record.attempt_count:
            # An earlier attempt's (this one failed before it had one): its sleep, if any,
            # is over and its steps are on the record already.
            return record, None, False
        steps = context.step
        completed = steps.completed
        if len(completed) <= len(record.steps):
            return record, steps.sleeping, True
        return record.with_steps(completed), steps.sleeping, True

    def sync_context(
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

    async def run_on_loop(
        self,
        record: InvocationRecord,
        *,
        stopping: Stopping | None = None,
        watch: float | None = None,
        here: bool = False,
    ) -> InvocationRecord | None:
        """Run the next attempt of ``record`` on the running loop; the ended record, or None
        when it was cancelled before it started (see :func:`bgfunctions.loop_attempts.run_on_loop`
        for ``watch`` and ``here``). Engines schedule what follows."""
        return await run_on_loop(self, record, stopping=stopping, watch=watch, here=here)

    # -- a durable journal's commits, off the loop (see bgfunctions.commits) -----------------

    def _off_loop(
        self, store: Callable[[Step], None]
    ) -> Callable[[Step], concurrent.futures.Future[None]]:
        """``store`` started on a commit thread: an async handler's step commits without
        holding its loop (and shares a group commit with its neighbours'); the Steps await
        its future."""
        return functools.partial(self.commits.submit, store)

    def stop_commits(self) -> None:
        """End the commit threads once their commits are done (engines call this at shutdown,
        after their loops)."""
        self.commits.stop()

    def current(self, request_id: str, fallback: InvocationRecord) -> InvocationRecord:
        handle = self.live.get(request_id)
        return handle.record if handle is not None else fallback

    def begin(self, record: InvocationRecord) -> InvocationRecord | None:
        """Claim and start the next attempt; None when it is not ours to run (cancelled,
        finished, already running, or claimed by another process sharing the journal)."""
        rid = record.request_id
        handle = self.live.get(rid)
        if handle is None:
            # _store drops the live handle once finished (e.g. cancelled while waiting),
            # so the record we were dispatched with may be stale: trust the journal.
            stored = self.journal.get(rid)
            if stored is None or stored.state.finished:
                return None
            handle = self.live.setdefault(rid, Invocation(self, stored))
        # The invocation's own lock, not the executor's: threads running different
        # invocations never wait on each other (under the GIL that became a lock convoy).
        with handle._guard:
            current = handle._record
            if not current.state.waiting:
                if current.state.finished:
                    self.table.forget(handle)
                return None  # finished, or a second dispatch of a running attempt
            started = current.start_attempt(self.clock.now())
            try:
                claimed = self.journal.attempt_started(started)
            except JournalUnavailableError as exc:
                # The journal cannot take the claim now (locked, full): the row still waits
                # in it. Forget it here so that recover() takes it up again once the journal
                # works, rather than let the exception end this worker.
                log.warning("cannot start %s (%s) now: %s", rid, current.function, exc)
                self._on_claim_unavailable(started)
                claimed = False
            if not claimed:
                self.table.forget(handle)
                return None
            handle._record = started
        self.emit(EventKind.ATTEMPT_STARTED, started)
        return started

    def end(
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
        cancel = record.request_id in self.cancel_requested
        record, wake, known = self._with_steps(record)
        if outcome in _MAY_SLEEP and (wake is not None or record.steps):
            if wake is None and not known:  # its handler ran elsewhere: read its steps
                wake = _pending_wake(record)
            if wake is not None:
                outcome, error = Outcome.SUSPENDED, None
        else:
            wake = None
        ended = record.end_attempt(
            now,
            outcome,
            RetryPolicy(delays=()) if cancel else retry,
            error_type=None if error is None else error_type_name(error),
            error_message=None if error is None else str(error),
            wake_at=wake,
        )
        if cancel and ended.state is State.FAILED:
            ended = dataclasses.replace(ended, state=State.CANCELLED)
        if not ended.state.finished:
            with self.lock:
                if record.request_id in self.cancel_requested:
                    ended = ended.cancel(now)  # cancelled while this attempt ended
                else:
                    self.table.store(ended)
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
            with self.lock:
                self.live.pop(ended.request_id, None)
            return ended
        self.emit(EventKind.ATTEMPT_ENDED, ended)
        if error is not None and outcome.failed:
            log_failure(ended, error)  # after the event: its line, then the traceback
        state = ended.state
        if state is State.RETRY_SCHEDULED:
            self.emit(EventKind.RETRY_SCHEDULED, ended)
        elif state is State.SLEEPING:
            self.emit(EventKind.SLEEPING, ended)
        elif state is State.SUCCEEDED:
            self.emit(EventKind.SUCCEEDED, ended)
        elif state is State.CANCELLED:
            self.emit(EventKind.CANCELLED, ended)
        elif state is State.FAILED:
            self.emit(EventKind.FAILED, ended)
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
            self.cancel_requested.discard(ended.request_id)
            self.table.store(ended)
        return ended

    def emit(self, kind: EventKind, record: InvocationRecord) -> None:
        listeners = self._binding.on_event if self._binding is not None else ()
        if not listeners:
            return
        event = _new_event(_BLANK_EVENT, kind, record, self.clock.now())
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

    def wait(self, handle: Invocation, timeout: float | None) -> None:
        """Wait until ``handle`` is finished: the engine's own way, when it has one."""
        self._waiter(handle, timeout)

    def wait_threaded(self, handle: Invocation, timeout: float | None) -> None:
        """Wait for ``handle`` on a threaded engine (the inline one runs virtual time)."""
        self.table.wait(handle, timeout)

    async def wait_async(self, handle: Invocation) -> None:
        """Await ``handle`` from any event loop, without blocking it."""
        if not handle.done():
            await asyncio.get_running_loop().run_in_executor(None, self.wait, handle, None)
