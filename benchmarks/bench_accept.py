"""The accept path: from a Request to its 202, and from 20,000 accepts to all done.

Accept: ``App.handle`` on a no-op background function (``ThreadExecutor``, 8 workers) against a
bare ``concurrent.futures.ThreadPoolExecutor.submit`` of the same no-op, same worker count.

Throughput (first accept to last one finished), against references run in the same process:

- ``pool``: the same ``ThreadPoolExecutor``, submit to the last ``result()``;
- ``huey``: huey's ``MemoryHuey`` with a consumer of 4 worker threads (huey's defaults
  otherwise), counting completions with a ``SIGNAL_COMPLETE`` handler as ours counts events;
- ``taskiq-async`` and ``taskiq-sync``: taskiq's ``InMemoryBroker`` (its defaults: 4 threads
  for sync tasks), ``kiq()`` of an async / sync no-op in a loop, then ``wait_all()``.

Each of ``--rounds`` rounds measures everything once, in an order that rotates between rounds;
the ratios are taken within a round and their medians reported (the machine is shared, a rate
alone swings by 2x between runs).

Goals (issue 12): accept <= 3x ``submit``; throughput ahead of huey and taskiq (>= 1x).

Run on demand (pytest does not collect it)::

    .venv/bin/pip install -e '.[bench]'       # huey and taskiq, for their references
    .venv/bin/python benchmarks/bench_accept.py [--calls 20000] [--rounds 5] \\
        [--references pool,huey,taskiq-async,taskiq-sync]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bgfunctions import App, Config, Context, Event, EventKind, Registry, Request, ThreadExecutor

WORKERS = 8
HUEY_WORKERS = 4
BATCH = 500
ROUNDS = 21
ACCEPT_GOAL = 3.0
THROUGHPUT_GOAL = 1.0
REFERENCES = ("pool", "huey", "taskiq-async", "taskiq-sync")
URL = "/.netlify/functions/noop"


def noop(request: Request | None = None, context: Context | None = None) -> None:
    """The work: nothing, so that only the machinery around it is measured."""


def median_us(call: Callable[[], object]) -> float:
    """Median µs per call over ``ROUNDS`` batches of ``BATCH`` calls."""
    per_call = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(BATCH):
            call()
        per_call.append((time.perf_counter() - start) / BATCH * 1e6)
    return statistics.median(per_call)


class Done:
    """Counts finished invocations and wakes the benchmark when all are done."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()

    def __call__(self, event: Event) -> None:
        if event.kind in (EventKind.SUCCEEDED, EventKind.FAILED):
            with self.lock:
                self.count += 1
                if self.count >= self.expected:
                    self.all_done.set()


def build_app(on_event: Callable[[Event], None] | None = None) -> App:
    registry = Registry()
    registry.add("noop", noop, config=Config(background=True))
    return App(
        registry,
        executor=ThreadExecutor(max_workers=WORKERS),
        on_event=on_event if on_event is not None else (),
    )


def accept_us() -> tuple[float, float]:
    """(µs per App.handle -> 202, µs per ThreadPoolExecutor.submit)."""
    request = Request("POST", URL)
    app = build_app()
    app.start()
    try:
        response = app.handle(request)
        assert response.status == 202, response
        ours = median_us(lambda: app.handle(request))
    finally:
        app.shutdown()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        bare = median_us(lambda: pool.submit(noop))
    return ours, bare


def ours_rate(calls: int) -> float:
    """Invocations per second, first accept to all done (App + ThreadExecutor)."""
    request = Request("POST", URL)
    done = Done(calls)
    app = build_app(done)
    app.start()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            app.handle(request)
        if not done.all_done.wait(120):
            raise SystemExit(f"only {done.count} of {calls} invocations finished in 120 s")
        return calls / (time.perf_counter() - start)
    finally:
        app.shutdown()


def pool_rate(calls: int) -> float:
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        start = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(calls)]
        for future in futures:
            future.result()
        return calls / (time.perf_counter() - start)


def huey_rate(calls: int) -> float:
    from huey import MemoryHuey  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from huey.signals import SIGNAL_COMPLETE  # type: ignore[import-untyped,import-not-found,unused-ignore]

    huey = MemoryHuey(results=False)
    done = Done(calls)

    @huey.task()  # type: ignore[untyped-decorator,unused-ignore]
    def noop_task() -> None:
        """The same no-op."""

    @huey.signal(SIGNAL_COMPLETE)  # type: ignore[untyped-decorator,unused-ignore]
    def completed(signal: str, task: object) -> None:
        with done.lock:
            done.count += 1
            if done.count >= done.expected:
                done.all_done.set()

    consumer = huey.create_consumer(workers=HUEY_WORKERS, worker_type="thread", periodic=False)
    consumer.start()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            noop_task()
        if not done.all_done.wait(120):
            raise SystemExit(f"huey: only {done.count} of {calls} tasks finished in 120 s")
        return calls / (time.perf_counter() - start)
    finally:
        consumer.stop(graceful=True)


def taskiq_rate(calls: int, kind: str) -> float:
    from taskiq import InMemoryBroker

    async def run() -> float:
        broker = InMemoryBroker()

        async def noop_async() -> None:
            """The same no-op, async."""

        def noop_sync() -> None:
            """The same no-op, sync (runs in the broker's thread pool)."""

        task = broker.task(noop_async if kind == "async" else noop_sync)
        await broker.startup()
        try:
            start = time.perf_counter()
            for _ in range(calls):
                await task.kiq()
            await broker.wait_all()
            return calls / (time.perf_counter() - start)
        finally:
            await broker.shutdown()

    return asyncio.run(run())


RATES: dict[str, Callable[[int], float]] = {
    "ours": ours_rate,
    "pool": pool_rate,
    "huey": huey_rate,
    "taskiq-async": lambda calls: taskiq_rate(calls, "async"),
    "taskiq-sync": lambda calls: taskiq_rate(calls, "sync"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="invocations for throughput")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument(
        "--references",
        default=",".join(REFERENCES),
        help=f"throughput references, some of {','.join(REFERENCES)} (all)",
    )
    args = parser.parse_args()
    references = [r for r in args.references.split(",") if r]
    unknown = [r for r in references if r not in REFERENCES]
    if unknown:
        parser.error(f"unknown reference(s) {', '.join(unknown)}; expected some of {REFERENCES}")

    accepts: list[tuple[float, float]] = []
    rates: dict[str, list[float]] = {name: [] for name in ["ours", *references]}
    for n in range(args.rounds):
        accepts.append(accept_us())
        names = list(rates)
        names = names[n % len(names) :] + names[: n % len(names)]  # rotate the order
        for name in names:
            rates[name].append(RATES[name](args.calls))
        line = "  ".join(f"{name} {rates[name][-1]:,.0f}/s" for name in rates)
        print(f"round {n + 1}: accept {accepts[-1][0]:.1f} / {accepts[-1][1]:.1f} µs  {line}")

    ours, bare = (statistics.median(x) for x in zip(*accepts, strict=True))
    ratio = statistics.median(a / b for a, b in accepts)
    print(f"accept   App.handle -> 202       {ours:8.1f} µs/call (median of {args.rounds} rounds,")
    print(f"         ThreadPoolExecutor.submit {bare:6.1f} µs/call  each {ROUNDS}x{BATCH} calls)")
    verdict = "ok" if ratio <= ACCEPT_GOAL else "MISSED"
    print(
        f"         ratio {ratio:.2f}x, median of the rounds' (goal <= {ACCEPT_GOAL:g}x): {verdict}"
    )
    print(f"throughput {args.calls} no-op invocations, accepted to all done (medians):")
    print(f"         App + ThreadExecutor      {statistics.median(rates['ours']):10,.0f} /s")
    for name in references:
        tp = statistics.median(o / r for o, r in zip(rates["ours"], rates[name], strict=True))
        verdict = "" if name == "pool" else (": ok" if tp >= THROUGHPUT_GOAL else ": MISSED")
        print(
            f"         {name:25s} {statistics.median(rates[name]):10,.0f} /s   ours/{name} "
            f"{tp:.2f}x{verdict}"
        )


if __name__ == "__main__":
    main()
