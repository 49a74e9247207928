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
import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
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

from bgfunctions.invocation import InvocationRecord, Outcome, State
from bgfunctions.journals.sqlite import SQLiteJournal

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
    if request.body == b"hold" and context.attempt == 1:
        time.sleep(600)  # still running when the test kills the server
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
    ``on_accepted`` 202s have come back. ``ports`` is read per request: ``kill`` may remove
    the port of the server it killed."""
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

    def starts_ids(self) -> set[str]:
        return {rid for rid, _ in self.starts}


def wait_until_done(site: Site, accepted: list[str], timeout: float = 120.0) -> Ledger:
    deadline = time.monotonic() + timeout
    while True:
        ledger = Ledger.read(site.ledger)
        if set(accepted) <= ledger.completed() or time.monotonic() > deadline:
            return ledger
        time.sleep(0.2)


@dataclass
class Figures:
    """What a fault test prints and asserts."""

    name: str
    accepted: int
    lost: int
    duplicates: int
    overlapping: int
    in_flight_at_kill: int | None = None
    drain_s: float | None = None
    refused: int = 0
    interrupted: int = 0

    def print(self) -> None:
        extra = ""
        if self.in_flight_at_kill is not None:
            extra += f" in_flight_at_kill={self.in_flight_at_kill}"
        if self.drain_s is not None:
            extra += f" drain_s={self.drain_s:.1f}"
        print(
            f"\n[{self.name}] accepted={self.accepted} lost={self.lost} "
            f"duplicates={self.duplicates} overlapping_attempt_runs={self.overlapping} "
            f"refused={self.refused} interrupted_attempts={self.interrupted}{extra}"
        )


def figures(name: str, accepted: list[str], ledger: Ledger) -> Figures:
    lost = len(set(accepted) - ledger.completed())
    runs = collections.Counter(rid for rid, _ in ledger.starts)
    duplicates = sum(1 for rid in set(accepted) if runs[rid] > 1)
    # the same attempt number of one request started more than once: two processes ran it
    overlapping = sum(1 for starts in ledger.starts.values() if len(starts) > 1)
    return Figures(name, len(accepted), lost, duplicates, overlapping)


def report(name: str, accepted: list[str], ledger: Ledger) -> tuple[int, int, int]:
    result = figures(name, accepted, ledger)
    result.print()
    return result.lost, result.duplicates, result.overlapping


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


def wait_for_a_running_attempt(journal: Path, timeout: float = 10.0) -> None:
    """Return once the journal shows an attempt running (polled, up to ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(sqlite3.connect(journal)) as db:
        while time.monotonic() < deadline:
            query = "SELECT count(*) FROM invocations WHERE state = 'running'"
            if db.execute(query).fetchone()[0]:
                return
            time.sleep(0.002)  # polling the server's state, not timing a schedule
    raise AssertionError(f"no attempt was running within {timeout} s")


def hold_an_attempt(site: Site, server: Server, timeout: float = 10.0) -> str:
    """Send a request whose first attempt runs until the server dies; return its request id
    once the handler has started (its ledger line is there)."""
    url = f"http://127.0.0.1:{server.port}/.netlify/functions/work-background"
    response = httpx.post(url, content="hold", timeout=5.0)
    assert response.status_code == 202, response
    request_id = response.headers["x-nf-request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (request_id, 1) in Ledger.read(site.ledger).starts:
            return request_id
        time.sleep(0.01)  # polling the handler's ledger, not timing a schedule
    raise AssertionError(f"the held attempt of {request_id} did not start within {timeout} s")


def gone_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has exited (or is a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.05)  # polling a process's state, not timing a schedule
    return False


def test_kill_9_during_a_burst_loses_nothing(site: Site, servers: list[Server]) -> None:
    """SIGKILL of `bgfunctions serve` mid-burst, then a restart: everything accepted runs."""
    server = start_server(site)
    servers.append(server)
    at_kill: dict[str, int] = {}

    def kill() -> None:
        # Land while an attempt runs (not in the moment between two): that is what recovery
        # must take over as interrupted.
        wait_for_a_running_attempt(site.journal)
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


# -- helpers for the tests below ---------------------------------------------------------------

RETRY_TOLERANCE = 0.05
"""Seconds: wall clock (records, ledger) against the monotonic clock the executor's timers use."""


def records(journal: Path) -> dict[str, InvocationRecord]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT request_id, record FROM invocations").fetchall()
    return {rid: InvocationRecord.from_json(json.loads(text)) for rid, text in rows}


def check_retry_delays(
    journal: Path, accepted: list[str], ledger: Ledger, found_after: float
) -> int:
    """For each attempt interrupted by the kill: it was found dead after ``found_after`` (the
    restart, or the kill for survivors), and its next attempt started no sooner than the
    schedule's delay after that, in the journal and in the handler's ledger. Returns how many
    interrupted attempts were checked."""
    checked = 0
    stored = records(journal)
    for rid in accepted:
        attempts = stored[rid].attempts
        for attempt, following in itertools.pairwise(attempts):
            if attempt.outcome is not Outcome.INTERRUPTED:
                continue
            assert attempt.ended_at is not None
            assert attempt.ended_at >= found_after - RETRY_TOLERANCE, (rid, attempt)
            due = attempt.ended_at + RETRY_DELAYS[attempt.number - 1] - RETRY_TOLERANCE
            assert following.started_at >= due, (rid, attempt, following)
            for _pid, at in ledger.starts[rid, following.number]:
                assert at >= due, (rid, following.number, at, due)
            checked += 1
    return checked


def kill_burst_restart(site: Site, servers: list[Server], name: str, *extra: str) -> Figures:
    """The kill -9 scenario with ``extra`` serve options; returns its figures, checked."""
    server = start_server(site, *extra)
    servers.append(server)
    at_kill: dict[str, int] = {}
    # One attempt that is surely running at the kill, whatever the timing of the 20 ms ones:
    # recovery must take it over as interrupted and retry it on the schedule.
    held = hold_an_attempt(site, server)

    def kill() -> None:
        at_kill["in_flight"] = in_flight(site.journal)
        os.kill(server.process.pid, signal.SIGKILL)

    result = asyncio.run(burst([server.port], BURST, BURST // 3, kill))
    result.accepted.append(held)
    server.process.wait(10)
    [(runner, _at)] = Ledger.read(site.ledger).starts[held, 1]
    if runner != server.process.pid:  # a worker process: it must not outlive its server
        assert gone_within(runner, 10.0), f"worker {runner} still runs after its server died"
    restart_at = time.time()
    began = time.monotonic()
    restarted = start_server(site, *extra, port=server.port)
    servers.append(restarted)
    more = asyncio.run(burst([restarted.port], BURST - len(result.accepted), 10**9, lambda: None))
    accepted = result.accepted + more.accepted
    ledger = wait_until_done(site, accepted)
    outcome = figures(name, accepted, ledger)
    outcome.drain_s = time.monotonic() - began
    outcome.in_flight_at_kill = at_kill.get("in_flight")
    outcome.refused = result.refused + more.refused
    restarted.stop()
    outcome.interrupted = check_retry_delays(site.journal, accepted, ledger, restart_at)
    outcome.print()
    integrity_ok(site.journal)
    assert at_kill["in_flight"] >= 50, at_kill
    assert outcome.lost == 0
    assert outcome.overlapping == 0
    return outcome


# -- 1. the process executor -------------------------------------------------------------------


def test_kill_9_with_the_process_executor_loses_nothing(site: Site, servers: list[Server]) -> None:
    """SIGKILL of `serve --executor process` mid-burst, then a restart: everything accepted runs."""
    # With two worker processes and 20 ms handlers the kill can land in the moment between
    # attempts; 50 ms handlers make it catch some running, which this test is about.
    handler = site.root / "netlify" / "functions" / "work-background.py"
    handler.write_text(handler.read_text().replace("time.sleep(0.02)", "time.sleep(0.05)"))
    outcome = kill_burst_restart(site, servers, "kill -9 serve --executor process", *PROCESS)
    assert outcome.interrupted >= 1  # the kill caught attempts running in worker processes


PROCESS = ("--executor", "process")


# -- 5. retry delays, with the thread executor ---------------------------------------------------


def test_interrupted_attempts_follow_the_retry_schedule(site: Site, servers: list[Server]) -> None:
    """Attempts cut by kill -9 are retried no sooner than the first delay after being found
    dead, and no attempt number of one request runs twice."""
    outcome = kill_burst_restart(site, servers, "kill -9 serve: retry schedule")
    assert outcome.interrupted >= 1


# -- 2. several servers on one journal -----------------------------------------------------------


def test_servers_sharing_a_journal_finish_the_work_of_a_killed_one(
    site: Site, servers: list[Server]
) -> None:
    """Three servers on one file; kill -9 of one mid-burst: the others run everything, once
    per attempt."""
    # Three servers drain 20 ms handlers as fast as the burst comes: slower ones keep a
    # backlog, so that the kill lands with work in flight. At 0.1 s the backlog at the kill was
    # about 270, but 33 once when other processes slowed the clients; at 0.3 s the servers
    # drain at most 60 a second, so fewer than 50 in flight needs clients 3x slower than that.
    handler = site.root / "netlify" / "functions" / "work-background.py"
    handler.write_text(handler.read_text().replace("time.sleep(0.02)", "time.sleep(0.3)"))
    group = [start_server(site) for _ in range(3)]
    servers.extend(group)
    victim = group[0]
    ports = [s.port for s in group]
    at_kill: dict[str, float] = {}

    def kill() -> None:
        at_kill["in_flight"] = in_flight(site.journal)
        at_kill["at"] = time.time()
        os.kill(victim.process.pid, signal.SIGKILL)
        ports.remove(victim.port)  # the rest of the burst goes to the survivors

    began = time.monotonic()
    result = asyncio.run(burst(ports, BURST, BURST // 3, kill))
    victim.process.wait(10)
    ledger = wait_until_done(site, result.accepted)
    outcome = figures("kill -9 one of 3 servers on one journal", result.accepted, ledger)
    outcome.drain_s = time.monotonic() - began
    outcome.in_flight_at_kill = int(at_kill["in_flight"])
    outcome.refused = result.refused
    for server in group[1:]:
        server.stop()
    outcome.interrupted = check_retry_delays(site.journal, result.accepted, ledger, at_kill["at"])
    outcome.print()
    integrity_ok(site.journal)
    stored = records(site.journal)
    assert all(stored[rid].state is State.SUCCEEDED for rid in result.accepted)
    assert at_kill["in_flight"] >= 50, at_kill
    assert outcome.interrupted >= 1  # the victim's running attempts, taken over and retried
    assert outcome.lost == 0
    assert outcome.overlapping == 0


# -- 3. a locked or full journal under a running server ----------------------------------------

BUSY_TIMEOUT = 5.0  # SQLiteJournal's default, which `bgfunctions serve` keeps


def post(port: int, n: int, timeout: float = 30.0) -> httpx.Response:
    url = f"http://127.0.0.1:{port}/.netlify/functions/work-background"
    return httpx.post(url, content=f"job {n}", timeout=timeout)


def rows(journal: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        return {r[0] for r in db.execute("SELECT request_id FROM invocations")}


def test_a_locked_journal_answers_503_never_202_then_recovers(
    site: Site, servers: list[Server]
) -> None:
    """A BEGIN EXCLUSIVE held past the busy timeout: 503 with Retry-After, no 202, no row;
    released, the server accepts again and every 202 is a committed row."""
    server = start_server(site)
    servers.append(server)
    accepted = [post(server.port, i).headers["x-nf-request-id"] for i in range(5)]
    wait_until_done(site, accepted)  # nothing of ours is mid-claim when the lock lands
    hold = BUSY_TIMEOUT + 2.0
    answers: list[tuple[float, httpx.Response]] = []
    lock = sqlite3.connect(site.journal, isolation_level=None, timeout=10)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:

            def timed(n: int) -> None:
                response = post(server.port, n)
                answers.append((time.monotonic(), response))

            futures = [pool.submit(timed, 100 + n) for n in range(8)]
            time.sleep(max(0.0, locked_at + hold - time.monotonic()))
            lock.execute("ROLLBACK")
            released_at = time.monotonic()
            for future in futures:
                future.result()
    finally:
        lock.close()
    during = [r for at, r in answers if at < released_at]
    after_release = [r for at, r in answers if at >= released_at]
    assert during, "no answer came back while the lock was held"
    assert all(r.status_code == 503 for r in during), [r.status_code for r in during]
    assert all(int(r.headers["retry-after"]) >= 1 for r in during)
    accepted += [r.headers["x-nf-request-id"] for r in after_release if r.status_code == 202]
    accepted += [post(server.port, 200 + i).headers["x-nf-request-id"] for i in range(5)]
    ledger = wait_until_done(site, accepted, timeout=30)
    server.stop()
    outcome = figures("journal locked past busy_timeout", accepted, ledger)
    outcome.refused = sum(1 for _, r in answers if r.status_code == 503)
    outcome.print()
    integrity_ok(site.journal)
    assert rows(site.journal) == set(accepted)  # the 202s, and nothing else, were committed
    assert outcome.lost == 0
    assert outcome.overlapping == 0


def test_a_full_journal_answers_503_without_a_row_and_every_202_runs(
    site: Site, servers: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal capped at 24 pages (SQLiteJournal(max_size_bytes=...), set through the dev
    server's BGFUNCTIONS_JOURNAL_MAX_SIZE): a request that does not fit gets 503 with Retry-After
    and leaves no row; the 202s are exactly the rows, and every one of them runs once space is
    freed. A 202 after a 503 is allowed: the file is not latched full (docs/durability.md)."""
    monkeypatch.setenv("BGFUNCTIONS_JOURNAL_MAX_SIZE", str(24 * 4096))  # 4 KiB pages
    server = start_server(site)
    servers.append(server)
    accepted: list[str] = []
    refused: list[str] = []
    for i in range(2000):
        response = post(server.port, i)
        rid = response.headers["x-nf-request-id"]
        if response.status_code == 202:
            accepted.append(rid)
            continue
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        # The client learns nothing internal: no path, no SQLite error; the log has them.
        assert rid in response.text, response.text
        assert str(site.journal) not in response.text
        assert "full" not in response.text
        refused.append(rid)
        if len(refused) >= 10:
            break
    assert accepted
    assert len(refused) == 10
    # What fit in the file runs (its claims may have to wait for space too).
    stored = rows(site.journal)
    assert set(accepted) <= stored  # every 202 is a committed row...
    assert not stored & set(refused)  # ...and no 503 left one
    assert stored == set(accepted)
    logged = server.log.read_text()
    assert all(rid in logged for rid in refused)
    assert "full" in logged  # SQLite's reason, for the operator
    # Free space as an operator would: delete finished rows; pages go to the free list.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(site.journal, timeout=10)) as db, db:
            db.execute("DELETE FROM invocations WHERE state = 'succeeded'")
        response = post(server.port, 5000)
        if response.status_code == 202:
            break
        time.sleep(0.5)  # waiting for the server to finish attempts, not timing a schedule
    assert response.status_code == 202, response.text
    accepted.append(response.headers["x-nf-request-id"])
    ledger = wait_until_done(site, accepted, timeout=60)
    server.stop()
    outcome = figures("journal full (max_size_bytes 24 pages)", accepted, ledger)
    outcome.refused = len(refused)
    outcome.print()
    assert outcome.lost == 0  # nothing that got a 202 was lost
    assert not set(refused) & set(Ledger.read(site.ledger).starts_ids())
    assert outcome.overlapping == 0
    integrity_ok(site.journal)


# -- 4. damaged or foreign journal files -----------------------------------------------------------


def make_journal(path: Path, count: int) -> None:
    """A closed journal holding ``count`` accepted invocations of the site's function."""
    journal = SQLiteJournal(path)
    try:
        for i in range(count):
            journal.accepted(
                InvocationRecord(
                    request_id=f"seed-{i}",
                    function="work-background",
                    method="POST",
                    url="/.netlify/functions/work-background",
                    accepted_at=time.time(),
                )
            )
    finally:
        journal.close()


def flip(path: Path, offset: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + length):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def root_page(path: Path, name: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return int(row[0])


def damaged(kind: str, path: Path) -> None:
    if kind == "foreign database":
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            db.execute("INSERT INTO users (name) VALUES ('ada')")
        return
    if kind == "garbage bytes":
        path.write_bytes(bytes(range(256)) * 64)
        return
    make_journal(path, 300)
    page_size = 4096
    if kind == "header magic flipped":
        flip(path, 0, 4)
    elif kind == "header page size flipped":
        flip(path, 16, 2)
    elif kind == "table b-tree page flipped":
        flip(path, (root_page(path, "invocations") - 1) * page_size, 8)
    elif kind == "index b-tree page flipped":
        flip(path, (root_page(path, "invocations_state_next") - 1) * page_size, 8)
    else:
        raise AssertionError(kind)


DAMAGE = (
    "header magic flipped",
    "header page size flipped",
    "table b-tree page flipped",
    "index b-tree page flipped",
    "foreign database",
    "garbage bytes",
)


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_or_foreign_journal_is_refused_at_start(site: Site, kind: str) -> None:
    """serve exits non-zero at once with one line naming the file and why; the file is as
    it was."""
    damaged(kind, site.journal)
    before = site.journal.read_bytes()
    siblings = sorted(p.name for p in site.root.iterdir())
    began = time.monotonic()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bgfunctions", "serve", str(site.root), "--no-reload"),
            *("--port", str(free_port()), "--journal", str(site.journal)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - began
    print(f"\n[refused: {kind}] exit={done.returncode} in {took:.2f} s: {done.stderr.strip()}")
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("bgfunctions: error: ")
    assert str(site.journal) in lines[0]
    assert "refusing" in lines[0]
    assert site.journal.read_bytes() == before
    # SQLite's read-only open of a WAL-mode file adds an empty -wal and its -shm index beside
    # it; nothing else appears, and no page of the journal was written anywhere.
    added = {p.name for p in site.root.iterdir()} - set(siblings)
    name = site.journal.name
    assert added <= {f"{name}-wal", f"{name}-shm"}, added
    wal = site.journal.with_name(f"{name}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert took < 15


WAL_HEADER = 32
FRAME_HEADER = 24


def cut_after_last_commit(wal: Path) -> int:
    """Truncate ``wal`` at the frame boundary after its last valid commit frame (frames of
    the current generation, that is with the header's salts); returns the new size."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    frame = FRAME_HEADER + page_size
    end = WAL_HEADER
    offset = WAL_HEADER
    while offset + frame <= len(data):
        header = data[offset : offset + FRAME_HEADER]
        if header[8:16] != salts:
            break
        offset += frame
        if int.from_bytes(header[4:8], "big"):  # a commit frame: the database size after it
            end = offset
    with wal.open("r+b") as f:
        f.truncate(end)
    return end


def test_a_torn_wal_tail_loses_no_acknowledged_invocation(
    site: Site, servers: list[Server]
) -> None:
    """The db and WAL as kill -9 leaves them, the WAL cut after its last commit plus a torn
    frame: a restart on them runs every invocation that was answered 202."""
    server = start_server(site)
    servers.append(server)
    result = asyncio.run(burst([server.port], 300 * SCALE, 10**9, lambda: None))
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    wal = site.journal.with_name(site.journal.name + "-wal")
    assert wal.exists()
    assert wal.stat().st_size > WAL_HEADER
    copy = site.root / "copy.sqlite3"
    copy_wal = copy.with_name(copy.name + "-wal")
    shutil.copyfile(site.journal, copy)
    shutil.copyfile(wal, copy_wal)
    size = cut_after_last_commit(copy_wal)
    page_size = int.from_bytes(copy_wal.read_bytes()[8:12], "big")
    with copy_wal.open("ab") as f:  # a later transaction torn mid-frame by the crash
        f.write(bytes(range(256)) * ((FRAME_HEADER + page_size) * 3 // 2 // 256))
    began = time.monotonic()
    restarted = start_server(site, "--journal", str(copy))
    servers.append(restarted)
    ledger = wait_until_done(site, result.accepted)
    drain = time.monotonic() - began
    restarted.stop()
    outcome = figures("torn WAL tail", result.accepted, ledger)
    outcome.drain_s = drain
    outcome.print()
    print(f"[torn WAL tail] wal cut at {size} bytes, then {(FRAME_HEADER + page_size) * 3 // 2}")
    integrity_ok(copy)
    assert set(result.accepted) <= rows(copy)
    assert outcome.lost == 0
    assert outcome.overlapping == 0
