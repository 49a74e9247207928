"""Background functions on Celery: the web tier publishes, worker machines run the attempts.

Needs the ``[celery]`` extra (``pip install 'bgfunctions[celery]'``) and a durable :class:`Journal`
that the web tier and every worker share (``PostgresJournal`` across machines; ``SQLiteJournal``
on one machine). The record in that journal is the truth; a broker message only says "look at
invocation X, attempt N":

* the web tier (:class:`CeleryExecutor`) records ``accepted`` (and its hooks hear it), then
  publishes ``run_attempt(request_id, 1)`` and waits for the broker's confirm; if the publish
  fails the record becomes ``rejected`` and the App answers 503, never 202;
* a worker (``bgfunctions worker``, or ``celery -A bgfunctions.executors.celery:app worker``)
  claims the attempt in the journal, runs the handler, ends the attempt through the shared
  :class:`~bgfunctions.lifecycle.Lifecycle` (in :mod:`.celery_worker`), and publishes the
  next attempt with an explicit countdown (the retry delay) when one is due. Celery never
  retries anything;
* a message redelivered while its attempt is still ``running`` (its worker child was killed at
  the hard limit, or died) takes the attempt over once its lease expired and ends it as
  ``timed_out`` or ``crashed``: a failed attempt, retried on the usual schedule;
* a cancel of a running attempt is broadcast to the workers, and the child running it stops the
  handler (:mod:`.celery_cancel`): the attempt ends ``cancelled``.

Hooks run where the state change happens: ``accepted`` (and ``rejected``, and ``cancelled`` of a
waiting invocation) in the web process, attempt events and ``on_failure`` in the worker process
that ran the attempt.

The module is split by what the parts do: :mod:`.celery_config` (queues, settings, names),
:mod:`.celery_app` (the Celery app, publishing, running a worker), :mod:`.celery_worker` (what
runs in a worker child), :mod:`.celery_cancel` (cancels); this module is the web tier, and
every public name is importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

try:
    import celery
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bgfunctions.executors.celery needs Celery and a broker client, which are not installed "
        f"({_exc}); install them with: pip install 'bgfunctions[celery]'"
    ) from _exc

from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import InvocationNotFoundError, NotAcceptedError
from bgfunctions.executors import celery_app as _app
from bgfunctions.executors.base import Binding, Executor, ExecutorStats, Invocation
from bgfunctions.executors.celery_app import declare_queues, make_celery, run_worker
from bgfunctions.executors.celery_cancel import CANCEL_COMMAND
from bgfunctions.executors.celery_config import (
    TASK_NAME,
    celery_settings,
    dead_letter_queue,
    journal_factory,
    task_queue,
    worker_name,
)
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.invocation import EventKind, InvocationRecord, State
from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response

__all__ = [
    "TASK_NAME",
    "CeleryExecutor",
    "celery_settings",
    "dead_letter_queue",
    "declare_queues",
    "journal_factory",
    "make_celery",
    "run_worker",
    "task_queue",
    "worker_name",
]

log = logging.getLogger("bgfunctions.celery")

# -- the web tier ----------------------------------------------------------------------------


class CeleryExecutor(Executor):
    """Accepts background invocations into the shared journal and hands them to Celery workers.

    Synchronous functions run here, in the web process (on a :class:`ThreadExecutor`), as with
    the embedded executors; only background attempts travel to workers.
    """

    def __init__(
        self,
        celery_app: celery.Celery,
        *,
        journal: Journal,
        clock: Clock | None = None,
        poll_interval: float = 0.2,
        republish_after: float | None = 1800.0,
    ) -> None:
        """``journal``: the journal the workers share. ``poll_interval``: seconds between
        journal reads of :meth:`Invocation.wait`. ``republish_after``: an invocation still
        waiting this many seconds after it was due gets its message published again (None:
        never), because a broker can lose one: Redis when a worker is killed between taking
        a message and recording it as unacked. Duplicates are harmless: workers claim
        attempts in the journal. Keep it above the longest backlog you expect."""
        super().__init__(clock=clock if clock is not None else SystemClock(), journal=journal)
        self.celery_app = celery_app
        self.poll_interval = poll_interval
        self.republish_after = republish_after
        self._sweep_stop = threading.Condition()
        self._sweeper: threading.Thread | None = None
        self._republished: dict[str, float] = {}
        # Cancels of running attempts not seen through yet: request id -> (attempt told,
        # when to tell again, how long to wait after that).
        self._cancelling: dict[str, tuple[int, float, float]] = {}
        self._canceller: threading.Thread | None = None
        _app.options_of(celery_app)  # refuse a foreign app now, not at the first request
        self._local = ThreadExecutor(clock=self.clock, journal=MemoryJournal(max_finished=0))
        # Our own broker connections (opened on first use), so that shutdown closes exactly
        # them: Celery's pool is shared by every app of the process on the same broker, and
        # Celery.close() leaves its sockets open.
        self._connections: Any = celery_app.connection_for_write().Pool(
            limit=celery_app.conf.broker_pool_limit
        )

    def bind(self, binding: Binding) -> None:
        super().bind(binding)
        self._local.bind(binding)

    def start(self) -> None:
        """Declare the dead-letter queue (RabbitMQ); a broker that is down only logs. Starts
        the sweep that re-publishes invocations whose message was lost."""
        try:
            declare_queues(self.celery_app)
        except Exception as exc:
            log.warning("could not declare the bgfunctions queues yet: %s", exc)
        if self.republish_after is not None and self._sweeper is None and not self._closed:
            self._sweeper = threading.Thread(
                target=self._sweep_main, name="bgfunctions-celery-sweep", daemon=True
            )
            self._sweeper.start()

    def _sweep_main(self) -> None:
        assert self.republish_after is not None
        every = max(1.0, self.republish_after / 4)
        while True:
            with self._sweep_stop:
                if not self._closed:
                    self.clock.wait(self._sweep_stop, every)
                stopped = self._closed
            if stopped:
                return
            try:
                self.sweep()
            except Exception as exc:
                log.warning("bgfunctions sweep for lost messages failed: %s", exc)

    def sweep(self) -> int:
        """Publish again the messages of invocations overdue by ``republish_after``; at most
        once per ``republish_after`` each. Returns how many were published."""
        if self.republish_after is None:
            return 0
        now = self.clock.now()
        horizon = now - self.republish_after
        published = 0
        for record in self.journal.select(state=[s for s in State if s.waiting]):
            due = record.next_run_at if record.next_run_at is not None else record.accepted_at
            last = self._republished.get(record.request_id, due)
            if due > horizon or last > horizon:
                continue
            log.warning(
                "invocation %s (%s) is %.0f s overdue: publishing its message again",
                record.request_id,
                record.function,
                now - due,
            )
            self._publish(record, record.attempt_count + 1, 0.0)
            self._republished[record.request_id] = now
            published += 1
        if len(self._republished) > 10_000:
            self._republished = {k: v for k, v in self._republished.items() if v > horizon}
        return published

    def submit(self, record: InvocationRecord, request: Request | None = None) -> Invocation:
        """Record ``accepted`` (its hooks hear it now, before any worker can start the
        attempt), then publish and wait for the broker's confirm. When the publish fails the
        record is ``rejected`` and :class:`NotAcceptedError` raised (the App: 503)."""
        self._check_accepting()
        if record.next_run_at is None:
            record = dataclasses.replace(record, next_run_at=record.accepted_at)
        self.journal.accepted(record)
        self.lifecycle.emit(EventKind.ACCEPTED, record)
        try:  # due later when enqueued with a delay (record.not_before)
            due = record.next_run_at or record.accepted_at
            self._publish(record, 1, max(0.0, due - self.clock.now()))
        except Exception as exc:
            rejected = record.reject(self.clock.now())
            self.journal.finished(rejected)
            self.lifecycle.emit(EventKind.REJECTED, rejected)
            error = NotAcceptedError(
                f"the broker did not confirm invocation {record.request_id} of function "
                f"{record.function!r} ({type(exc).__name__}: {exc}); recorded as rejected"
            )
            error.retry_after = 5.0
            raise error from exc
        return Invocation(self.lifecycle, record, request)

    def _dispatch(self, record: InvocationRecord) -> None:
        countdown = 0.0 if record.next_run_at is None else record.next_run_at - self.clock.now()
        self._publish(record, record.attempt_count + 1, countdown)

    def _publish(self, record: InvocationRecord, attempt: int, countdown: float) -> None:
        with self._connections.acquire(block=True) as connection:
            _app.publish(
                self.celery_app, self.binding, record, attempt, countdown, connection=connection
            )

    def cancel(self, request_id: str) -> InvocationRecord:
        """No further attempts. A waiting invocation is cancelled in the journal (a message
        delivered later is dropped by the worker that receives it). A running attempt is
        stopped by the worker child that runs it (the cancel is broadcast to the workers, and
        repeated until the journal shows the invocation finished): it ends ``cancelled``.
        Returns the record as it is now (``running`` until the worker has ended it)."""
        record = self.journal.get(request_id)
        if record is None:
            raise InvocationNotFoundError(f"no invocation with request id {request_id!r}")
        return self._cancel(record, 0.0)

    def _cancel(self, record: InvocationRecord, wait: float) -> InvocationRecord:
        """Cancel ``record`` as the journal has it; ``wait``: seconds since the last broadcast
        of a cancel of it (0: first time)."""
        if record.state.finished:
            return record
        if record.state is not State.RUNNING:
            self.journal.finished(record.cancel(self.clock.now()))
            stored = self.journal.get(record.request_id) or record
            if stored.state is State.CANCELLED:
                self.lifecycle.emit(EventKind.CANCELLED, stored)
            if stored.state is not State.RUNNING:  # else a worker claimed it meanwhile
                return stored
            record = stored
        self._tell_workers(record, wait)
        return record

    def _tell_workers(self, record: InvocationRecord, wait: float) -> None:
        """Broadcast the cancel of ``record``'s running attempt; look again (and tell them
        again, waiting longer each time) until the invocation is finished."""
        attempt = record.attempt_count
        try:
            with self._connections.acquire(block=True) as connection:
                self.celery_app.control.broadcast(
                    CANCEL_COMMAND,
                    arguments={"request_id": record.request_id, "attempt": attempt},
                    connection=connection,
                )
        except Exception as exc:
            log.warning("could not broadcast the cancel of %s: %s", record.request_id, exc)
        wait = min(max(0.5, wait * 2), 10.0)
        with self._sweep_stop:
            self._cancelling[record.request_id] = (attempt, self.clock.monotonic() + wait, wait)
            if self._canceller is None and not self._closed:
                self._canceller = threading.Thread(
                    target=self._cancel_main, name="bgfunctions-celery-cancel", daemon=True
                )
                self._canceller.start()

    def _cancel_main(self) -> None:
        """Follow the cancels of running attempts until their invocations are finished."""
        while True:
            with self._sweep_stop:
                if not self._closed and self._cancelling:
                    self.clock.wait(self._sweep_stop, max(self.poll_interval, 0.05))
                if self._closed or not self._cancelling:
                    self._canceller = None
                    return
                pending = dict(self._cancelling)
            now = self.clock.monotonic()
            for rid, (attempt, again, wait) in pending.items():
                try:
                    record = self.journal.get(rid)
                    if record is None or record.state.finished:
                        with self._sweep_stop:
                            self._cancelling.pop(rid, None)
                    elif record.state is not State.RUNNING or record.attempt_count != attempt:
                        # The attempt ended before the cancel reached it (a retry is
                        # scheduled), or a later one runs: cancel that (it follows again).
                        with self._sweep_stop:
                            self._cancelling.pop(rid, None)
                        self._cancel(record, 0.0)
                    elif now >= again:
                        self._cancel(record, wait)
                except Exception as exc:
                    log.warning("following the cancel of %s failed: %s", rid, exc)

    def _wait(self, handle: Invocation, timeout: float | None) -> None:
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while True:
            record = self.journal.get(handle.request_id)
            if record is not None:
                handle._record = record
            if handle.done():
                return
            left = None if deadline is None else deadline - self.clock.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"invocation {handle.request_id} not finished after {timeout} s "
                    f"(state {handle.state.value})"
                )
            self.clock.sleep(self.poll_interval if left is None else min(self.poll_interval, left))

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        return self._local.call(function, request, params, request_id)

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        return await self._local.call_async(function, request, params, request_id)

    def stats(self) -> ExecutorStats:
        """Counts from the shared journal: waiting and running across every worker."""
        waiting = self.journal.select(state=[s for s in State if s.waiting])
        running = self.journal.select(state=State.RUNNING)
        return ExecutorStats(pending=len(waiting), running=len(running))

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """Stop accepting; accepted invocations are the workers' and carry on."""
        with self._sweep_stop:
            self._closed = True
            self._sweep_stop.notify_all()
        if self._sweeper is not None:
            self._sweeper.join()
        canceller = self._canceller
        if canceller is not None:
            canceller.join()
        self._local.shutdown(wait, grace=grace)
        self._connections.force_close_all()  # what this executor opened, and only that


_ENV_APP: list[Any] = []


def __getattr__(name: str) -> Any:
    if name == "app":
        if not _ENV_APP:
            _ENV_APP.append(_app.from_environment())
        return _ENV_APP[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
