"""The accept path: from a Request to its 202, and from 20,000 accepts to all done.

Compares ``App.handle`` on a no-op background function (``ThreadExecutor``) with a bare
``concurrent.futures.ThreadPoolExecutor.submit`` of the same no-op, with the same number of
workers. Goals: accept within 4x of ``submit``; throughput at least 0.5x.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_accept.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bgfunctions import App, Config, Context, Event, EventKind, Registry, Request, ThreadExecutor

WORKERS = 8
BATCH = 500
ROUNDS = 21
ACCEPT_GOAL = 4.0
THROUGHPUT_GOAL = 0.5
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


def bench_accept_latency() -> tuple[float, float]:
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


def bench_throughput(calls: int) -> tuple[float, float]:
    """(invocations per second, accepted to all done; the same for the bare pool)."""
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
        ours = calls / (time.perf_counter() - start)
    finally:
        app.shutdown()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        start = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(calls)]
        for future in futures:
            future.result()
        bare = calls / (time.perf_counter() - start)
    return ours, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="invocations for throughput")
    args = parser.parse_args()

    ours, bare = bench_accept_latency()
    ratio = ours / bare
    print(f"accept   App.handle -> 202       {ours:8.1f} µs/call (median of {ROUNDS}x{BATCH})")
    print(f"         ThreadPoolExecutor.submit {bare:6.1f} µs/call")
    verdict = "ok" if ratio <= ACCEPT_GOAL else "MISSED"
    print(f"         ratio {ratio:.2f}x (goal <= {ACCEPT_GOAL:g}x): {verdict}")

    ours_tp, bare_tp = bench_throughput(args.calls)
    tp_ratio = ours_tp / bare_tp
    print(f"throughput {args.calls} no-op invocations, accepted to all done:")
    print(f"         App + ThreadExecutor      {ours_tp:10.0f} /s")
    print(f"         ThreadPoolExecutor        {bare_tp:10.0f} /s")
    verdict = "ok" if tp_ratio >= THROUGHPUT_GOAL else "MISSED"
    print(f"         ratio {tp_ratio:.2f}x (goal >= {THROUGHPUT_GOAL:g}x): {verdict}")


if __name__ == "__main__":
    main()
