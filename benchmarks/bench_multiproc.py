"""Durable accepts across uvicorn workers: N processes sharing one journal, against one process.

``uvicorn --workers N`` (uvloop + httptools, loopback, no access log) serves bgfunctions'
``ASGIApp`` over a site whose functions directory holds an async no-op background function,
with one journal that every worker shares:

- ``memory``: each worker its own ``MemoryJournal`` (not durable: the reference shape, what
  scaling looks like when nothing is shared);
- ``sqlite``: one ``SQLiteJournal`` file (``synchronous="FULL"``), opened by every worker;
- ``postgres``: one ``PostgresJournal`` table in the PostgreSQL on loopback (each run its own
  table), the multi-process option.

Each (journal, N) server is loaded with ``wrk -t1 -cC`` for ``--duration`` seconds after a
warm-up, in ``--rounds`` interleaved rounds (every configuration once per round, so that all
see the same machine); the figures are the median round's. Per configuration: accepts (202s)
per second, p99, 503s and other errors, invocations done per second during the load, and the
backlog (accepted, not done) at its end; and the ratio of N workers' accepts/s to one worker's
on the same journal, the ratio taken per round, median over rounds.

Counters come from the workers themselves: each counts ACCEPTED and finished events with an
``on_event`` listener and writes them to a file of its own every 50 ms; the parent sums them.

Run on demand (pytest does not collect it)::

    apt-get install -y wrk
    .venv/bin/python benchmarks/bench_multiproc.py [--workers 1,2]
        [--journals memory,sqlite,postgres]
        [--duration 5] [--rounds 3] [--concurrency 64] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URL = "/.netlify/functions/noop-background"
JOURNALS = ("memory", "sqlite", "postgres")
WARMUP = 1.0
DSNS = (
    os.environ.get("BGFUNCTIONS_TEST_POSTGRES_DSN", ""),
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


# -- the app (imported by each uvicorn worker: ``bench_multiproc:make_app``) ------------------


def make_app() -> Any:
    """The ASGI app of one worker, configured by BENCH_MP_* environment variables."""
    from bgfunctions import App, Event, EventKind, Registry
    from bgfunctions.asgi import ASGIApp
    from bgfunctions.journals.base import Journal, MemoryJournal

    kind = os.environ["BENCH_MP_JOURNAL"]
    journal: Journal
    if kind == "memory":
        journal = MemoryJournal()
    elif kind == "sqlite":
        from bgfunctions.journals.sqlite import SQLiteJournal

        journal = SQLiteJournal(os.environ["BENCH_MP_PATH"])
    else:
        from bgfunctions.journals.postgres import PostgresJournal

        journal = PostgresJournal(
            os.environ["BENCH_MP_DSN"], table=os.environ["BENCH_MP_TABLE"], pool_size=8
        )
    counts = {"accepted": 0, "completed": 0}

    def on_event(event: Event) -> None:
        if event.kind is EventKind.ACCEPTED:
            counts["accepted"] += 1
        elif event.kind in (EventKind.SUCCEEDED, EventKind.FAILED):
            counts["completed"] += 1

    stats_dir = Path(os.environ["BENCH_MP_STATS"])

    def report() -> None:
        mine = stats_dir / f"{os.getpid()}.json"
        temp = stats_dir / f".{os.getpid()}.tmp"
        while True:
            temp.write_text(json.dumps(counts))
            os.replace(temp, mine)
            time.sleep(0.05)

    threading.Thread(target=report, daemon=True).start()
    registry = Registry.from_site(os.environ["BENCH_MP_SITE"])
    return ASGIApp(App(registry, journal=journal, on_event=on_event))


# -- the benchmark (the parent process) -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_site(root: Path) -> Path:
    functions = root / "site" / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "noop-background.py").write_text(
        "async def handler(request, context):\n    return None\n"
    )
    return root / "site"


def find_dsn(wanted: str | None) -> str | None:
    """A DSN the PostgreSQL on loopback accepts, or None (the postgres rows are skipped)."""
    try:
        import psycopg
    except ImportError:
        return None
    for dsn in [wanted] if wanted else [d for d in DSNS if d]:
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
            return dsn
        except psycopg.Error:
            continue
    return None


class Server:
    """``uvicorn --workers N`` in its own session, stopped by its pid (SIGINT)."""

    def __init__(self, journal: str, workers: int, root: Path, site: Path, dsn: str | None):
        self.port = free_port()
        self.stats_dir = Path(tempfile.mkdtemp(dir=root))
        env = dict(
            os.environ,
            BENCH_MP_JOURNAL=journal,
            BENCH_MP_SITE=str(site),
            BENCH_MP_STATS=str(self.stats_dir),
            BENCH_MP_PATH=str(self.stats_dir / "journal.db"),
            BENCH_MP_DSN=dsn or "",
            BENCH_MP_TABLE=f"bench_mp_{uuid.uuid4().hex[:12]}",
        )
        self.table = env["BENCH_MP_TABLE"]
        command = [
            sys.executable, "-m", "uvicorn", "bench_multiproc:make_app", "--factory",
            "--app-dir", str(Path(__file__).parent), "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", str(workers), "--loop", "uvloop",
            "--http", "httptools", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + 30
        while len(list(self.stats_dir.glob("*.json"))) < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{journal} x{workers}: uvicorn did not start its workers")
            time.sleep(0.05)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"{journal} x{workers}: uvicorn did not listen") from None
                time.sleep(0.05)

    def counts(self) -> tuple[int, int]:
        """(accepted, completed), summed over the workers' files."""
        accepted = completed = 0
        for path in self.stats_dir.glob("*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            accepted += data["accepted"]
            completed += data["completed"]
        return accepted, completed

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


WRK_LUA = """
wrk.method = "POST"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %f %f %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class Result:
    accepts_per_s: float
    p99_ms: float
    non_2xx: int
    errors: int
    done_per_s: float
    backlog: int


def wrk(
    port: int, connections: int, seconds: float, lua: Path
) -> tuple[int, float, float, int, int]:
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(lua),
        f"http://127.0.0.1:{port}{URL}",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, duration_us, _p50, p99, status, other = line.split()[1:]
    return int(requests), int(duration_us) / 1e6, float(p99) / 1e3, int(status), int(other)


def measure(
    journal: str, workers: int, root: Path, site: Path, dsn: str | None, args: Any, lua: Path
) -> Result:
    server = Server(journal, workers, root, site, dsn)
    try:
        wrk(server.port, 8, WARMUP, lua)
        accepted0, completed0 = server.counts()
        _requests, seconds, p99, status, other = wrk(
            server.port, args.concurrency, args.duration, lua
        )
        time.sleep(0.1)  # the workers' files are at most 50 ms old
        accepted1, completed1 = server.counts()
    finally:
        server.stop()
        if journal == "postgres" and dsn:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {server.table}")
                conn.execute(f"DROP TABLE IF EXISTS {server.table}_meta")
    return Result(
        accepts_per_s=(accepted1 - accepted0) / seconds,
        p99_ms=p99,
        non_2xx=status,
        errors=other,
        done_per_s=(completed1 - completed0) / seconds,
        backlog=accepted1 - completed1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--journals", default=",".join(JOURNALS), help="comma-separated")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: the loopback server's)")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    journals = [j for j in args.journals.split(",") if j]
    unknown = sorted(set(journals) - set(JOURNALS))
    if unknown:
        raise SystemExit(f"--journals: unknown {unknown}; expected some of {', '.join(JOURNALS)}")
    dsn = find_dsn(args.dsn) if "postgres" in journals else None
    if "postgres" in journals and dsn is None:
        print("postgres: no PostgreSQL reachable (--dsn); skipped")
        journals.remove("postgres")
    import uvicorn

    print(
        f"uvicorn {uvicorn.__version__} --workers {args.workers}, uvloop + httptools, "
        f"wrk -t1 -c{args.concurrency}, {args.duration:g} s per run, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    runs: dict[tuple[str, int], list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lua = root / "post.lua"
        lua.write_text(WRK_LUA)
        site = make_site(root)
        for r in range(args.rounds):
            for journal in journals:
                for n in workers:
                    result = measure(journal, n, root, site, dsn, args, lua)
                    runs.setdefault((journal, n), []).append(result)
                    print(
                        f"  round {r + 1}: {journal:<8} x{n}: {result.accepts_per_s:8.0f} "
                        f"accepts/s, p99 {result.p99_ms:7.1f} ms, "
                        f"done {result.done_per_s:7.0f}/s, "
                        f"backlog {result.backlog}, non-2xx {result.non_2xx}, "
                        f"errors {result.errors}",
                        flush=True,
                    )
    report(runs, workers[0])


def report(runs: dict[tuple[str, int], list[Result]], base: int) -> None:
    print(
        f"\n{'journal':<9} {'workers':>7} {'accepts/s':>9} {'x' + str(base):>7} {'p99 ms':>8} "
        f"{'done/s':>8} {'backlog':>8} {'non-2xx':>8} {'errors':>6}   (median round)"
    )
    for (journal, n), results in runs.items():
        ordered = sorted(results, key=lambda r: r.accepts_per_s)
        mid = ordered[len(ordered) // 2]
        ones = runs.get((journal, base), [])
        ratios = [r.accepts_per_s / o.accepts_per_s for r, o in zip(results, ones, strict=True)]
        ratio = f"{statistics.median(ratios):6.2f}x" if ones else f"{'-':>7}"
        print(
            f"{journal:<9} {n:>7} {mid.accepts_per_s:9.0f} {ratio} {mid.p99_ms:8.1f} "
            f"{mid.done_per_s:8.0f} {mid.backlog:8d} {mid.non_2xx:8d} {mid.errors:6d}"
        )


if __name__ == "__main__":
    main()
