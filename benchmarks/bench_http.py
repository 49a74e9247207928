"""HTTP: bgfunctions' background functions against Starlette's ``BackgroundTasks``, side by side.

Each app runs in its own uvicorn subprocess (one worker, loopback, a free port, no access log)
and is loaded in the same run, on two stacks:

1. **uvloop + httptools** (``uvicorn[standard]``, what ASGI apps are deployed on);
2. **asyncio + h11** (uvicorn without its extras), as a second table.

The apps, every one a no-op so that only the machinery is measured:

- ``bare``: an ASGI app answering an empty 202 (the ceiling);
- ``bt-async`` / ``bt-sync``: a Starlette route answering 202 with a ``BackgroundTask`` of an
  async / a sync no-op (the peer: a FastAPI user's ``BackgroundTasks``);
- ``bgf-async`` / ``bgf-sync``: bgfunctions' ``ASGIApp`` mounted in Starlette
  (``Mount("/fn", ...)``, the README's way), with an async / a sync no-op background function,
  the default executor and the memory journal (async attempts on the server's own loop);
- ``bgf-async-thread``: the same with ``ThreadExecutor(loop="thread")``: async attempts on the
  executor's own loop thread, as before host mode;
- ``serve``: ``bgfunctions serve`` on a site with the async no-op (its defaults: the SQLite
  journal, one line per event on its output). It picks its own stack, so it is in the first
  table only.

Figures per app: requests per second, its ratio to ``bare`` and to the ``BackgroundTask`` of
the same kind, p50/p99 latency, CPU µs per request of the whole server process (and of its
event loop thread alone), invocations done per second during the load, and the backlog (accepted
but not done) at the end of the load and whether it drains within a second.

The load generator is ``wrk`` (``apt-get install -y wrk``), one thread, else an asyncio
raw-socket generator in this file; the output says which. Counters are read over the server's
stdin/stdout (the dev server's from its event lines), CPU from ``/proc/PID/task``.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_http.py [--duration 8] [--concurrency 32] [--stack both]

``--profile`` runs the bgf-async server under cProfile and prints the top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROUTE = "/.netlify/functions/noop"
URLS = {
    "bare": ROUTE,
    "bt-async": ROUTE,
    "bt-sync": ROUTE,
    "bgf-async": "/fn" + ROUTE,
    "bgf-async-thread": "/fn" + ROUTE,
    "bgf-sync": "/fn" + ROUTE,
    "serve": "/.netlify/functions/noop-background",
}
APPS = tuple(URLS)
PEER = {
    "bgf-async": "bt-async",
    "bgf-async-thread": "bt-async",
    "bgf-sync": "bt-sync",
    "serve": "bt-async",
}
STACKS = {"uvloop": ("uvloop", "httptools"), "asyncio": ("asyncio", "h11")}
WARMUP = 1.0
BACKLOG_WAIT = 1.0


# -- the servers (run in the child process) ---------------------------------------------------


class Counters:
    """Invocations accepted and completed in the server, read by the control thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.completed = 0

    def accept(self) -> None:
        with self.lock:
            self.accepted += 1

    def done(self) -> None:
        with self.lock:
            self.completed += 1


def noop(request: object = None, context: object = None) -> None:
    """The work: nothing, so that only the machinery around it is measured."""


async def async_noop(request: object = None, context: object = None) -> None:
    """The same, as a coroutine function."""


def bare_app(counters: Counters) -> Any:
    """An ASGI app answering every request with an empty 202."""
    start = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
    body = {"type": "http.response.body", "body": b""}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass  # read the (empty) request body as every other app does
        await send(start)
        await send(body)

    return app


def bgfunctions_app(
    counters: Counters, is_async: bool, loop: str = "host"
) -> tuple[Any, Callable[[], int]]:
    """(Starlette with bgfunctions' ASGIApp mounted at /fn, a function returning the backlog).
    ``loop``: the ThreadExecutor's placement of async attempts ("host": the server's loop)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from bgfunctions import App, Config, Event, EventKind, Registry, ThreadExecutor
    from bgfunctions.asgi import ASGIApp

    def on_event(event: Event) -> None:
        if event.kind is EventKind.ACCEPTED:
            counters.accept()
        elif event.kind in (EventKind.SUCCEEDED, EventKind.FAILED):
            counters.done()

    registry = Registry()
    registry.add("noop", async_noop if is_async else noop, config=Config(background=True))
    app = App(registry, executor=ThreadExecutor(loop=loop), on_event=on_event)
    functions = ASGIApp(app)

    def backlog() -> int:
        stats = app.executor.stats()
        return stats.pending + stats.running

    starlette = Starlette(routes=[Mount("/fn", app=functions)], lifespan=functions.lifespan)
    return starlette, backlog


def starlette_app(counters: Counters, is_async: bool) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTasks
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def async_task() -> None:
        await async_noop()
        counters.done()

    def sync_task() -> None:
        noop()
        counters.done()

    async def endpoint(request: Request) -> Response:
        await request.body()
        counters.accept()
        tasks = BackgroundTasks()
        tasks.add_task(async_task if is_async else sync_task)
        return Response(status_code=202, background=tasks)

    return Starlette(routes=[Route(ROUTE, endpoint, methods=["GET", "POST"])])


def serve(kind: str, port: int, stack: str, profile: str | None) -> None:
    """Serve ``kind`` on ``port``; answer ``stats`` lines on stdin with a JSON line."""
    import uvicorn

    counters = Counters()
    backlog: Callable[[], int]
    if kind == "bare":
        app = bare_app(counters)
        backlog = lambda: 0  # noqa: E731
    elif kind.startswith("bgf-"):
        app, backlog = bgfunctions_app(
            counters, kind.startswith("bgf-async"), "thread" if kind.endswith("-thread") else "host"
        )
    else:
        app = starlette_app(counters, kind == "bt-async")
        # A BackgroundTask runs after its response: accepted minus completed is the backlog.
        backlog = lambda: counters.accepted - counters.completed  # noqa: E731

    def control() -> None:
        for _ in sys.stdin:
            with counters.lock:
                accepted, completed = counters.accepted, counters.completed
            reply = {"accepted": accepted, "completed": completed, "backlog": backlog()}
            print(json.dumps(reply), flush=True)

    threading.Thread(target=control, daemon=True).start()
    loop, http = STACKS[stack]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop=loop,
        http=http,
        lifespan="on" if kind.startswith("bgf-") else "off",
    )
    server = uvicorn.Server(config)
    profiler = cProfile.Profile() if profile is not None else None  # the loop thread only
    if profiler is not None:
        profiler.enable()
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn raises the SIGINT it was stopped with again, once it has shut down
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)


# -- the benchmark (the parent process) -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process: ``all`` its threads, ``loop`` its main one."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {"all": 0.0, "loop": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        found["all"] += seconds
        if int(task.name) == pid:
            found["loop"] += seconds
    return found


class Server:
    """A server subprocess: one of ours with its control pipe, or ``bgfunctions serve``."""

    def __init__(self, kind: str, stack: str, site: Path, profile: str | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.lock = threading.Lock()
        self.queued = self.finished = 0
        if kind == "serve":
            command = [
                sys.executable, "-m", "bgfunctions", "serve", str(site), "--port", str(self.port),
                "--no-reload",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, __file__, "--serve", kind, "--port", str(self.port),
                "--stack", stack,
            ]  # fmt: skip
            if profile is not None:
                command += ["--profile-out", profile]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if kind == "serve":
            threading.Thread(target=self._read_events, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{kind} server did not start on port {self.port}") from None
                time.sleep(0.05)

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith(": queued\n"):
                with self.lock:
                    self.queued += 1
            elif " attempt(s)" in line:
                with self.lock:
                    self.finished += 1

    def stats(self) -> dict[str, Any]:
        found: dict[str, Any]
        if self.kind == "serve":
            with self.lock:
                found = {"accepted": self.queued, "completed": self.finished}
            found["backlog"] = found["accepted"] - found["completed"]
        else:
            assert self.proc.stdin is not None
            assert self.proc.stdout is not None
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            found = dict(json.loads(self.proc.stdout.readline()))
        found["cpu"] = process_cpu(self.proc.pid)
        return found

    def stop(self) -> None:
        # SIGINT: uvicorn raises it again after its shutdown, and the KeyboardInterrupt lets
        # the child write its profile, where SIGTERM would just end it.
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """What a load generator measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


WRK_LUA = """
wrk.method = "POST"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %f %f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_load(port: int, url: str, connections: int, seconds: float, lua: Path) -> Load:
    # One wrk thread: on a small machine a second one only takes CPU from the server.
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(lua),
        f"http://127.0.0.1:{port}{url}",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, duration_us, p50, p99, errors = line.split()[1:]
    return Load(
        requests=int(requests),
        seconds=int(duration_us) / 1e6,
        p50_ms=float(p50) / 1e3,
        p99_ms=float(p99) / 1e3,
        errors=int(errors),
    )


async def _python_load(port: int, url: str, connections: int, seconds: float) -> Load:
    request = (
        f"POST {url} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: 0\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    stop = start + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                if not head.startswith(b"HTTP/1.1 202"):
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return Load(
        requests=n,
        seconds=elapsed,
        p50_ms=latencies[n // 2] * 1e3,
        p99_ms=latencies[min(n - 1, int(n * 0.99))] * 1e3,
        errors=errors,
    )


def python_load(port: int, url: str, connections: int, seconds: float) -> Load:
    return asyncio.run(_python_load(port, url, connections, seconds))


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    load: Load
    done_per_s: float
    backlog_at_end: int
    drained_after: float | None
    """Seconds after the end until the backlog was 0; None when it was not within a second."""
    cpu_us: float
    """CPU µs per request of the whole server process, from the load's start until drained."""
    loop_us: float
    """The same, of its event loop thread alone."""


def run_one(server: Server, connections: int, seconds: float, generator: Any) -> Result:
    url = URLS[server.kind]
    before = server.stats()
    load = generator(server.port, url, connections, seconds)
    after = server.stats()
    ended = time.perf_counter()
    drained_after: float | None = None
    while True:
        left = server.stats()["backlog"]
        waited = time.perf_counter() - ended
        if left == 0:
            drained_after = waited
            break
        if waited > BACKLOG_WAIT:
            break
        time.sleep(0.01)
    final = server.stats()
    requests = max(1, load.requests)
    return Result(
        load=load,
        done_per_s=(after["completed"] - before["completed"]) / load.seconds,
        backlog_at_end=after["backlog"],
        drained_after=drained_after,
        cpu_us=(final["cpu"]["all"] - before["cpu"]["all"]) / requests * 1e6,
        loop_us=(final["cpu"]["loop"] - before["cpu"]["loop"]) / requests * 1e6,
    )


def check_202(port: int, url: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST {url} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n".encode()
        )
        head = sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 202"):
        raise SystemExit(f"expected a 202 from {url}; got {head[:200]!r}")


def make_site(root: Path) -> Path:
    functions = root / "site" / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "noop-background.py").write_text(
        "async def handler(request, context):\n    return None\n"
    )
    return root / "site"


def print_profile(path: str, top: int = 25) -> None:
    print(f"\ncProfile of the bgf-async server's event loop thread (top {top} by tottime):")
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(top)
    print("bgfunctions code only (by cumulative time):")
    stats.sort_stats("cumulative").print_stats("bgfunctions", top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = float(os.environ.get("BENCH_HTTP_DURATION", "8"))
    parser.add_argument("--duration", type=float, default=default, help="seconds per load")
    parser.add_argument("--concurrency", default="32", help="comma-separated, e.g. 1,32")
    parser.add_argument("--stack", choices=("both", *STACKS), default="both")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated subset")
    parser.add_argument("--python-load", action="store_true", help="do not use wrk")
    parser.add_argument("--profile", action="store_true", help="cProfile the bgf-async server")
    parser.add_argument("--serve", choices=APPS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.stack, args.profile_out)
        return

    concurrency = [int(c) for c in args.concurrency.split(",")]
    apps = [a for a in args.apps.split(",") if a]
    unknown = sorted(set(apps) - set(APPS))
    if unknown:
        raise SystemExit(f"--apps: unknown {unknown}; expected some of {', '.join(APPS)}")
    stacks = list(STACKS) if args.stack == "both" else [args.stack]
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(WRK_LUA)
        site = make_site(Path(tmp))
        if shutil.which("wrk") and not args.python_load:
            name = "wrk (1 thread)"

            def generator(port: int, url: str, connections: int, seconds: float) -> Load:
                return wrk_load(port, url, connections, seconds, lua)

        else:
            name = "Python asyncio raw sockets (may be the bottleneck at high rates)"
            generator = python_load
        import uvicorn

        print(
            f"uvicorn {uvicorn.__version__}, 1 worker, loopback; load: {name}; "
            f"{args.duration:g} s per run; {os.cpu_count()} CPUs"
        )
        profile = str(Path(tmp) / "bgf.prof") if args.profile else None
        for stack in stacks:
            results: dict[tuple[str, int], Result] = {}
            for kind in apps:
                if kind == "serve" and stack != "uvloop":
                    continue  # the dev server picks its own stack: uvloop + httptools
                use = profile if kind == "bgf-async" and stack == stacks[0] else None
                server = Server(kind, stack, site, use)
                try:
                    check_202(server.port, URLS[kind])
                    generator(server.port, URLS[kind], 8, WARMUP)
                    for connections in concurrency:
                        results[kind, connections] = run_one(
                            server, connections, args.duration, generator
                        )
                finally:
                    server.stop()
            loop, http = STACKS[stack]
            print(f"\n{loop} + {http}")
            report(results)
        if profile is not None:
            print_profile(profile)


def report(results: dict[tuple[str, int], Result]) -> None:
    print(
        f"{'app':<10} {'conc':>4} {'req/s':>8} {'x bare':>6} {'x peer':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'CPU µs/req':>10} {'(loop)':>6} {'done/s':>8} {'backlog':>7} "
        f"{'drained':>8} errors"
    )
    for (kind, connections), r in results.items():
        bare = results.get(("bare", connections))
        peer = results.get((PEER.get(kind, ""), connections))
        x_bare = f"{r.load.rps / bare.load.rps:5.2f}x" if bare else f"{'-':>6}"
        x_peer = f"{r.load.rps / peer.load.rps:5.2f}x" if peer else f"{'-':>6}"
        drained = f"{r.drained_after * 1e3:.0f} ms" if r.drained_after is not None else "NO"
        print(
            f"{kind:<10} {connections:>4} {r.load.rps:8.0f} {x_bare} {x_peer} "
            f"{r.load.p50_ms:7.2f} {r.load.p99_ms:7.2f} {r.cpu_us:10.0f} {r.loop_us:6.0f} "
            f"{r.done_per_s:8.0f} {r.backlog_at_end:7d} {drained:>8} {r.load.errors:6d}"
        )


if __name__ == "__main__":
    main()
