"""Faults under Celery: a worker killed mid-burst, a broker restarted mid-burst, a broker stopped.

Real brokers, real worker subprocesses (``bgfunctions.executors.celery.run_worker``, prefork,
concurrency 2 each), a SQLite journal shared by the web tier and the workers. Every background
call goes through ``App.handle``; a ``202`` is an accepted invocation. The handler appends
``start ID ATTEMPT PID`` and ``end ID ATTEMPT PID`` lines to a ledger file (each line written
with ``O_APPEND`` and fsynced) around ~20 ms of work, so "ran" means "has an ``end`` line" and
survives the kill of the process that wrote it.

* the worker-kill test uses the machine's brokers (``BGFUNCTIONS_TEST_AMQP_URL``,
  ``BGFUNCTIONS_TEST_REDIS_URL``), a queue of its own, and Redis db 8 (flushed at the end);
* the broker restart and broker-down tests never touch the shared brokers: they start a private
  ``redis-server`` (``--appendonly yes``, so that queued and unacked messages survive the restart;
  stopped with SIGTERM, which writes the append-only file out, and started again on the same
  directory) and a private RabbitMQ node (its own node name, ports, config file and mnesia
  directory; restarted with ``rabbitmqctl stop_app``/``start_app``; its quorum queues survive).

Figures (accepted, lost, duplicates, time to drain) are printed; run with ``-s`` to see them.
Workers on Redis use a 15 s visibility timeout (longer than the 6 s limit, the 2 s kill margin
and the 1 s longest delay) swept every second, so that messages a killed worker held come back
within the test; the production default (``celery_settings``) is limit + delay + 300 s.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bgfunctions import App, Limits, Registry, Request, RetryPolicy, SQLiteJournal, State
from bgfunctions.clock import SystemClock
from bgfunctions.executors.celery import CeleryExecutor, make_celery
from test_celery import BROKERS, _need, _start, _stop

pytestmark = [pytest.mark.server, pytest.mark.realtime]

LIMIT = 6.0
DELAYS = (0.5, 1.0)
LEASE = 1.5
BURST = 500
DRAIN = 75.0  # seconds for every accepted invocation to run after the fault
URL = "/.netlify/functions/ledger-background"
CLOCK = SystemClock()

HANDLER = """
import os
import time

LEDGER = {ledger!r}


def _line(text):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def handler(request, context):
    _line(f"start {{context.request_id}} {{context.attempt}} {{os.getpid()}}")
    time.sleep(0.02)
    _line(f"end {{context.request_id}} {{context.attempt}} {{os.getpid()}}")
"""

WORKER = """
import sys

from bgfunctions import Limits, RetryPolicy
from bgfunctions.executors.celery import journal_factory, make_celery, run_worker

broker, journal, site, queue = sys.argv[1:5]
app = make_celery(
    broker=broker,
    journal=journal_factory(journal, lease={lease}),
    site=site,
    limits=Limits(background_timeout={limit}),
    retry=RetryPolicy(delays={delays}),
    queue=queue,
)
if broker.startswith("redis"):
    app.conf.broker_transport_options = {{
        "visibility_timeout": 15,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }}
run_worker(app, concurrency=2, loglevel="WARNING")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _until(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = CLOCK.monotonic() + timeout
    while not predicate():
        if CLOCK.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        CLOCK.sleep(0.1)


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


# -- a web tier, its workers and the ledger ----------------------------------------------------


@dataclass
class Cluster:
    """One queue, one journal, one ledger; a web-tier App and worker subprocesses on them."""

    url: str
    root: Path
    queue: str = field(default_factory=lambda: f"bgf-faults-{uuid.uuid4().hex[:10]}")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        functions = self.root / "site" / "netlify" / "functions"
        functions.mkdir(parents=True, exist_ok=True)
        self.ledger = self.root / "ledger.txt"
        (functions / "ledger-background.py").write_text(HANDLER.format(ledger=str(self.ledger)))
        self.ledger.touch()
        self.journal_path = self.root / "journal.sqlite3"
        self.script = self.root / "worker.py"
        self.script.write_text(WORKER.format(lease=LEASE, limit=LIMIT, delays=DELAYS))
        self.journal = SQLiteJournal(self.journal_path)
        self.celery_app = make_celery(broker=self.url, journal=self.journal, queue=self.queue)
        self.app = App(
            Registry.from_site(self.root / "site"),
            # Well past the 15 s visibility timeout (Redis restores what it knows of itself),
            # well within DRAIN: a message Redis lost in the kill is published again.
            executor=CeleryExecutor(self.celery_app, journal=self.journal, republish_after=25.0),
            limits=Limits(background_timeout=LIMIT),
            retry=RetryPolicy(delays=DELAYS),
        )
        self.app.start()

    def start_worker(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(self.script), self.url, str(self.journal_path)]
        argv += [str(self.root / "site"), self.queue]
        log = self.root / f"worker-{len(self.workers)}.log"
        with log.open("ab") as out:
            worker = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.workers.append(worker)
        return worker

    def call(self) -> int:
        """One background call through ``App.handle``; a 202's id is remembered as accepted."""
        response = self.app.handle(Request("POST", URL, body=b"{}"))
        if response.status == 202:
            self.accepted.append(response.headers["x-nf-request-id"])
        else:
            self.refused += 1
        return response.status

    def burst(
        self, count: int, *, timeout: float = 60.0, until_refused: bool = False
    ) -> threading.Thread:
        """Call in a thread until ``count`` calls were accepted (or ``timeout`` passed); with
        ``until_refused``, also until one was refused (so that a broker stopped mid-burst is
        met however fast the accepts go)."""

        def run() -> None:
            deadline = CLOCK.monotonic() + timeout
            while (
                len(self.accepted) < count or (until_refused and self.refused == 0)
            ) and CLOCK.monotonic() < deadline:
                if self.call() != 202:
                    CLOCK.sleep(0.05)  # the broker is down: do not spin on 503s

        thread = threading.Thread(target=run, name="burst", daemon=True)
        thread.start()
        return thread

    def ledger_lines(self) -> list[list[str]]:
        return [line.split() for line in self.ledger.read_text().splitlines() if line]

    def ended(self) -> collections.Counter[str]:
        return collections.Counter(p[1] for p in self.ledger_lines() if p[0] == "end")

    def drain(self, since: float) -> dict[str, Any]:
        """Wait until every accepted invocation has an ``end`` line and a finished record;
        return the figures (and print them)."""

        def done() -> bool:
            ended = self.ended()
            if any(ended[i] == 0 for i in self.accepted):
                return False
            return all(
                (r := self.journal.get(i)) is not None and r.state.finished for i in self.accepted
            )

        with contextlib.suppress(AssertionError):
            _until("every accepted invocation ran", done, DRAIN)
        drained = CLOCK.monotonic() - since
        ended = self.ended()
        starts = collections.Counter(p[1] for p in self.ledger_lines() if p[0] == "start")
        states = collections.Counter(
            r.state.value if (r := self.journal.get(i)) is not None else "missing"
            for i in self.accepted
        )
        figures = {
            "accepted": len(self.accepted),
            "refused": self.refused,
            "lost": sum(1 for i in self.accepted if ended[i] == 0),
            "duplicates": sum(n - 1 for n in ended.values() if n > 1),
            "reruns": sum(n - 1 for n in starts.values() if n > 1),
            "drain_s": round(drained, 1),
            "states": dict(states),
        }
        print(f"\n[{self.queue}] {figures}")
        return figures

    def close(self) -> None:
        for worker in self.workers:
            _stop(worker)
        self.app.shutdown()
        self.journal.close()


def _tail_logs(cluster: Cluster) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(cluster.root.glob("*.log"))
    )


def _purge_shared(cluster: Cluster, broker: str) -> None:
    if broker == "redis":
        import redis

        redis.Redis.from_url(cluster.url).flushdb()
        return
    with cluster.celery_app.connection_for_write() as conn:
        for name in (cluster.queue, f"{cluster.queue}.dead"):
            with contextlib.suppress(Exception), conn.channel() as channel:
                channel.queue_delete(name)
            with contextlib.suppress(Exception), conn.channel() as channel:
                channel.exchange_delete(name)


# -- 1. a worker killed mid-burst --------------------------------------------------------------


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_worker_killed_mid_burst_loses_nothing(broker: str, tmp_path: Path) -> None:
    """kill -9 of a worker's process group mid-burst: every accepted invocation still runs."""
    url = _need(broker)
    if broker == "redis":
        url = url.rsplit("/", 1)[0] + "/8"
    cluster = Cluster(url=url, root=tmp_path)
    try:
        victim = cluster.start_worker()
        cluster.start_worker()
        started = CLOCK.monotonic()
        burst = cluster.burst(BURST)
        # Mid-burst and mid-work: some accepted, some already run by the victim's children.
        _until(
            "the burst is under way and the workers are running it",
            lambda: len(cluster.accepted) >= BURST // 3 and len(cluster.ended()) >= 20,
            45.0,
        )
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = len(cluster.accepted)
        cluster.start_worker()
        burst.join(60.0)
        assert not burst.is_alive()
        figures = cluster.drain(started)
        print(f"[{broker}] killed after {killed_at} accepts; {figures}")
        assert figures["accepted"] >= BURST
        assert figures["refused"] == 0
        assert figures["lost"] == 0, _tail_logs(cluster)
        assert set(figures["states"]) == {State.SUCCEEDED.value}, figures
    finally:
        cluster.close()
        _purge_shared(cluster, broker)


# -- private brokers ---------------------------------------------------------------------------


class PrivateBroker:
    """A broker of this test module only: started, stopped and restarted by it."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.port = _free_port()
        self.dist_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.node = f"bgf-test-{uuid.uuid4().hex[:8]}@localhost"
        self.url = (
            f"redis://127.0.0.1:{self.port}/0"
            if kind == "redis"
            else f"amqp://guest:guest@127.0.0.1:{self.port}//"
        )

    # Redis: a subprocess of ours, stopped by its pid.
    def _redis(self) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "yes", "--dir", str(self.root)]
        self.process = _start(argv, self.root / "redis.log")

    # RabbitMQ: a node of its own (name, ports, config, mnesia), never the one on 5672.
    def _env(self) -> dict[str, str]:
        return dict(
            os.environ,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            # The machine's rabbitmq.conf may pin a listener on 5672: this node reads its own.
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_PID_FILE=str(self.root / "rabbitmq.pid"),
        )

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def open(self) -> None:
        if self.kind == "redis":
            if shutil.which("redis-server") is None:
                _unavailable("redis-server is not installed (Debian: apt-get install redis-server)")
            self._redis()
            _until("the private redis-server answers", lambda: _answers(self.port), 20.0)
            return
        if shutil.which("rabbitmq-server") is None:
            _unavailable(
                "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
            )
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        if os.getuid() == 0:
            # Debian's wrapper runs the node as the rabbitmq user: it must own the directory.
            with contextlib.suppress(KeyError, OSError):
                shutil.chown(self.root, "rabbitmq")
                shutil.chown(self.root / "rabbitmq.conf", "rabbitmq")
        subprocess.run(
            ["rabbitmq-server", "-detached"], env=self._env(), capture_output=True, check=False
        )
        try:
            _until(
                f"the private RabbitMQ node {self.node} started",
                lambda: self._ctl("await_startup", "--timeout", "5", timeout=10).returncode == 0,
                60.0,
            )
        except AssertionError as exc:
            self.close()
            _unavailable(f"could not start a private RabbitMQ node: {exc}")

    def stop(self) -> None:
        if self.kind == "redis":
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)  # redis writes its AOF out and exits
            self.process.wait(20)
        else:
            assert self._ctl("stop_app").returncode == 0
        _until("the private broker stopped listening", lambda: not _answers(self.port), 20.0)

    def start(self) -> None:
        if self.kind == "redis":
            self._redis()
        else:
            assert self._ctl("start_app").returncode == 0
        _until("the private broker answers again", lambda: _answers(self.port), 30.0)

    def close(self) -> None:
        if self.kind == "redis":
            if self.process is not None:
                _stop(self.process)
            return
        self._ctl("stop", timeout=30)
        pidfile = self.root / "rabbitmq.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def private(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateBroker]:
    kind = str(request.param)
    if kind == "redis":
        root = tmp_path_factory.mktemp("broker-redis")
    else:
        # Not under pytest's 0700 temporary root: Debian's wrapper runs the node as the
        # rabbitmq user, who must reach (and own) its directory.
        root = Path(tempfile.mkdtemp(prefix="bgf-test-rabbitmq-"))
    broker = PrivateBroker(kind, root)
    broker.open()
    try:
        yield broker
    finally:
        broker.close()
        if kind != "redis":
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(private: PrivateBroker, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(url=private.url, root=tmp_path)
    if not _answers(private.port):
        private.start()  # a failed test may have left it stopped
    try:
        yield cluster
    finally:
        cluster.close()


# -- 2. the broker restarted mid-burst ---------------------------------------------------------


def test_broker_restart_mid_burst_runs_every_accepted(
    private: PrivateBroker, cluster: Cluster
) -> None:
    """A broker restarted mid-burst: every invocation that got a 202 still runs."""
    cluster.start_worker()
    cluster.start_worker()
    started = CLOCK.monotonic()
    burst = cluster.burst(BURST, timeout=75.0, until_refused=True)
    _until("the burst is under way", lambda: len(cluster.accepted) >= BURST // 3, 45.0)
    private.stop()
    # Down until the App has answered 503 at least once: the restart is seen by the web tier.
    _until("a 503 while the broker is down", lambda: cluster.refused > 0, 20.0)
    stopped_at = len(cluster.accepted)
    private.start()
    burst.join(80.0)
    assert not burst.is_alive()
    figures = cluster.drain(started)
    print(f"[{private.kind}] restarted after {stopped_at} accepts; {figures}")
    assert figures["accepted"] >= BURST
    assert figures["lost"] == 0, _tail_logs(cluster)
    rejected = cluster.journal.select(state=State.REJECTED)
    assert len(rejected) == cluster.refused


# -- 3. the broker stopped ---------------------------------------------------------------------


def test_broker_down_answers_503_then_recovers(private: PrivateBroker, cluster: Cluster) -> None:
    """Broker down: 503s only, each recorded rejected; broker back: 202s again, and they run."""
    cluster.start_worker()
    assert cluster.call() == 202
    private.stop()
    statuses = [cluster.call() for _ in range(10)]
    assert statuses == [503] * 10
    assert len(cluster.accepted) == 1
    assert len(cluster.journal.select(state=State.REJECTED)) == 10
    private.start()
    # The first calls may still meet a connection being re-established.
    _until("a 202 once the broker is back", lambda: cluster.call() == 202, 30.0)
    for _ in range(20):
        assert cluster.call() == 202
    figures = cluster.drain(CLOCK.monotonic())
    assert figures["lost"] == 0, _tail_logs(cluster)
    assert figures["accepted"] >= 22
