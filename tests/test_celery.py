"""Background functions on Celery: real brokers, real worker processes, a shared journal.

RabbitMQ (amqp://guest:guest@127.0.0.1:5672//) and Redis (redis://127.0.0.1:6379/7) must be
running; ``scripts/test`` starts them. A broker that cannot be reached skips its tests locally and
fails them under ``CI=true``. Each run uses its own queue name and purges it at the end; Redis db 7
is flushed at the end (only that db).

Short limits keep the file fast: a 2 s attempt limit (the child is killed 2 s later), retries
0.5 s and 1.0 s after the previous attempt ended, leases of 1.5 s. Tolerances: an attempt starts
no earlier than its delay after the previous one ended (minus 0.06 s: a message that close to its
due time waits in place) and at most 8 s later (broker round trips, lease expiry, worker restart).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bgfunctions import (
    App,
    InvocationRecord,
    JournalUnavailableError,
    Limits,
    NotAcceptedError,
    Outcome,
    Registry,
    RetryPolicy,
    SQLiteJournal,
    State,
    SystemClock,
)
from bgfunctions.executors import celery_app as celery_app_module
from bgfunctions.executors.celery import TASK_NAME, CeleryExecutor, celery_settings, make_celery
from bgfunctions.ids import new_request_id
from bgfunctions.journals.base import Journal

pytestmark = [pytest.mark.server, pytest.mark.realtime]

# scripts/test points these at the machine's brokers, or at private ones it started.
_AMQP = os.environ.get("BGFUNCTIONS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
_REDIS = os.environ.get("BGFUNCTIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
BROKERS = {
    "rabbitmq": (_AMQP, urlsplit(_AMQP).port or 5672),
    "redis": (f"{_REDIS}/7", urlsplit(_REDIS).port or 6379),
}
# Long enough that a child killed early is never mistaken for one killed at the limit on a
# loaded 2-core machine: a dead child is noticed once its lease (LEASE) has run out, which
# can take over twice LEASE; the worker then tells crashed from timed out by that time.
LIMIT = 6.0
DELAYS = (0.5, 1.0)
LEASE = 1.5
EARLY = 0.06
LATE = 8.0
WAIT = 60.0

HANDLERS = {
    "ok-background": """
        def handler(request, context):
            pass
    """,
    "fail-background": """
        def handler(request, context):
            raise ValueError(f"attempt {context.attempt} fails")
    """,
    "spin-background": """
        def handler(request, context):
            if context.attempt == 1:
                while True:
                    pass
    """,
    "exit-background": """
        import os

        def handler(request, context):
            if context.attempt == 1:
                os._exit(3)
    """,
    "kill-background": """
        import os
        import signal

        def handler(request, context):
            if context.attempt < 3:
                os.kill(os.getpid(), signal.SIGKILL)
    """,
    "steps-background": """
        import os
        import signal
        from pathlib import Path

        LOG = Path(__file__).parent.parent.parent / "steps.log"

        def handler(request, context):
            def run(name):
                with open(LOG, "a") as f:
                    f.write(f"{context.request_id} {name}\\n")
                    f.flush()
                    os.fsync(f.fileno())
                return name

            context.step.run("one", run, "one")
            if context.attempt == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # after the step committed
            context.step.run("two", run, "two")
    """,
    "sys-exit-background": """
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
    "generator-exit-background": """
        def handler(request, context):
            if context.attempt == 1:
                raise GeneratorExit
    """,
    "async-cancelled-background": """
        import asyncio

        async def handler(request, context):
            if context.attempt == 1:
                raise asyncio.CancelledError()
    """,
    "async-sleep-background": """
        import asyncio

        async def handler(request, context):
            if context.attempt == 1:
                await asyncio.sleep(60)
    """,
}

WORKER = """
import sys
from pathlib import Path

from bgfunctions import Limits, RetryPolicy
from bgfunctions.executors.celery import journal_factory, make_celery, run_worker

broker, journal, site, queue, failures = sys.argv[1:6]


def on_failure(record):
    with open(failures, "a") as f:
        f.write(record.request_id + "\\n")


app = make_celery(
    broker=broker,
    journal=journal_factory(journal, lease={lease}),
    site=site,
    limits=Limits(background_timeout={limit}),
    retry=RetryPolicy(delays={delays}),
    queue=queue,
    on_failure=on_failure,
)
run_worker(app, concurrency=2, loglevel="WARNING")
"""


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(broker: str) -> str:
    url, port = BROKERS[broker]
    if not _reachable(port):
        message = (
            f"{broker} is not reachable on 127.0.0.1:{port}; scripts/test starts it "
            f"(install it and start it to run tests/test_celery.py)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@dataclass
class Setup:
    """A worker process for one broker, and a web-tier App on the same journal and queue."""

    broker: str
    url: str
    queue: str
    site: Path
    journal_path: Path
    failures: Path
    app: App
    celery_app: Any
    log: Path

    def run(self, name: str, timeout: float = WAIT) -> InvocationRecord:
        invocation = self.app.enqueue(name)
        return invocation.wait(timeout)

    def failed_ids(self) -> list[str]:
        if not self.failures.exists():
            return []
        return self.failures.read_text().split()


def _write_site(root: Path) -> Path:
    functions = root / "site" / "netlify" / "functions"
    functions.mkdir(parents=True)
    for name, source in HANDLERS.items():
        (functions / f"{name}.py").write_text(textwrap.dedent(source))
    return root / "site"


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
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


def _cleanup(setup: Setup) -> None:
    if setup.broker == "redis":
        import redis

        redis.Redis.from_url(setup.url).flushdb()
        return
    with setup.celery_app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in (setup.queue, f"{setup.queue}.dead"):
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()
        for name in (setup.queue, f"{setup.queue}.dead"):
            try:
                channel.exchange_delete(name)
            except Exception:
                channel = conn.channel()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    broker = str(request.param)
    url = _need(broker)
    root = tmp_path_factory.mktemp(f"celery-{broker}")
    site = _write_site(root)
    queue = f"bgf-test-{uuid.uuid4().hex[:10]}"
    journal_path = root / "journal.sqlite3"
    failures = root / "failures.txt"
    script = root / "worker.py"
    script.write_text(WORKER.format(lease=LEASE, limit=LIMIT, delays=DELAYS))
    journal = SQLiteJournal(journal_path)
    celery_app = make_celery(broker=url, journal=journal, queue=queue)
    app = App(
        Registry.from_site(site),
        executor=CeleryExecutor(celery_app, journal=journal),
        limits=Limits(background_timeout=LIMIT),
        retry=RetryPolicy(delays=DELAYS),
    )
    app.start()
    log = root / "worker.log"
    argv = [sys.executable, str(script), url, str(journal_path), str(site), queue, str(failures)]
    worker = _start(argv, log)
    state = Setup(broker, url, queue, site, journal_path, failures, app, celery_app, log)
    try:
        yield state
    finally:
        _stop(worker)
        app.shutdown()
        _cleanup(state)
        journal.close()
        if request.session.testsfailed:
            print(log.read_text(errors="replace")[-5000:])


def _gaps_ok(record: InvocationRecord) -> None:
    attempts = record.attempts
    for i, (before, after) in enumerate(itertools.pairwise(attempts)):
        assert before.ended_at is not None
        gap = after.started_at - before.ended_at
        assert DELAYS[i] - EARLY <= gap <= DELAYS[i] + LATE, (i, gap, record)


def test_success(setup: Setup) -> None:
    """A background invocation accepted by the web tier runs once on a worker and succeeds."""
    record = setup.run("ok-background")
    assert record.state is State.SUCCEEDED
    assert [a.outcome for a in record.attempts] == [Outcome.SUCCEEDED]
    assert setup.app.invocations.get(record.request_id) == record


def test_failure_retried_on_schedule_then_on_failure(setup: Setup) -> None:
    """A failing handler runs 3 times, each retry its delay after the previous attempt ended,
    then fails, and on_failure runs once in the worker."""
    record = setup.run("fail-background")
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR] * 3
    assert [a.error_message for a in record.attempts] == [f"attempt {n} fails" for n in (1, 2, 3)]
    _gaps_ok(record)
    assert setup.failed_ids().count(record.request_id) == 1


def test_timeout_killed_and_retried(setup: Setup) -> None:
    """A busy loop is killed at the hard limit, recorded timed_out at its deadline, and retried."""
    record = setup.run("spin-background")
    assert record.state is State.SUCCEEDED
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT, Outcome.SUCCEEDED]
    first = record.attempts[0]
    assert first.duration == pytest.approx(LIMIT)
    _gaps_ok(record)


def test_async_timeout_cancelled_and_retried(setup: Setup) -> None:
    """An async handler past its limit is cancelled at the deadline and retried."""
    record = setup.run("async-sleep-background")
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT, Outcome.SUCCEEDED]
    _gaps_ok(record)


def test_child_exit_is_a_crashed_attempt(setup: Setup) -> None:
    """A child that exits in the handler is a crashed attempt, not a lost one, and is retried."""
    record = setup.run("exit-background")
    assert record.state is State.SUCCEEDED
    assert [a.outcome for a in record.attempts] == [Outcome.CRASHED, Outcome.SUCCEEDED]
    _gaps_ok(record)


def test_a_handlers_sys_exit_is_an_error_and_its_child_lives_on(setup: Setup) -> None:
    """sys.exit() in a handler is the attempt's error, recorded as SystemExit and retried, as on
    every engine: not the end of the Celery child (that is only Celery's own stop)."""
    record = setup.run("sys-exit-background")
    assert record.state is State.SUCCEEDED
    assert [(a.outcome, a.error_type) for a in record.attempts] == [
        (Outcome.ERROR, "SystemExit"),
        (Outcome.SUCCEEDED, None),
    ]
    _gaps_ok(record)


@pytest.mark.parametrize(
    ("name", "error_type"),
    [
        ("interrupt-background", "KeyboardInterrupt"),
        ("generator-exit-background", "GeneratorExit"),
        ("async-cancelled-background", "asyncio.exceptions.CancelledError"),
    ],
)
def test_a_handlers_base_exception_is_an_error_as_on_every_engine(
    setup: Setup, name: str, error_type: str
) -> None:
    """KeyboardInterrupt, GeneratorExit or its own CancelledError raised by a handler is the
    attempt's error under its type's name, retried on the schedule (not a crash or a hang)."""
    record = setup.run(name)
    assert record.state is State.SUCCEEDED
    assert [(a.outcome, a.error_type) for a in record.attempts] == [
        (Outcome.ERROR, error_type),
        (Outcome.SUCCEEDED, None),
    ]
    _gaps_ok(record)


def test_child_sigkill_is_crashed_and_retried(setup: Setup) -> None:
    """A child that SIGKILLs itself is a crashed attempt each time, retried on the schedule."""
    record = setup.run("kill-background")
    assert record.state is State.SUCCEEDED
    assert [a.outcome for a in record.attempts] == [
        Outcome.CRASHED,
        Outcome.CRASHED,
        Outcome.SUCCEEDED,
    ]
    _gaps_ok(record)


def test_committed_step_is_not_run_again_after_the_child_is_killed(setup: Setup) -> None:
    """A step commits, then the worker child is killed (-9): the next attempt, on whichever
    child, replays it from the shared journal and runs only the step after it."""
    record = setup.run("steps-background")
    assert record.state is State.SUCCEEDED
    assert record.attempts[0].outcome is Outcome.CRASHED
    assert [(s.id, s.attempt) for s in record.steps] == [("one", 1), ("two", 2)]
    log = (setup.site / "steps.log").read_text().split("\n")
    assert [line.split()[1] for line in log if line.startswith(record.request_id)] == [
        "one",
        "two",
    ]


def test_a_message_the_broker_lost_is_published_again(setup: Setup) -> None:
    """An invocation accepted but never delivered (its message lost) is re-published by the
    sweep once overdue, and runs; one that is not yet overdue is left alone."""
    executor = setup.app.executor
    assert isinstance(executor, CeleryExecutor)
    now = executor.clock.now()
    lost = InvocationRecord(
        request_id=new_request_id(),
        function="ok-background",
        method="POST",
        url="/.netlify/functions/ok-background",
        accepted_at=now - 120.0,
        next_run_at=now - 120.0,
    )
    executor.journal.accepted(lost)  # recorded, but no message was ever published
    executor.republish_after = 60.0
    try:
        assert executor.sweep() == 1
        assert executor.sweep() == 0  # not again before another republish_after
    finally:
        executor.republish_after = 1800.0
    record = setup.app.get(lost.request_id).wait(WAIT)
    assert record.state is State.SUCCEEDED
    assert len(record.attempts) == 1


def test_a_running_attempt_whose_worker_and_message_are_gone_is_taken_over(
    setup: Setup,
) -> None:
    """An attempt marked running, past its time limit, whose worker died and whose message
    the broker lost (Redis can, in a kill): the sweep publishes its message again, a worker
    takes it over (crashed, as its process is gone) and the retry succeeds."""
    executor = setup.app.executor
    assert isinstance(executor, CeleryExecutor)
    now = executor.clock.now()
    lost = InvocationRecord(
        request_id=new_request_id(),
        function="ok-background",
        method="POST",
        url="/.netlify/functions/ok-background",
        accepted_at=now - 120.0,
        next_run_at=now - 120.0,
    )
    dead = SQLiteJournal(setup.journal_path, lease=0.05)  # a worker process that died
    try:
        dead.accepted(lost)
        assert dead.attempt_started(lost.start_attempt(now - 120.0))
    finally:
        dead.close()
    executor.republish_after = 60.0
    try:
        assert executor.sweep() == 1
        assert executor.sweep() == 0  # not again before another republish_after
    finally:
        executor.republish_after = 1800.0
    record = setup.app.get(lost.request_id).wait(WAIT)
    assert record.state is State.SUCCEEDED
    assert [a.outcome for a in record.attempts][1:] == [Outcome.SUCCEEDED]
    assert record.attempts[0].outcome in (Outcome.CRASHED, Outcome.TIMED_OUT)


def test_broker_down_answers_503_and_records_rejected(tmp_path: Path) -> None:
    """With no broker listening the App answers 503, never 202, and the record is rejected."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = SQLiteJournal(tmp_path / "journal.sqlite3")
    registry = Registry()

    @registry.function("x-background")
    def handler(request: object, context: object) -> None:
        pass

    celery_app = make_celery(broker=f"redis://127.0.0.1:{port}/7", journal=journal)
    app = App(registry, executor=CeleryExecutor(celery_app, journal=journal))
    try:
        with pytest.raises(NotAcceptedError, match="did not confirm"):
            app.enqueue("x-background")
        [record] = journal.select()
        assert record.state is State.REJECTED
    finally:
        app.shutdown()
        journal.close()


class _StaleReads(Journal):
    """A worker's view of ``inner`` that answers ``get`` with ``stale``, as a worker that read
    the row just before another worker claimed it."""

    durable = True

    def __init__(self, inner: Journal, stale: InvocationRecord) -> None:
        self.inner, self.stale = inner, stale

    def accepted(self, record: InvocationRecord) -> None:
        self.inner.accepted(record)

    def attempt_started(self, record: InvocationRecord) -> bool:
        return self.inner.attempt_started(record)

    def attempt_ended(self, record: InvocationRecord) -> None:
        self.inner.attempt_ended(record)

    def get(self, request_id: str) -> InvocationRecord | None:
        return self.stale if request_id == self.stale.request_id else self.inner.get(request_id)

    def select(self, **filters: Any) -> list[InvocationRecord]:
        return self.inner.select(**filters)


def _recording_registry() -> tuple[Registry, list[int]]:
    """A registry with one background function that records the attempts it runs."""
    calls: list[int] = []
    registry = Registry()

    @registry.function("x-background")
    def handler(request: object, context: Any) -> None:
        calls.append(context.attempt)

    return registry, calls


def _accepted_long_ago(journal: Journal) -> InvocationRecord:
    """A record of x-background accepted in ``journal``, due long ago."""
    record = InvocationRecord(
        request_id=new_request_id(),
        function="x-background",
        method="POST",
        url="/.netlify/functions/x-background",
        accepted_at=1000.0,
        next_run_at=1000.0,
    )
    journal.accepted(record)
    return record


def test_an_attempt_claimed_after_the_read_does_not_run_again(tmp_path: Path) -> None:
    """A duplicate message whose worker read the record just before another worker claimed
    the attempt runs nothing and leaves the other worker's claim alone."""
    path = tmp_path / "journal.sqlite3"
    journal = SQLiteJournal(path, owner="web")
    other = SQLiteJournal(path, owner="other-worker")
    registry, calls = _recording_registry()
    record = _accepted_long_ago(journal)
    stale = journal.get(record.request_id)
    assert stale is not None
    assert other.attempt_started(stale.start_attempt(1001.0))
    celery_app = make_celery(
        broker="memory://", journal=lambda: _StaleReads(journal, stale), registry=registry
    )
    try:
        celery_app.tasks[TASK_NAME](record.request_id, 1)
        assert calls == []
        claimed = journal.get(record.request_id)
        assert claimed is not None
        assert claimed.state is State.RUNNING
        assert [a.started_at for a in claimed.attempts] == [1001.0]
        other.finished(claimed.end_attempt(1002.0, Outcome.SUCCEEDED, RetryPolicy()))
        ended = journal.get(record.request_id)  # the claim stayed the other worker's
        assert ended is not None
        assert ended.state is State.SUCCEEDED
    finally:
        other.close()
        journal.close()


class _ClaimOutcomeUnknown(_StaleReads):
    """``inner``, but the first claim commits and then reports its outcome unknown, as when the
    connection breaks after the statement was sent."""

    def __init__(self, inner: Journal) -> None:
        self.inner, self.broke = inner, False
        self.lease = getattr(inner, "lease", 10.0)  # how long the worker waits to look again

    def attempt_started(self, record: InvocationRecord) -> bool:
        claimed = self.inner.attempt_started(record)
        if not self.broke:
            self.broke = True
            raise JournalUnavailableError("the connection broke; the claim's outcome is unknown")
        return claimed

    def get(self, request_id: str) -> InvocationRecord | None:
        return self.inner.get(request_id)

    def heartbeat(self, request_ids: Iterable[str]) -> None:
        self.inner.heartbeat(request_ids)

    def expire_leases(self) -> list[InvocationRecord]:
        return self.inner.expire_leases()


def test_a_claim_whose_outcome_is_unknown_is_looked_at_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that committed although the journal said it could not be taken is not left
    running for ever: a message comes back after a lease, takes the attempt over as crashed,
    and the retry runs."""
    journal = SQLiteJournal(tmp_path / "journal.sqlite3", owner="worker", lease=0.05)
    registry, calls = _recording_registry()
    record = _accepted_long_ago(journal)
    published: list[tuple[int, float, float | None]] = []

    def publish(
        app: Any, binding: Any, record: InvocationRecord, attempt: int, countdown: float, *,
        seen: float | None = None,
    ) -> None:  # fmt: skip
        published.append((attempt, countdown, seen))

    monkeypatch.setattr(celery_app_module, "publish", publish)
    celery_app = make_celery(
        broker="memory://",
        journal=lambda: _ClaimOutcomeUnknown(journal),
        registry=registry,
        retry=RetryPolicy(delays=(0.0,)),
    )
    try:
        task = celery_app.tasks[TASK_NAME]
        task(record.request_id, 1)
        assert calls == []
        stuck = journal.get(record.request_id)
        assert stuck is not None
        assert stuck.state is State.RUNNING  # the claim did commit
        ((attempt, countdown, seen),) = published
        assert (attempt, countdown) == (1, 0.05)
        SystemClock().sleep(0.1)  # the claim's lease runs out unrenewed (real time: leases)
        task(record.request_id, attempt, seen)
        taken = journal.get(record.request_id)
        assert taken is not None
        assert [a.outcome for a in taken.attempts] == [Outcome.CRASHED]
        assert taken.state is State.RETRY_SCHEDULED
        assert published[-1][0] == 2
        task(record.request_id, 2)
        assert calls == [2]
        done = journal.get(record.request_id)
        assert done is not None
        assert done.state is State.SUCCEEDED
    finally:
        journal.close()


def test_two_apps_in_one_process_run_on_their_own_journals(tmp_path: Path) -> None:
    """Each make_celery() app's task runs attempts on its own journal, not on the first app's."""
    calls: list[str] = []
    registry = Registry()

    @registry.function("x-background")
    def handler(request: object, context: Any) -> None:
        calls.append(context.request_id)

    first = SQLiteJournal(tmp_path / "first.sqlite3")
    second = SQLiteJournal(tmp_path / "second.sqlite3")
    record = _accepted_long_ago(second)
    try:
        make_celery(broker="memory://", journal=first, registry=registry).finalize()
        app = make_celery(broker="memory://", journal=second, registry=registry)
        app.tasks[TASK_NAME](record.request_id, 1)
        assert calls == [record.request_id]
        ran = second.get(record.request_id)
        assert ran is not None
        assert ran.state is State.SUCCEEDED
    finally:
        first.close()
        second.close()


def test_settings_are_json_only_acks_late_no_celery_retries() -> None:
    """The Celery settings: JSON only, acks late, requeue on a lost child, prefetch 1."""
    settings = celery_settings("amqp://x//", limits=Limits(background_timeout=900))
    assert settings["accept_content"] == ["json"]
    assert settings["task_serializer"] == "json"
    assert settings["task_acks_late"] is True
    assert settings["task_reject_on_worker_lost"] is True
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["task_time_limit"] > 900
    assert settings["broker_transport_options"] == {"confirm_publish": True}
    [queue] = settings["task_queues"]
    assert queue.queue_arguments["x-queue-type"] == "quorum"
    redis = celery_settings("redis://x/0", retry=RetryPolicy(delays=(60, 120)))
    assert redis["broker_transport_options"]["visibility_timeout"] > 900 + 120


def test_cli_worker_runs_attempts(tmp_path: Path) -> None:
    """`bgfunctions worker SITE_DIR --broker --journal` runs what a CeleryExecutor publishes."""
    url = _need("rabbitmq")
    site = _write_site(tmp_path)
    queue = f"bgf-test-{uuid.uuid4().hex[:10]}"
    journal_path = tmp_path / "journal.sqlite3"
    journal = SQLiteJournal(journal_path)
    celery_app = make_celery(broker=url, journal=journal, queue=queue)
    app = App(Registry.from_site(site), executor=CeleryExecutor(celery_app, journal=journal))
    argv = [sys.executable, "-m", "bgfunctions", "worker", str(site), "--broker", url]
    argv += ["--journal", str(journal_path), "--queue", queue, "--concurrency", "1"]
    argv += ["--retry-delays", "0.5", "--loglevel", "WARNING"]
    worker = _start(argv, tmp_path / "worker.log")
    state = Setup(
        "rabbitmq",
        url,
        queue,
        site,
        journal_path,
        tmp_path / "f",
        app,
        celery_app,
        tmp_path / "worker.log",
    )
    try:
        record = state.run("fail-background")
        assert [a.outcome for a in record.attempts] == [Outcome.ERROR, Outcome.ERROR]
        assert record.state is State.FAILED
    finally:
        _stop(worker)
        app.shutdown()
        _cleanup(state)
        journal.close()


def test_cli_worker_refuses_a_missing_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bgfunctions worker` on a missing directory: exit 2 and one line naming it."""
    from bgfunctions.cli import main

    missing = tmp_path / "nope"
    code = main(["worker", str(missing), "--broker", "redis://127.0.0.1:1/0", "--journal", "x"])
    assert code == 2
    assert (
        capsys.readouterr().err == f"bgfunctions: error: site directory {missing} does not exist\n"
    )


CLOSE_SCRIPT = """
import gc
import sys
from pathlib import Path

from bgfunctions import App, Registry, SQLiteJournal
from bgfunctions.executors.celery import CeleryExecutor, make_celery

broker, site, queue, journal_path = sys.argv[1:5]
journal = SQLiteJournal(journal_path)
celery_app = make_celery(broker=broker, journal=journal, queue=queue)
app = App(Registry.from_site(site), executor=CeleryExecutor(celery_app, journal=journal))
app.start()
app.enqueue("ok-background")  # a publish: the broker connection is opened
with celery_app.connection_for_write() as conn:  # no worker here: leave nothing queued
    channel = conn.default_channel
    for name in (queue, queue + ".dead"):
        try:
            channel.queue_delete(name)
        except Exception:
            channel = conn.channel()
app.shutdown()
journal.close()
celery_app.close()
gc.collect()
print("closed")
"""


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_shutdown_closes_the_broker_connections(broker: str, tmp_path: Path) -> None:
    """After app.shutdown(), journal.close() and celery_app.close(), no socket is left open:
    the process runs clean under ``python -W error``."""
    url = _need(broker)
    site = _write_site(tmp_path)
    script = tmp_path / "close.py"
    script.write_text(CLOSE_SCRIPT)
    queue = f"bgf-test-{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script), url, str(site), queue, str(tmp_path / "j")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "closed\n"), done.stderr
    assert "ResourceWarning" not in done.stderr
    assert "unclosed" not in done.stderr
