"""The earlier home of the PostgreSQL journal, kept so that existing imports go on working: it
is now :mod:`bgfunctions.journals.postgres`."""

from __future__ import annotations

from bgfunctions.journals.postgres import SCHEMA_VERSION, PostgresJournal

__all__ = ["SCHEMA_VERSION", "PostgresJournal"]
