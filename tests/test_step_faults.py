"""Fault tests for durable steps (issue 14): kill -9 of `bgfunctions serve` in the middle of a
burst of multi-step invocations, then a restart.

Each invocation runs three steps (``reserve``, ``charge``, ``email``); each step's function
appends ``RID ATTEMPT STEP`` to its own fsynced ledger before it returns. Afterwards:

- no accepted invocation is lost, and every one succeeds with its three steps committed;
- no step whose result was committed ran again: a step committed by attempt N has no run logged
  by a later attempt (a run cut before its commit may run again: at least once);
- an attempt held inside a step-using handler at the kill resumes after its committed step.

The scaffolding (servers, the burst, the handler's start/end ledger) is test_faults.py's.
"""

from __future__ import annotations

import collections
import textwrap
from pathlib import Path

import pytest

from bgfunctions.invocation import InvocationRecord, State
from bgfunctions.journals.sqlite import SQLiteJournal
from test_faults import (  # fixtures and helpers; no test is imported (it would run twice)
    HANDLER,
    Server,
    Site,
    kill_burst_restart,
    servers,
    site,
)

pytestmark = [pytest.mark.server, pytest.mark.realtime]
__all__ = ["servers", "site"]  # the fixtures this module takes from test_faults.py

STEPS = ("reserve", "charge", "email")

STEPPED = """
def _step(rid, attempt, name):
    time.sleep(0.005)
    fd = os.open(LEDGER + ".steps", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{{rid}} {{attempt}} {{name}}\\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return name


def handler(request, context):
    _write(f"start {{context.request_id}} {{context.attempt}} {{os.getpid()}} {{time.time():.6f}}")
    for name in {steps!r}:
        context.step.run(name, _step, context.request_id, context.attempt, name)
        if request.body == b"hold" and context.attempt == 1:
            time.sleep(600)  # still inside the handler, one step committed, at the kill
    _write(f"end {{context.request_id}} {{context.attempt}} {{os.getpid()}} {{time.time():.6f}}")
"""


def step_runs(site: Site) -> dict[tuple[str, str], list[int]]:
    """``(request id, step) -> [attempt that ran it, ...]`` from the steps' own ledger."""
    runs: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    path = Path(str(site.ledger) + ".steps")
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in STEPS and parts[1].isdigit():  # else torn by the kill
            runs[parts[0], parts[2]].append(int(parts[1]))
    return runs


def records(journal: Path) -> dict[str, InvocationRecord]:
    """Every record of the journal file, steps included, read as `bgfunctions invocations`
    reads it."""
    reader = SQLiteJournal(journal, read_only=True)
    try:
        ids = [r.request_id for r in reader.select(limit=10**6)]
        return {rid: record for rid in ids if (record := reader.get(rid)) is not None}
    finally:
        reader.close()


def stepped_site(site: Site) -> Site:
    head = HANDLER.split("def handler(", 1)[0].format(ledger=str(site.ledger))
    path = site.root / "netlify" / "functions" / "work-background.py"
    path.write_text(textwrap.dedent(head + STEPPED.format(steps=STEPS)))
    return site


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_kill_9_mid_burst_runs_no_committed_step_twice(
    site: Site, servers: list[Server], executor: str
) -> None:
    """1,000 three-step invocations, kill -9 a third of the way in, restart: every accepted
    invocation succeeds with its 3 steps; no committed step ran again; some steps cut before
    their commit did (at least once)."""
    stepped_site(site)
    outcome = kill_burst_restart(
        site, servers, f"kill -9 serve --executor {executor}: steps", "--executor", executor
    )
    assert outcome.accepted >= 500
    stored = records(site.journal)
    runs = step_runs(site)
    again = 0  # steps run again because their first run was cut before its commit
    for rid in stored:
        record = stored[rid]
        assert record.state is State.SUCCEEDED, (rid, record.state)
        assert [s.id for s in record.steps] == list(STEPS), rid
        for step in record.steps:
            attempts = runs[rid, step.id]
            assert attempts.count(step.attempt) == 1, (rid, step.id, attempts)
            # Never after its commit; before it, only by attempts that ended without one.
            assert max(attempts) == step.attempt, (rid, step.id, attempts, step.attempt)
            again += len(attempts) - 1
    # The held attempt: step 1 committed by attempt 1, the retry replays it and goes on.
    held = [r for r in stored.values() if r.body == b"hold"]
    assert len(held) == 1
    assert (held[0].steps[0].id, held[0].steps[0].attempt) == ("reserve", 1)
    assert runs[held[0].request_id, "reserve"] == [1]
    assert held[0].attempt_count >= 2
    print(f"[{outcome.name}] steps run again after a cut before their commit: {again}")
