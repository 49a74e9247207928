"""kill -9 of a Celery worker in the middle of a burst of 500 three-step invocations (issue 14).

The scaffolding is test_celery_faults.py's (real brokers, a SQLite journal shared by the web
tier and worker subprocesses, the handler's fsynced ledger); only the handler differs: each
invocation runs three durable steps, and each step's function appends ``step ID ATTEMPT NAME``
to the ledger before it returns. Afterwards every accepted invocation succeeded with its three
steps, and no step whose result was committed ran again (a step cut before its commit may).
"""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from bgfunctions import SQLiteJournal, State
from test_celery import BROKERS, _need
from test_celery_faults import BURST, CLOCK, HANDLER, Cluster, _purge_shared, _tail_logs, _until

pytestmark = [pytest.mark.server, pytest.mark.realtime]

STEPS = ("reserve", "charge", "email")

STEPPED = (
    HANDLER.split("def handler(", 1)[0]
    + """
def _step(rid, attempt, name):
    time.sleep(0.005)
    _line(f"step {{rid}} {{attempt}} {{name}}")
    return name


def handler(request, context):
    _line(f"start {{context.request_id}} {{context.attempt}} {{os.getpid()}}")
    for name in {steps!r}:
        context.step.run(name, _step, context.request_id, context.attempt, name)
    _line(f"end {{context.request_id}} {{context.attempt}} {{os.getpid()}}")
"""
)


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_worker_killed_mid_burst_runs_no_committed_step_twice(broker: str, tmp_path: Path) -> None:
    """kill -9 of a worker's process group mid-burst: every accepted invocation succeeds with
    its three steps, and none of its committed steps ran again."""
    url = _need(broker)
    if broker == "redis":
        url = url.rsplit("/", 1)[0] + "/8"
    cluster = Cluster(url=url, root=tmp_path)
    handler = tmp_path / "site" / "netlify" / "functions" / "ledger-background.py"
    handler.write_text(STEPPED.format(ledger=str(cluster.ledger), steps=STEPS))
    try:
        victim = cluster.start_worker()
        cluster.start_worker()
        started = CLOCK.monotonic()
        burst = cluster.burst(BURST)
        _until(
            "the burst is under way and the workers are running it",
            lambda: len(cluster.accepted) >= BURST // 3 and len(cluster.ended()) >= 20,
            45.0,
        )
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        cluster.start_worker()
        burst.join(60.0)
        assert not burst.is_alive()
        figures = cluster.drain(started)
        assert figures["accepted"] >= BURST
        assert figures["lost"] == 0, _tail_logs(cluster)
        assert set(figures["states"]) == {State.SUCCEEDED.value}, figures

        runs: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
        for parts in cluster.ledger_lines():
            if parts[0] == "step" and len(parts) == 4 and parts[2].isdigit():
                runs[parts[1], parts[3]].append(int(parts[2]))
        reader = SQLiteJournal(cluster.journal_path, read_only=True)
        again = 0
        try:
            for rid in cluster.accepted:
                record = reader.get(rid)
                assert record is not None
                assert [s.id for s in record.steps] == list(STEPS), rid
                for step in record.steps:
                    attempts = runs[rid, step.id]
                    assert attempts.count(step.attempt) == 1, (rid, step.id, attempts)
                    assert max(attempts) == step.attempt, (rid, step.id, attempts, step.attempt)
                    again += len(attempts) - 1
        finally:
            reader.close()
        print(f"[{broker}] steps run again after a cut before their commit: {again}")
    finally:
        cluster.close()
        _purge_shared(cluster, broker)
