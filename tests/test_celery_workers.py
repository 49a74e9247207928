"""Several ``bgfunctions worker`` processes on one host: each has its own Celery node name.

Real RabbitMQ on loopback (``BGFUNCTIONS_TEST_AMQP_URL``, else amqp://guest:guest@127.0.0.1:5672//),
real worker processes started with ``python -m bgfunctions worker`` and stopped by process group.
Each test uses its own queue, deleted at the end. Celery names a worker ``celery@<host>`` unless
told otherwise; two workers of one name on one host clash on their pidbox queue and the second
exits at start-up, which is what these tests would catch.

No timing assertions: a worker is "up" once it answers a ping addressed to its node name, and the
burst asserts only who ran what.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bgfunctions import App, Registry, SQLiteJournal, State
from bgfunctions.executors.celery import CeleryExecutor, make_celery, worker_name

pytestmark = [pytest.mark.server, pytest.mark.realtime]

_AMQP = os.environ.get("BGFUNCTIONS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BURST = 40
UP = 60.0  # seconds a worker may take to start on a loaded machine before the test gives up

# Each attempt appends "<request id> <pid of the worker process>" (its prefork child's parent).
# The short sleep keeps both workers' single child busy while the burst is published, so the
# broker has a backlog to share; nothing is asserted about time.
HANDLER = """
import os
import time
from pathlib import Path

def handler(request, context):
    time.sleep(0.02)
    line = f"{context.request_id} {os.getppid()}\\n".encode()
    path = Path(__file__).resolve().parents[3] / "handled.txt"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
"""


def _amqp() -> str:
    port = urlsplit(_AMQP).port or 5672
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            pass
    except OSError:
        message = f"RabbitMQ is not reachable on 127.0.0.1:{port}; scripts/test starts it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return _AMQP


class Cluster:
    """A web-tier App on a SQLite journal and a private queue, and the workers started for it."""

    def __init__(self, root: Path) -> None:
        self.url = _amqp()
        self.root = root
        functions = root / "site" / "netlify" / "functions"
        functions.mkdir(parents=True)
        (functions / "who-background.py").write_text(textwrap.dedent(HANDLER))
        self.queue = f"bgf-test-{uuid.uuid4().hex[:10]}"
        self.journal_path = root / "journal.sqlite3"
        self.journal = SQLiteJournal(self.journal_path)
        self.celery_app = make_celery(broker=self.url, journal=self.journal, queue=self.queue)
        self.app = App(
            Registry.from_site(root / "site"),
            executor=CeleryExecutor(self.celery_app, journal=self.journal),
        )
        self.app.start()
        self.workers: list[subprocess.Popen[bytes]] = []
        self.log = root / "workers.log"

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "bgfunctions", "worker", str(self.root / "site")]
        argv += ["--broker", self.url, "--journal", str(self.journal_path), "--queue", self.queue]
        argv += ["--concurrency", "1", "--loglevel", "WARNING", *extra]
        with self.log.open("ab") as out:
            worker = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.root,
            )
        self.workers.append(worker)
        return worker

    def wait_up(self, names: list[str]) -> None:
        """Until every node in ``names`` answers a ping, failing as soon as a worker exits."""
        deadline = time.monotonic() + UP
        answered: set[str] = set()
        while answered != set(names):
            for worker in self.workers:
                assert worker.poll() is None, (worker.args, self.log.read_text(errors="replace"))
            assert time.monotonic() < deadline, (answered, names, self.log.read_text())
            replies = self.celery_app.control.ping(destination=names, timeout=1.0) or []
            for reply in replies:
                answered.update(reply)

    def handled(self) -> dict[str, int]:
        """Request id -> pid of the worker process whose child ran it."""
        path = self.root / "handled.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        return {rid: int(pid) for rid, pid in (line.split() for line in lines)}

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            # Prefork children of a worker that died first may outlive it; they share its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        self.app.shutdown()
        with self.celery_app.connection_for_write() as conn:
            for name in (self.queue, f"{self.queue}.dead"):
                for delete in ("queue_delete", "exchange_delete"):
                    with contextlib.suppress(Exception), conn.channel() as channel:
                        getattr(channel, delete)(name)
        self.celery_app.close()
        self.journal.close()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.close()
        if request.session.testsfailed and made.log.exists():
            print(made.log.read_text(errors="replace")[-5000:])


def test_two_workers_on_one_host_both_run_part_of_a_burst(cluster: Cluster) -> None:
    """Two `bgfunctions worker` processes on one host get distinct default node names
    (bgfunctions-<pid>@<host>), both stay up, and both run part of a burst of 40 invocations."""
    first, second = cluster.start_worker(), cluster.start_worker()
    host = socket.gethostname()
    names = [f"bgfunctions-{first.pid}@{host}", f"bgfunctions-{second.pid}@{host}"]
    cluster.wait_up(names)

    invocations = [cluster.app.enqueue("who-background") for _ in range(BURST)]
    records = [invocation.wait(120) for invocation in invocations]
    ids = [record.request_id for record in records]

    assert [r.state for r in records] == [State.SUCCEEDED] * BURST
    handled = cluster.handled()
    assert sorted(handled) == sorted(ids)  # each invocation ran exactly once
    assert set(handled.values()) == {first.pid, second.pid}
    cluster.wait_up(names)  # both still up, under their own names, after the burst


def test_name_option_sets_the_node_name(cluster: Cluster) -> None:
    """`bgfunctions worker --name` / `-n` sets the node name, expanded once the way Celery's -n
    is (%h, %n; %% is a literal %), and two workers given their own names run side by side."""
    tag = uuid.uuid4().hex[:8]
    first = cluster.start_worker("--name", f"w1-{tag}@%h")
    second = cluster.start_worker("-n", f"w2-{tag}%%x@%n")
    host = socket.gethostname()
    cluster.wait_up([f"w1-{tag}@{host}", f"w2-{tag}%x@{host.partition('.')[0]}"])

    record = cluster.app.enqueue("who-background").wait(60)

    assert record.state is State.SUCCEEDED
    assert set(cluster.handled().values()) <= {first.pid, second.pid}


def test_worker_name_default_and_expansion() -> None:
    """worker_name() is bgfunctions-<pid>@<host> by default; a given name is read as Celery's
    -n reads it (%h, %n, %d: this host, its short name, its domain; no @: the host part)."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    assert worker_name() == f"bgfunctions-{os.getpid()}@{host}"
    assert worker_name("w1@%h") == f"w1@{host}"
    assert worker_name("w1") == "celery@w1"
    assert worker_name("%n-a@box.example") == f"{short}-a@box.example"
    assert worker_name("w1@%n.%d") == f"w1@{short}.{domain}"


def test_worker_name_refuses_an_empty_name_or_an_unknown_expansion() -> None:
    """An empty name (which Celery would make the shared celery@<host>) or an unknown %x is a
    one-line ValueError that names the value."""
    for bad in ("", "  ", "@host", "w1@%x"):
        with pytest.raises(ValueError, match="worker name") as caught:
            worker_name(bad)
        assert repr(bad) in str(caught.value)
        assert "\n" not in str(caught.value)


def test_cli_refuses_an_empty_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`bgfunctions worker --name ''` exits 2 with one line naming the option and the value,
    before it connects to anything (the broker here is a closed port)."""
    from bgfunctions.cli import main

    (tmp_path / "site" / "netlify" / "functions").mkdir(parents=True)
    argv = ["worker", str(tmp_path / "site"), "--broker", "redis://127.0.0.1:1/0"]
    code = main([*argv, "--journal", "x", "--name", ""])
    assert code == 2
    assert capsys.readouterr().err == (
        "bgfunctions: error: --name: worker name: expected NAME@HOST with a non-empty NAME "
        "(e.g. 'w1@%h'); got ''\n"
    )
