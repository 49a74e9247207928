"""A week-long workflow in the test kit: ``testing.invoke`` of a handler that runs a step,
sleeps 7 days (``context.step.sleep``), then runs a step that fails once, against the same
handler without the sleep (the reference: two steps, one failure, two attempts), same run.

Goal (issue 14): the sleeping workflow runs in well under 50 ms of wall time. Each round times
``--runs`` invocations of each, interleaved; the figures are medians per invocation and the
ratio of the medians.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_sleeps.py [--runs 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bgfunctions.testing import invoke

GOAL_MS = 50.0


def workflow(sleep: bool) -> Any:
    failures = [1]

    def charge(n: int) -> int:
        if failures:
            failures.pop()
            raise ConnectionError("payment service unavailable")
        return n

    def handler(request: Any, context: Any) -> None:
        context.step.run("billing", int, "1")
        if sleep:
            context.step.sleep("wait-for-trial", days=7)
        context.step.run("charge", charge, 2)

    return handler


def once(sleep: bool) -> float:
    handler = workflow(sleep)
    started = time.perf_counter()
    invocation = invoke(handler)
    took = time.perf_counter() - started
    assert invocation.state == "succeeded", invocation.attempts
    assert len(invocation.attempts) == (3 if sleep else 2)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    once(True)
    once(False)  # imports and first calls out of the figures
    with_sleep: list[float] = []
    without: list[float] = []
    for _ in range(args.rounds):
        for _ in range(args.runs):
            with_sleep.append(once(True))
            without.append(once(False))
    a, b = statistics.median(with_sleep) * 1000, statistics.median(without) * 1000
    worst = max(with_sleep) * 1000
    print(f"invoke, 7-day sleep + 1 failure: median {a:.3f} ms, worst {worst:.3f} ms")
    print(f"invoke, same without the sleep:  median {b:.3f} ms")
    verdict = "met" if worst < GOAL_MS else "MISSED"
    print(f"ratio {a / b:.2f}x; goal: well under {GOAL_MS:g} ms: {verdict}")


if __name__ == "__main__":
    main()
