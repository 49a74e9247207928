"""Virtual time: 100,000 invocations that fail twice and succeed on their third attempt.

The InlineExecutor runs the whole schedule (attempts at 0, 60 and 180 virtual seconds) with
real handlers, records and journal writes. The peer is trio's ``MockClock`` with
``autojump_threshold=0`` running the same schedule as trio tasks (the testing peer: virtual
time that jumps whenever every task waits); simpy (a discrete-event simulation library) and a
bare ``heapq`` event loop are references for scale. Rounds are interleaved; medians are
printed. Goal (issue 13): the InlineExecutor at least as fast as trio's MockClock.

Run on demand (pytest does not collect it; ``pip install -e '.[bench]'`` brings trio and simpy)::

    .venv/bin/python benchmarks/bench_virtual_time.py [--n 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import time
from collections.abc import Callable, Generator
from typing import Any

from bgfunctions import (
    App,
    Config,
    Context,
    InlineExecutor,
    MemoryJournal,
    Registry,
    Request,
    State,
    VirtualClock,
)

GOAL = 1.0
DELAYS = (60.0, 120.0)
EXPECTED = [0.0, 60.0, 180.0]


def flaky(request: Request, context: Context) -> None:
    """Fails on its first two attempts."""
    if context.attempt < 3:
        raise RuntimeError("not yet")


def run_inline(n: int) -> float:
    """Seconds of wall time for ``n`` invocations, accepted at t=0, run to the end."""
    registry = Registry()
    registry.add("flaky", flaky, config=Config(background=True))
    clock = VirtualClock()
    # A whole batch due at one instant is one long loop iteration, not a blocked handler.
    executor = InlineExecutor(
        clock=clock, journal=MemoryJournal(max_finished=n), blocking_threshold=3600
    )
    app = App(registry, executor=executor)
    request = Request("POST", "/.netlify/functions/flaky")
    start = time.perf_counter()
    handles = [app.enqueue("flaky", request) for _ in range(n)]
    executor.drain()
    elapsed = time.perf_counter() - start
    app.shutdown()
    for handle in (handles[0], handles[-1]):
        record = handle.record
        assert record.state is State.SUCCEEDED, record
        assert [a.started_at - record.accepted_at for a in record.attempts] == EXPECTED
    return elapsed


def run_simpy(n: int) -> float:
    """The same schedule as simpy processes, recording each attempt's start and outcome."""
    try:
        import simpy
    except ImportError:
        raise SystemExit(
            "simpy is not installed; it is needed only for this benchmark:\n"
            "    .venv/bin/pip install simpy"
        ) from None
    env = simpy.Environment()
    starts: list[list[float]] = []

    def invocation(log: list[float]) -> Generator[Any, Any, None]:
        for attempt in (1, 2, 3):
            log.append(env.now)
            try:
                if attempt < 3:
                    raise RuntimeError("not yet")
                return
            except RuntimeError:
                yield env.timeout(DELAYS[attempt - 1])

    start = time.perf_counter()
    for _ in range(n):
        log: list[float] = []
        starts.append(log)
        env.process(invocation(log))
    env.run()
    elapsed = time.perf_counter() - start
    assert starts[0] == starts[-1] == EXPECTED
    return elapsed


def run_trio(n: int) -> float:
    """The same schedule as trio tasks on a ``MockClock(autojump_threshold=0)``."""
    try:
        import trio
        import trio.testing
    except ImportError:
        raise SystemExit("trio is not installed: .venv/bin/pip install -e '.[bench]'") from None
    starts: list[list[float]] = [[] for _ in range(n)]

    async def invocation(log: list[float]) -> None:
        for attempt in (1, 2, 3):
            log.append(trio.current_time())
            try:
                if attempt < 3:
                    raise RuntimeError("not yet")
                return
            except RuntimeError:
                await trio.sleep(DELAYS[attempt - 1])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for log in starts:
                nursery.start_soon(invocation, log)

    clock = trio.testing.MockClock(autojump_threshold=0)
    start = time.perf_counter()
    trio.run(main, clock=clock)
    elapsed = time.perf_counter() - start
    base = starts[0][0]
    assert [t - base for t in starts[0]] == [t - starts[-1][0] for t in starts[-1]] == EXPECTED
    return elapsed


def run_heapq(n: int) -> float:
    """The same schedule on a bare heap of (time, sequence, invocation) events."""
    starts: list[list[float]] = [[] for _ in range(n)]
    start = time.perf_counter()
    heap: list[tuple[float, int, int]] = [(0.0, i, i) for i in range(n)]
    heapq.heapify(heap)
    seq = n
    while heap:
        now, _, i = heapq.heappop(heap)
        log = starts[i]
        log.append(now)
        attempt = len(log)
        try:
            if attempt < 3:
                raise RuntimeError("not yet")
        except RuntimeError:
            heapq.heappush(heap, (now + DELAYS[attempt - 1], seq, i))
            seq += 1
    elapsed = time.perf_counter() - start
    assert starts[0] == starts[-1] == EXPECTED
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="invocations")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile the inline run")
    args = parser.parse_args()
    n = args.n

    runners: list[tuple[str, Callable[[int], float]]] = [
        ("trio MockClock", run_trio),
        ("simpy", run_simpy),
        ("heapq loop", run_heapq),
        ("InlineExecutor", run_inline),
    ]
    rounds: dict[str, list[float]] = {name: [] for name, _ in runners}
    for _ in range(args.rounds):
        for name, run in runners:
            rounds[name].append(run(n))
    results = {name: statistics.median(values) for name, values in rounds.items()}
    print(
        f"{n} invocations x 3 attempts (fail, fail, succeed) at 0, 60, 180 virtual s; "
        f"median of {args.rounds} interleaved rounds"
    )
    for name, seconds in results.items():
        print(f"  {name:15s} {seconds:8.3f} s wall  {3 * n / seconds:12.0f} attempts/s")
    inline = results["InlineExecutor"]
    ratio = results["trio MockClock"] / inline
    print(
        f"  InlineExecutor vs trio MockClock: {ratio:.2f}x as fast (goal >= {GOAL:g}x): "
        f"{'ok' if ratio >= GOAL else 'MISSED'}"
    )
    print(f"  InlineExecutor vs simpy: {results['simpy'] / inline:.2f}x")
    print(f"  InlineExecutor vs heapq: {results['heapq loop'] / inline:.3f}x")

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(run_inline, min(n, 20_000))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
