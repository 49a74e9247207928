"""Aliases kept for earlier import paths: the Celery engine is
:mod:`bgfunctions.executors.celery`, the PostgreSQL journal :mod:`bgfunctions.journals.postgres`."""
