"""Background functions on Celery: the web tier publishes, worker machines run the attempts.

Needs the ``[celery]`` extra (``pip install 'bgfunctions[celery]'``) and a durable :class:`Journal`
that the web tier and every worker share (``PostgresJournal`` across machines; ``SQLiteJournal``
on one machine). The record in that journal is the truth; a broker message only says "look at
invocation X, attempt N":

* the web tier (:class:`CeleryExecutor`) records ``accepted``, then publishes
  ``run_attempt(request_id, 1)`` and waits for the broker's confirm; if the publish fails the
  record becomes ``rejected`` and the App answers 503, never 202;
* a worker (``bgfunctions worker``, or ``celery -A bgfunctions.executors.celery:app worker``)
  claims the attempt in the journal, runs the handler, ends the attempt through the shared
  :class:`~bgfunctions.lifecycle.Lifecycle` (in :mod:`.celery_worker`), and publishes the
  next attempt with an explicit countdown (the retry delay) when one is due. Celery never
  retries anything;
* a message redelivered while its attempt is still ``running`` (its worker child was killed at
  the hard limit, or died) takes the attempt over once its lease expired and ends it as
  ``timed_out`` or ``crashed``: a failed attempt, retried on the usual schedule.

Hooks run where the state change happens: ``accepted`` (and ``rejected``, ``cancelled``) in the
web process, attempt events and ``on_failure`` in the worker process that ran the attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import celery
    import kombu
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bgfunctions.executors.celery needs Celery and a broker client, which are not installed "
        f"({_exc}); install them with: pip install 'bgfunctions[celery]'"
    ) from _exc

from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import InvocationNotFoundError, NotAcceptedError
from bgfunctions.executors.base import Binding, Executor, ExecutorStats, Invocation
from bgfunctions.executors.celery_worker import EARLY, JournalSource, Options, WorkerState
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.invocation import EventKind, InvocationRecord, OnEvent, OnFailure, State
from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.registry import Function, Registry
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy

# kombu ships py.typed but leaves these untyped; they are used as plain factories here.
Exchange: Any = getattr(kombu, "Exchange")  # noqa: B009
Queue: Any = getattr(kombu, "Queue")  # noqa: B009

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

log = logging.getLogger("bgfunctions.celery")

TASK_NAME = "bgfunctions.run_attempt"
"""The one Celery task: ``run_attempt(request_id, attempt)``, JSON arguments only."""
_KILL_MARGIN = 2.0  # seconds past the limit before Celery kills the child (async ones end at it)
_AMQP = ("amqp", "amqps", "pyamqp")


_OPTIONS: weakref.WeakKeyDictionary[Any, Options] = weakref.WeakKeyDictionary()
_WORKERS: weakref.WeakKeyDictionary[Any, WorkerState] = weakref.WeakKeyDictionary()


def _is_amqp(broker: str) -> bool:
    return broker.split("://", 1)[0].split("+", 1)[0] in _AMQP


def task_queue(broker: str, name: str = "bgfunctions", *, delivery_limit: int = 10) -> Any:
    """The queue attempts travel on. On RabbitMQ: a durable quorum queue on a topic exchange
    (Celery's native delayed delivery needs one for countdowns), dead-lettering to
    ``<name>.dead`` a message delivered ``delivery_limit`` times without being acked."""
    if not _is_amqp(broker):
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
    kill_margin: float = _KILL_MARGIN,
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
    if _is_amqp(broker):
        settings["broker_transport_options"] = {"confirm_publish": True}
    else:
        # A worker holds a message unacked while it waits for its countdown and while it runs:
        # Redis must not hand it to another worker meanwhile.
        settings["broker_transport_options"] = {
            "visibility_timeout": int(hard + longest + 300),
        }
    return settings


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
    kill_margin: float = _KILL_MARGIN,
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
    state = WorkerState(app, options, _publish)
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


def _options(app: Any) -> Options:
    try:
        return _OPTIONS[app]
    except KeyError:
        raise TypeError(
            f"expected a Celery app made by bgfunctions.executors.celery.make_celery(); got {app!r}"
        ) from None


def _publish(
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
    options = _options(app)
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


# -- the web tier ----------------------------------------------------------------------------


class CeleryExecutor(Executor):
    """Accepts background invocations into the shared journal and hands them to Celery workers.

    Synchronous functions run here, in the web process (on a :class:`ThreadExecutor`), as with
    the embedded executors; only background attempts travel to workers.
    """

    def __init__(
        self,
        celery_app: celery.Celery,
        *,
        journal: Journal,
        clock: Clock | None = None,
        poll_interval: float = 0.2,
        republish_after: float | None = 1800.0,
    ) -> None:
        """``journal``: the journal the workers share. ``poll_interval``: seconds between
        journal reads of :meth:`Invocation.wait`. ``republish_after``: an invocation still
        waiting this many seconds after it was due gets its message published again (None:
        never), because a broker can lose one: Redis when a worker is killed between taking
        a message and recording it as unacked. Duplicates are harmless: workers claim
        attempts in the journal. Keep it above the longest backlog you expect."""
        super().__init__(clock=clock if clock is not None else SystemClock(), journal=journal)
        self.celery_app = celery_app
        self.poll_interval = poll_interval
        self.republish_after = republish_after
        self._sweep_stop = threading.Condition()
        self._sweeper: threading.Thread | None = None
        self._republished: dict[str, float] = {}
        _options(celery_app)  # refuse a foreign app now, not at the first request
        self._local = ThreadExecutor(clock=self.clock, journal=MemoryJournal(max_finished=0))
        # Our own broker connections (opened on first use), so that shutdown closes exactly
        # them: Celery's pool is shared by every app of the process on the same broker, and
        # Celery.close() leaves its sockets open.
        self._connections: Any = celery_app.connection_for_write().Pool(
            limit=celery_app.conf.broker_pool_limit
        )

    def bind(self, binding: Binding) -> None:
        super().bind(binding)
        self._local.bind(binding)

    def start(self) -> None:
        """Declare the dead-letter queue (RabbitMQ); a broker that is down only logs. Starts
        the sweep that re-publishes invocations whose message was lost."""
        try:
            declare_queues(self.celery_app)
        except Exception as exc:
            log.warning("could not declare the bgfunctions queues yet: %s", exc)
        if self.republish_after is not None and self._sweeper is None and not self._closed:
            self._sweeper = threading.Thread(
                target=self._sweep_main, name="bgfunctions-celery-sweep", daemon=True
            )
            self._sweeper.start()

    def _sweep_main(self) -> None:
        assert self.republish_after is not None
        every = max(1.0, self.republish_after / 4)
        while True:
            with self._sweep_stop:
                if not self._closed:
                    self.clock.wait(self._sweep_stop, every)
                stopped = self._closed
            if stopped:
                return
            try:
                self.sweep()
            except Exception as exc:
                log.warning("bgfunctions sweep for lost messages failed: %s", exc)

    def sweep(self) -> int:
        """Publish again the messages of invocations overdue by ``republish_after``; at most
        once per ``republish_after`` each. Returns how many were published."""
        if self.republish_after is None:
            return 0
        now = self.clock.now()
        horizon = now - self.republish_after
        published = 0
        for record in self.journal.select(state=[s for s in State if s.waiting]):
            due = record.next_run_at if record.next_run_at is not None else record.accepted_at
            last = self._republished.get(record.request_id, due)
            if due > horizon or last > horizon:
                continue
            log.warning(
                "invocation %s (%s) is %.0f s overdue: publishing its message again",
                record.request_id,
                record.function,
                now - due,
            )
            self._publish(record, record.attempt_count + 1, 0.0)
            self._republished[record.request_id] = now
            published += 1
        if len(self._republished) > 10_000:
            self._republished = {k: v for k, v in self._republished.items() if v > horizon}
        return published

    def submit(self, record: InvocationRecord, request: Request | None = None) -> Invocation:
        """Record ``accepted``, then publish and wait for the broker's confirm. When the publish
        fails the record is ``rejected`` and :class:`NotAcceptedError` raised (the App: 503)."""
        self._check_accepting()
        if record.next_run_at is None:
            record = dataclasses.replace(record, next_run_at=record.accepted_at)
        self.journal.accepted(record)
        try:  # due later when enqueued with a delay (record.not_before)
            due = record.next_run_at or record.accepted_at
            self._publish(record, 1, max(0.0, due - self.clock.now()))
        except Exception as exc:
            rejected = record.reject(self.clock.now())
            self.journal.finished(rejected)
            self.lifecycle.emit(EventKind.REJECTED, rejected)
            error = NotAcceptedError(
                f"the broker did not confirm invocation {record.request_id} of function "
                f"{record.function!r} ({type(exc).__name__}: {exc}); recorded as rejected"
            )
            error.retry_after = 5.0
            raise error from exc
        self.lifecycle.emit(EventKind.ACCEPTED, record)
        return Invocation(self.lifecycle, record, request)

    def _dispatch(self, record: InvocationRecord) -> None:
        countdown = 0.0 if record.next_run_at is None else record.next_run_at - self.clock.now()
        self._publish(record, record.attempt_count + 1, countdown)

    def _publish(self, record: InvocationRecord, attempt: int, countdown: float) -> None:
        with self._connections.acquire(block=True) as connection:
            _publish(
                self.celery_app, self.binding, record, attempt, countdown, connection=connection
            )

    def cancel(self, request_id: str) -> InvocationRecord:
        """A waiting invocation is cancelled in the journal (its message is then dropped by the
        worker that receives it). A running attempt runs to its end; no cancel reaches it."""
        record = self.journal.get(request_id)
        if record is None:
            raise InvocationNotFoundError(f"no invocation with request id {request_id!r}")
        if record.state.finished or record.state is State.RUNNING:
            return record
        self.journal.finished(record.cancel(self.clock.now()))
        stored = self.journal.get(request_id) or record
        if stored.state is State.CANCELLED:
            self.lifecycle.emit(EventKind.CANCELLED, stored)
        return stored

    def _wait(self, handle: Invocation, timeout: float | None) -> None:
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while True:
            record = self.journal.get(handle.request_id)
            if record is not None:
                handle._record = record
            if handle.done():
                return
            left = None if deadline is None else deadline - self.clock.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"invocation {handle.request_id} not finished after {timeout} s "
                    f"(state {handle.state.value})"
                )
            self.clock.sleep(self.poll_interval if left is None else min(self.poll_interval, left))

    def call(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        return self._local.call(function, request, params, request_id)

    async def call_async(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        return await self._local.call_async(function, request, params, request_id)

    def stats(self) -> ExecutorStats:
        """Counts from the shared journal: waiting and running across every worker."""
        waiting = self.journal.select(state=[s for s in State if s.waiting])
        running = self.journal.select(state=State.RUNNING)
        return ExecutorStats(pending=len(waiting), running=len(running))

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        """Stop accepting; accepted invocations are the workers' and carry on."""
        with self._sweep_stop:
            self._closed = True
            self._sweep_stop.notify_all()
        if self._sweeper is not None:
            self._sweeper.join()
        self._local.shutdown(wait, grace=grace)
        self._connections.force_close_all()  # what this executor opened, and only that


def declare_queues(app: celery.Celery) -> None:
    """Declare the task queue and (RabbitMQ) its dead-letter queue on the broker."""
    options = _options(app)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        bound: Any = options.queue(channel)
        bound.declare()
        if _is_amqp(conn.as_uri()):
            dead: Any = dead_letter_queue(options.queue.name)(channel)
            dead.declare()


# -- configuration from strings (the command line, environment variables) ----------------------


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
    argv += ["-Q", _options(app).queue.name]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)


def _from_environment() -> celery.Celery:
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


_ENV_APP: list[Any] = []


def __getattr__(name: str) -> Any:
    if name == "app":
        if not _ENV_APP:
            _ENV_APP.append(_from_environment())
        return _ENV_APP[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
