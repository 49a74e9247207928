"""Instructions per invocation, counted by valgrind: a noise-free view of CPU cost.

Wall-clock ratios on a shared 2-CPU machine swing by 2x between runs; instruction counts do
not. Each workload runs under ``valgrind --tool=callgrind`` at two sizes, and the difference
divided by the difference in invocations cancels start-up (imports, first calls):

- ``inline``: bench_virtual_time's InlineExecutor run (fail, fail, succeed; 3 attempts);
- ``simpy`` and ``heapq``: its two baselines;
- ``threads``: bench_accept's throughput run (App + ThreadExecutor, a counting listener);
- ``pool``: the same no-op through ``ThreadPoolExecutor.submit``;
- ``accept``: ``App.handle`` alone, ``Request`` to ``202``, on an ``InlineExecutor`` whose
  virtual clock never moves (no attempt runs: one thread, the accept path only);
- ``asgi-bt`` and ``asgi-host``: bench_asgi_cpu's in-process run on uvloop (an ASGI request
  through Starlette until its background work is done): Starlette's ``BackgroundTask`` of an
  async no-op, and ``ASGIApp`` with an async no-op background function on the host loop.

Run on demand (needs valgrind: ``apt-get install -y valgrind``; slow, about 1 min per
workload)::

    .venv/bin/python benchmarks/count_instructions.py [inline simpy heapq threads pool accept
                                                       asgi-bt asgi-host]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"inline": (1000, 3000), "simpy": (1000, 3000), "heapq": (1000, 3000)}
SIZES |= {"threads": (2000, 6000), "pool": (2000, 6000), "accept": (2000, 6000)}
SIZES |= {"asgi-bt": (2000, 6000), "asgi-host": (2000, 6000)}


def run(workload: str, n: int) -> None:
    """Run ``workload`` once with ``n`` invocations (inside valgrind)."""
    sys.path.insert(0, str(HERE))
    if workload.startswith("asgi-"):
        import bench_asgi_cpu
        import uvloop

        kind = {"asgi-bt": "bt-async", "asgi-host": "bgf-host"}[workload]
        uvloop.run(bench_asgi_cpu.measure(kind, n))
        return
    if workload in ("inline", "simpy", "heapq"):
        import bench_virtual_time as vt

        {"inline": vt.run_inline, "simpy": vt.run_simpy, "heapq": vt.run_heapq}[workload](n)
        return
    import bench_accept as ba

    if workload == "pool":
        with ThreadPoolExecutor(max_workers=ba.WORKERS) as pool:
            for future in [pool.submit(ba.noop) for _ in range(n)]:
                future.result()
        return
    from bgfunctions import Request

    if workload == "accept":
        accept_only(n)
        return
    done = ba.Done(n)
    app = ba.build_app(done)
    app.start()
    request = Request("POST", ba.URL)
    for _ in range(n):
        app.handle(request)
    if not done.all_done.wait(600):
        raise SystemExit(f"only {done.count} of {n} invocations finished")
    app.shutdown()


def accept_only(n: int) -> None:
    """``n`` accepts through ``App.handle``; the attempts stay due on a clock that never moves."""
    import bench_accept as ba

    from bgfunctions import App, Config, InlineExecutor, Registry, Request, State, VirtualClock
    from bgfunctions.journals.base import MemoryJournal

    registry = Registry()
    registry.add("noop", ba.noop, config=Config(background=True))
    executor = InlineExecutor(clock=VirtualClock(), journal=MemoryJournal(max_finished=n))
    app = App(registry, executor=executor)
    request = Request("POST", ba.URL)
    for _ in range(n):
        response = app.handle(request)
    assert response.status == 202, response
    waiting = executor.journal.select(state=State.ACCEPTED, limit=None)
    assert len(waiting) == n, f"{len(waiting)} of {n} accepts are waiting"
    app.shutdown()


def count(workload: str, n: int) -> int:
    """Instructions valgrind counted for the whole process."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--run", workload, str(n),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise SystemExit(f"valgrind printed no count for {workload}:\n{out[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "workloads", nargs="*", metavar="WORKLOAD", help=f"some of {', '.join(SIZES)} (all)"
    )
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run[0], int(args.run[1]))
        return
    unknown = [w for w in args.workloads if w not in SIZES]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; expected some of {list(SIZES)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install -y valgrind")
    for workload in args.workloads or list(SIZES):
        small, large = SIZES[workload]
        per = (count(workload, large) - count(workload, small)) / (large - small)
        print(f"{workload:8s} {per:12,.0f} instructions per invocation", flush=True)


if __name__ == "__main__":
    main()
