"""Where invocation records are kept: the ``Journal`` ABC and the in-memory journal.

Every executor writes each state change of an invocation through its journal, and the App answers
202 only once ``accepted`` has returned. A durable journal makes ``accepted`` return only once the
record is on disk; the in-memory journal here keeps records for as long as the process lives.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable

from bgfunctions._slots import evolve
from bgfunctions.errors import JournalError
from bgfunctions.invocation import InvocationRecord, State, Step

__all__ = ["Journal", "MemoryJournal"]


class Journal(ABC):
    """The record of every invocation. Implementations must be safe to call from any thread."""

    durable: bool = False
    """True when records outlive the process (and other processes may share them): executors
    then recover unfinished work at start, renew leases, and poll for work others added."""

    @abstractmethod
    def accepted(self, record: InvocationRecord) -> None:
        """A new invocation; once this returns, the record survives what the journal promises."""

    def accept_later(
        self, record: InvocationRecord, settled: Callable[[Exception | None], None]
    ) -> None:
        """:meth:`accepted` without waiting: ``settled(None)`` is called, from any thread, once
        the record is kept as :meth:`accepted` promises, ``settled(error)`` when it cannot be.

        For async hosts, which await the commit rather than hold a thread for it. By default
        this is :meth:`accepted`, then ``settled``; a journal that commits in the background
        (:class:`~bgfunctions.journals.sqlite.SQLiteJournal`) returns at once.
        """
        try:
            self.accepted(record)
        except Exception as exc:
            settled(exc)
        else:
            settled(None)

    @abstractmethod
    def attempt_started(self, record: InvocationRecord) -> bool:
        """Claim ``record``'s newest attempt for this journal's owner; True when claimed.

        False means another process sharing the journal claimed it first, or it is no longer
        waiting (cancelled): the caller must not run it. A durable journal holds the claim as a
        lease that :meth:`heartbeat` renews.
        """

    @abstractmethod
    def attempt_ended(self, record: InvocationRecord) -> None:
        """``record``'s newest attempt ended: it is succeeded, failed or retry-scheduled."""

    def step_completed(self, request_id: str, step: Step) -> None:
        """A durable step of the running attempt of ``request_id`` committed: store it with the
        invocation (``get``, ``select`` and ``unfinished`` return it in ``record.steps``) and
        return once it survives what the journal promises. Raise when it cannot be stored,
        or when the invocation is not running here (its lease was lost): the step then
        counts as not committed and runs again.

        Journals that predate steps inherit this refusal."""
        raise JournalError(
            f"{type(self).__name__}.step_completed: this journal cannot store durable steps "
            f"(invocation {request_id}, step {step.id}); use MemoryJournal, SQLiteJournal "
            "or PostgresJournal"
        )

    def scheduled(self, record: InvocationRecord) -> None:
        """``record`` waits for its next attempt at ``next_run_at``."""
        self.attempt_ended(record)

    def finished(self, record: InvocationRecord) -> None:
        """``record`` will not run again (succeeded, failed, cancelled or rejected)."""
        self.attempt_ended(record)

    @abstractmethod
    def get(self, request_id: str) -> InvocationRecord | None:
        """The record with this request id, or None."""

    def body(self, request_id: str) -> bytes | None:
        """The request body of invocation ``request_id``, or None when it is unknown.

        Durable journals keep bodies apart from the rest of the record: ``select``,
        ``unfinished`` and ``expire_leases`` return records without them (``body_loaded``
        False, ``body_size`` set), and an executor loads the body only when an attempt starts.
        """
        record = self.get(request_id)
        return None if record is None else record.body

    def with_body(self, record: InvocationRecord) -> InvocationRecord:
        """``record`` with its body loaded from the journal (itself when it carries it)."""
        if record.body_loaded:
            return record
        body = self.body(record.request_id)
        if body is None or len(body) != record.body_size:
            found = "no row" if body is None else f"{len(body)} bytes"
            raise JournalError(
                f"{type(self).__name__}.with_body: expected the body of invocation "
                f"{record.request_id} ({record.function}), {record.body_size} bytes; "
                f"found {found}"
            )
        return record.with_body(body)

    @abstractmethod
    def select(
        self,
        *,
        function: str | None = None,
        state: State | Iterable[State] | None = None,
        limit: int | None = None,
    ) -> list[InvocationRecord]:
        """Records, newest accepted first, filtered by function and state."""

    def unfinished(self) -> list[InvocationRecord]:
        """Every record that will still run, highest priority first, then oldest first (what
        recovery resumes)."""
        pending = self.select(state=[s for s in State if not s.finished])
        pending.reverse()
        pending.sort(key=lambda r: -r.priority)  # stable: oldest first within a priority
        return pending

    def heartbeat(self, request_ids: Iterable[str]) -> None:  # noqa: B027 - optional
        """Renew the leases of these running attempts (called every few seconds)."""

    def expire_leases(self) -> list[InvocationRecord]:
        """Claim and return running records whose lease expired (their process died).

        The caller ends each one's attempt as ``interrupted``. Journals without leases (memory)
        have none.
        """
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the journal holds."""


class MemoryJournal(Journal):
    """Keeps records in a dict; nothing survives the process.

    Finished records are kept up to ``max_finished`` (oldest evicted first) so that a long-running
    server's memory stays bounded.
    """

    def __init__(self, *, max_finished: int | None = 10_000) -> None:
        if max_finished is not None and max_finished < 0:
            raise ValueError(
                f"MemoryJournal.max_finished: expected >= 0 or None; got {max_finished}"
            )
        self.max_finished = max_finished
        self._records: dict[str, InvocationRecord] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def accepted(self, record: InvocationRecord) -> None:
        self._records[record.request_id] = record  # one dict store is atomic: no lock

    def attempt_started(self, record: InvocationRecord) -> bool:
        with self._lock:
            current = self._records.get(record.request_id)
            if current is not None and current.state.finished:
                return False  # cancelled meanwhile
            self._records[record.request_id] = record
            return True

    def step_completed(self, request_id: str, step: Step) -> None:
        with self._lock:
            current = self._records.get(request_id)
            if current is None or current.state is not State.RUNNING:
                found = "no record" if current is None else f"state {current.state}"
                raise JournalError(
                    f"MemoryJournal.step_completed: expected invocation {request_id} running, "
                    f"found {found}; step {step.id} not stored"
                )
            self._records[request_id] = evolve(current, steps=(*current.steps, step))

    def attempt_ended(self, record: InvocationRecord) -> None:
        with self._lock:
            current = self._records.get(record.request_id)
            if current is not None and len(current.steps) > len(record.steps):
                record = record.with_steps(current.steps)  # an engine that did not merge them
            self._records[record.request_id] = record
            if record.state.finished:
                self._retire(record.request_id)

    def _retire(self, request_id: str) -> None:
        self._finished[request_id] = None
        if self.max_finished is not None:
            while len(self._finished) > self.max_finished:
                old, _ = self._finished.popitem(last=False)
                self._records.pop(old, None)

    def get(self, request_id: str) -> InvocationRecord | None:
        return self._records.get(request_id)

    def select(
        self,
        *,
        function: str | None = None,
        state: State | Iterable[State] | None = None,
        limit: int | None = None,
    ) -> list[InvocationRecord]:
        states = {state} if isinstance(state, State) else None if state is None else set(state)
        with self._lock:
            records = list(self._records.values())
        out = [
            r
            for r in reversed(records)
            if (function is None or r.function == function)
            and (states is None or r.state in states)
        ]
        out.sort(key=lambda r: r.accepted_at, reverse=True)
        return out if limit is None else out[:limit]
