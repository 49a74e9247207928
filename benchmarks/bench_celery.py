"""Accepted-to-done throughput of no-op background invocations on Celery, against plain Celery.

bgfunctions: a web-tier ``App`` with a ``CeleryExecutor`` accepts ``--count`` invocations of a
no-op background function (``App.enqueue``: journal ``accepted``, publish, broker confirm) from
one thread; two Celery worker processes (``run_worker``, prefork, concurrency 1 each: two
children in all) run them through the journal. Throughput: count / (last attempt's ``ended_at``
- first ``accepted_at``), read from the journal.

Plain Celery, same run, same broker, same settings (``celery_settings()``: JSON, acks late,
prefetch 1, confirms on RabbitMQ, quorum queue): ``send_task`` of a no-op task ``--count`` times
from one thread, two workers of concurrency 1; each task appends its end time to a file (one
unsynced ``write``, the only way to see it finish without a result backend). Throughput: count /
(last end - first send).

Goal: bgfunctions >= 0.9x plain Celery. Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_celery.py [--count 5000] [--brokers rabbitmq,redis]
        [--journal sqlite|postgres] [--profile]

Brokers: ``BGFUNCTIONS_TEST_AMQP_URL`` / ``BGFUNCTIONS_TEST_REDIS_URL`` (as ``scripts/services``
exports them), else the standard local ports; Redis uses db 9, flushed after each run.
``--profile`` runs the bgfunctions workers under cProfile (one ``.prof`` per child, printed).
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from bgfunctions import App, Registry, State
from bgfunctions.contrib.celery import CeleryExecutor, celery_settings, make_celery
from bgfunctions.journal import Journal

GOAL = 0.9
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
    from bgfunctions.contrib.celery import journal_factory, make_celery, run_worker

    app = make_celery(broker=broker, journal=journal_factory(journal), site=site, queue=queue)
    run_worker(app, concurrency=1, loglevel="WARNING")
else:
    import celery
    from bgfunctions.contrib.celery import celery_settings

    app = celery.Celery("plain", broker=broker, set_as_current=False)
    app.conf.update(celery_settings(broker, queue=queue))

    @app.task(name="bench.noop", ignore_result=True)
    def noop():
        fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{time.time()}\\n".encode())
        os.close(fd)

    app.worker_main(
        ["worker", "--pool=prefork", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle", "-Q", queue, "--concurrency=1"]
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
        from bgfunctions.contrib.postgres import PostgresJournal

        journal: Journal = PostgresJournal(POSTGRES)
        return journal, POSTGRES
    from bgfunctions.sqlite_journal import SQLiteJournal

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


def run_plain(broker: str, count: int) -> float:
    """Tasks per second, first send to last task ended."""
    import celery

    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        root = Path(tmp)
        queue = f"bench-plain-{uuid.uuid4().hex[:8]}"
        done = root / "done.txt"
        celery_app = celery.Celery("plain", broker=broker, set_as_current=False)
        celery_app.conf.update(celery_settings(broker, queue=queue))
        script = root / "worker.py"
        script.write_text(WORKER)
        argv = [sys.executable, str(script), "plain", broker, "", "", queue, str(done), ""]
        workers = start_workers(argv, root)
        try:
            celery_app.send_task("bench.noop", queue=queue)
            wait_for("the warm-up task", lambda: done.exists(), 60)
            done.unlink()
            cpu = CPU(workers)
            first = time.time()
            for _ in range(count):
                celery_app.send_task("bench.noop", queue=queue)
            print(f"  plain:       {count / (time.time() - first):8.1f} sends/s")

            def lines() -> int:
                return len(done.read_text().split()) if done.exists() else 0

            wait_for("the plain tasks", lambda: lines() >= count, 600)
            cpu.report("plain", count)
            rate = count / (max(float(t) for t in done.read_text().split()) - first)
        finally:
            stop_workers(workers)
            purge(broker, celery_app, queue)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    parser.add_argument("--journal", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    urls = {"rabbitmq": AMQP, "redis": REDIS}
    print(
        f"{args.count} no-op invocations, {WORKERS} workers x concurrency 1 (prefork), "
        f"journal {args.journal}"
    )
    for name in args.brokers.split(","):
        url = urls[name]
        plain = run_plain(url, args.count)
        ours = run_bgfunctions(url, args.count, args.journal, args.profile)
        ratio = ours / plain
        verdict = "met" if ratio >= GOAL else "MISSED"
        print(
            f"{name:8}  plain Celery {plain:8.1f}/s  bgfunctions {ours:8.1f}/s  "
            f"ratio {ratio:.2f}x  (goal {GOAL}x: {verdict})",
            flush=True,
        )


if __name__ == "__main__":
    main()
