"""Routing: worst-case match times of the patterns that froze the server (issue 10, item 1).

Each case is routed through a real :class:`~bgfunctions.routing.Router` on a path that does not
match (the slowest input for a backtracking engine), and timed against two references measured
in the same run: a literal route on a short path, and the same pattern on a 100-character path
(so that "linear" shows as time growing with the path, not with a power of it). Each figure is
the slowest of ``--repeat`` runs. Python's ``re`` on the same expressions is not run: it takes
from seconds to hours on these inputs (``--re`` runs it on the smallest case only, with the
pattern's own ``regex``). Goal: every case under 50 ms at the longest path routing considers.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_routing.py [--repeat 5] [--re]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bgfunctions._urlpattern import compile_pathname
from bgfunctions.routing import MAX_PATH_LENGTH, Router, RouteSpec

GOAL_MS = 50.0

# (name, pattern, path that does not match), from the issue.
CASES = [
    ("/*/*/*.json, 2,000 segments", "/*/*/*.json", "/a" * 2000),
    ("/:a+/:b+/:c+/x, 2 KB", "/:a+/:b+/:c+/x", "/a" * 1024),
    ("nine *s, 120 chars", "/*" * 9 + ".json", "/a" * 60),
    ("((?:a+)+)b, 2 KB", "/((?:a+)+)b", "/" + "a" * 2047),
    ("/*/*/*.json, at the bound", "/*/*/*.json", "/a" * (MAX_PATH_LENGTH // 2)),
    ("/:a+/:b+/:c+/x, at the bound", "/:a+/:b+/:c+/x", "/a" * (MAX_PATH_LENGTH // 2)),
]


def worst(call: Callable[[], object], repeat: int) -> float:
    """The slowest of ``repeat`` runs, in milliseconds of this process's CPU time (on a shared
    machine, wall time also counts the time other processes held the CPU)."""
    slowest = 0.0
    for _ in range(repeat):
        start = time.process_time()
        call()
        slowest = max(slowest, time.process_time() - start)
    return slowest * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--re", action="store_true", help="also time re.fullmatch (smallest)")
    args = parser.parse_args()

    literal = Router([RouteSpec(function="lit", paths=("/about/team",))])
    reference = worst(lambda: literal.match("GET", "/about/team"), args.repeat * 100)
    print(f"reference: literal route /about/team: {reference * 1000:.1f} us (worst)")
    print(
        f"{'case':<32} {'path':>7} {'steps':>8} {'worst ms':>9} {'100-char ms':>12} "
        f"{'x literal':>10}"
    )
    failed = False
    for name, pattern, path in CASES:
        router = Router([RouteSpec(function="f", paths=(pattern,))])
        assert router.match("GET", path).reason == "no_route"  # type: ignore[union-attr]
        ms = worst(lambda r=router, p=path: r.match("GET", p), args.repeat)
        short = path[:100]
        short_ms = worst(lambda r=router, p=short: r.match("GET", p), args.repeat)
        failed |= ms > GOAL_MS
        steps = compile_pathname(pattern, ignore_trailing_slash=True).match_counting(path)[1]
        print(
            f"{name:<32} {len(path):>7} {steps:>8} {ms:>9.2f} {short_ms:>12.3f} "
            f"{ms / reference:>10.0f}"
        )
    if args.re:
        regex = compile_pathname("/*" * 9 + ".json").regex
        path = "/a" * 12
        ms = worst(lambda: regex.fullmatch(path), 1)
        print(f"re.fullmatch, nine *s on {len(path)} chars only: {ms:.1f} ms")
    print(f"goal: every case under {GOAL_MS:.0f} ms: {'NOT MET' if failed else 'met'}")


if __name__ == "__main__":
    main()
