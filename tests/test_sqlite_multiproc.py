"""Several processes writing one SQLite journal, as uvicorn's workers do (issue 13, item 5).

Real processes on a real file: two servers accept bursts into one journal and run them; one is
killed with SIGKILL mid-burst. Every accept that was answered 202 is in the file and finishes,
its attempts taken over by the survivor. And the writers' turn (``<journal>-lock``, see
``bgfunctions.journals._sqlite_lock``): a process that holds it too long makes the others'
writes fail in time (a 503, nothing written), and a dead holder never blocks anybody.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bgfunctions.errors import JournalUnavailableError
from bgfunctions.invocation import InvocationRecord, Outcome
from bgfunctions.journals.sqlite import SQLiteJournal

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock and SIGKILL")

# A server: an App over a ThreadExecutor over the shared journal. Four threads accept a burst
# each and print every request id answered 202 (after the commit, as a 202 goes out); then
# it runs its own and the others' work until its stdin closes.
_SERVER = r"""
import sys, threading, time
from bgfunctions import App, Config, Registry, Request, RetryPolicy, ThreadExecutor
from bgfunctions.journals.sqlite import SQLiteJournal

path, per_thread = sys.argv[1], int(sys.argv[2])

def job(request, context):
    time.sleep(0.01)  # long enough that some attempts are running when a process dies

registry = Registry()
registry.add("job-background", job, config=Config(background=True))
journal = SQLiteJournal(path, lease=1.0)
executor = ThreadExecutor(journal=journal, maintenance_interval=0.1, max_workers=4)
app = App(registry, executor=executor, retry=RetryPolicy(delays=(0.05, 0.05, 0.05)))
app.start()
out = threading.Lock()

def burst():
    for _ in range(per_thread):
        response = app.handle(Request("POST", "/.netlify/functions/job-background"))
        with out:
            print(response.status, response.headers["x-nf-request-id"], flush=True)

threads = [threading.Thread(target=burst) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("burst done", flush=True)
sys.stdin.read()
app.shutdown(wait=True, grace=5.0)
journal.close()
"""


class _Server:
    """A server subprocess; a thread reads what it prints (select() on a buffered pipe would
    miss lines already read into the buffer)."""

    def __init__(self, path: Path, per_thread: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(path), str(per_thread)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.accepted: list[str] = []
        self.refused = 0
        self.burst_done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # cut by SIGKILL mid-line: not a whole 202, so not counted as one
            if line == "burst done\n":
                self.burst_done.set()
                continue
            status, request_id = line.split()
            if status == "202":
                self.accepted.append(request_id)
            else:
                self.refused += 1

    def stop(self) -> None:
        """Close stdin (a clean shutdown), SIGKILL by pid if it does not end."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(30)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(10)
        self.proc.stdout.close()


def _states(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT request_id, state FROM invocations").fetchall())
    finally:
        conn.close()


def test_two_processes_share_one_journal_and_a_killed_ones_work_is_finished(
    tmp_path: Path,
) -> None:
    """Two servers accept into one file; one is SIGKILLed mid-burst. Nothing answered 202 is
    lost, and every invocation in the file (the dead one's included: waiting, or running
    when it died) is finished by the survivor, as succeeded."""
    path = tmp_path / "journal.db"
    SQLiteJournal(path).close()  # the schema first: both servers then only open it
    victim = _Server(path, per_thread=400)
    survivor = _Server(path, per_thread=150)
    try:
        deadline = time.monotonic() + 60
        while len(victim.accepted) < 300:  # mid-burst: it has 1,600 to accept
            assert time.monotonic() < deadline, "the victim accepted too little"
            assert victim.proc.poll() is None, "the victim ended by itself"
            time.sleep(0.01)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        assert not victim.burst_done.is_set()
        victim._reader.join(10)  # what it printed before it died: each line after its commit
        assert survivor.burst_done.wait(60), "the survivor did not finish its burst"
        assert survivor.refused == 0
        accepted = victim.accepted + survivor.accepted
        assert len(set(accepted)) == len(accepted)
        # Every 202 is a committed row; then every row finishes, taken over by the survivor.
        states = _states(path)
        assert set(accepted) <= set(states)
        while any(state != "succeeded" for state in states.values()):
            assert time.monotonic() < deadline + 60, {
                s: list(states.values()).count(s) for s in set(states.values())
            }
            time.sleep(0.1)
            states = _states(path)
        assert set(accepted) <= set(states)
    finally:
        for server in (victim, survivor):
            server.stop()
    journal = SQLiteJournal(path, read_only=True)
    interrupted = [
        r for r in journal.select() if any(a.outcome is Outcome.INTERRUPTED for a in r.attempts)
    ]
    journal.close()
    # Not required (the victim may have had nothing running at the kill), only reported.
    print(f"{len(accepted)} accepted, {len(interrupted)} taken over after an interrupted attempt")


_HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_a_process_holding_the_writers_turn_fails_writes_in_time_and_a_dead_one_blocks_none(
    tmp_path: Path,
) -> None:
    """Another process holds the writers' lock (stopped, hung): an accept fails after
    busy_timeout with JournalUnavailableError (a 503) and writes nothing. Once that process is
    killed, the kernel drops its lock and the next accept commits."""
    path = tmp_path / "journal.db"
    journal = SQLiteJournal(path, busy_timeout=0.2)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"{path}-lock"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(JournalUnavailableError, match="locked") as raised:
            journal.accepted(
                InvocationRecord(
                    request_id="r1", function="job", method="POST", url="/", accepted_at=0.0
                )
            )
        assert raised.value.retry_after == 1.0
        assert journal.get("r1") is None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    journal.accepted(
        InvocationRecord(request_id="r2", function="job", method="POST", url="/", accepted_at=0.0)
    )
    assert journal.get("r2") is not None
    journal.close()
