"""Group commit: concurrent writes share one transaction, so they share one fsync.

Callers :meth:`GroupCommit.submit` a write and wait. Without a writer thread: the first caller
to find no commit under way *leads*: it commits everything queued (its own write included)
through the ``commit`` function it was given; callers that come meanwhile queue, and the first
of them leads the next batch. An uncontended write is then committed by its own thread, with no
hand-off to another one and back. :meth:`GroupCommit.submit_later` queues a write nobody waits
for (an async host awaiting a callback); a committer thread, started at its first use, leads
when only such writes are queued.

``commit(batch)`` runs one transaction for the batch and sets each write's ``result`` or
``error``: a failed transaction fails every write of that batch, and only those; the next batch
is a new transaction. Used by :class:`~bgfunctions.journals.sqlite.SQLiteJournal`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from bgfunctions.errors import JournalUnavailableError

__all__ = ["GroupCommit", "Write"]

log = logging.getLogger("bgfunctions.journal")

T = TypeVar("T")


class Write(Generic[T]):
    """One caller's write (``item``, which the commit function reads), waiting for the
    transaction that holds it to commit.

    ``done`` is held until the write is settled, or until its caller is promoted to commit the
    next batch: the caller blocks acquiring it, the leader releases it (cheaper than an Event).
    """

    __slots__ = ("done", "error", "item", "on_settle", "promoted", "result", "settled")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.settled = False
        self.promoted = False  # woken to lead: commit the batch that holds this write
        self.on_settle: Callable[[Write[T]], None] | None = None  # nobody waits: call this

    def settle(self) -> None:
        """Mark it settled and wake its caller; a write with ``on_settle`` is called back
        later, by the leader once it handed the lead over (see ``GroupCommit._lead``)."""
        self.settled = True
        if self.on_settle is None:
            self.done.release()

    def _call_back(self) -> None:
        assert self.on_settle is not None
        try:
            self.on_settle(self)
        except Exception:
            log.exception("group commit: a write's settle callback raised; ignored")


class GroupCommit(Generic[T]):
    """Writes of type ``T``, committed in batches by ``commit``.

    ``name`` names the committer thread; ``closed_error()`` is raised by a submit after
    :meth:`close`; ``after()`` runs in the leader once the callers of a batch are woken, before
    the next batch (maintenance such as pruning, off their latency). ``commit`` sets
    ``result`` or ``error`` on each write, and :class:`GroupCommit` wakes the callers once it
    returns; it may wake some earlier (:meth:`Write.settle`), once their part is committed. If
    it raises, every write of the batch not yet settled fails with
    :class:`JournalUnavailableError`, and the exception reaches the caller that led.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[Write[T]]], None],
        *,
        name: str,
        closed_error: Callable[[], Exception],
        after: Callable[[], None] | None = None,
    ) -> None:
        self._commit = commit
        self._after = after
        self._name = name
        self._closed_error = closed_error
        self._queue: list[Write[T]] = []
        self._cond = threading.Condition(threading.Lock())
        self._leading = False  # a caller is committing; the queue waits for its next batch
        self._lead_owner: object = None  # who leads: a caller's Write, or _COMMITTER
        self._committer: threading.Thread | None = None
        self._committer_turn = False  # the committer is to lead the next batch
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, item: T) -> Any:
        """Queue ``item``, lead its commit or wait for the caller that leads it; the result
        ``commit`` set for it, or raise the error it set."""
        write = Write(item)
        with self._cond:
            if self._closed:
                raise self._closed_error()
            self._queue.append(write)
            lead = not self._leading
            if lead:
                self._leading = True
                self._lead_owner = write
        try:
            if lead:
                self._lead()
            while not write.settled:
                write.done.acquire()
                if write.promoted and not write.settled:  # the leader before us is done
                    self._lead()
        except BaseException:
            self._abandon(write)
            raise
        if write.error is not None:
            raise write.error
        return write.result

    def submit_later(self, item: T, on_settle: Callable[[Write[T]], None]) -> None:
        """Queue ``item`` and return; ``on_settle(write)`` is called, from the thread that
        committed it, once ``write.result`` or ``write.error`` is set. Raises
        ``closed_error()`` after :meth:`close`, :class:`JournalUnavailableError` when the
        committer thread cannot start."""
        write = Write(item)
        write.on_settle = on_settle
        with self._cond:
            if self._closed:
                raise self._closed_error()
            # Before anything is queued: if the thread cannot start, nothing waits for it.
            self._start_committer()
            self._queue.append(write)
            if not self._leading:
                self._leading = True
                self._give_committer_the_lead()

    def close(self) -> None:
        """Refuse new writes, let the batch under way and everything queued commit, and stop
        the committer thread. Idempotent."""
        with self._cond:
            self._closed = True
            while self._leading:
                self._cond.wait()
            self._cond.notify_all()  # the committer thread, if any, ends
            committer = self._committer
        if committer is not None and committer is not threading.current_thread():
            committer.join()

    # -- leading -------------------------------------------------------------------------------

    def _abandon(self, write: Write[T]) -> None:
        """The caller of ``write`` was interrupted (KeyboardInterrupt, a signal's SystemExit)
        while it waited or before it led: never leave the queue without a leader."""
        with self._cond:
            if write.settled:
                return  # committed or failed; whoever led handed the lead over
            # Still queued: committed by a later leader, its result unread. Never chosen to
            # lead (nobody waits on it any more).
            write.on_settle = _ignore
            if self._lead_owner is write:  # the lead is ours and was not passed on: pass it
                self._pass_lead()

    def _pass_lead(self) -> None:
        """(``_cond`` held, by the leader that is done) The first caller that waits leads the
        next batch; if only writes nobody waits for are queued (submit_later), the committer
        thread does; with nothing queued that anybody waits for, nobody leads."""
        if not any(w.on_settle is not _ignore for w in self._queue):
            for write in self._queue:  # abandoned by their callers: never acknowledged
                write.error = JournalUnavailableError("abandoned by its caller")
                write.settled = True
            self._queue = []
        if not self._queue:
            self._leading = False
            self._lead_owner = None
            self._cond.notify_all()  # close() waits for the last commit
            return
        successor = next((w for w in self._queue if w.on_settle is None), None)
        if successor is not None:
            self._lead_owner = successor
            successor.promoted = True
            successor.done.release()
        else:
            self._give_committer_the_lead()

    def _give_committer_the_lead(self) -> None:
        """(``_cond`` held) The committer thread leads the next batch. It runs: it was started
        before any write that nobody waits for was queued."""
        assert self._committer is not None
        self._lead_owner = _COMMITTER
        self._committer_turn = True
        self._cond.notify_all()

    def _lead(self) -> None:
        """Commit everything queued, then hand the lead to the first write queued meanwhile;
        then call back the writes nobody waits for (after the hand-over: a callback may write
        again)."""
        batch: list[Write[T]] = []
        committed = False
        try:
            with self._cond:
                batch, self._queue = self._queue, []
            self._commit(batch)
            committed = True
            self._settle(batch, committed)
            if self._after is not None:
                self._after()
        finally:
            self._settle(batch, committed)
            with self._cond:
                self._pass_lead()
            for write in batch:
                if write.on_settle is not None:
                    write._call_back()

    def _settle(self, batch: list[Write[T]], committed: bool) -> None:
        for write in batch:
            if not write.settled:
                if not committed:  # commit raised: nothing says this write was committed
                    write.result = None
                    write.error = JournalUnavailableError(
                        f"{self._name}: the commit failed unexpectedly"
                    )
                write.settle()

    def _start_committer(self) -> None:
        """(``_cond`` held) Start the committer thread unless it runs. The lead is handed to it
        only once it runs: any group with a write nobody waits for has it (see _abandon)."""
        if self._committer is None:
            thread = threading.Thread(
                target=self._committer_main, name=f"bgfunctions-journal-{self._name}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # no more threads, or the interpreter is exiting
                raise JournalUnavailableError(
                    f"{self._name}: cannot start its committer thread ({exc})"
                ) from exc
            self._committer = thread

    def _committer_main(self) -> None:
        while True:
            with self._cond:
                while not self._committer_turn and not (self._closed and not self._leading):
                    self._cond.wait()
                if not self._committer_turn:
                    return  # closed, and nothing left to commit
                self._committer_turn = False
            try:
                self._lead()
            except BaseException:  # _lead settles and hands over first
                log.exception("group commit %s: commit failed", self._name)


_COMMITTER = object()
"""The lead owner while the committer thread leads."""


def _ignore(write: Write[Any]) -> None:
    """The settle callback of a write whose caller gave up waiting."""
