"""The price of durable steps: 1,000 invocations of 5 steps each, against the same work without
steps, on a ``ThreadExecutor`` over ``SQLiteJournal(synchronous="FULL")``.

Each round accepts ``--invocations`` background invocations from 16 threads and waits until
every one has finished; the time is from the first accept to the last end. The handler does the
same five small pieces of work either way: called directly (the reference), or each through
``context.step.run`` (each new step is one durable journal write, group-committed with the
others). Rounds alternate between the two and the verdict is the median ratio: figures on a
shared 2-CPU machine swing from one run to the next.

Goal (issue 14): steps <= 2x the time of the same work without them.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_steps.py [--invocations 1000] [--rounds 5] [--workers 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bgfunctions import App, Context, Registry, Request, State, ThreadExecutor
from bgfunctions.journals.sqlite import SQLiteJournal

STEPS = 5
ACCEPTORS = 16
GOAL = 2.0


def piece(n: int) -> dict[str, int]:
    """One small piece of the work (what a step would call: an API, a query)."""
    return {"n": n, "square": n * n}


def plain(request: Request, context: Context) -> None:
    for n in range(STEPS):
        piece(n)


def stepped(request: Request, context: Context) -> None:
    for n in range(STEPS):
        context.step.run(f"piece-{n}", piece, n)


def run_round(invocations: int, workers: int, with_steps: bool, directory: Path) -> float:
    """Seconds from the first accept to the last end of ``invocations`` invocations."""
    path = directory / f"{'steps' if with_steps else 'plain'}-{time.monotonic_ns()}.db"
    journal = SQLiteJournal(path, synchronous="FULL")
    registry = Registry()
    registry.add("work-background", stepped if with_steps else plain)
    app = App(registry, executor=ThreadExecutor(journal=journal, max_workers=workers))
    app.start()
    handles = []
    lock = threading.Lock()
    barrier = threading.Barrier(ACCEPTORS + 1)

    def accept(count: int) -> None:
        barrier.wait()
        for _ in range(count):
            handle = app.enqueue("work-background", Request("POST", "/"))
            with lock:
                handles.append(handle)

    share = [invocations // ACCEPTORS + (i < invocations % ACCEPTORS) for i in range(ACCEPTORS)]
    threads = [threading.Thread(target=accept, args=(n,)) for n in share]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    try:
        for thread in threads:
            thread.join()
        records = [handle.wait(timeout=300) for handle in handles]
        elapsed = time.perf_counter() - start
    finally:
        app.shutdown()
        journal.close()
    bad = [r for r in records if r.state is not State.SUCCEEDED]
    if bad:
        raise SystemExit(f"{len(bad)} invocations did not succeed: {bad[0]}")
    if with_steps and any(len(r.steps) != STEPS for r in records):
        raise SystemExit(f"expected {STEPS} steps on every record")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as tmp:
        directory = Path(tmp)
        run_round(100, args.workers, True, directory)  # warm-up: imports, first file
        for i in range(args.rounds):
            # Alternate which goes first, so neither always gets the quieter half.
            order = (False, True) if i % 2 == 0 else (True, False)
            times = {
                flag: run_round(args.invocations, args.workers, flag, directory) for flag in order
            }
            ratio = times[True] / times[False]
            ratios.append(ratio)
            print(
                f"round {i + 1}: without steps {times[False]:.2f} s "
                f"({args.invocations / times[False]:.0f}/s), with {STEPS} steps "
                f"{times[True]:.2f} s ({args.invocations / times[True]:.0f}/s), "
                f"ratio {ratio:.2f}x",
                flush=True,
            )
    median = statistics.median(ratios)
    verdict = "meets" if median <= GOAL else "misses"
    print(
        f"median ratio {median:.2f}x over {len(ratios)} rounds "
        f"({args.invocations} invocations x {STEPS} steps, SQLite FULL, "
        f"{args.workers} workers): {verdict} the goal <= {GOAL:g}x"
    )
    return 0 if median <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
