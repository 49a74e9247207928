"""The worker side of the Celery engine: what runs in a Celery worker child.

A message says "look at invocation X, attempt N". :class:`WorkerSide` reads the journal, claims
the attempt, runs it with the one attempt runner (:mod:`bgfunctions.attempts`) through the one
:class:`~bgfunctions.lifecycle.Lifecycle`, and publishes the next attempt when one is due. A
redelivered message of a running attempt takes it over once its lease expired (its child died or
was killed at the hard limit): ``timed_out`` or ``crashed``, decided here, where the death is seen.

A handler's ``sys.exit()`` is its attempt's error, as on every engine; only Celery's own stop of
the child (:func:`worker_stopping`) ends the process.

A cancel of the running attempt reaches the child as a signal (:mod:`.celery_cancel`): an async
handler's task is cancelled, a sync handler gets :class:`AttemptCancelled` raised where it runs;
either way the attempt ends ``cancelled``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgfunctions.attempts import timeout_error
from bgfunctions.clock import SystemClock
from bgfunctions.executors.celery_cancel import (
    AttemptCancelled,
    CancelBoard,
    Cancellable,
    install_signal_handler,
    listen,
)
from bgfunctions.handles import Binding, Invocation
from bgfunctions.invocation import InvocationRecord, OnEvent, OnFailure, Outcome, State
from bgfunctions.journals.base import Journal
from bgfunctions.lifecycle import Lifecycle
from bgfunctions.registry import Function, Registry
from bgfunctions.retry import Limits, RetryPolicy

__all__ = [
    "EARLY",
    "AttemptCancelled",
    "Options",
    "Publish",
    "WorkerSide",
    "WorkerState",
    "worker_stopping",
]

log = logging.getLogger("bgfunctions.celery")

# A message at most this early waits in place rather than being published again: RabbitMQ's
# delayed delivery counts whole seconds, so a shorter countdown is delivered at once.
EARLY = 1.0
JournalSource = Journal | Callable[[], Journal]


Publish = Callable[..., None]
"""Sends ``run_attempt(record, attempt)``: the executor module's ``_publish(app, binding,
record, attempt, countdown, *, seen=None)``, handed over so that neither module imports the
other's privates."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What ``make_celery`` was given; kept beside the Celery app for both tiers."""

    journal: JournalSource
    site: Path | None
    registry: Registry | None
    limits: Limits
    retry: RetryPolicy
    queue: Any
    """The kombu Queue attempts travel on."""
    on_event: tuple[OnEvent, ...]
    on_failure: tuple[OnFailure, ...]
    kill_margin: float


class WorkerState:
    """The worker side of one Celery app: the functions, and one executor per process."""

    def __init__(self, app: Any, options: Options, publish: Publish, board: CancelBoard) -> None:
        self.app = app
        self.options = options
        self._publish = publish
        self.board = board
        self._lock = threading.Lock()
        self._registry = options.registry
        self._side: WorkerSide | None = None
        self._pid = 0

    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                if self.options.site is None:
                    raise RuntimeError(
                        "make_celery(): a worker needs site= (a site directory) or registry=; "
                        "got neither"
                    )
                self._registry = Registry.from_site(self.options.site)
            return self._registry

    def side(self) -> WorkerSide:
        registry = self.registry()
        with self._lock:
            # A prefork child inherits the parent's objects but not its threads or sockets:
            # every process opens its own journal.
            if self._side is None or self._pid != os.getpid():
                source = self.options.journal
                journal = source if isinstance(source, Journal) else source()
                side = WorkerSide(
                    self.app,
                    journal,
                    self._publish,
                    self.board,
                    Binding(
                        lookup=registry.__getitem__,
                        limits=self.options.limits,
                        retry=self.options.retry,
                        on_event=self.options.on_event,
                        on_failure=self.options.on_failure,
                    ),
                )
                self._side, self._pid = side, os.getpid()
            return self._side

    def run_attempt(self, request_id: str, attempt: int, seen: float | None = None) -> None:
        """The Celery task body."""
        self.side().handle(request_id, int(attempt), None if seen is None else float(seen))


class WorkerSide:
    """Runs attempts in a Celery worker process: through the one attempt runner and the one
    lifecycle, so journal writes and hooks happen exactly as for the embedded executors. What
    it adds: the broker's messages (the next attempt, a look again later) and leases renewed
    while an attempt runs."""

    def __init__(
        self, app: Any, journal: Journal, publish: Publish, board: CancelBoard, binding: Binding
    ) -> None:
        self.app = app
        self.clock = SystemClock()
        self.journal = journal
        self._publish = publish
        self.board = board
        self.lifecycle = Lifecycle(
            name="Celery worker",
            clock=self.clock,
            journal=journal,
            dispatch=self._dispatch,
            claim_unavailable=self._claim_unavailable,
        )
        # Handlers wrapped so that a cancel can stop them (see celery_cancel).
        self.cancellable = Cancellable(binding.lookup, self.lifecycle.cancel_requested)
        binding = dataclasses.replace(binding, lookup=self.cancellable.lookup)
        self.lifecycle.binding = binding
        self.binding = binding
        lease = float(getattr(journal, "lease", 10.0))
        self.recheck = lease  # a live-looking lease is looked at again after this long
        self._beat_every = lease / 3
        self._beating: set[str] = set()
        self._beat_cond = threading.Condition()
        self._beat_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: tuple[str, int] | None = None  # the attempt this process runs
        install_signal_handler()
        listen(self.cancel_signalled)

    def handle(self, request_id: str, attempt: int, seen: float | None = None) -> None:
        record = self.journal.get(request_id)
        if record is None:
            log.warning("run_attempt: no invocation %s in the journal; dropped", request_id)
            return
        if record.state.finished:
            return
        count = record.attempt_count
        if record.state is State.RUNNING:
            if attempt == count:
                self._take_over(record, attempt, self.clock.now() if seen is None else seen)
            return  # an older duplicate: the running attempt's own message covers it
        if attempt > count + 1:
            return
        # Any message for this invocation carries its next attempt (a requeued one included).
        due = record.next_run_at if record.next_run_at is not None else record.accepted_at
        early = due - self.clock.now()
        if early >= EARLY:
            self._send(record, count + 1, early)
            return
        if early > 0:
            self.clock.sleep(early)
        self._run(record)

    def _run(self, record: InvocationRecord) -> None:
        rid = record.request_id
        # The record was just read from the journal: hand it to the claim as the live one, so
        # that it is not read a second time (the claim's conditional update still refuses it
        # if another worker changed the row meanwhile).
        self.lifecycle.live[rid] = Invocation(self.lifecycle, record)
        self._beat(rid, True)
        # One loop per worker child, reused by every attempt it runs (a new loop per attempt
        # cost about a millisecond each).
        if self._loop is None or self._loop.is_closed():
            self._loop = self.clock.new_event_loop()
        attempt = record.attempt_count + 1
        self._current = (rid, attempt)
        if self.board.posted(rid, attempt):  # cancelled before it got here
            self.lifecycle.cancel_requested.add(rid)
        try:
            ended = self._loop.run_until_complete(
                self.lifecycle.run_on_loop(record, stopping=_stopping)
            )
        except AttemptCancelled:
            ended = self._end_cancelled(rid)
        finally:
            self._current = None
            self._beat(rid, False)
            self.lifecycle.live.pop(rid, None)
        if ended is not None and ended.state.waiting:
            self._dispatch(ended)

    # -- cancel of the running attempt (see celery_cancel) ------------------------------------

    def cancel_signalled(self) -> None:
        """This process got the cancel signal: if the board names the attempt it runs, mark
        the cancel and stop the handler. Runs in the main thread, between two bytecodes of
        whatever runs there."""
        current = self._current
        if current is None or not self.board.posted(*current):
            return
        rid = current[0]
        if rid in self.lifecycle.cancel_requested:
            return  # told already (a broadcast repeated)
        self.lifecycle.cancel_requested.add(rid)
        if self.cancellable.in_sync == rid:
            raise AttemptCancelled(f"attempt {current[1]} of invocation {rid} was cancelled")
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel_task, loop, rid, current[1])

    @staticmethod
    def _cancel_task(loop: asyncio.AbstractEventLoop, rid: str, attempt: int) -> None:
        for task in asyncio.all_tasks(loop):
            # run_async names it function:request_id:attempt
            if task.get_name().split(":")[1:3] == [rid, str(attempt)]:
                task.cancel()

    def _end_cancelled(self, rid: str) -> InvocationRecord | None:
        """A sync handler stopped by :class:`AttemptCancelled`: end its attempt cancelled."""
        handle = self.lifecycle.live.get(rid)
        if handle is None or handle.record.state is not State.RUNNING:
            return None
        return self.lifecycle.end(handle.record, Outcome.CANCELLED)

    def _claim_unavailable(self, started: InvocationRecord) -> None:
        # This message is acked when the task returns. If the claim did commit, the row stays
        # running under a lease nobody renews, and no message would come for it again: publish
        # one that looks after a lease. If the row is then running this attempt, it is taken
        # over (crashed, retried); if the claim never committed, that message runs the attempt.
        attempt = started.attempt_count
        self._send(started, attempt, self.recheck, seen=self.clock.now())

    def _take_over(self, record: InvocationRecord, attempt: int, seen: float) -> None:
        """A redelivered message of a running attempt: its child died or was killed at the hard
        limit (Celery requeues the message at once, so ``seen`` is about when it ended)."""
        found = False
        for dead in self.journal.expire_leases():
            mine = dead.request_id == record.request_id
            found = found or mine
            self._end_dead(dead, seen if mine else self.clock.now())
        if not found:
            # Its lease is live: the child died less than a lease ago, or (a redelivery after
            # a lost connection) it still runs. Look again later; the message stays one.
            self._send(record, attempt, self.recheck, seen=seen)

    def _end_dead(self, record: InvocationRecord, seen: float) -> None:
        """End the attempt of a process found dead at ``seen``: ``timed_out`` (at its deadline)
        when it had run to its limit by then, else ``crashed`` (at ``seen``)."""
        attempt = record.last_attempt
        assert attempt is not None
        if self.board.posted(record.request_id, attempt.number):
            # Cancelled before it died (a handler that would not stop, killed at the limit).
            self.lifecycle.cancel_requested.add(record.request_id)
        function: Function | None
        try:
            function = self.binding.lookup(record.function)
        except LookupError:
            function, retry, limit = None, RetryPolicy(delays=()), 0.0
        else:
            retry = self.binding.retry_for(function)
            limit = self.binding.limits_for(function).background_timeout
        if function is not None and seen - attempt.started_at >= limit:
            ended = self.lifecycle.end(
                record,
                Outcome.TIMED_OUT,
                timeout_error(function, limit, attempt.number),
                ended_at=attempt.started_at + limit,
                retry=retry,
            )
        else:
            error = RuntimeError(
                f"attempt {attempt.number} of function {record.function!r} (request "
                f"{record.request_id}): its worker process died before the attempt ended (exit, "
                "signal or out of memory)"
            )
            ended_at = max(seen, attempt.started_at)
            ended = self.lifecycle.end(
                record, Outcome.CRASHED, error, ended_at=ended_at, retry=retry
            )
        self.lifecycle.live.pop(record.request_id, None)
        if ended.state.waiting:
            self._dispatch(ended)

    def _dispatch(self, record: InvocationRecord) -> None:
        countdown = 0.0 if record.next_run_at is None else record.next_run_at - self.clock.now()
        self._send(record, record.attempt_count + 1, countdown)

    def _send(
        self, record: InvocationRecord, attempt: int, countdown: float, *, seen: float | None = None
    ) -> None:
        """Publish the next message of ``record``. If the broker does not take it, the message
        being handled is requeued instead of acked: its redelivery publishes again."""
        try:
            self._publish(self.app, self.binding, record, attempt, countdown, seen=seen)
        except Exception as exc:
            log.warning(
                "could not publish attempt %d of %s (%s): %s; requeueing the current message",
                attempt,
                record.request_id,
                record.function,
                exc,
            )
            from celery.exceptions import Reject

            raise Reject(str(exc), requeue=True) from exc

    # Leases: a running attempt's lease is renewed while it runs, so that only a dead child's
    # attempt can be taken over.
    def _beat(self, request_id: str, running: bool) -> None:
        with self._beat_cond:
            if running:
                self._beating.add(request_id)
            else:
                self._beating.discard(request_id)
            if self._beat_thread is None or not self._beat_thread.is_alive():
                self._beat_thread = threading.Thread(
                    target=self._beat_main, name="bgfunctions-heartbeat", daemon=True
                )
                self._beat_thread.start()

    def _beat_main(self) -> None:
        while True:
            with self._beat_cond:
                self.clock.wait(self._beat_cond, self._beat_every)
                ids = list(self._beating)
            if ids:
                try:
                    self.journal.heartbeat(ids)
                except Exception:
                    log.warning("journal heartbeat failed; retrying", exc_info=True)

    def running(self) -> int:
        """Attempts running in this process now."""
        with self._beat_cond:
            return len(self._beating)


def _stopping(error: BaseException) -> bool:
    """What passes through the attempt runner: Celery's stop of the child, and a cancel."""
    return isinstance(error, AttemptCancelled) or worker_stopping(error)


def worker_stopping(error: BaseException) -> bool:
    """Whether ``error`` is this Celery child's own stop, not the handler's: billiard's
    terminate-signal handler marks that it fired, then raises ``SystemExit``."""
    if not isinstance(error, SystemExit):
        return False
    try:
        from billiard import common  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - Celery's pool always brings billiard
        return True
    fired = getattr(common, "terminate_handler_fired", None)
    if fired is not None:
        return bool(fired())
    flag = getattr(common, "_should_have_exited", None)  # older billiard: the same flag
    return bool(flag[0]) if flag else True
