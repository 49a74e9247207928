"""The Celery engine's settings: its queues, the Celery settings it runs under, and what the
command line and environment variables name (a journal, a worker's node name).

Needs the ``[celery]`` extra; import these names from :mod:`bgfunctions.executors.celery`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

try:
    import kombu
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bgfunctions.executors.celery needs Celery and a broker client, which are not installed "
        f"({_exc}); install them with: pip install 'bgfunctions[celery]'"
    ) from _exc

from bgfunctions.journals.base import Journal
from bgfunctions.retry import Limits, RetryPolicy

__all__ = [
    "KILL_MARGIN",
    "TASK_NAME",
    "celery_settings",
    "dead_letter_queue",
    "is_amqp",
    "journal_factory",
    "task_queue",
    "worker_name",
]

# kombu ships py.typed but leaves these untyped; they are used as plain factories here.
Exchange: Any = getattr(kombu, "Exchange")  # noqa: B009
Queue: Any = getattr(kombu, "Queue")  # noqa: B009

TASK_NAME = "bgfunctions.run_attempt"
"""The one Celery task: ``run_attempt(request_id, attempt)``, JSON arguments only."""
KILL_MARGIN = 2.0
"""Seconds past the limit before Celery kills a child (async attempts end at the limit)."""
_AMQP = ("amqp", "amqps", "pyamqp")


def is_amqp(broker: str) -> bool:
    """Whether ``broker`` is a RabbitMQ (AMQP) URL."""
    return broker.split("://", 1)[0].split("+", 1)[0] in _AMQP


def task_queue(broker: str, name: str = "bgfunctions", *, delivery_limit: int = 10) -> Any:
    """The queue attempts travel on. On RabbitMQ: a durable quorum queue on a topic exchange
    (Celery's native delayed delivery needs one for countdowns), dead-lettering to
    ``<name>.dead`` a message delivered ``delivery_limit`` times without being acked."""
    if not is_amqp(broker):
        return Queue(name, routing_key=name)
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": f"{name}.dead",
            "x-dead-letter-routing-key": f"{name}.dead",
        },
    )


def dead_letter_queue(name: str = "bgfunctions") -> Any:
    """RabbitMQ's destination for poison messages of queue ``name``: ``<name>.dead``."""
    dead = f"{name}.dead"
    return Queue(
        dead,
        Exchange(dead, type="direct", durable=True),
        routing_key=dead,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def celery_settings(
    broker: str,
    *,
    queue: str = "bgfunctions",
    limits: Limits | None = None,
    retry: RetryPolicy | None = None,
    kill_margin: float = KILL_MARGIN,
) -> dict[str, Any]:
    """The Celery settings bgfunctions runs under (also for a plain Celery app to compare with).

    JSON only; acks late, so a message is acked only once its attempt is recorded; a child lost
    or killed at the hard limit requeues its message; prefetch 1, so a waiting message is not
    stuck behind a long attempt; no result backend (the journal holds the outcome).
    """
    limits = limits if limits is not None else Limits()
    retry = retry if retry is not None else RetryPolicy()
    hard = limits.background_timeout + kill_margin
    longest = max(retry.delays, default=0.0)
    settings: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure": False,
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": hard,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_default_queue": queue,
        "task_queues": [task_queue(broker, queue)],
        "task_create_missing_queues": False,
        "task_publish_retry": True,
        # A publish that fails fast lets the App answer 503 fast; the client retries.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }
    from celery.app.defaults import NAMESPACES

    if "acks_on_timeout" not in NAMESPACES["task"]:  # Celery before the split of the setting
        settings["task_acks_on_failure_or_timeout"] = False
        del settings["task_acks_on_failure"], settings["task_acks_on_timeout"]
    if is_amqp(broker):
        settings["broker_transport_options"] = {"confirm_publish": True}
    else:
        # A worker holds a message unacked while it waits for its countdown and while it runs:
        # Redis must not hand it to another worker meanwhile.
        settings["broker_transport_options"] = {
            "visibility_timeout": int(hard + longest + 300),
        }
    return settings


def journal_factory(spec: str, *, lease: float | None = None) -> Callable[[], Journal]:
    """A factory of the journal ``spec`` names: a ``postgres://`` or ``postgresql://`` DSN
    (``PostgresJournal``), else the path of a SQLite file. ``lease``: seconds a claimed attempt
    stays claimed without a heartbeat (how soon a dead worker's attempt is taken over)."""
    extra: dict[str, Any] = {} if lease is None else {"lease": lease}
    if spec.startswith(("postgres://", "postgresql://")):

        def postgres() -> Journal:
            from bgfunctions.journals.postgres import PostgresJournal

            return PostgresJournal(spec, **extra)

        return postgres

    def sqlite() -> Journal:
        from bgfunctions.journals.sqlite import SQLiteJournal

        return SQLiteJournal(spec, **extra)

    return sqlite


def worker_name(name: str | None = None) -> str:
    """The Celery node name a worker runs under: by default ``bgfunctions-<pid>@<host>``;
    else ``name`` read as Celery's ``-n`` reads it: ``NAME@HOST`` with ``%h`` (this host),
    ``%n`` (its short name) and ``%d`` (its domain) expanded, and a value without ``@`` taken
    as the host (``celery@VALUE``).

    The default differs per process because Celery's own default, ``celery@<host>``, is one
    name for every worker on a host: on RabbitMQ the second worker to start cannot take the
    first one's control (pidbox) queue, and exits."""
    from celery.utils.nodenames import default_nodename, host_format, nodesplit

    if name is None:
        name = f"bgfunctions-{os.getpid()}@%h"
    given, _host = nodesplit(name)
    if not name.strip() or (given is not None and not given.strip()):
        # Celery would fill in "celery@": the one name every default worker shares.
        raise ValueError(
            f"worker name: expected NAME@HOST with a non-empty NAME (e.g. 'w1@%h'); got {name!r}"
        )
    try:
        return str(host_format(default_nodename(name)))
    except ValueError as exc:  # an unknown %x: Celery's message says which and how to escape
        raise ValueError(f"worker name {name!r}: {' '.join(str(exc).split())}") from None
