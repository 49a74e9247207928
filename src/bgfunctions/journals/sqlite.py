"""The durable journal: invocation records in one SQLite file (WAL), committed before the 202.

Writes go through one connection, one transaction at a time. A caller that finds no commit under
way leads: it commits everything queued (group commit), so concurrent accepts share one fsync;
callers that come meanwhile wait, and the first of them leads the next transaction. Reads use a
small pool of read-only connections and never wait for a commit (WAL readers see the last one).

Several processes may share a file: an attempt is *claimed* by a conditional UPDATE that only one
of them wins, and held by a lease (``lease`` seconds, renewed by :meth:`SQLiteJournal.heartbeat`);
:meth:`SQLiteJournal.expire_leases` hands the attempts of a dead process to exactly one survivor.
See docs/durability.md for what a 202 promises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import JournalError, JournalUnavailableError
from bgfunctions.invocation import InvocationRecord, State, Step
from bgfunctions.journals._groupcommit import GroupCommit, Write
from bgfunctions.journals._sql import SCHEMA_VERSION, SQLITE, UNFINISHED, load_record, row_values
from bgfunctions.journals._sql import with_body as _with_body
from bgfunctions.journals._sql import with_steps as _with_steps
from bgfunctions.journals._sqlite_batch import IMPATIENT_BUSY_TIMEOUT, Op, sql, transact
from bgfunctions.journals._sqlite_file import APPLICATION_ID, SQLiteFile
from bgfunctions.journals._sqlite_lock import WriterLock
from bgfunctions.journals.base import Journal

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteJournal"]

log = logging.getLogger("bgfunctions.journal")

_PRUNE_EVERY = 60.0  # seconds between automatic prunes
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
# The parsed records kept (see SQLiteJournal._remember): at most this many, each of at most
# this much JSON (larger records, those with big bodies, are parsed at every read).
_PARSED_MAX_ENTRIES = 50_000
_PARSED_MAX_TEXT = 4096
_IDS_PER_UPDATE = 500  # a heartbeat's request ids per statement, for the same limit


class SQLiteJournal(Journal):
    """Invocation records in a SQLite file; ``accepted`` returns once the row is committed.

    ``synchronous="FULL"`` (the default) syncs the WAL at every commit: an accepted invocation
    survives a power loss. ``"NORMAL"`` syncs only at checkpoints: it survives a crash of the
    process, not of the machine. ``lease`` is how long a claimed attempt stays claimed without a
    :meth:`heartbeat`; finished records older than ``retention`` seconds are pruned; a write
    waits up to ``busy_timeout`` seconds for another process's lock. ``owner`` names this
    journal object in leases (default: host, pid and a random suffix); use one per process.
    ``read_only=True`` opens an existing journal to read it (``get``, ``select``): it never
    writes to the file or its directory, so a read-only file can be read; writes then raise
    :class:`JournalUnavailableError`. ``max_size_bytes`` caps the file (rounded down to whole
    pages, SQLite's ``PRAGMA max_page_count``; never below its size at open): a write that
    would grow it further fails as on a full disk, with :class:`JournalUnavailableError`,
    and writes nothing. For a small disk shared with other data, and for drills.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Clock | None = None,
        lease: float = 10.0,
        retention: float = 7 * 86400,
        busy_timeout: float = 5.0,
        owner: str | None = None,
        read_only: bool = False,
        max_size_bytes: int | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(
                f"SQLiteJournal.synchronous: expected 'FULL' or 'NORMAL'; got {synchronous!r}"
            )
        for name, value in (("lease", lease), ("retention", retention)):
            if not value > 0:
                raise ValueError(f"SQLiteJournal.{name}: expected seconds > 0; got {value!r}")
        if not busy_timeout >= 0:
            raise ValueError(
                f"SQLiteJournal.busy_timeout: expected seconds >= 0; got {busy_timeout!r}"
            )
        if max_size_bytes is not None and (
            isinstance(max_size_bytes, bool)
            or not isinstance(max_size_bytes, int)
            or max_size_bytes < 1
        ):
            raise ValueError(
                f"SQLiteJournal.max_size_bytes: expected an int >= 1 or None; got "
                f"{max_size_bytes!r}"
            )
        self.path = Path(path)
        self._where = f"SQLiteJournal {str(self.path)!r}"  # for messages
        self.read_only = read_only
        self.max_size_bytes = max_size_bytes
        self.synchronous = synchronous
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.lease = float(lease)
        self.retention = float(retention)
        self.busy_timeout = float(busy_timeout)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stats = {"commits": 0, "writes": 0, "failed_commits": 0, "pruned": 0}
        # Writes share transactions (see _groupcommit): concurrent accepts share one fsync.
        self._group: GroupCommit[Op] = GroupCommit(
            self._commit,
            name=self.path.name,
            closed_error=self._no_writes,
            after=self._maybe_prune,
        )
        self._closed = False
        self._readers: list[sqlite3.Connection] = []  # idle read connections
        self._reader_lock = threading.Lock()
        self._last_prune: float | None = None
        # request id -> (the row's text, its record) for unfinished rows this journal wrote, so
        # that the executor's frequent unfinished() polls do not parse JSON they already have
        # (bench_backlog_memory.py's recovery poll: about 0.17x a bare SELECT + parse with it,
        # 1.1x without).
        self._parsed: dict[str, tuple[str, InvocationRecord]] = {}
        self._file = SQLiteFile(
            self.path,
            synchronous=synchronous,
            busy_timeout=self.busy_timeout,
            max_size_bytes=max_size_bytes,
        )
        self._writer_lock = WriterLock(self.path)
        self._synchronous_now: str = synchronous  # the write connection's, switched per batch
        if read_only:
            self._conn = self._file.open_reader_only()  # what would write refuses to (_write)
        else:
            self._file.inspect()
            self._conn = self._file.open_writer()

    def __repr__(self) -> str:
        return f"<SQLiteJournal {str(self.path)!r} owner={self.owner!r}>"

    # -- writes: group commit --------------------------------------------------------------------

    def _write(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        *,
        patient: bool = True,
        relaxed: bool = False,
    ) -> Any:
        """Run ``fn`` in the next transaction; return its result once committed.

        ``patient=False`` for maintenance that is retried every few seconds anyway (lease
        renewals and takeovers): a transaction of such writes only waits briefly for another
        connection's lock, so that accepts queued behind it are not held for a whole
        ``busy_timeout`` before they get their own chance (and their 503 in time).
        ``relaxed=True`` for transitions whose loss in a power cut only repeats an attempt
        (claims, attempt ends, leases): committed without an fsync (see :meth:`_commit`)."""
        if self.read_only:
            raise self._no_writes()
        return self._group.submit(Op(fn, None, patient, relaxed))

    def _no_writes(self) -> JournalUnavailableError:
        why = "is closed" if self._closed else "was opened read_only=True: it takes no writes"
        return JournalUnavailableError(f"SQLiteJournal {str(self.path)!r} {why}")

    def _commit(self, writes: Sequence[Write[Op]]) -> None:
        """One transaction for ``writes``. A write's own error (a duplicate id) fails only that
        write: SQLite rolls back just the failed statement. An error of the database (full,
        read-only, busy) rolls back everything, and every write in the batch gets it.

        The transaction runs in this process's turn among the processes that share the file
        (see _sqlite_lock): they take turns promptly instead of sleeping in SQLite's busy
        handler. A turn not had within the writes' busy timeout fails them as a locked file.

        With ``synchronous="FULL"``, the batch's relaxed writes (claims, attempt ends, leases)
        go first, in a transaction of their own committed with ``synchronous=NORMAL`` (no
        fsync: see docs/durability.md), and their callers are woken at once; then the rest
        (the accepts), committed with an fsync, which also makes the relaxed commit durable
        (WAL frames reach the disk in order). A claim then waits for no fsync of its own."""
        if not writes:
            return
        patient = any(w.item.patient for w in writes)
        timeout = self.busy_timeout if patient else min(self.busy_timeout, IMPATIENT_BUSY_TIMEOUT)
        try:
            turn = self._writer_lock.acquire(timeout)
        except OSError as exc:
            self._fail(writes, sqlite3.OperationalError(f"{self._writer_lock.path}: {exc}"))
            return
        if not turn:
            self._fail(
                writes,
                sqlite3.OperationalError(
                    f"database is locked (another process held {self._writer_lock.path.name} "
                    f"for {timeout:g} s)"
                ),
            )
            return
        try:
            if self.synchronous == "FULL" and any(w.item.relaxed for w in writes):
                relaxed = [w for w in writes if w.item.relaxed]
                strict = [w for w in writes if not w.item.relaxed]
                self._transact(relaxed, "NORMAL")
                if strict:
                    for write in relaxed:
                        write.settle()  # its caller need not wait for the accepts' fsync
                    self._transact(strict, "FULL")
            else:
                self._transact(writes, self.synchronous)
        finally:
            self._writer_lock.release()

    def _transact(self, writes: Sequence[Write[Op]], synchronous: str) -> None:
        conn = self._conn
        try:
            if synchronous != self._synchronous_now:
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                self._synchronous_now = synchronous
            transact(conn, writes, busy_timeout=self.busy_timeout, where=self._where)
        except BaseException as exc:
            if not isinstance(exc, sqlite3.Error):
                # A caller's interrupt (or a bug) mid-transaction: roll back, so that no later
                # write runs inside this transaction and is acknowledged but never committed.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("ROLLBACK failed on %s", self.path, exc_info=True)
            self._fail(writes, exc)
        else:
            self._stats["commits"] += 1
            self._stats["writes"] += len(writes)

    def _fail(self, writes: Sequence[Write[Op]], exc: sqlite3.Error) -> None:
        self._stats["failed_commits"] += 1
        for write in writes:
            write.result = None
            write.error = self._unavailable(exc)

    def _unavailable(self, exc: sqlite3.Error) -> JournalUnavailableError:
        message = str(exc)
        error = JournalUnavailableError(
            f"SQLiteJournal {str(self.path)!r}: cannot commit ({message}); nothing was written"
        )
        error.retry_after = 1.0 if "locked" in message or "busy" in message else 5.0
        error.__cause__ = exc
        return error

    def _maybe_prune(self) -> None:
        now = self.clock.now()
        if self._last_prune is not None and now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        write = Write(Op(self._prune_rows))
        self._commit([write])
        if write.error is not None:
            log.warning("SQLiteJournal %s: prune failed: %s", self.path, write.error)

    def _prune_rows(self, conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            sql(f"DELETE FROM {{t}} WHERE {SQLITE.prunable()}"),
            (self.clock.now() - self.retention,),
        )
        self._stats["pruned"] += cursor.rowcount
        return cursor.rowcount

    # -- Journal: writes -----------------------------------------------------------------------

    def accepted(self, record: InvocationRecord) -> None:
        """Insert ``record``; returns once committed. Raises :class:`JournalUnavailableError`
        when the file cannot take it (nothing written), ValueError for a known request id or
        a record without its body."""
        text = _dumps(record)
        if self.read_only:
            raise self._no_writes()
        self._group.submit(Op(None, _row(record, text)))
        self._remember(record, text)

    def accept_later(
        self, record: InvocationRecord, settled: Callable[[Exception | None], None]
    ) -> None:
        """Queue ``record`` for the next group commit and return; ``settled`` is called from
        the thread that committed it. Raises :class:`JournalUnavailableError` when closed."""
        text = _dumps(record)
        op = Op(None, _row(record, text))

        def on_settle(write: Write[Op]) -> None:
            error = write.error
            if error is None:
                self._remember(record, text)
                settled(None)
            elif isinstance(error, Exception):
                settled(error)
            else:
                settled(JournalUnavailableError(repr(error)))

        if self.read_only:
            raise self._no_writes()
        self._group.submit_later(op, on_settle)

    def attempt_started(self, record: InvocationRecord) -> bool:
        """Claim the newest attempt: only a row still waiting for exactly this attempt is
        claimed (leased to this owner); False when another process did, or it was cancelled."""
        text = _dumps(record)

        def claim(conn: sqlite3.Connection) -> bool:
            query, args = SQLITE.claim(record, text, self.owner, self.clock.now() + self.lease)
            return conn.execute(sql(query), args).rowcount == 1

        if not self._write(claim, relaxed=True):
            return False
        self._remember(record, text)
        return True

    def attempt_ended(self, record: InvocationRecord) -> None:
        """Store ``record`` and release its lease. Ignored (with a warning) when the row is
        finished or leased by another owner (this process lost its lease meanwhile)."""
        text = _dumps(record)
        query, args = SQLITE.attempt_ended(record, text, self.owner)

        def update(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql(query), args).rowcount)

        # A cancellation is a promise to a caller: synced. Any other end, if a power cut
        # lost it, only repeats the attempt, as a process killed before its end would.
        updated = self._write(update, relaxed=record.state is not State.CANCELLED)
        if updated and not record.state.finished:
            self._remember(record, text)
        else:
            self._parsed.pop(record.request_id, None)
        if updated == 0:
            log.warning(
                "SQLiteJournal %s: %s (%s) not updated to %s: it is finished, unknown, or "
                "leased by another owner",
                self.path,
                record.request_id,
                record.function,
                record.state.value,
            )

    def step_completed(self, request_id: str, step: Step) -> None:
        """Append ``step`` to the row's ``steps``; returns once committed (group-committed
        with other writes). :class:`JournalError` when the row is not running under this
        owner's lease (the attempt is no longer ours: nothing stored)."""
        item = json.dumps(step.to_json(), separators=(",", ":"), allow_nan=False)
        # One statement, appended as text: the steps already stored are not parsed again.
        update = sql(
            "UPDATE {t} SET steps = CASE WHEN steps IS NULL THEN '[' || ?1 || ']' "
            "ELSE substr(steps, 1, length(steps) - 1) || ',' || ?1 || ']' END "
            "WHERE request_id = ?2 AND state = ?3 AND lease_owner = ?4"
        )
        args = (item, request_id, State.RUNNING.value, self.owner)

        def append(conn: sqlite3.Connection) -> bool:
            return conn.execute(update, args).rowcount == 1

        if not self._write(append):
            raise JournalError(
                f"SQLiteJournal {str(self.path)!r}: step {step.id} of invocation {request_id} "
                f"not stored: expected the invocation running under this owner's lease "
                f"({self.owner}), found it finished, unknown or leased by another owner"
            )

    def heartbeat(self, request_ids: Iterable[str]) -> None:
        """Renew this owner's leases on these running attempts."""
        ids = list(request_ids)
        if not ids:
            return

        def renew(conn: sqlite3.Connection) -> None:
            expires = self.clock.now() + self.lease
            for i in range(0, len(ids), _IDS_PER_UPDATE):
                query, args = SQLITE.heartbeat(ids[i : i + _IDS_PER_UPDATE], self.owner, expires)
                conn.execute(sql(query), args)

        self._write(renew, patient=False, relaxed=True)

    def expire_leases(self) -> list[InvocationRecord]:
        """Claim running rows whose lease expired (their process died or hung): each is leased
        to this owner and returned (state running) to exactly one caller among processes."""

        def take(conn: sqlite3.Connection) -> list[tuple[str, str | None]]:
            now = self.clock.now()
            where = f"WHERE {SQLITE.expired()}"
            args = (self.owner, now + self.lease, State.RUNNING.value, now)
            update = sql("UPDATE {t} SET lease_owner = ?, lease_expires = ? ") + where
            if _RETURNING:
                return [
                    (r[0], r[1]) for r in conn.execute(update + " RETURNING record, steps", args)
                ]
            # Older SQLite: the same, in two statements of one IMMEDIATE transaction.
            rows = conn.execute(sql("SELECT record, steps FROM {t} ") + where, args[2:]).fetchall()
            conn.execute(update, args)
            return [(r[0], r[1]) for r in rows]

        records = [
            self._steps(self._loads(text), steps)
            for text, steps in self._write(take, patient=False, relaxed=True)
        ]
        records.sort(key=lambda r: r.accepted_at)
        return records

    def prune(self) -> int:
        """Delete finished records older than ``retention``; how many were deleted."""
        return int(self._write(self._prune_rows))

    # -- Journal: reads ------------------------------------------------------------------------

    def get(self, request_id: str) -> InvocationRecord | None:
        """The whole record, body included (``select`` and ``unfinished`` leave bodies out)."""
        rows = self._read(sql(SQLITE.get("request_id, record, body, steps")), (request_id,))
        if not rows:
            return None
        rid, text, body, steps = rows[0]
        return _with_body(self._steps(self._record(rid, text), steps), body, self._where)

    def body(self, request_id: str) -> bytes | None:
        rows = self._read(sql(SQLITE.get("body")), (request_id,))
        return None if not rows else bytes(rows[0][0] or b"")

    def select(
        self,
        *,
        function: str | None = None,
        state: State | Iterable[State] | None = None,
        limit: int | None = None,
    ) -> list[InvocationRecord]:
        return self._select(function, state, limit, newest_first=True)

    def unfinished(self) -> list[InvocationRecord]:
        before = set(self._parsed)  # one step under the GIL, as writers may add meanwhile
        records = self._select(
            None, [State(s) for s in UNFINISHED], None, newest_first=False, priority_first=True
        )
        # Forget what finished elsewhere (another process); keep what was added meanwhile.
        for request_id in before.difference(r.request_id for r in records):
            self._parsed.pop(request_id, None)
        return records

    def _select(
        self,
        function: str | None,
        state: State | Iterable[State] | None,
        limit: int | None,
        *,
        newest_first: bool,
        priority_first: bool = False,
    ) -> list[InvocationRecord]:
        query, args = SQLITE.select(
            "request_id, record, steps",
            function,
            state,
            limit,
            newest_first=newest_first,
            priority_first=priority_first,
        )
        return [
            self._steps(self._record(rid, text), steps)
            for rid, text, steps in self._read(sql(query), args)
        ]

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._reader_lock:
            if self._closed:
                raise JournalError(f"SQLiteJournal {str(self.path)!r} is closed")
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            if self.read_only:
                conn = self._file.connect_read_only()
            else:
                conn = self._file.connect()
                conn.execute("PRAGMA query_only = ON")
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"SQLiteJournal {str(self.path)!r}: cannot read ({exc})") from exc
        finally:
            self._release(conn)

    def _release(self, conn: sqlite3.Connection) -> None:
        """Return a read connection to the pool, or close it if the journal closed meanwhile."""
        with self._reader_lock:
            if not self._closed:
                self._readers.append(conn)
                return
        conn.close()

    def _remember(self, record: InvocationRecord, text: str) -> None:
        """Keep ``record`` as the parse of ``text``, the row this journal just committed for it
        (unfinished records only: those that recovery reads every few seconds). Without its
        body, as the row's JSON: the bodies of waiting work stay on disk."""
        if len(text) <= _PARSED_MAX_TEXT:
            if len(self._parsed) >= _PARSED_MAX_ENTRIES:
                self._parsed.clear()  # bounded even if unfinished() never prunes it
            self._parsed[record.request_id] = (text, record.without_body())

    def _record(self, request_id: str, text: str) -> InvocationRecord:
        """The record a row holds: the one this journal wrote when the row still holds its
        very text (compared in full, so a row another process changed is parsed anew)."""
        known = self._parsed.get(request_id)
        if known is not None and known[0] == text:
            return known[1]
        return self._loads(text)

    def _steps(self, record: InvocationRecord, steps: str | None) -> InvocationRecord:
        return _with_steps(record, steps, self._where, json.loads)

    def _loads(self, text: str) -> InvocationRecord:
        return load_record(text, self._where, json.loads)

    # -- the rest ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: ``commits`` (transactions), ``writes`` (calls committed; more than
        ``commits`` when group commit shared transactions), ``failed_commits``, ``pruned``."""
        return dict(self._stats)

    def close(self) -> None:
        """Commit what is queued, then close every connection. Idempotent."""
        self._closed = True
        self._group.close()
        with self._reader_lock:  # readers in use close themselves when they are done
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._conn.close()
        self._writer_lock.close()


def _row(record: InvocationRecord, text: str) -> tuple[Any, ...]:
    """The values of a new invocation's row (``text``: the record's JSON, without the body)."""
    return row_values(record, text, "SQLiteJournal")


def _dumps(record: InvocationRecord) -> str:
    # Without body and steps: each has a column of its own.
    data = record.to_json(body=False, steps=False)
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
