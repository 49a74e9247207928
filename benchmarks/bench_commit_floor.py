"""What one durable write costs: bare ``sqlite3`` against ``SQLiteJournal``, one caller.

The floor under every durable goal: a row inserted or updated and committed, in WAL mode, at
``synchronous=FULL`` and ``NORMAL``, timed as wall and CPU (``time.process_time``: this
process, every thread) per write. Then the journal's own writes (``accepted``,
``attempt_started``, ``attempt_ended``) on the same kind of file, with records of a no-op
request. The difference is what the journal adds (JSON, the claim's conditions, indexes).

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_commit_floor.py [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from bgfunctions import Request, RetryPolicy
from bgfunctions.invocation import InvocationRecord, Outcome
from bgfunctions.journals.sqlite import SQLiteJournal

T = TypeVar("T")
Sync = Literal["FULL", "NORMAL"]


def timed(label: str, items: Sequence[T], write: Callable[[T], object]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    for item in items:
        write(item)
    n = len(items)
    wall_us = (time.perf_counter() - wall) / n * 1e6
    cpu_us = (time.process_time() - cpu) / n * 1e6
    print(f"  {label:38s} wall {wall_us:7.0f} µs   CPU {cpu_us:7.0f} µs")


def bare(root: Path, sync: Sync, n: int) -> None:
    db = sqlite3.connect(root / f"bare-{sync}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {sync}")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, state TEXT, record TEXT)")
    text = json.dumps({"record": "x" * 400})

    def insert(i: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?, ?)", (f"r{i}", "accepted", text))
        db.execute("COMMIT")

    def update(i: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE t SET state = ?, record = ? WHERE id = ?", ("running", text, f"r{i}"))
        db.execute("COMMIT")

    timed(f"sqlite3 {sync}: INSERT + COMMIT", range(n), insert)
    timed(f"sqlite3 {sync}: UPDATE + COMMIT", range(n), update)
    db.close()


def journal(root: Path, sync: Sync, n: int) -> None:
    j = SQLiteJournal(root / f"journal-{sync}.sqlite3", synchronous=sync)
    request = Request("POST", "/.netlify/functions/noop-background")
    now = time.time()
    records = [
        InvocationRecord.of_request(
            request, request_id=f"r{i}", function="noop-background", params={}, accepted_at=now
        )
        for i in range(n)
    ]
    timed(f"SQLiteJournal {sync}: accepted", records, j.accepted)
    started = [r.start_attempt(now) for r in records]
    timed(f"SQLiteJournal {sync}: attempt_started", started, j.attempt_started)
    ended = [r.end_attempt(now, Outcome.SUCCEEDED, RetryPolicy()) for r in started]
    timed(f"SQLiteJournal {sync}: attempt_ended", ended, j.attempt_ended)
    j.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="writes of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-commit-", dir=Path.cwd()) as tmp:
        root = Path(tmp)  # on the working directory's disk, not a tmpfs
        print(f"{args.n} writes of each kind, one caller, per write:")
        for sync in ("FULL", "NORMAL"):
            bare(root, sync, args.n)
            journal(root, sync, args.n)


if __name__ == "__main__":
    main()
