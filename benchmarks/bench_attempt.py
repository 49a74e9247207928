"""What one attempt of an async handler costs, and what an async synchronous function's call
costs through ``App.handle_async`` on the ThreadExecutor.

- ``run_async``: the one attempt runner (:mod:`bgfunctions.attempts`), on the running loop,
  for a handler that returns at once. It awaits the attempt's task directly (Python 3.11+)
  rather than through ``asyncio.wait``; ``--wait`` times both forms on a bare task: the
  difference is what the direct await buys per attempt.
- ``handle_async``: an async synchronous function's call, which runs on the executor's loop
  thread (never the server's, so that a blocking call in a handler cannot hold the server):
  the price of that hand-off, each way.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_attempt.py [--n 5000] [--wait]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bgfunctions import App, Context, InlineExecutor, Registry, Request, ThreadExecutor
from bgfunctions.attempts import PreparedAttempt, run_async

URL = "/.netlify/functions/hello"


async def hello(request: Request, context: Context) -> str:
    return "hi"


def _registry() -> Registry:
    registry = Registry()
    registry.add("hello", hello)
    return registry


async def _per_attempt(app: App, n: int) -> float:
    function = app.registry["hello"]
    request = Request("GET", URL)
    executor = app.executor
    started = time.perf_counter()
    for _ in range(n):
        context = executor.lifecycle.sync_context(function, request, {}, "bench", 60)
        await run_async(PreparedAttempt(function, request, context, 60))
    return (time.perf_counter() - started) / n * 1e6


async def _bare_task(n: int, via_wait: bool) -> float:
    """A task for a coroutine that returns at once, awaited directly or by asyncio.wait."""
    loop = asyncio.get_running_loop()
    request = Request("GET", URL)
    started = time.perf_counter()
    for _ in range(n):
        task = loop.create_task(hello(request, None))  # type: ignore[arg-type]
        if via_wait:
            await asyncio.wait((task,))
            task.result()
        else:
            await task
    return (time.perf_counter() - started) / n * 1e6


async def _per_call(app: App, n: int) -> float:
    request = Request("GET", URL)
    for _ in range(200):  # warm-up: threads and loop started
        await app.handle_async(request)
    started = time.perf_counter()
    for _ in range(n):
        await app.handle_async(request)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--wait", action="store_true", help="also time the asyncio.wait form")
    args = parser.parse_args()
    inline = App(_registry(), executor=InlineExecutor())
    best = min(asyncio.run(_per_attempt(inline, args.n)) for _ in range(5))
    print(f"run_async, one attempt:            {best:8.1f} us")
    if args.wait:
        for via_wait, label in ((False, "await task"), (True, "asyncio.wait((task,))")):
            best = min(asyncio.run(_bare_task(args.n, via_wait)) for _ in range(5))
            print(f"a bare task, {label + ':':<22}{best:8.1f} us")
    inline.shutdown()
    threaded = App(_registry(), executor=ThreadExecutor())
    best = min(asyncio.run(_per_call(threaded, args.n)) for _ in range(5))
    print(f"handle_async, async sync function: {best:8.1f} us")
    threaded.shutdown()


if __name__ == "__main__":
    main()
