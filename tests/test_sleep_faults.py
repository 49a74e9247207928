"""A durable sleep survives kill -9 of `bgfunctions serve` (SQLite journal, thread executor):
a burst of invocations that each run a step, sleep a short real time and run a step is killed
while every one sleeps; the restarted server wakes each at its time, and no committed step runs
again (counted in the handler's own fsynced ledger). Real servers, real time."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bgfunctions.invocation import Outcome, State
from bgfunctions.journals.sqlite import SQLiteJournal
from test_faults import Server, Site, integrity_ok, servers, start_server  # noqa: F401

pytestmark = [pytest.mark.server, pytest.mark.realtime]

COUNT = 40
NAP = 2.0
"""Seconds each invocation sleeps: long enough for the burst to be asleep before the kill."""

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
    return time.time()


def handler(request, context):
    context.step.run("before", _write, f"before {{context.request_id}}")
    context.step.sleep("nap", seconds={nap})
    context.step.run("after", _write, f"after {{context.request_id}}")
"""


@pytest.fixture
def site(tmp_path: Path) -> Site:
    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    ledger = tmp_path / "ledger.txt"
    source = HANDLER.format(ledger=str(ledger), nap=NAP)
    (functions / "nap-background.py").write_text(textwrap.dedent(source))
    return Site(tmp_path, ledger, tmp_path / "journal.sqlite3")


def _count(journal: Path, state: str) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        query = "SELECT count(*) FROM invocations WHERE state = ?"
        return int(db.execute(query, (state,)).fetchone()[0])


def _until(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)  # polling the server's state, not timing a schedule
    raise AssertionError(f"still waiting for {what} after {timeout} s")


def test_kill_9_while_a_burst_sleeps_then_every_one_wakes_once(
    site: Site,
    servers: list[Server],  # noqa: F811
) -> None:
    server = start_server(site)
    servers.append(server)
    url = f"http://127.0.0.1:{server.port}/.netlify/functions/nap-background"
    accepted = []
    with httpx.Client(timeout=10.0) as client:
        for _ in range(COUNT):
            response = client.post(url)
            assert response.status_code == 202, response
            accepted.append(response.headers["x-nf-request-id"])
    _until(f"{COUNT} sleeping", lambda: _count(site.journal, "sleeping") == COUNT, 30.0)
    server.stop(signal.SIGKILL)
    killed_at = time.time()
    integrity_ok(site.journal)
    lines = site.ledger.read_text().splitlines()
    assert not [line for line in lines if line.startswith("after")]  # none woke before the kill

    restarted = start_server(site)
    servers.append(restarted)
    _until(f"{COUNT} succeeded", lambda: _count(site.journal, "succeeded") == COUNT, 60.0)
    restarted.stop()

    seen = Counter(site.ledger.read_text().split())
    for request_id in accepted:  # each step ran exactly once, across the kill
        assert seen[request_id] == 2, request_id
    journal = SQLiteJournal(site.journal, read_only=True)
    try:
        for request_id in accepted:
            record = journal.get(request_id)
            assert record is not None
            assert record.state is State.SUCCEEDED
            assert [a.outcome for a in record.attempts] == [Outcome.SUSPENDED, Outcome.SUCCEEDED]
            before, nap, after = record.steps
            assert (before.id, nap.kind, after.id) == ("before", "sleep", "after")
            assert nap.ended_at - nap.started_at == pytest.approx(NAP)
            assert record.attempts[1].started_at >= nap.ended_at  # woke no earlier than due
            # _write returns when it wrote: after the wake time, and after the kill.
            assert after.value() >= max(nap.ended_at, killed_at)
    finally:
        journal.close()
