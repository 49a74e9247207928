"""The journals: where invocation records are kept.

* :mod:`~bgfunctions.journals.base`: the :class:`Journal` interface and :class:`MemoryJournal`;
* :mod:`~bgfunctions.journals.sqlite`: :class:`SQLiteJournal`, durable on one host;
* :mod:`~bgfunctions.journals.postgres`: ``PostgresJournal``, for several hosts (the
  ``[postgres]`` extra; import it from its module).
"""

from __future__ import annotations

from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.journals.sqlite import SQLiteJournal

__all__ = ["Journal", "MemoryJournal", "SQLiteJournal"]
