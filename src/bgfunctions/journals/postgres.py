"""A journal in PostgreSQL: one table that a web tier and every worker share.

The semantics are :class:`~bgfunctions.journals.sqlite.SQLiteJournal`'s: ``accepted`` returns once
the row is committed; an attempt is *claimed* by a conditional UPDATE that exactly one process
wins, and held by a lease that :meth:`PostgresJournal.heartbeat` renews;
:meth:`PostgresJournal.expire_leases` hands a dead process's attempts to exactly one survivor
(``FOR UPDATE SKIP LOCKED``). Each method is one transaction on a connection from a small pool.
The schema is created on first use, versioned in a ``<table>_meta`` table. See docs/postgres.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import Jsonb
except ImportError as exc:  # tested by importing the module again without psycopg
    raise ImportError(
        "bgfunctions.journals.postgres needs psycopg: pip install 'bgfunctions[postgres]' "
        f"(expected the psycopg package, 3.1 or newer; importing it failed: {exc})"
    ) from exc

from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import BgFunctionsError, JournalError, JournalUnavailableError
from bgfunctions.invocation import InvocationRecord, State, Step
from bgfunctions.journals._groupcommit import GroupCommit, Write
from bgfunctions.journals._postgres_pool import Conn, Cursor, Pool
from bgfunctions.journals._postgres_schema import migrate, names
from bgfunctions.journals._sql import (
    POSTGRES,
    SCHEMA_VERSION,
    UNFINISHED,
    load_record,
    row_values,
    with_body,
    with_steps,
)
from bgfunctions.journals.base import Journal

__all__ = ["SCHEMA_VERSION", "PostgresJournal"]

log = logging.getLogger("bgfunctions.journal")

_PRUNE_EVERY = 60.0  # seconds between automatic prunes
_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,49}")  # room for index names within 63 bytes
_T = TypeVar("_T")
_ROWS_PER_INSERT = 500  # 5,500 parameters a statement: far under PostgreSQL's 65,535


class PostgresJournal(Journal):
    """Invocation records in a PostgreSQL table; ``accepted`` returns once the row is committed.

    ``dsn`` is a libpq connection string or URI (``postgresql://user@host:5432/db``); nothing
    connects until the first call, which creates ``table`` (and ``<table>_meta``) if needed.
    ``lease`` is how long a claimed attempt stays claimed without a :meth:`heartbeat`; finished
    records older than ``retention`` seconds are pruned; ``owner`` names this journal object in
    leases (default: host, pid and a random suffix; use one per process); at most ``pool_size``
    connections are open at once. ``connect_timeout`` defaults to 5 seconds unless the dsn says.
    """

    durable = True

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "bgfunctions_invocations",
        clock: Clock | None = None,
        lease: float = 10.0,
        retention: float = 7 * 86400,
        owner: str | None = None,
        pool_size: int = 4,
    ) -> None:
        if not isinstance(table, str) or not _TABLE.fullmatch(table):
            raise ValueError(
                "PostgresJournal.table: expected a lower-case SQL name of at most 50 characters "
                f"(letters, digits, underscores; not starting with a digit); got {table!r}"
            )
        for name, value in (("lease", lease), ("retention", retention)):
            if not value > 0:
                raise ValueError(f"PostgresJournal.{name}: expected seconds > 0; got {value!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"PostgresJournal.pool_size: expected an int >= 1; got {pool_size!r}")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise ValueError(
                f"PostgresJournal.dsn: expected a libpq connection string or URI; {exc}"
            ) from None
        self.table = table
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.lease = float(lease)
        self.retention = float(retention)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.pool_size = pool_size
        connect_options: dict[str, Any] = {
            "autocommit": True,  # every call is one statement: see Pool.run
            "application_name": f"bgfunctions {self.owner}"[:63],
        }
        if "connect_timeout" not in params:
            connect_options["connect_timeout"] = 5
        # Where, for messages: never the password.
        self._where = (
            f"{params.get('user', '?')}@{params.get('host', 'localhost')}:"
            f"{params.get('port', '5432')}/{params.get('dbname', '?')} table {table!r}"
        )
        self._names = names(table)
        self._pruned = 0
        self._lock = threading.Lock()  # _pruned, _last_prune
        self._pool = Pool(
            dsn,
            options=connect_options,
            size=pool_size,
            where=self._where,
            prepare=self._ensure_schema,
        )
        self._schema_lock = threading.Lock()
        self._ready = False
        # accept_later's accepts, inserted in groups by a committer thread (see _groupcommit).
        self._accepts: GroupCommit[tuple[Any, ...]] = GroupCommit(
            self._insert_rows, name=f"postgres-{table}", closed_error=self._closed
        )
        self._last_prune: float | None = None

    def __repr__(self) -> str:
        return f"<PostgresJournal {self._where} owner={self.owner!r}>"

    # -- statements ----------------------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._names)

    # -- the schema ----------------------------------------------------------------------------

    def _ensure_schema(self, conn: Conn, write: bool) -> None:
        """Create or check the schema, once per journal object, on its first connection."""
        with self._schema_lock:
            if self._pool.refused is not None:
                raise self._pool.refused
            if self._ready:
                return
            try:
                # One transaction (the connection is in autocommit mode otherwise).
                with conn.transaction(), conn.cursor() as cursor:
                    migrate(cursor, self.table, self._q, self._refuse)
            except JournalError as exc:
                self._pool.rollback(conn)
                self._pool.refused = exc
                raise
            except psycopg.Error as exc:
                self._pool.rollback(conn)
                if conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError):
                    raise self._pool.failure(exc, write=write, unknown=False) from exc
                # Not a connection problem: the table or its meta table is not ours.
                self._pool.refused = self._refuse(f"cannot read or create the schema ({exc})")
                raise self._pool.refused from exc
            self._ready = True

    def _refuse(self, why: str) -> JournalError:
        return JournalError(f"PostgresJournal: refusing {self._where}: {why}")

    # -- Journal: writes -----------------------------------------------------------------------

    def _write(self, fn: Callable[[Cursor], _T]) -> _T:
        result = self._pool.run(fn, write=True)
        self._maybe_prune()
        return result

    def _insert_one(self, args: tuple[Any, ...]) -> None:
        """Insert one new row (its values, as :func:`row_values` gives them)."""
        query = self._q(POSTGRES.insert())

        def insert(cursor: Cursor) -> None:
            try:
                cursor.execute(query, args)
            except pg_errors.UniqueViolation:
                raise ValueError(
                    f"PostgresJournal {self._where}: request id {args[0]!r} is already recorded"
                ) from None

        self._write(insert)

    def accept_later(
        self, record: InvocationRecord, settled: Callable[[Exception | None], None]
    ) -> None:
        """Queue ``record`` for the next group insert and return; ``settled`` is called from
        the thread that committed it. Raises :class:`JournalUnavailableError` when closed.

        For async hosts: the default (``accepted`` in the caller) would hold the event loop
        for a round trip and an fsync per accept (about 190 accepts/s under uvicorn,
        benchmarks/bench_multiproc.py). Here the accepts queued meanwhile go in one multi-row
        INSERT, one transaction and one fsync (see _groupcommit)."""
        args = row_values(record, _jsonb(record), "PostgresJournal")

        def on_settle(write: Write[tuple[Any, ...]]) -> None:
            error = write.error
            if error is None or isinstance(error, Exception):
                settled(error)
            else:
                settled(JournalUnavailableError(repr(error)))

        self._accepts.submit_later(args, on_settle)

    def _insert_rows(self, writes: Sequence[Write[tuple[Any, ...]]]) -> None:
        """A group of accepts: one INSERT per ``_ROWS_PER_INSERT`` (each its own transaction:
        the connection is in autocommit). A known request id is skipped by the statement
        (``ON CONFLICT DO NOTHING``), and only its write fails: the rest of the group still
        shares the one commit."""
        for i in range(0, len(writes), _ROWS_PER_INSERT):
            chunk = writes[i : i + _ROWS_PER_INSERT]
            query = self._q(
                POSTGRES.insert(len(chunk)) + " ON CONFLICT (request_id) DO NOTHING "
                "RETURNING request_id"
            )
            args = [value for write in chunk for value in write.item]
            try:
                inserted = self._pool.run(_inserts(query, args), write=True)
            except BgFunctionsError as exc:
                for write in chunk:
                    write.error = exc
                continue
            seen: set[str] = set()
            for write in chunk:
                rid = write.item[0]
                if rid in inserted and rid not in seen:
                    seen.add(rid)  # a request id twice in one group: the first is the row
                else:
                    write.error = ValueError(
                        f"PostgresJournal {self._where}: request id {rid!r} is already recorded"
                    )
        self._maybe_prune()

    def accepted(self, record: InvocationRecord) -> None:
        """Insert ``record``; returns once committed. Raises :class:`JournalUnavailableError`
        when the database cannot take it, ValueError for a known request id."""
        self._insert_one(row_values(record, _jsonb(record), "PostgresJournal"))

    def attempt_started(self, record: InvocationRecord) -> bool:
        """Claim the newest attempt: only a row still waiting for exactly this attempt is
        claimed (leased to this owner); False when another process did, or it was cancelled."""
        # The claim commits without waiting for its WAL to reach the disk (synchronous_commit
        # off for this one transaction; set_config(..., true) ends with it: POSTGRES.claim_from).
        # Other sessions see it at once, as any commit, so exactly one claim wins while the
        # server runs; only a crash of the server can lose it, and a lost claim leaves the row
        # waiting, as if the attempt had not been claimed: it runs again (at least once), from
        # the broker message that is acked only after the attempt's end is recorded (Celery,
        # acks late) or from recovery (the embedded executors). The end of the attempt is a
        # synchronous commit, and WAL is flushed in order, so once the end is durable the claim
        # is too. It saves one WAL flush per attempt.
        value = _jsonb(record)

        def claim(cursor: Cursor) -> bool:
            # A racing claim waits for the row lock, then re-checks the WHERE on the committed
            # row (READ COMMITTED): it finds the state changed and updates nothing.
            expires = self.clock.now() + self.lease
            query, args = POSTGRES.claim(record, value, self.owner, expires)
            cursor.execute(self._q(query), args)
            return cursor.rowcount == 1

        return self._write(claim)

    def attempt_ended(self, record: InvocationRecord) -> None:
        """Store ``record`` and release its lease. Ignored (with a warning) when the row is
        finished or leased by another owner (this process lost its lease meanwhile)."""
        text, args = POSTGRES.attempt_ended(record, _jsonb(record), self.owner)
        query = self._q(text)

        def update(cursor: Cursor) -> int:
            cursor.execute(query, args)
            return cursor.rowcount

        if self._write(update) == 0:
            log.warning(
                "PostgresJournal %s: %s (%s) not updated to %s: it is finished, unknown, or "
                "leased by another owner",
                self._where,
                record.request_id,
                record.function,
                record.state.value,
            )

    def step_completed(self, request_id: str, step: Step) -> None:
        """Append ``step`` to the row's ``steps``; returns once committed (a synchronous
        commit). :class:`JournalError` when the row is not running under this owner's lease
        (the attempt is no longer ours: nothing stored)."""
        query = self._q(
            "UPDATE {t} SET steps = COALESCE(steps, '[]'::jsonb) || jsonb_build_array(%s) "
            "WHERE request_id = %s AND state = %s AND lease_owner = %s"
        )
        args = (Jsonb(step.to_json(), dumps=_dumps), request_id, State.RUNNING.value, self.owner)

        def append(cursor: Cursor) -> int:
            cursor.execute(query, args)
            return cursor.rowcount

        if self._write(append) != 1:
            raise JournalError(
                f"PostgresJournal {self._where}: step {step.id} of invocation {request_id} "
                f"not stored: expected the invocation running under this owner's lease "
                f"({self.owner}), found it finished, unknown or leased by another owner"
            )

    def heartbeat(self, request_ids: Iterable[str]) -> None:
        """Renew this owner's leases on these running attempts."""
        ids = list(request_ids)
        if not ids:
            return

        def renew(cursor: Cursor) -> None:
            query, args = POSTGRES.heartbeat(ids, self.owner, self.clock.now() + self.lease)
            cursor.execute(self._q(query), args)

        self._write(renew)

    def expire_leases(self) -> list[InvocationRecord]:
        """Claim running rows whose lease expired (their process died or hung): each is leased
        to this owner and returned (state running) to exactly one caller among processes."""
        # SKIP LOCKED: rows another process is claiming right now are its, not ours; the outer
        # WHERE repeats the condition so a row renewed meanwhile is left alone.
        expired = POSTGRES.expired()
        query = self._q(
            "UPDATE {t} SET lease_owner = %s, lease_expires = %s "
            f"WHERE request_id IN (SELECT request_id FROM {{t}} WHERE {expired} "
            f"FOR UPDATE SKIP LOCKED) AND {expired} "
            "RETURNING record, accepted_at, seq, steps"
        )

        def take(cursor: Cursor) -> list[tuple[Any, ...]]:
            now = self.clock.now()
            running = State.RUNNING.value
            cursor.execute(query, (self.owner, now + self.lease, running, now, running, now))
            return cursor.fetchall()

        rows = sorted(self._write(take), key=lambda row: (row[1], row[2]))
        return [self._steps(self._loads(row[0]), row[3]) for row in rows]

    def prune(self) -> int:
        """Delete finished records older than ``retention``; how many were deleted."""
        # SKIP LOCKED: two processes pruning at once split the rows instead of deadlocking.
        query = self._q(
            "DELETE FROM {t} WHERE request_id IN (SELECT request_id FROM {t} "
            f"WHERE {POSTGRES.prunable()} FOR UPDATE SKIP LOCKED)"
        )

        def delete(cursor: Cursor) -> int:
            cursor.execute(query, (self.clock.now() - self.retention,))
            return cursor.rowcount

        pruned = self._pool.run(delete, write=True)
        with self._lock:
            self._pruned += pruned
        return pruned

    def _maybe_prune(self) -> None:
        now = self.clock.now()
        with self._lock:
            if self._last_prune is not None and now - self._last_prune < _PRUNE_EVERY:
                return
            self._last_prune = now
        try:
            self.prune()
        except BgFunctionsError as exc:  # the write itself committed; pruning waits
            log.warning("PostgresJournal %s: prune failed: %s", self._where, exc)

    # -- Journal: reads ------------------------------------------------------------------------

    def get(self, request_id: str) -> InvocationRecord | None:
        """The whole record, body included (``select`` and ``unfinished`` leave bodies out)."""
        rows = self._read(self._q(POSTGRES.get("record, body, steps")), (request_id,))
        if not rows:
            return None
        record = self._steps(self._loads(rows[0][0]), rows[0][2])
        return with_body(record, rows[0][1], f"PostgresJournal {self._where}")

    def body(self, request_id: str) -> bytes | None:
        rows = self._read(self._q(POSTGRES.get("body")), (request_id,))
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
        return self._select(
            None, [State(s) for s in UNFINISHED], None, newest_first=False, priority_first=True
        )

    def _select(
        self,
        function: str | None,
        state: State | Iterable[State] | None,
        limit: int | None,
        *,
        newest_first: bool,
        priority_first: bool = False,
    ) -> list[InvocationRecord]:
        # seq breaks ties in insertion order, as SQLite's rowid does.
        text, args = POSTGRES.select(
            "record, steps",
            function,
            state,
            limit,
            newest_first=newest_first,
            priority_first=priority_first,
        )
        return [self._steps(self._loads(row[0]), row[1]) for row in self._read(self._q(text), args)]

    def _read(self, query: sql.Composed, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def fetch(cursor: Cursor) -> list[tuple[Any, ...]]:
            cursor.execute(query, args)
            return cursor.fetchall()

        return self._pool.run(fetch, write=False)

    def _steps(self, record: InvocationRecord, steps: Any) -> InvocationRecord:
        return with_steps(record, steps, f"PostgresJournal {self._where}")

    def _loads(self, data: Any) -> InvocationRecord:
        return load_record(data, f"PostgresJournal {self._where}")

    # -- the rest ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: ``commits`` (write transactions), ``failed_commits``, ``pruned`` (rows),
        ``reconnects`` (pooled connections found dropped and replaced)."""
        stats = self._pool.stats()
        with self._lock:
            stats["pruned"] = self._pruned
        return stats

    def close(self) -> None:
        """Close every idle connection; connections in use close when their call ends.
        Later calls raise. Idempotent."""
        self._accepts.close()  # what accept_later queued is committed first
        self._pool.close()

    def _closed(self) -> JournalUnavailableError:
        return JournalUnavailableError(f"PostgresJournal {self._where} is closed")


def _inserts(query: sql.Composed, args: list[Any]) -> Callable[[Cursor], set[str]]:
    """Run an INSERT ... RETURNING request_id; the ids it inserted."""

    def execute(cursor: Cursor) -> set[str]:
        cursor.execute(query, args)
        return {row[0] for row in cursor.fetchall()}

    return execute


def _jsonb(record: InvocationRecord) -> Jsonb:
    """The record's JSON, without its body, as the ``record`` column takes it."""
    return Jsonb(record.to_json(body=False, steps=False), dumps=_dumps)


def _dumps(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    if "\\u0000" in text:
        # jsonb cannot hold U+0000 (an error message may carry one): store U+FFFD instead.
        text = json.dumps(_scrub(data), separators=(",", ":"), allow_nan=False)
    return text


def _scrub(data: Any) -> Any:
    if isinstance(data, str):
        return data.replace("\x00", "\ufffd")
    if isinstance(data, dict):
        return {_scrub(k): _scrub(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_scrub(v) for v in data]
    return data
