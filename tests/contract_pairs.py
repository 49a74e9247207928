"""The engine x journal pairs of the contract suite (tests/test_contract.py), built as users build
them: an ``App`` over each executor and journal, the functions loaded from one site directory.

Every pair records the same things the same way: ``on_event`` and ``on_failure`` append one line
each (``REQUEST_ID KIND PID``) to a ledger file with ``O_APPEND``, so that a hook heard in a Celery
worker process lands in the same ordered ledger as one heard in the web tier.

Real-time pairs use short limits (``LIMIT`` per attempt, retries ``DELAYS`` after the previous
attempt ended); the inline pair keeps Netlify's own values (900 s, 60 s then 120 s) on its
virtual clock. Celery pairs run one worker process each (concurrency 1), shared by the module,
started and stopped by pid; their queue and PostgreSQL table are the run's own, and they delete
what they leave in Redis by their queue's name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bgfunctions import (
    App,
    Event,
    InlineExecutor,
    Invocation,
    InvocationRecord,
    Journal,
    Limits,
    MemoryJournal,
    Registry,
    Request,
    RetryPolicy,
    SQLiteJournal,
    State,
    SystemClock,
    ThreadExecutor,
)

LIMIT = 1.5
"""Seconds an attempt may run on the real-time pairs."""
DELAYS = (0.2, 0.4)
"""Seconds between a failed attempt's end and the next attempt on the real-time pairs."""
LEASE = 1.0
"""Seconds a claimed attempt stays claimed without a heartbeat (durable journals)."""
DYING = ("crash-background", "exit-background")
"""Functions whose process may die under them (``os._exit``; ``sys.exit`` on Celery, see
KNOWN_BUGS). A Celery worker tells a child that died from one killed at the limit only by when
the dead child's message is handled again: 0.1 to 5.3 s after the death on this machine (while
a new child starts). So these functions get DYING_LIMIT, as a user sets a per-function limit,
lest a crash be recorded ``timed_out``; Netlify's 900 s limit leaves a wide margin."""
DYING_LIMIT = 15.0
SLOW = ("sync-sleep-background", "spin-background")
"""Functions a test cancels while they run: DYING_LIMIT too, so that a loaded machine never
lets them reach their limit first."""
KILL_MARGIN = 1.0
"""Seconds past LIMIT after which Celery kills a child still running a sync handler."""
WAIT = 60.0
"""Seconds of real time to wait for an invocation to finish; never reached when all is well."""
BLOCK = 6.0
"""Seconds the uninterruptible sync handler blocks for: well past LIMIT + KILL_MARGIN, and
bounded, so that an abandoned thread does end."""
CLOCK = SystemClock()
NAP = 0.3
"""Seconds of a durable sleep on the real-time pairs (the inline pair sleeps 7 virtual days)."""

HANDLERS = {
    "ok-background": """
        def handler(request, context):
            pass
    """,
    "fail-background": """
        def handler(request, context):
            raise ValueError(f"attempt {context.attempt} fails")
    """,
    "exit-background": """
        import sys

        def handler(request, context):
            if context.attempt == 1:
                sys.exit(3)
    """,
    "interrupt-background": """
        def handler(request, context):
            if context.attempt == 1:
                raise KeyboardInterrupt
    """,
    "async-timeout-background": """
        import asyncio

        async def handler(request, context):
            if context.attempt == 1:
                await asyncio.sleep(3600)
    """,
    # On a virtual clock a sync handler can only pass its deadline by waiting on that clock; on
    # real time it blocks where only a kill stops it (bounded, so an abandoned thread ends).
    "sync-timeout-background": f"""
        import time

        from bgfunctions import VirtualClock

        def handler(request, context):
            if context.attempt == 1:
                if isinstance(context.clock, VirtualClock):
                    context.sleep(3600)
                end = time.monotonic() + {BLOCK}
                while time.monotonic() < end:
                    time.sleep(0.05)
    """,
    "crash-background": """
        import os

        def handler(request, context):
            if context.attempt == 1:
                os._exit(3)
    """,
    "sleep-background": """
        import asyncio

        async def handler(request, context):
            if context.attempt == 1:
                await asyncio.sleep(3600)
    """,
    # Cancelled while they block (tests/test_celery_cancel.py): body "PATH|block" blocks for 30 s,
    # "PATH" returns at once; each records the pid of its process and that its finally block
    # ran, in files named after PATH.
    "sync-sleep-background": """
        import os
        import time

        def handler(request, context):
            marker, _, block = request.body.decode().partition("|")
            with open(marker + ".pid", "w") as f:
                f.write(str(os.getpid()))
            try:
                end = time.monotonic() + 30
                while block and time.monotonic() < end:
                    time.sleep(0.05)
            finally:
                open(marker + ".finally", "w").close()
    """,
    "spin-background": """
        import os
        import time

        def handler(request, context):
            marker, _, block = request.body.decode().partition("|")
            with open(marker + ".pid", "w") as f:
                f.write(str(os.getpid()))
            try:
                end = time.monotonic() + 30
                spins = 0
                while block and time.monotonic() < end:
                    spins += 1
            finally:
                open(marker + ".finally", "w").close()
    """,
    # Swallows whatever is raised into it (a cancel too) and blocks on: only the kill at its
    # limit (LIMIT) stops it.
    "stubborn-background": """
        import os
        import time

        def handler(request, context):
            marker = request.body.decode()
            with open(marker + ".pid", "w") as f:
                f.write(str(os.getpid()))
            end = time.monotonic() + 30
            while context.attempt == 1 and time.monotonic() < end:
                try:
                    time.sleep(0.05)
                except BaseException:
                    open(marker + ".caught", "w").close()
    """,
    # Durable steps and sleeps: a step, a sleep (7 days on a virtual clock), a step.
    "nap-background": f"""
        from bgfunctions import VirtualClock

        def handler(request, context):
            context.step.run("before", int, "1")
            if isinstance(context.clock, VirtualClock):
                context.step.sleep("nap", days=7)
            else:
                context.step.sleep("nap", seconds={NAP})
            context.step.run("after", int, "2")
    """,
    # A sleep, then a step that fails once (in the attempt that resumes the sleep).
    "nap-fail-background": f"""
        from bgfunctions import VirtualClock

        def flaky(attempt):
            if attempt == 2:
                raise ValueError("fails once, after the sleep")
            return attempt

        def handler(request, context):
            if isinstance(context.clock, VirtualClock):
                context.step.sleep("nap", days=7)
            else:
                context.step.sleep("nap", seconds={NAP})
            context.step.run("after", flaky, context.attempt)
    """,
    # Holds the only worker slot until the file named by the body exists, for at most the
    # seconds the body names (kept under the limit, so the hold never times out).
    "hold-background": """
        import os
        import time

        def handler(request, context):
            path, seconds = request.body.decode().split("|")
            end = time.monotonic() + float(seconds)
            while not os.path.exists(path) and time.monotonic() < end:
                time.sleep(0.01)
    """,
}


def write_site(root: Path) -> Path:
    functions = root / "site" / "netlify" / "functions"
    functions.mkdir(parents=True)
    for name, source in HANDLERS.items():
        (functions / f"{name}.py").write_text(textwrap.dedent(source))
    return root / "site"


class Ledger:
    """Hooks that append ``REQUEST_ID KIND`` lines to one file, in the order they are heard."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _line(self, text: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)

    def on_event(self, event: Event) -> None:
        self._line(f"{event.record.request_id} {event.kind.value} {os.getpid()}")

    def on_failure(self, record: InvocationRecord) -> None:
        self._line(f"{record.request_id} on_failure {os.getpid()}")

    def heard(self, request_id: str) -> list[tuple[str, int]]:
        """(kind, pid of the process that heard it) of each line about ``request_id``."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            rid, kind, pid = line.split()
            if rid == request_id:
                found.append((kind, int(pid)))
        return found

    def lines(self, request_id: str) -> list[str]:
        return [kind for kind, _ in self.heard(request_id)]


@dataclass
class Pair:
    """One engine x journal pair: an App, its ledger, and what its engine can do."""

    name: str
    app: App
    ledger: Ledger
    root: Path
    limit: float
    delays: tuple[float, ...]
    virtual: bool = False
    runs_processes: bool = False
    extra_stop: list[Callable[[], None]] = field(default_factory=list)
    before_test: list[Callable[[], None]] = field(default_factory=list)

    def enqueue(self, name: str, body: bytes = b"") -> Invocation:
        return self.app.enqueue(name, Request("POST", f"/.netlify/functions/{name}", body=body))

    def wait(self, invocation: Invocation) -> InvocationRecord:
        """The finished record, once the hooks of its last change have been heard too (they
        run after the journal write, in whichever process made the change)."""
        record = invocation.wait(None if self.virtual else WAIT)
        finals = {"succeeded", "failed", "cancelled"}
        want = 2 if record.state is State.FAILED else 1  # the final event, then on_failure
        ends = finals | {"on_failure"}
        self.until(
            f"the hooks of {record.request_id} ({record.state.value})",
            lambda: sum(k in ends for k in self.ledger.lines(record.request_id)) >= want,
        )
        return record

    def run(self, name: str) -> InvocationRecord:
        return self.wait(self.enqueue(name))

    def until(self, what: str, predicate: Callable[[], bool]) -> None:
        """Wait (real time) until ``predicate`` holds; the inline pair never needs to."""
        deadline = CLOCK.monotonic() + WAIT
        while not predicate():
            if CLOCK.monotonic() > deadline:
                raise AssertionError(f"{self.name}: still waiting for {what} after {WAIT} s")
            CLOCK.sleep(0.01)

    def state(self, request_id: str) -> State:
        record = self.app.journal.get(request_id)
        assert record is not None, f"{self.name}: no record {request_id} in the journal"
        return record.state

    @contextlib.contextmanager
    def slot_held(self) -> Iterator[None]:
        """While inside, the pair's only worker slot is busy, so nothing accepted starts."""
        if self.virtual:  # the inline executor runs nothing until the test drains it
            yield
            return
        release = self.root / f"release-{uuid.uuid4().hex}"
        hold = self.enqueue("hold-background", f"{release}|{self.limit * 0.8}".encode())
        self.until("the hold to run", lambda: self.state(hold.request_id) is not State.ACCEPTED)
        try:
            yield
        finally:
            release.touch()
            self.wait(hold)

    def close(self) -> None:
        self.app.shutdown(grace=0)
        for stop in self.extra_stop:
            stop()


def load_registry(site: Path | str) -> Registry:
    """The site's functions, the DYING ones with their own limit (``Registry.add(limits=)``)."""
    registry = Registry()
    for function in Registry.from_site(site):
        slow = function.name in DYING or function.name in SLOW
        limits = Limits(background_timeout=DYING_LIMIT) if slow else None
        assert function.handler is not None
        registry.add(
            function.name, function.handler, config=function.config, file=function.file,
            limits=limits,
        )  # fmt: skip
    return registry


def _app(executor: Any, site: Path, ledger: Ledger, *, virtual: bool = False) -> App:
    return App(
        load_registry(site),
        executor=executor,
        limits=Limits() if virtual else Limits(background_timeout=LIMIT),
        retry=RetryPolicy() if virtual else RetryPolicy(delays=DELAYS),
        on_event=ledger.on_event,
        on_failure=ledger.on_failure,
    )


def embedded(name: str, site: Path, root: Path) -> Pair:
    """An in-process pair: inline+memory, thread+memory, thread+sqlite, process+sqlite."""
    ledger = Ledger(root / "ledger.txt")
    journal: Journal
    if name == "inline+memory":
        executor: Any = InlineExecutor(journal=MemoryJournal())
        app = _app(executor, site, ledger, virtual=True)
        return Pair(name, app, ledger, root, 900.0, (60.0, 120.0), virtual=True)
    engine, _, store = name.partition("+")
    journal = MemoryJournal() if store == "memory" else SQLiteJournal(root / "journal.sqlite3")
    if engine == "thread":
        executor = ThreadExecutor(max_workers=1, journal=journal)
    else:
        from bgfunctions.executors.processes import ProcessExecutor

        executor = ProcessExecutor(max_workers=1, journal=journal)
    pair = Pair(name, _app(executor, site, ledger), ledger, root, LIMIT, DELAYS)
    pair.runs_processes = engine == "process"
    if isinstance(journal, SQLiteJournal):
        pair.extra_stop.append(journal.close)
    return pair


# -- Celery ----------------------------------------------------------------------------------

AMQP = os.environ.get("BGFUNCTIONS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("BGFUNCTIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
REDIS_DB = 9  # this suite's own db (test_celery uses 7, test_celery_faults 8)
POSTGRES_CANDIDATES = [
    os.environ.get("BGFUNCTIONS_TEST_POSTGRES_DSN", ""),
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
]

WORKER = """
import sys

from bgfunctions import Limits, RetryPolicy
from bgfunctions.executors.celery import make_celery, run_worker

broker, journal_spec, table, site, queue, ledger_path, tests = sys.argv[1:8]
sys.path.insert(0, tests)
from contract_pairs import load_registry  # noqa: E402


import os


def _line(text):
    text = f"{{text}} {{os.getpid()}}"
    fd = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


def journal():
    if journal_spec.startswith("postgresql://"):
        from bgfunctions.contrib.postgres import PostgresJournal

        return PostgresJournal(journal_spec, table=table, lease={lease})
    from bgfunctions import SQLiteJournal

    return SQLiteJournal(journal_spec, lease={lease})


app = make_celery(
    broker=broker,
    journal=journal,
    registry=load_registry(site),
    limits=Limits(background_timeout={limit}),
    retry=RetryPolicy(delays={delays}),
    queue=queue,
    on_event=lambda event: _line(f"{{event.record.request_id}} {{event.kind.value}}"),
    on_failure=lambda record: _line(f"{{record.request_id}} on_failure"),
    kill_margin={kill_margin},
)
if broker.startswith("redis"):
    # A message that a killed child held comes back within the test (production: minutes).
    app.conf.broker_transport_options = {{
        "visibility_timeout": 30,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }}
run_worker(app, concurrency=1, loglevel="WARNING")
"""


def _reachable(url: str, default_port: int) -> None:
    port = urlsplit(url).port or default_port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
    except OSError:
        pass
    message = f"{url} is not reachable on 127.0.0.1:{port}; scripts/test starts it"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _postgres() -> str:
    import psycopg

    tried = []
    for dsn in filter(None, POSTGRES_CANDIDATES):
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
        except psycopg.Error as exc:
            tried.append(f"{dsn}: {' '.join(str(exc).split())}")
        else:
            return dsn
    message = "the contract suite needs PostgreSQL on loopback; tried: " + "; ".join(tried)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


class _Worker:
    """The pair's worker process; started again before a test if a handler killed it."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def ensure(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self.stop()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.log.parent,
            )
        self.starts += 1

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Prefork children of a worker that died first may outlive it; they share its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def celery(name: str, site: Path, root: Path) -> Pair:
    """Celery on RabbitMQ + PostgreSQL, or on Redis + SQLite: a web-tier App and one worker."""
    from bgfunctions.executors.celery import CeleryExecutor, make_celery

    ledger = Ledger(root / "ledger.txt")
    queue = f"bgf-contract-{uuid.uuid4().hex[:10]}"
    table = f"bgf_contract_{uuid.uuid4().hex[:10]}"
    journal: Journal
    if name == "celery-rabbitmq+postgres":
        _reachable(AMQP, 5672)
        broker = AMQP
        spec = _postgres()
        from bgfunctions.contrib.postgres import PostgresJournal

        journal = PostgresJournal(spec, table=table, lease=LEASE)
    else:
        _reachable(REDIS, 6379)
        broker = f"{REDIS}/{REDIS_DB}"
        spec = str(root / "journal.sqlite3")
        journal = SQLiteJournal(spec, lease=LEASE)
    celery_app = make_celery(broker=broker, journal=journal, queue=queue)
    executor = CeleryExecutor(celery_app, journal=journal, poll_interval=0.02)
    app = _app(executor, site, ledger)
    app.start()
    script = root / "worker.py"
    script.write_text(
        WORKER.format(lease=LEASE, limit=LIMIT, delays=DELAYS, kill_margin=KILL_MARGIN)
    )
    argv = [sys.executable, str(script), broker, spec, table, str(site), queue, str(ledger.path)]
    argv.append(str(Path(__file__).parent))
    worker = _Worker(argv, root / "worker.log")
    worker.ensure()
    pair = Pair(name, app, ledger, root, LIMIT, DELAYS, runs_processes=True)

    def cleanup() -> None:
        worker.stop()
        _drop_queue(celery_app, broker, queue)
        if isinstance(journal, SQLiteJournal):
            journal.close()
        else:
            _drop_table(spec, table)
            journal.close()

    pair.extra_stop.append(cleanup)
    pair.before_test.append(worker.ensure)
    return pair


def _drop_queue(celery_app: Any, broker: str, queue: str) -> None:
    if broker.startswith("redis"):
        import redis

        # Only this run's keys (its queue and the bindings named after it): another run of the
        # suite may share the db.
        client = redis.Redis.from_url(broker)
        try:
            keys = list(client.scan_iter(match=f"*{queue}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        return
    with celery_app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in (queue, f"{queue}.dead"):
            for drop in (channel.queue_delete, channel.exchange_delete):
                try:
                    drop(name)
                except Exception:
                    channel = conn.channel()


def _drop_table(dsn: str, table: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_meta")
