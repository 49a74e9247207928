"""The journals: where invocation records are kept.

* :mod:`~bgfunctions.journals.base`: the :class:`Journal` interface and :class:`MemoryJournal`;
* :mod:`~bgfunctions.journals.sqlite`: :class:`SQLiteJournal`, durable on one host;
* :mod:`~bgfunctions.journals.postgres`: ``PostgresJournal``, for several hosts (the
  ``[postgres]`` extra; import it from its module).

Inside the family: ``_sql`` holds what the two SQL journals share (the row of an invocation,
the statements on it, the schema version); ``_groupcommit`` the batching of concurrent writes
into one transaction (SQLite); ``_sqlite_file`` and ``_sqlite_batch`` SQLite's file checks,
migrations and batch transaction; ``_postgres_pool`` and ``_postgres_schema`` PostgreSQL's
connections and schema.
"""

from __future__ import annotations

from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.journals.sqlite import SQLiteJournal

__all__ = ["Journal", "MemoryJournal", "SQLiteJournal"]
