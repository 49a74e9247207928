"""Memory and time of a backlog of big waiting bodies on a SQLiteJournal (issue 10, item 7).

Fills a journal with N waiting invocations of 250 KB, then measures what the invocations view
does (``select(limit=N)`` and ``record_to_view`` of each) and what a restart's recovery keeps
(an executor's ``recover()``): seconds, and Python memory (tracemalloc: peak, and retained).
Then what a running executor's recovery poll costs: ``unfinished()`` over 5,000 small waiting
records, by the journal that accepted them, against a bare ``SELECT`` and parse of the same rows
in the same run (median of 5).

    .venv/bin/python benchmarks/bench_backlog_memory.py [N]
"""

from __future__ import annotations

import gc
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bgfunctions import App, InlineExecutor, Registry, Request, VirtualClock
from bgfunctions.invocation import InvocationRecord
from bgfunctions.journals.sqlite import SQLiteJournal
from bgfunctions.views import record_to_view

BODY = 250_000


def main(count: int) -> None:
    registry = Registry()
    registry.add("job-background", lambda request, context: None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.db"
        clock = VirtualClock()
        journal = SQLiteJournal(path, clock=clock, synchronous="NORMAL")
        app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
        for i in range(count):
            body = bytes([i % 256]) * BODY
            app.handle(Request("POST", "/.netlify/functions/job-background", body=body))
        app.shutdown()
        journal.close()

        journal = SQLiteJournal(path, clock=clock, synchronous="NORMAL", owner="view")
        gc.collect()
        tracemalloc.start()
        began = time.perf_counter()
        shown = [record_to_view(r) for r in journal.select(limit=count)]
        seconds = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(shown) == count
        assert {s["body_size"] for s in shown} == {BODY}
        print(f"view of {count}: {seconds:.2f} s, peak {peak / 1e6:.1f} MB")
        journal.close()

        journal = SQLiteJournal(path, clock=clock, synchronous="NORMAL", owner="restart")
        executor = InlineExecutor(clock=clock, journal=journal)
        App(registry, executor=executor)
        gc.collect()
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        taken = executor.recover()
        seconds = time.perf_counter() - began
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - baseline
        tracemalloc.stop()
        assert taken == count
        print(f"restart recovering {count}: {seconds:.2f} s, retained {retained / 1e6:.1f} MB")
        executor.shutdown()
        journal.close()


def poll(count: int = 5000) -> None:
    """unfinished() of ``count`` waiting records against a bare SELECT and parse of them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.db"
        journal = SQLiteJournal(path, synchronous="NORMAL")
        request = Request("POST", "/.netlify/functions/job-background")
        for i in range(count):
            journal.accepted(
                InvocationRecord.of_request(
                    request, request_id=f"r{i}", function="job-background", params={},
                    accepted_at=1000.0 + i,
                )
            )  # fmt: skip
        bare = sqlite3.connect(path)
        query = (
            "SELECT record FROM invocations WHERE state IN ('accepted', 'retry_scheduled', "
            "'running') ORDER BY accepted_at"
        )
        ratios = []
        for _ in range(5):
            began = time.perf_counter()
            parsed = [InvocationRecord.from_json(json.loads(t)) for (t,) in bare.execute(query)]
            reference = time.perf_counter() - began
            began = time.perf_counter()
            polled = journal.unfinished()
            ours = time.perf_counter() - began
            assert len(polled) == len(parsed) == count
            ratios.append(ours / reference)
        bare.close()
        journal.close()
    print(
        f"recovery poll, unfinished() of {count} waiting: {statistics.median(ratios):.2f}x a "
        f"bare SELECT + parse (median of 5: {', '.join(f'{r:.2f}' for r in sorted(ratios))})"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    poll()
