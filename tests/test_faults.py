"""Fault tests: a 202 is a promise, even when the server is killed with SIGKILL mid-burst.

Each test logs every 202 on the client side, and every execution in an append-only, fsynced
ledger written by the handler, then checks: accepted, lost (must be 0), duplicates, overlapping
runs of one attempt (must be 0), and retry delays against the schedule. Sized for CI; set
``BGFUNCTIONS_FAULT_SCALE`` (default 1) to multiply the burst.

Real servers and real time: marked ``server`` and ``realtime``. Tolerances: a server gets 30 s
to start, the backlog 120 s to drain after the restart.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

pytestmark = [pytest.mark.server, pytest.mark.realtime]

SCALE = int(os.environ.get("BGFUNCTIONS_FAULT_SCALE", "1"))
BURST = 1000 * SCALE
CLIENTS = 16
RETRY_DELAYS = (0.5, 1.0)

HANDLER = """
import os
import time

LEDGER = {ledger!r}


def _write(line):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def handler(request, context):
    _write(f"start {{context.request_id}} {{context.attempt}} {{os.getpid()}} {{time.time():.6f}}")
    time.sleep(0.02)
    _write(f"end {{context.request_id}} {{context.attempt}} {{os.getpid()}} {{time.time():.6f}}")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Site:
    root: Path
    ledger: Path
    journal: Path


@pytest.fixture
def site(tmp_path: Path) -> Site:
    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    ledger = tmp_path / "ledger.txt"
    (functions / "work-background.py").write_text(
        textwrap.dedent(HANDLER.format(ledger=str(ledger)))
    )
    return Site(tmp_path, ledger, tmp_path / "journal.sqlite3")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        self.process.wait(30)


def start_server(site: Site, *extra: str, port: int | None = None) -> Server:
    port = port or free_port()
    log = site.root / f"server-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = _spawn(site, port, out, *extra)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited at start:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Server(process, port, log)
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"server did not start in 30 s:\n{log.read_text()}")


def _spawn(site: Site, port: int, out: IO[bytes], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bgfunctions",
            "serve",
            str(site.root),
            "--port",
            str(port),
            "--journal",
            str(site.journal),
            "--no-reload",
            "--retry-delays",
            ",".join(str(d) for d in RETRY_DELAYS),
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop(signal.SIGKILL)


@dataclass
class Burst:
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    errors: int = 0


async def burst(ports: list[int], total: int, on_accepted: int, kill: object) -> Burst:
    """Send ``total`` requests from CLIENTS concurrent clients; call ``kill()`` once
    ``on_accepted`` 202s have come back."""
    result = Burst()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    killed = False

    async def client(n: int) -> None:
        nonlocal killed
        async with httpx.AsyncClient(timeout=5.0) as http:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                port = ports[(i + n) % len(ports)]
                url = f"http://127.0.0.1:{port}/.netlify/functions/work-background"
                try:
                    response = await http.post(url, content=f"job {i}")
                except httpx.HTTPError:
                    result.errors += 1
                    continue
                if response.status_code == 202:
                    result.accepted.append(response.headers["x-nf-request-id"])
                    if not killed and len(result.accepted) >= on_accepted:
                        killed = True
                        kill()  # type: ignore[operator]
                else:
                    result.refused += 1

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return result


@dataclass
class Ledger:
    starts: dict[tuple[str, int], list[tuple[int, float]]]
    ends: dict[tuple[str, int], list[tuple[int, float]]]

    @classmethod
    def read(cls, path: Path) -> Ledger:
        starts: dict[tuple[str, int], list[tuple[int, float]]] = collections.defaultdict(list)
        ends: dict[tuple[str, int], list[tuple[int, float]]] = collections.defaultdict(list)
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) != 5:
                    continue  # a line torn by the kill
                kind, rid, attempt, pid, at = parts
                target = starts if kind == "start" else ends
                target[rid, int(attempt)].append((int(pid), float(at)))
        return cls(starts, ends)

    def completed(self) -> set[str]:
        return {rid for rid, _ in self.ends}


def wait_until_done(site: Site, accepted: list[str], timeout: float = 120.0) -> Ledger:
    deadline = time.monotonic() + timeout
    while True:
        ledger = Ledger.read(site.ledger)
        if set(accepted) <= ledger.completed() or time.monotonic() > deadline:
            return ledger
        time.sleep(0.2)


def report(name: str, accepted: list[str], ledger: Ledger) -> tuple[int, int, int]:
    lost = len(set(accepted) - ledger.completed())
    runs = collections.Counter(rid for rid, _ in ledger.starts)
    duplicates = sum(1 for rid in set(accepted) if runs[rid] > 1)
    overlapping = 0
    for key, starts in ledger.starts.items():
        # two runs of the same attempt number, or the same attempt started twice
        if len(starts) > 1:
            overlapping += 1
        del key
    print(
        f"\n[{name}] accepted={len(accepted)} lost={lost} duplicates={duplicates} "
        f"overlapping_attempt_runs={overlapping}"
    )
    return lost, duplicates, overlapping


def integrity_ok(journal: Path) -> None:
    with sqlite3.connect(journal) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def in_flight(journal: Path) -> int:
    with sqlite3.connect(journal) as db:
        row = db.execute(
            "SELECT count(*) FROM invocations WHERE state IN ('accepted', 'running', "
            "'retry_scheduled')"
        ).fetchone()
    return int(row[0])


def test_kill_9_during_a_burst_loses_nothing(site: Site, servers: list[Server]) -> None:
    """SIGKILL of `bgfunctions serve` mid-burst, then a restart: everything accepted runs."""
    server = start_server(site)
    servers.append(server)
    at_kill: dict[str, int] = {}

    def kill() -> None:
        at_kill["in_flight"] = in_flight(site.journal)
        os.kill(server.process.pid, signal.SIGKILL)

    result = asyncio.run(burst([server.port], BURST, BURST // 3, kill))
    server.process.wait(10)
    restarted = start_server(site, port=server.port)
    servers.append(restarted)
    # the rest of the burst, now that the server is back
    more = asyncio.run(burst([restarted.port], BURST - len(result.accepted), 10**9, lambda: None))
    accepted = result.accepted + more.accepted
    ledger = wait_until_done(site, accepted)
    lost, _duplicates, overlapping = report("kill -9 serve", accepted, ledger)
    restarted.stop()
    integrity_ok(site.journal)
    assert at_kill["in_flight"] >= 50, at_kill
    assert lost == 0
    assert overlapping == 0
