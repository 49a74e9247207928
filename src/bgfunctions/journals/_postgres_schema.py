"""The schema of a :class:`~bgfunctions.journals.postgres.PostgresJournal`: its table, the
``<table>_meta`` table that holds its version, and the migrations from one version to the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from bgfunctions.errors import JournalError
from bgfunctions.journals._sql import SCHEMA_VERSION, check_version

__all__ = ["migrate", "names"]

_INDEXES = ("state", "function", "accepted", "finished", "lease")


def names(table: str) -> dict[str, sql.Identifier]:
    """The names a statement may use: ``{t}`` the table, ``{m}`` its meta table, ``{i_*}``
    its indexes."""
    return {
        "t": sql.Identifier(table),
        "m": sql.Identifier(f"{table}_meta"),
        **{f"i_{k}": sql.Identifier(f"{table}_{k}") for k in _INDEXES},
    }


# _MIGRATIONS[n] takes a table from schema version n to n + 1, statement by statement, inside
# the transaction that also writes the new version. {t} is the table, {i_*} its indexes.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE {t} (
            seq           BIGINT GENERATED ALWAYS AS IDENTITY,
            request_id    TEXT PRIMARY KEY,
            function      TEXT NOT NULL,
            state         TEXT NOT NULL,
            attempts      INTEGER NOT NULL,
            accepted_at   DOUBLE PRECISION NOT NULL,
            next_run_at   DOUBLE PRECISION,
            finished_at   DOUBLE PRECISION,
            lease_owner   TEXT,
            lease_expires DOUBLE PRECISION,
            record        JSONB NOT NULL
        )
        """,
        "CREATE INDEX {i_state} ON {t} (state, next_run_at)",
        "CREATE INDEX {i_function} ON {t} (function, accepted_at)",
        "CREATE INDEX {i_accepted} ON {t} (accepted_at, seq)",
        "CREATE INDEX {i_finished} ON {t} (finished_at) WHERE finished_at IS NOT NULL",
        "CREATE INDEX {i_lease} ON {t} (lease_expires) WHERE state = 'running'",
    ),
    (
        "ALTER TABLE {t} ADD COLUMN body BYTEA",
        # Schema 1 kept the body in the JSON, base64 (Python's alphabet, which decode() reads).
        "UPDATE {t} SET body = decode(COALESCE(record->>'body', ''), 'base64'), "
        "record = (record - 'body') || jsonb_build_object('body_size', "
        "length(decode(COALESCE(record->>'body', ''), 'base64')))",
    ),
    ("ALTER TABLE {t} ADD COLUMN steps JSONB",),
    ("ALTER TABLE {t} ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


def migrate(
    cursor: psycopg.Cursor[tuple[Any, ...]],
    table: str,
    q: Callable[[str], sql.Composed],
    refuse: Callable[[str], JournalError],
) -> None:
    """Create the schema of ``table``, or check it and migrate it forward, in the cursor's
    transaction. ``q`` formats a statement's names (see :func:`names`); ``refuse`` makes the
    error for a table that is not a journal this code can use."""
    # Processes starting together create the schema one at a time (CREATE TABLE IF NOT
    # EXISTS alone races on PostgreSQL's catalogs).
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"bgfunctions:{table}",))
    cursor.execute(q("CREATE TABLE IF NOT EXISTS {m} (key TEXT PRIMARY KEY, value TEXT)"))
    cursor.execute(q("SELECT value FROM {m} WHERE key = 'schema_version'"))
    row = cursor.fetchone()
    if row is None:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        exists = cursor.fetchone()
        if exists is not None and exists[0]:
            raise refuse(
                f"expected no table {table!r} or a bgfunctions journal, found a table "
                f"without a schema version in {table}_meta: another application's table"
            )
        version = 0
    else:
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise refuse(
                f"expected an integer schema_version in {table}_meta, found {row[0]!r}"
            ) from None
    check_version(version, refuse)
    if version == SCHEMA_VERSION:
        return
    for migration in _MIGRATIONS[version:]:
        for statement in migration:
            cursor.execute(q(statement))
    cursor.execute(
        q(
            "INSERT INTO {m} (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ),
        (str(SCHEMA_VERSION),),
    )
