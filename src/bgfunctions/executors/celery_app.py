"""The Celery app of the Celery engine: :func:`make_celery`, publishing an attempt's message,
declaring the queues, and running a worker.

Needs the ``[celery]`` extra; import these names from :mod:`bgfunctions.executors.celery`.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import celery
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bgfunctions.executors.celery needs Celery and a broker client, which are not installed "
        f"({_exc}); install them with: pip install 'bgfunctions[celery]'"
    ) from _exc

from bgfunctions.executors.base import Binding
from bgfunctions.executors.celery_cancel import CancelBoard, register_board
from bgfunctions.executors.celery_config import (
    KILL_MARGIN,
    TASK_NAME,
    celery_settings,
    dead_letter_queue,
    is_amqp,
    journal_factory,
    task_queue,
    worker_name,
)
from bgfunctions.executors.celery_worker import EARLY, JournalSource, Options, WorkerState
from bgfunctions.invocation import InvocationRecord, OnEvent, OnFailure
from bgfunctions.registry import Registry
from bgfunctions.retry import Limits, RetryPolicy

__all__ = [
    "declare_queues",
    "from_environment",
    "make_celery",
    "options_of",
    "publish",
    "run_worker",
]

_OPTIONS: weakref.WeakKeyDictionary[Any, Options] = weakref.WeakKeyDictionary()
_WORKERS: weakref.WeakKeyDictionary[Any, WorkerState] = weakref.WeakKeyDictionary()


def make_celery(
    *,
    broker: str,
    journal: JournalSource,
    site: str | Path | None = None,
    registry: Registry | None = None,
    limits: Limits | None = None,
    retry: RetryPolicy | None = None,
    queue: str = "bgfunctions",
    on_event: OnEvent | Sequence[OnEvent] = (),
    on_failure: OnFailure | Sequence[OnFailure] = (),
    kill_margin: float = KILL_MARGIN,
) -> celery.Celery:
    """A Celery app that runs bgfunctions attempts; nothing connects until it is used.

    ``journal``: the shared journal, or (for workers, whose prefork children each need their
    own connection) a factory called once per process. ``site`` or ``registry``: the functions
    workers run (``site`` is loaded in each worker). ``limits`` and ``retry`` apply where a
    function sets none. ``kill_margin``: seconds past ``background_timeout`` after which Celery
    kills a child still running a sync handler. Hooks run in the worker process.
    """
    options = Options(
        journal=journal,
        site=None if site is None else Path(site),
        registry=registry,
        limits=limits if limits is not None else Limits(),
        retry=retry if retry is not None else RetryPolicy(),
        queue=task_queue(broker, queue),
        on_event=_listeners(on_event),
        on_failure=_listeners(on_failure),
        kill_margin=kill_margin,
    )
    app = celery.Celery("bgfunctions", broker=broker, set_as_current=False)
    app.conf.update(
        celery_settings(
            broker, queue=queue, limits=options.limits, retry=options.retry, kill_margin=kill_margin
        )
    )
    _OPTIONS[app] = options
    # Made now, before a worker forks its children: they share it (see celery_cancel).
    board = CancelBoard()
    register_board(app, board)
    state = WorkerState(app, options, publish, board)
    _WORKERS[app] = state
    # shared=False: a shared task (Celery's default) is also registered with every Celery app
    # finalized later in the process, so a second make_celery() app would run the first one's
    # run_attempt, on the first app's journal.
    app.task(name=TASK_NAME, ignore_result=True, shared=False)(state.run_attempt)
    return app


def _listeners(value: Any) -> tuple[Any, ...]:
    if callable(value):
        return (value,)
    return tuple(value)


def options_of(app: Any) -> Options:
    """What :func:`make_celery` was given for ``app``; TypeError for another Celery app."""
    try:
        return _OPTIONS[app]
    except KeyError:
        raise TypeError(
            f"expected a Celery app made by bgfunctions.executors.celery.make_celery(); got {app!r}"
        ) from None


def publish(
    app: Any,
    binding: Binding | None,
    record: InvocationRecord,
    attempt: int,
    countdown: float,
    *,
    seen: float | None = None,
    connection: Any = None,
) -> None:
    """Send ``run_attempt(record, attempt)``; returns once the broker confirmed it.

    ``seen``: when a worker first saw the attempt's process gone (carried while it waits for
    the attempt's lease to expire). ``connection``: the broker connection to publish on
    (default: one from Celery's process-wide pool)."""
    options = options_of(app)
    limits = options.limits
    if binding is not None:
        with contextlib.suppress(LookupError):
            limits = binding.limits_for(binding.lookup(record.function))
    if countdown < EARLY:
        countdown = 0.0  # the worker waits out the rest (see EARLY)
    app.send_task(
        TASK_NAME,
        args=[record.request_id, attempt],
        kwargs={} if seen is None else {"seen": seen},
        countdown=countdown if countdown > 0 else None,
        queue=options.queue,
        time_limit=limits.background_timeout + options.kill_margin,
        connection=connection,
    )


def declare_queues(app: celery.Celery) -> None:
    """Declare the task queue and (RabbitMQ) its dead-letter queue on the broker."""
    options = options_of(app)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        bound: Any = options.queue(channel)
        bound.declare()
        if is_amqp(conn.as_uri()):
            dead: Any = dead_letter_queue(options.queue.name)(channel)
            dead.declare()


def run_worker(
    app: celery.Celery,
    *,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    name: str | None = None,
) -> None:
    """Run a Celery prefork worker for ``app`` in this process until it is stopped.

    ``name``: its Celery node name (see :func:`worker_name`; default
    ``bgfunctions-<pid>@<host>``, so that several workers can run on one host)."""
    node = worker_name(name)
    declare_queues(app)
    argv = ["worker", "--pool=prefork", f"--loglevel={loglevel}", "--without-gossip"]
    # Celery expands the name again: escape what the first expansion left (a literal %).
    argv += ["--without-mingle", f"--hostname={node.replace('%', '%%')}"]
    argv += ["-Q", options_of(app).queue.name]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)


def from_environment() -> celery.Celery:
    """The app ``celery -A bgfunctions.executors.celery:app`` runs, from BGFUNCTIONS_* variables."""
    missing = [
        name
        for name in ("BGFUNCTIONS_SITE", "BGFUNCTIONS_BROKER", "BGFUNCTIONS_JOURNAL")
        if not os.environ.get(name)
    ]
    if missing:
        raise RuntimeError(
            f"bgfunctions.executors.celery:app is configured from the environment; expected "
            f"{', '.join(missing)} to be set (the site directory, the broker URL, the journal)"
        )
    return make_celery(
        broker=os.environ["BGFUNCTIONS_BROKER"],
        journal=journal_factory(os.environ["BGFUNCTIONS_JOURNAL"]),
        site=os.environ["BGFUNCTIONS_SITE"],
        queue=os.environ.get("BGFUNCTIONS_QUEUE", "bgfunctions"),
    )
