"""CPU per background request, in-process on uvloop: bgfunctions against ``BackgroundTasks``.

``bench_http.py`` measures whole servers under wrk; on a shared 2-CPU machine its req/s swing
with the load generator and the neighbours. This one calls each ASGI app directly on one uvloop
loop (no sockets, no HTTP parsing: the same for every app), ``--requests`` times per round, and
reads the process's CPU time, so it isolates what an app adds per background request until its
background work is done:

- ``bt-async``: a Starlette route answering 202 with a ``BackgroundTask`` of an async no-op (the
  peer, a FastAPI user's ``BackgroundTasks``);
- ``bgf-host``: bgfunctions' ``ASGIApp`` mounted in Starlette at ``/fn``, an async no-op
  background function, the memory journal, ``ThreadExecutor(loop="host")`` (the default);
- ``bgf-thread``: the same with ``loop="thread"`` (async attempts on the executor's own loop
  thread).

Rounds are interleaved; the median CPU µs per request and its ratio to ``bt-async`` are printed.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_asgi_cpu.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
APPS = ("bt-async", "bgf-host", "bgf-thread")


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", b"0")],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Counter:
    def __init__(self) -> None:
        self.done = 0
        self.statuses: dict[int, int] = {}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.statuses[message["status"]] = self.statuses.get(message["status"], 0) + 1


def starlette_app(counter: Counter) -> tuple[Any, str]:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTasks
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def task() -> None:
        counter.done += 1

    async def endpoint(request: Request) -> Response:
        await request.body()
        tasks = BackgroundTasks()
        tasks.add_task(task)
        return Response(status_code=202, background=tasks)

    route = "/.netlify/functions/noop"
    return Starlette(routes=[Route(route, endpoint, methods=["POST"])]), route


def bgfunctions_app(counter: Counter, loop: str) -> tuple[Any, str]:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from bgfunctions import App, Config, Event, EventKind, Registry, ThreadExecutor
    from bgfunctions.asgi import ASGIApp

    async def noop(request: object, context: object) -> None:
        return None

    def on_event(event: Event) -> None:
        if event.kind is EventKind.SUCCEEDED:
            counter.done += 1

    registry = Registry()
    registry.add("noop", noop, config=Config(background=True))
    functions = ASGIApp(App(registry, executor=ThreadExecutor(loop=loop), on_event=on_event))
    site = Starlette(routes=[Mount("/fn", app=functions)], lifespan=functions.lifespan)
    return site, "/fn/.netlify/functions/noop"


async def measure(kind: str, requests: int) -> float:
    """CPU µs per request of ``requests`` background requests to ``kind``, until all are done."""
    counter = Counter()
    if kind == "bt-async":
        app, path = starlette_app(counter)
    else:
        app, path = bgfunctions_app(counter, "host" if kind == "bgf-host" else "thread")
    scope = _scope(path)
    async with app.router.lifespan_context(app):
        for _ in range(200):  # warm up: imports, caches, first tasks
            await app(dict(scope), _receive, counter.send)
        while counter.done < 200:
            await asyncio.sleep(0.001)
        counter.done = 0
        started = time.process_time()
        for i in range(requests):
            await app(dict(scope), _receive, counter.send)
            if i % 32 == 31:
                await asyncio.sleep(0)  # let background work run, as a server's loop would
        while counter.done < requests:
            await asyncio.sleep(0)
        spent = time.process_time() - started
    assert counter.statuses == {202: requests + 200}, counter.statuses
    return spent / requests * 1e6


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--apps", default=",".join(APPS))
    args = parser.parse_args()
    apps = args.apps.split(",")
    figures: dict[str, list[float]] = {kind: [] for kind in apps}
    for _ in range(args.rounds):
        for kind in apps:
            figures[kind].append(uvloop.run(measure(kind, args.requests)))
    reference = statistics.median(figures["bt-async"]) if "bt-async" in figures else None
    print(f"uvloop, in-process, {args.requests} requests x {args.rounds} rounds (median)")
    print(f"{'app':<12} {'CPU µs/req':>10} {'x bt-async':>10}   rounds")
    for kind, values in figures.items():
        median = statistics.median(values)
        ratio = f"{median / reference:.2f}x" if reference else "-"
        spread = " ".join(f"{v:.0f}" for v in values)
        print(f"{kind:<12} {median:>10.1f} {ratio:>10}   {spread}")


if __name__ == "__main__":
    main()
