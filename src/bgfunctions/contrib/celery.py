"""The earlier home of the Celery engine, kept so that existing imports and
``celery -A bgfunctions.contrib.celery:app`` go on working: it is now
:mod:`bgfunctions.executors.celery`."""

from __future__ import annotations

from typing import Any

from bgfunctions.executors import celery as _celery
from bgfunctions.executors.celery import (
    TASK_NAME,
    CeleryExecutor,
    celery_settings,
    dead_letter_queue,
    declare_queues,
    journal_factory,
    make_celery,
    run_worker,
    task_queue,
    worker_name,
)

__all__ = [
    "TASK_NAME",
    "CeleryExecutor",
    "celery_settings",
    "dead_letter_queue",
    "declare_queues",
    "journal_factory",
    "make_celery",
    "run_worker",
    "task_queue",
    "worker_name",
]


def __getattr__(name: str) -> Any:
    return getattr(_celery, name)  # ``app``, built from the environment on first use
