"""Accepted-to-done throughput of no-op background invocations on Celery, against two Celeries.

bgfunctions: a web-tier ``App`` with a ``CeleryExecutor`` accepts ``--count`` invocations of a
no-op background function (``App.enqueue``: journal ``accepted``, publish, broker confirm) from
one thread; two Celery worker processes (``run_worker``, prefork, concurrency 1 each: two
children in all, each worker under its own node name) run them through the journal. Throughput:
count / (last attempt's ``ended_at`` - first ``accepted_at``), read from the journal.

Plain Celery, same run, same broker, same settings (``celery_settings()``: JSON, acks late,
prefetch 1, confirms on RabbitMQ, quorum queue): ``send_task`` of a no-op task ``--count`` times
from one thread, two workers of concurrency 1 (node names of their own); each task appends its
end time to a file (one unsynced ``write``, the only way to see it finish without a result
backend). Throughput: count / (last end - first send).

Celery with the same guarantees (``--guarded``): the same, plus what bgfunctions keeps per
invocation (``guarded_settings()``): ``task_track_started`` and every result stored by Celery's
database result backend (SQLAlchemy, ``db+postgresql+psycopg://`` on the benchmark's PostgreSQL,
or ``db+sqlite://`` in a file). Needs SQLAlchemy: ``pip install -e '.[bench]'``. The run waits
for every result to be stored before the next one starts; the stored rows are deleted.

Goal: bgfunctions >= 1.3x Celery with the same guarantees. Run on demand (pytest does not
collect it)::

    .venv/bin/python benchmarks/bench_celery.py [--count 2000] [--brokers rabbitmq,redis]
        [--journals sqlite,postgres] [--guarded postgres,sqlite|none] [--rounds 3] [--profile]

The defaults are the issue's figures: RabbitMQ, 2,000 no-ops, both journals, both result
backends, 3 interleaved rounds (plain, guarded-postgres, guarded-sqlite, bgfunctions-sqlite,
bgfunctions-postgres in each), medians; ratios of each bgfunctions journal against plain Celery
and against Celery with the same guarantees on each backend.

Brokers: ``BGFUNCTIONS_TEST_AMQP_URL`` / ``BGFUNCTIONS_TEST_REDIS_URL`` (as ``scripts/services``
exports them), else the standard local ports; Redis uses db 9, flushed after each run.
PostgreSQL: ``BGFUNCTIONS_TEST_POSTGRES_DSN``. ``--rounds N`` interleaves the runs N times and
reports medians. ``--profile`` runs the bgfunctions workers under cProfile (one ``.prof`` per
child, printed).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from bgfunctions import App, Registry, State
from bgfunctions.executors.celery import CeleryExecutor, celery_settings, make_celery
from bgfunctions.journals.base import Journal

GOAL = 1.3  # against Celery with the same guarantees (issue 12: keep 1.3x, aim for 2x)
WORKERS = 2
AMQP = os.environ.get("BGFUNCTIONS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("BGFUNCTIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/9"
POSTGRES = os.environ.get(
    "BGFUNCTIONS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

WORKER = """
import os
import sys
import time

mode, broker, journal, site, queue, done, profile = sys.argv[1:8]

if profile:
    # Each prefork child profiles its own tasks and writes its own file when it exits.
    import atexit
    import cProfile

    from celery.signals import worker_process_init, worker_process_shutdown

    @worker_process_init.connect
    def _start_profile(**_):
        global _profiler
        _profiler = cProfile.Profile()
        _profiler.enable()

    @worker_process_shutdown.connect
    def _stop_profile(**_):
        _profiler.disable()
        _profiler.dump_stats(f"{profile}.{os.getpid()}.prof")

if mode == "bgfunctions":
    from bgfunctions.executors.celery import journal_factory, make_celery, run_worker

    app = make_celery(broker=broker, journal=journal_factory(journal), site=site, queue=queue)
    run_worker(app, concurrency=1, loglevel="WARNING")
else:
    import celery
    from bgfunctions.executors.celery import celery_settings

    app = celery.Celery("plain", broker=broker, set_as_current=False)
    app.conf.update(celery_settings(broker, queue=queue))
    if mode == "guarded":  # journal: the extra settings, as JSON
        import json

        app.conf.update(json.loads(journal))

    @app.task(name="bench.noop", ignore_result=mode != "guarded")
    def noop():
        fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{time.time()}\\n".encode())
        os.close(fd)

    # A node name per worker: two workers named celery@<host> would clash on RabbitMQ.
    app.worker_main(
        ["worker", "--pool=prefork", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle", "-Q", queue, "--concurrency=1", f"--hostname={mode}-{os.getpid()}@%h"]
    )
"""


def start_workers(argv: list[str], root: Path) -> list[subprocess.Popen[bytes]]:
    """``WORKERS`` worker processes, each in its own process group (stopped with its children)."""
    out = (root / "workers.log").open("ab")
    return [
        subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(WORKERS)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def open_journal(kind: str, root: Path) -> tuple[Journal, str]:
    """The web tier's journal and the spec workers open it with."""
    if kind == "postgres":
        from bgfunctions.journals.postgres import PostgresJournal

        journal: Journal = PostgresJournal(POSTGRES)
        return journal, POSTGRES
    from bgfunctions.journals.sqlite import SQLiteJournal

    path = root / "journal.sqlite3"
    return SQLiteJournal(path), str(path)


def purge(broker: str, celery_app: Any, queue: str) -> None:
    if broker.startswith("redis"):
        import redis

        redis.Redis.from_url(broker).flushdb()
        return
    with celery_app.connection_for_write() as conn:
        for name in (queue, f"{queue}.dead"):
            for delete in ("queue_delete", "exchange_delete"):
                try:
                    with conn.channel() as channel:
                        getattr(channel, delete)(name)
                except Exception:  # a queue that was never declared
                    pass


def group_cpu(groups: list[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes of these process groups."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) in groups:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def broker_cpu() -> float:
    """CPU seconds of the local RabbitMQ / Redis servers (0 when they are not local processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in ("beam.smp", "redis-server"):
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


class CPU:
    """Per-invocation CPU of the sender (this process), the workers and the broker."""

    def __init__(self, workers: list[subprocess.Popen[bytes]]) -> None:
        self.groups = [w.pid for w in workers]
        self.start = (time.process_time(), group_cpu(self.groups), broker_cpu())

    def report(self, name: str, count: int) -> None:
        end = (time.process_time(), group_cpu(self.groups), broker_cpu())
        per = [(b - a) / count * 1e3 for a, b in zip(self.start, end, strict=True)]
        sender, workers, broker = per
        print(
            f"  {name}: CPU ms/invocation: sender {sender:.2f}  workers {workers:.2f}  "
            f"broker {broker:.2f}  total {sender + workers + broker:.2f}",
            flush=True,
        )


def wait_for(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_celery: {what} not done after {timeout} s")
        time.sleep(0.1)


def run_bgfunctions(broker: str, count: int, journal_kind: str, profile: bool) -> float:
    """Invocations per second, first accept to last attempt ended."""
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        root = Path(tmp)
        functions = root / "site" / "netlify" / "functions"
        functions.mkdir(parents=True)
        (functions / "noop-background.py").write_text(
            textwrap.dedent("""
                def handler(request, context):
                    pass
            """)
        )
        queue = f"bench-bgf-{uuid.uuid4().hex[:8]}"
        journal, spec = open_journal(journal_kind, root)
        celery_app = make_celery(broker=broker, journal=journal, queue=queue)
        app = App(
            Registry.from_site(root / "site"),
            executor=CeleryExecutor(celery_app, journal=journal, poll_interval=0.05),
        )
        app.start()
        script = root / "worker.py"
        script.write_text(WORKER)
        prof = str(root / "worker") if profile else ""
        argv = [sys.executable, str(script), "bgfunctions", broker, spec, str(root / "site")]
        argv += [queue, "", prof]
        workers = start_workers(argv, root)
        try:
            app.enqueue("noop-background").wait(60)  # workers up, queue declared
            ids = []
            cpu = CPU(workers)
            sending = time.perf_counter()
            for _ in range(count):
                ids.append(app.enqueue("noop-background").request_id)
            print(f"  bgfunctions: {count / (time.perf_counter() - sending):8.1f} accepts/s")
            first = journal.get(ids[0])
            assert first is not None
            ends: list[float] = []

            def finished() -> bool:
                # Walks the ids in accept order, reading each one once, when it is done: a
                # poll costs a read per newly finished invocation, as the plain run's read of
                # its file costs little. (Selecting every succeeded record at each poll decoded
                # the whole table, O(count) per poll, on the CPUs the workers need.)
                while len(ends) < count:
                    record = journal.get(ids[len(ends)])
                    if record is None or record.state is not State.SUCCEEDED:
                        return False
                    assert record.last_attempt is not None
                    assert record.last_attempt.ended_at is not None
                    ends.append(record.last_attempt.ended_at)
                return True

            wait_for("the bgfunctions invocations", finished, 600)
            cpu.report("bgfunctions", count)
            rate = count / (max(ends) - first.accepted_at)
        finally:
            stop_workers(workers)
            app.shutdown()
            purge(broker, celery_app, queue)
            journal.close()
        if profile:
            files = sorted(str(p) for p in root.glob("worker.*.prof"))
            if files:
                stats = pstats.Stats(*files)
                stats.sort_stats("cumulative").print_stats(30)
                stats.sort_stats("tottime").print_stats(20)
        return rate


def guarded_settings(backend: str) -> dict[str, Any]:
    """Celery configured with the guarantees bgfunctions keeps, on top of ``celery_settings()``
    (which already acks late, requeues the message of a lost child and prefetches 1): the
    ``STARTED`` state recorded, and every result stored in a database (``db+...``)."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_ignore_result": False,
        "result_backend": backend,
    }


def result_backend(kind: str, root: Path) -> str:
    """The database result backend URL of ``kind``: the benchmark's PostgreSQL, or a SQLite file."""
    if kind == "postgres":
        return "db+postgresql+psycopg://" + POSTGRES.split("://", 1)[1]
    return f"db+sqlite:///{root / 'results.sqlite3'}"


def run_plain(broker: str, count: int, backend: str | None = None) -> float:
    """Tasks per second, first send to last task ended. ``backend``: Celery with the same
    guarantees (see ``guarded_settings``) on that result backend; None: plain Celery."""
    import celery

    mode = "plain" if backend is None else "guarded"
    name = mode if backend is None else f"guarded ({backend})"
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        root = Path(tmp)
        queue = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
        done = root / "done.txt"
        celery_app = celery.Celery(mode, broker=broker, set_as_current=False)
        celery_app.conf.update(celery_settings(broker, queue=queue))
        extra = ""
        if backend is not None:
            url = result_backend(backend, root)
            celery_app.conf.update(guarded_settings(url))
            extra = json.dumps(guarded_settings(url))
        script = root / "worker.py"
        script.write_text(WORKER)
        argv = [sys.executable, str(script), mode, broker, extra, "", queue, str(done), ""]
        workers = start_workers(argv, root)
        ids: list[str] = []
        try:
            ids.append(celery_app.send_task("bench.noop", queue=queue).id)
            wait_for("the warm-up task", lambda: done.exists(), 60)
            done.unlink()
            cpu = CPU(workers)
            first = time.time()
            for _ in range(count):
                ids.append(celery_app.send_task("bench.noop", queue=queue).id)
            print(f"  {name + ':':20} {count / (time.time() - first):8.1f} sends/s")

            def lines() -> int:
                return len(done.read_text().split()) if done.exists() else 0

            wait_for(f"the {name} tasks", lambda: lines() >= count, 600)
            cpu.report(name, count)
            rate = count / (max(float(t) for t in done.read_text().split()) - first)
            if backend is not None:
                # Each task's end is its file write; its result is stored just after: wait
                # for every one, so that the next run does not share the machine with them.
                pending = list(ids)
                wait_for("the stored results", lambda: stored(celery_app, pending), 120)
        finally:
            stop_workers(workers)
            purge(broker, celery_app, queue)
            if backend is not None:
                forget(celery_app, ids)
        return rate


def stored(celery_app: Any, ids: list[str]) -> bool:
    """Whether the result backend holds SUCCESS for every task of ``ids``; drops from the
    front of ``ids`` the ones already seen, so that each poll reads only what is left."""
    while ids:
        if celery_app.AsyncResult(ids[0]).state != "SUCCESS":
            return False
        ids.pop(0)
    return True


def forget(celery_app: Any, ids: list[str]) -> None:
    """Delete the stored results of ``ids`` (the PostgreSQL backend is shared between runs)."""
    backend = celery_app.backend
    for task_id in ids:
        backend.forget(task_id)
    celery_app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--brokers", default="rabbitmq")
    parser.add_argument(
        "--journals",
        default="sqlite,postgres",
        help="journals of the bgfunctions runs, comma-separated: sqlite, postgres",
    )
    parser.add_argument(
        "--guarded",
        default="postgres,sqlite",
        help="result backends of 'Celery with the same guarantees', comma-separated: "
        "postgres, sqlite, or none (default postgres,sqlite)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    urls = {"rabbitmq": AMQP, "redis": REDIS}
    backends = [b for b in args.guarded.split(",") if b != "none"]
    for backend in backends:
        if backend not in ("postgres", "sqlite"):
            parser.error(f"--guarded: expected postgres, sqlite or none; got {backend!r}")
    journals = args.journals.split(",")
    for kind in journals:
        if kind not in ("postgres", "sqlite"):
            parser.error(f"--journals: expected sqlite, postgres or both; got {kind!r}")
    print(
        f"{args.count} no-op invocations, {WORKERS} workers x concurrency 1 (prefork), "
        f"journals {', '.join(journals)}, {args.rounds} round(s), interleaved"
    )
    for name in args.brokers.split(","):
        url = urls[name]
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            rates.setdefault("plain", []).append(run_plain(url, args.count))
            for backend in backends:
                rate = run_plain(url, args.count, backend)
                rates.setdefault(f"guarded-{backend}", []).append(rate)
            for kind in journals:
                ours = run_bgfunctions(url, args.count, kind, args.profile)
                rates.setdefault(f"bgfunctions-{kind}", []).append(ours)
        median = {key: statistics.median(values) for key, values in rates.items()}
        print(f"{name}: medians of {args.rounds} round(s)", flush=True)
        for key in ("plain", *(f"guarded-{b}" for b in backends)):
            print(f"  {key:22} {median[key]:7.1f}/s", flush=True)
        for kind in journals:
            ours = median[f"bgfunctions-{kind}"]
            line = f"  bgfunctions-{kind:10} {ours:7.1f}/s  vs plain {ours / median['plain']:.2f}x"
            for backend in backends:
                ratio = ours / median[f"guarded-{backend}"]
                verdict = "met" if ratio >= GOAL else "MISSED"
                line += f"  vs guarded-{backend} {ratio:.2f}x (goal {GOAL}x: {verdict})"
            print(line, flush=True)
        if args.rounds > 1:
            for key, values in rates.items():
                print(f"  {key}: " + ", ".join(f"{v:.1f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
