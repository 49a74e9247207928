"""What the SQL journals share: the row of an invocation, and their statements.

:class:`~bgfunctions.journals.sqlite.SQLiteJournal` and
:class:`~bgfunctions.journals.postgres.PostgresJournal` keep the same table: one row per
invocation, the columns that selection, claims and leases need, the record's JSON without its
body, and the body in a column of its own. The statements on it are written once here, for a
:class:`Dialect`: its parameter style (``?`` or ``%s``), how a list of values is matched, and
the column that keeps insertion order. ``{t}`` in a statement is the table: SQLite's is
``invocations``; PostgreSQL's is a configurable name that psycopg quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bgfunctions.errors import JournalError
from bgfunctions.invocation import InvocationRecord, State, Step

__all__ = [
    "COLUMNS",
    "FINISHED",
    "POSTGRES",
    "SCHEMA_VERSION",
    "SQLITE",
    "UNFINISHED",
    "WAITING",
    "Dialect",
    "check_version",
    "load_record",
    "row_values",
    "steps_of",
    "with_body",
    "with_steps",
]

SCHEMA_VERSION = 4
"""The schema version both journals write; an older one is migrated forward on open, a newer
one refused.

1: one row per invocation, the whole record (body included, base64) as JSON.
2: the body in a column of its own (SQLite BLOB, PostgreSQL BYTEA), the JSON without it (with
``body_size``): listing and recovery never read a body; an attempt loads its own when it
starts.
3: a ``steps`` column (SQLite TEXT, PostgreSQL JSONB): the JSON array of the invocation's
committed durable steps, NULL when it has none. The record's JSON leaves them out: a step is
appended to the column alone, and an attempt's end rewrites the JSON without touching it.
4: a ``priority`` column (INTEGER, default 0: what every earlier row had), by which recovery
takes up unfinished invocations, highest first. Rows may now be ``sleeping`` (a durable sleep),
with ``suspended`` attempts, ``sleep`` steps and the record's ``priority`` and ``not_before``:
the version keeps an older bgfunctions, which cannot read them, from opening the journal."""

FINISHED = tuple(s.value for s in State if s.finished)
UNFINISHED = tuple(s.value for s in State if not s.finished)
WAITING = tuple(s.value for s in State if s.waiting)

COLUMNS = (
    "request_id",
    "function",
    "state",
    "attempts",
    "accepted_at",
    "next_run_at",
    "finished_at",
    "record",
    "body",
    "priority",
)
"""The columns a new row sets (no lease yet: ``lease_owner`` and ``lease_expires`` are NULL)."""


@dataclass(frozen=True)
class Dialect:
    """How one database spells the shared statements.

    ``param``: the placeholder; ``arrays``: a list is one parameter (``= ANY(%s)``), else
    each value is one (``IN (?, ?)``); ``order``: the column that breaks ties of
    ``accepted_at`` in insertion order; ``claim_from``: a FROM clause the claim may add.
    """

    param: str
    arrays: bool
    order: str
    claim_from: str = ""

    def among(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """``column`` is one of ``values``: the condition and its arguments."""
        if self.arrays:
            return f"{column} = ANY({self.param})", (list(values),)
        return f"{column} IN ({','.join([self.param] * len(values))})", tuple(values)

    def insert(self, rows: int = 1) -> str:
        """One INSERT of ``rows`` new rows, each of :data:`COLUMNS` (see :func:`row_values`)."""
        one = f"({','.join([self.param] * len(COLUMNS))})"
        return f"INSERT INTO {{t}} ({', '.join(COLUMNS)}) VALUES " + ",".join([one] * rows)

    def claim(self, record: InvocationRecord, value: Any, owner: str, expires: float) -> Query:
        """Claim ``record``'s newest attempt: only a row still waiting for exactly this attempt
        is updated (leased to ``owner`` until ``expires``); one row when claimed."""
        p = self.param
        waiting, waiting_args = self.among("state", WAITING)
        attempts = len(record.attempts)
        text = (
            f"UPDATE {{t}} SET state = {p}, attempts = {p}, next_run_at = {p}, record = {p}, "
            f"lease_owner = {p}, lease_expires = {p} {self.claim_from}"
            f"WHERE request_id = {p} AND {waiting} AND attempts = {p}"
        )
        args = (record.state.value, attempts, record.next_run_at, value, owner, expires)
        return text, (*args, record.request_id, *waiting_args, attempts - 1)

    def attempt_ended(self, record: InvocationRecord, value: Any, owner: str) -> Query:
        """Store ``record`` and release its lease, unless the row is finished or leased by
        another owner (this process lost its lease meanwhile)."""
        p = self.param
        finished, finished_args = self.among("state", FINISHED)
        text = (
            f"UPDATE {{t}} SET state = {p}, attempts = {p}, next_run_at = {p}, "
            f"finished_at = {p}, record = {p}, lease_owner = NULL, lease_expires = NULL "
            f"WHERE request_id = {p} AND (lease_owner IS NULL OR lease_owner = {p}) "
            f"AND NOT ({finished})"
        )
        args = (
            record.state.value,
            len(record.attempts),
            record.next_run_at,
            record.finished_at,
            value,
            record.request_id,
            owner,
        )
        return text, (*args, *finished_args)

    def heartbeat(self, request_ids: Sequence[str], owner: str, expires: float) -> Query:
        """Renew ``owner``'s leases on these running attempts."""
        p = self.param
        ids, ids_args = self.among("request_id", request_ids)
        text = (
            f"UPDATE {{t}} SET lease_expires = {p} "
            f"WHERE {ids} AND lease_owner = {p} AND state = {p}"
        )
        return text, (expires, *ids_args, owner, State.RUNNING.value)

    def expired(self) -> str:
        """The condition of a running row whose lease expired before ``now`` (arguments:
        ``running``, ``now``)."""
        return f"state = {self.param} AND lease_expires < {self.param}"

    def prunable(self) -> str:
        """The condition of a finished row to prune (argument: finished before this time)."""
        return f"finished_at IS NOT NULL AND finished_at < {self.param}"

    def get(self, columns: str) -> str:
        return f"SELECT {columns} FROM {{t}} WHERE request_id = {self.param}"

    def select(
        self,
        columns: str,
        function: str | None,
        state: State | Iterable[State] | None,
        limit: int | None,
        *,
        newest_first: bool,
        priority_first: bool = False,
    ) -> Query:
        """Rows filtered by function and state, by ``accepted_at`` (newest first, or oldest
        first), ties in insertion order; ``priority_first``: highest priority first, then so."""
        clauses: list[str] = []
        args: list[Any] = []
        if function is not None:
            clauses.append(f"function = {self.param}")
            args.append(function)
        if state is not None:
            states = [state] if isinstance(state, State) else list(state)
            clause, values = self.among("state", [State(s).value for s in states])
            clauses.append(clause)
            args.extend(values)
        order = "DESC" if newest_first else "ASC"
        text = f"SELECT {columns} FROM {{t}}"
        if clauses:
            text += " WHERE " + " AND ".join(clauses)
        by = "priority DESC, " if priority_first else ""
        text += f" ORDER BY {by}accepted_at {order}, {self.order} {order}"
        if limit is not None:
            text += f" LIMIT {self.param}"
            args.append(max(0, int(limit)))
        return text, tuple(args)


Query = tuple[str, tuple[Any, ...]]

SQLITE = Dialect(param="?", arrays=False, order="rowid")
POSTGRES = Dialect(
    param="%s",
    arrays=True,
    order="seq",
    # The claim commits without waiting for its WAL to reach the disk: see PostgresJournal.
    claim_from="FROM (SELECT set_config('synchronous_commit', 'off', true)) AS claim_commit ",
)


def row_values(record: InvocationRecord, value: Any, journal: str) -> tuple[Any, ...]:
    """The values of :data:`COLUMNS` for a new invocation; ``value`` is its record's JSON
    (without the body) as the database takes it. ValueError for a record without its body."""
    if not record.body_loaded:
        raise ValueError(
            f"{journal}.accepted: expected invocation {record.request_id} with its body "
            f"({record.body_size} bytes); got a record without it"
        )
    return (
        record.request_id,
        record.function,
        record.state.value,
        len(record.attempts),
        record.accepted_at,
        record.next_run_at,
        record.finished_at,
        value,
        record.body,
        record.priority,
    )


def load_record(
    data: Any, where: str, parse: Callable[[Any], Any] = lambda d: d
) -> InvocationRecord:
    """The record a row's JSON holds (``parse`` turns the column's value into JSON data);
    :class:`JournalError` naming ``where`` when it is not an invocation's."""
    try:
        return InvocationRecord.from_json(parse(data))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(
            f"{where}: a record is not the JSON of an invocation ({exc}): {str(data)[:80]!r}"
        ) from exc


def with_body(record: InvocationRecord, body: bytes | None, where: str) -> InvocationRecord:
    """``record`` with the body its row holds (none: as it is)."""
    if not body:
        return record
    try:
        return record.with_body(bytes(body))
    except ValueError as exc:
        raise JournalError(f"{where}: {exc}") from None


def check_version(version: int, refuse: Callable[[str], JournalError]) -> None:
    """Refuse a schema written by a newer bgfunctions."""
    if version > SCHEMA_VERSION:
        raise refuse(
            f"expected schema version <= {SCHEMA_VERSION}, found {version}: written by a "
            "newer bgfunctions"
        )


def steps_of(data: Any, where: str) -> tuple[Step, ...]:
    """The steps a row's ``steps`` column holds (parsed JSON: a list of step objects)."""
    try:
        return tuple(Step.from_json(item) for item in data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(
            f"{where}: the steps column is not a JSON array of steps ({exc}): {str(data)[:80]!r}"
        ) from exc


def with_steps(
    record: InvocationRecord, data: Any, where: str, parse: Callable[[Any], Any] = lambda d: d
) -> InvocationRecord:
    """``record`` with the steps its row's ``steps`` column holds (NULL: as it is)."""
    if data is None:
        return record
    return record.with_steps(steps_of(parse(data), where))
