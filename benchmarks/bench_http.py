"""HTTP throughput and latency of the ASGI app answering 202s for a no-op background function.

Three servers, each in its own uvicorn subprocess (one worker, loopback, a free port,
``log_level=warning``, no access log), loaded in the same run at concurrency 1 and 32:

- ``bare``: an ASGI app that answers an empty 202 and does nothing else (the ceiling);
- ``bgfunctions``: ``ASGIApp`` over ``App`` with the ``ThreadExecutor`` (the dev server's stack,
  without its per-event printing), for a no-op background function;
- ``starlette``: a Starlette route answering 202 with ``BackgroundTasks`` running the same no-op.

Figures: requests per second, p50/p99 latency, the ratio to the bare app, invocations completed
per second during the load, whether the backlog (pending + running) is back to 0 within a second
of the end, and the server's RSS (``VmRSS``, and ``VmHWM``, its peak). Goal: bgfunctions >= 0.8x
the bare app's requests per second.

The load generator is ``wrk`` when it is on the PATH (``apt-get install -y wrk``), else an
asyncio raw-socket generator in this file (keep-alive connections); the output says which.
Counters and the backlog are read over the server's stdin/stdout, never over HTTP, so the
measured path is only the function's.

Run on demand (pytest does not collect it)::

    .venv/bin/python benchmarks/bench_http.py [--duration 8] [--python-load] [--profile]

``BENCH_HTTP_DURATION`` sets the default duration (seconds per app and concurrency).
``--profile`` runs the bgfunctions server under cProfile and prints the top entries.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOAL = 0.8
URL = "/.netlify/functions/noop"
APPS = ("bare", "bgfunctions", "starlette")
CONCURRENCY = (1, 32)
WARMUP = 1.0
BACKLOG_WAIT = 1.0


# -- the servers (run in the child process) ---------------------------------------------------


class Counters:
    """Invocations accepted and completed in the server, read by the control thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.completed = 0

    def done(self) -> None:
        with self.lock:
            self.completed += 1


def noop(request: object = None, context: object = None) -> None:
    """The work: nothing, so that only the machinery around it is measured."""


def bare_app(counters: Counters) -> Any:
    """An ASGI app answering every request with an empty 202."""
    start = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
    body = {"type": "http.response.body", "body": b""}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        # Read the (empty) request body as every other app does.
        while (await receive()).get("more_body", False):
            pass
        await send(start)
        await send(body)

    return app


def bgfunctions_app(counters: Counters) -> tuple[Any, Any]:
    """(the ASGI app, a function returning the backlog)."""
    from bgfunctions import App, Config, Event, EventKind, Registry
    from bgfunctions.asgi import ASGIApp
    from bgfunctions.clock import SystemClock
    from bgfunctions.executors.threads import ThreadExecutor

    def on_event(event: Event) -> None:
        if event.kind is EventKind.ACCEPTED:
            with counters.lock:
                counters.accepted += 1
        elif event.kind in (EventKind.SUCCEEDED, EventKind.FAILED):
            counters.done()

    registry = Registry()
    registry.add("noop", noop, config=Config(background=True))
    app = App(registry, executor=ThreadExecutor(clock=SystemClock()), on_event=on_event)

    def backlog() -> int:
        stats = app.executor.stats()
        return stats.pending + stats.running

    return ASGIApp(app), backlog


def starlette_app(counters: Counters) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTasks
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def task() -> None:
        noop()
        counters.done()

    async def endpoint(request: Request) -> Response:
        await request.body()
        with counters.lock:
            counters.accepted += 1
        tasks = BackgroundTasks()
        tasks.add_task(task)
        return Response(status_code=202, background=tasks)

    return Starlette(routes=[Route(URL, endpoint, methods=["GET", "POST"])])


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's threads: ``loop`` for the main thread
    (uvicorn's event loop), ``others`` for every other thread (workers, timers)."""
    tick = os.sysconf("SC_CLK_TCK")
    main_id = threading.main_thread().native_id
    found = {"loop": 0.0, "others": 0.0}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        found["loop" if int(task.name) == main_id else "others"] += seconds
    return found


def serve(kind: str, port: int, profile: str | None) -> None:
    """Serve ``kind`` on ``port``; answer ``stats`` lines on stdin with a JSON line."""
    import uvicorn

    counters = Counters()
    backlog = None
    if kind == "bare":
        app = bare_app(counters)
    elif kind == "bgfunctions":
        app, backlog = bgfunctions_app(counters)
    else:
        app = starlette_app(counters)
        # BackgroundTasks run after the response: accepted minus completed is the backlog.
        backlog = lambda: counters.accepted - counters.completed  # noqa: E731

    def control() -> None:
        for _ in sys.stdin:
            with counters.lock:
                accepted, completed = counters.accepted, counters.completed
            rss, hwm = rss_kib()
            reply = {
                "accepted": accepted,
                "completed": completed,
                "backlog": backlog() if backlog is not None else None,
                "rss_kib": rss,
                "hwm_kib": hwm,
                "cpu": thread_cpu(),
            }
            print(json.dumps(reply), flush=True)

    threading.Thread(target=control, daemon=True).start()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, workers=1
    )
    server = uvicorn.Server(config)
    # cProfile sees the event loop thread only: the accept path, not the workers.
    profiler = cProfile.Profile() if profile is not None else None
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


class Server:
    """A server subprocess and its control pipe."""

    def __init__(self, kind: str, profile: str | None = None) -> None:
        self.kind = kind
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, __file__, "--serve", kind, "--port", str(self.port)]
        if profile is not None:
            command += ["--profile-out", profile]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{kind} server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> None:
        # SIGINT rather than SIGTERM: uvicorn raises it again after its shutdown, and a
        # KeyboardInterrupt lets the child write its profile, where SIGTERM would just end it.
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


def wrk_load(port: int, connections: int, seconds: float, lua: Path) -> Load:
    # One wrk thread: on a small machine a second one only takes CPU from the server.
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(lua),
        f"http://127.0.0.1:{port}{URL}",
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


async def _python_load(port: int, connections: int, seconds: float) -> Load:
    request = (
        f"POST {URL} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: 0\r\n\r\n"
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


def python_load(port: int, connections: int, seconds: float) -> Load:
    return asyncio.run(_python_load(port, connections, seconds))


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    load: Load
    completed_per_s: float | None
    drained_after: float | None
    """Seconds after the end until the backlog was 0; None when it was not within a second."""
    backlog_left: int | None
    rss_mib: float
    hwm_mib: float
    loop_us: float
    """CPU µs per request of the event loop thread during the load."""
    others_us: float
    """CPU µs per request of every other thread (the workers running the attempts)."""


def run_one(server: Server, connections: int, seconds: float, generator: Any) -> Result:
    before = server.stats()
    load = generator(server.port, connections, seconds)
    after = server.stats()
    completed = after["completed"] - before["completed"]
    drained_after: float | None = None
    left = after["backlog"]
    if left is not None:
        ended = time.perf_counter()
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
    # CPU from the start of the load until the backlog drained: the work each request made.
    spent = {k: final["cpu"][k] - before["cpu"][k] for k in ("loop", "others")}
    requests = max(1, load.requests)
    return Result(
        load=load,
        completed_per_s=completed / load.seconds if server.kind != "bare" else None,
        drained_after=drained_after,
        backlog_left=left,
        rss_mib=final["rss_kib"] / 1024,
        hwm_mib=final["hwm_kib"] / 1024,
        loop_us=spent["loop"] / requests * 1e6,
        others_us=spent["others"] / requests * 1e6,
    )


def check_202(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST {URL} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".encode())
        head = sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 202"):
        raise SystemExit(f"expected a 202 from {URL}; got {head[:200]!r}")


def print_profile(path: str, top: int = 25) -> None:
    print(f"\ncProfile of the bgfunctions server's event loop thread (top {top} by tottime):")
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(top)
    print("bgfunctions code only (by cumulative time):")
    stats.sort_stats("cumulative").print_stats("bgfunctions", top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = float(os.environ.get("BENCH_HTTP_DURATION", "8"))
    parser.add_argument("--duration", type=float, default=default, help="seconds per load")
    parser.add_argument("--python-load", action="store_true", help="do not use wrk")
    parser.add_argument("--profile", action="store_true", help="cProfile the bgfunctions server")
    parser.add_argument("--serve", choices=APPS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.profile_out)
        return

    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(WRK_LUA)
        if shutil.which("wrk") and not args.python_load:
            name = "wrk (1 thread)"

            def generator(port: int, connections: int, seconds: float) -> Load:
                return wrk_load(port, connections, seconds, lua)

        else:
            name = "Python asyncio raw sockets (may be the bottleneck at high rates)"
            generator = python_load
        import uvicorn

        print(
            f"uvicorn {uvicorn.__version__}, 1 worker, loopback; load: {name}; "
            f"{args.duration:g} s per run; {os.cpu_count()} CPUs"
        )
        profile = str(Path(tmp) / "bgfunctions.prof") if args.profile else None
        results: dict[tuple[str, int], Result] = {}
        for kind in APPS:
            server = Server(kind, profile if kind == "bgfunctions" else None)
            try:
                check_202(server.port)
                generator(server.port, 8, WARMUP)
                for connections in CONCURRENCY:
                    results[kind, connections] = run_one(
                        server, connections, args.duration, generator
                    )
            finally:
                server.stop()
        report(results)
        if profile is not None:
            print_profile(profile)


def report(results: dict[tuple[str, int], Result]) -> None:
    print(
        f"{'app':<12} {'conc':>4} {'req/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'done/s':>9} {'backlog 0':>10} {'RSS MiB':>8} {'peak':>6} errors "
        f"{'CPU µs/req: loop':>16} {'others':>6}"
    )
    for (kind, connections), r in results.items():
        bare = results["bare", connections].load.rps
        done = f"{r.completed_per_s:9.0f}" if r.completed_per_s is not None else f"{'-':>9}"
        if r.backlog_left is None:
            drained = "-"
        elif r.drained_after is not None:
            drained = f"{r.drained_after * 1e3:.0f} ms"
        else:
            drained = f"NO ({r.backlog_left})"
        print(
            f"{kind:<12} {connections:>4} {r.load.rps:9.0f} {r.load.rps / bare:5.2f}x "
            f"{r.load.p50_ms:8.2f} {r.load.p99_ms:8.2f} {done} {drained:>10} "
            f"{r.rss_mib:8.1f} {r.hwm_mib:6.1f} {r.load.errors:6d} "
            f"{r.loop_us:16.0f} {r.others_us:6.0f}"
        )
    for connections in CONCURRENCY:
        ratio = results["bgfunctions", connections].load.rps / results["bare", connections].load.rps
        verdict = "ok" if ratio >= GOAL else "MISSED"
        print(
            f"goal c={connections}: bgfunctions {ratio:.2f}x the bare app (>= {GOAL:g}x): {verdict}"
        )


if __name__ == "__main__":
    main()
