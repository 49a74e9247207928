"""One transaction of a :class:`~bgfunctions.journals.sqlite.SQLiteJournal`'s group commit
(see :mod:`~bgfunctions.journals._groupcommit`): the batch's new rows in multi-row INSERTs, its
other writes, then COMMIT, on the journal's write connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from bgfunctions.journals._groupcommit import Write
from bgfunctions.journals._sql import SQLITE

__all__ = ["IMPATIENT_BUSY_TIMEOUT", "ROWS_PER_INSERT", "TABLE", "Op", "sql", "transact"]

TABLE = "invocations"
IMPATIENT_BUSY_TIMEOUT = 0.25  # seconds: see SQLiteJournal._write(patient=False)
ROWS_PER_INSERT = 90  # 990 parameters: under SQLite's limit before 3.32 (999)


class Op:
    """One write of a group commit: ``fn`` (run on the write connection, inside the batch's
    transaction) or ``row`` (the values of one new invocation, inserted together with the
    other rows of its batch). ``patient``: waits up to busy_timeout for a lock (else briefly).
    ``relaxed``: a transition after the accept (a claim, an attempt's end, a lease), which a
    ``FULL`` journal commits with ``synchronous=NORMAL`` (see SQLiteJournal._commit)."""

    __slots__ = ("fn", "patient", "relaxed", "row")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any] | None,
        row: tuple[Any, ...] | None = None,
        patient: bool = True,
        relaxed: bool = False,
    ) -> None:
        self.fn = fn
        self.row = row
        self.patient = patient
        self.relaxed = relaxed


def transact(
    conn: sqlite3.Connection, writes: Sequence[Write[Op]], *, busy_timeout: float, where: str
) -> None:
    """Run ``writes`` in one transaction and commit it.

    New rows go in one multi-row INSERT per ``ROWS_PER_INSERT``. A batch of new rows only
    (the common case under load) is that one statement alone, its own transaction: one call
    into SQLite, so the leader gives the GIL away once per commit (while SQLite writes and
    syncs), not once per statement, and does not queue for it again behind the accepting
    threads between statements."""
    rows = [w for w in writes if w.item.row is not None]
    if len(rows) == len(writes) and len(rows) <= ROWS_PER_INSERT:
        try:
            conn.execute(_insert(len(rows)), _values(rows))
            return
        except sqlite3.IntegrityError:
            pass  # a known request id: nothing was written; again, one row at a time
    if not any(w.item.patient for w in writes):
        _begin_briefly(conn, busy_timeout)
    else:
        conn.execute("BEGIN IMMEDIATE")
    for i in range(0, len(rows), ROWS_PER_INSERT):
        _insert_rows(conn, rows[i : i + ROWS_PER_INSERT], where)
    for write in writes:
        fn = write.item.fn
        if fn is not None:
            try:
                write.result = fn(conn)
            except (sqlite3.IntegrityError, ValueError) as exc:
                write.error = exc
    conn.execute("COMMIT")


def _begin_briefly(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """BEGIN IMMEDIATE, waiting at most ``IMPATIENT_BUSY_TIMEOUT`` for another lock."""
    brief = min(busy_timeout, IMPATIENT_BUSY_TIMEOUT)
    conn.execute(f"PRAGMA busy_timeout = {int(brief * 1000)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[Write[Op]], where: str) -> None:
    """Insert new rows inside the open transaction; a known request id fails its write."""
    try:
        conn.execute(_insert(len(rows)), _values(rows))
        return
    except sqlite3.IntegrityError:
        pass  # the statement is rolled back alone; find the row that failed
    for write in rows:
        row = write.item.row
        assert row is not None
        try:
            conn.execute(_insert(1), row)
        except sqlite3.IntegrityError:
            write.error = ValueError(f"{where}: request id {row[0]!r} is already recorded")


def _values(rows: Sequence[Write[Op]]) -> list[Any]:
    return [value for write in rows for value in write.item.row or ()]


def _insert(rows: int) -> str:
    return sql(SQLITE.insert(rows))


def sql(query: str) -> str:
    """A shared statement (see _sql) on this journal's table."""
    return query.replace("{t}", TABLE)
