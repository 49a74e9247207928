"""A durable sleep on Celery survives a restart of every worker: invocations asleep (their
resume is a message with a countdown) when the only worker is killed with -9 wake once a new
worker starts, and no committed step runs again. Real brokers, real worker processes; on Redis,
db 10, its own (test_celery uses 7, test_celery_faults and test_celery_step_faults 8, the
contract 9), since the test flushes it when done."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from bgfunctions import Request, State
from bgfunctions.invocation import Outcome
from test_celery import BROKERS, _need
from test_celery_faults import CLOCK, Cluster, _purge_shared, _tail_logs, _until

pytestmark = [pytest.mark.server, pytest.mark.realtime]

COUNT = 30
NAP = 4.0
"""Seconds each invocation sleeps: the worker is killed while every one sleeps."""

NAP_HANDLER = """
import os

LEDGER = {ledger!r}


def _line(text):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def handler(request, context):
    context.step.run("before", _line, f"before {{context.request_id}}")
    context.step.sleep("nap", seconds={nap})
    context.step.run("after", _line, f"after {{context.request_id}}")
"""


class NapCluster(Cluster):
    def __post_init__(self) -> None:
        functions = self.root / "site" / "netlify" / "functions"
        functions.mkdir(parents=True)
        source = NAP_HANDLER.format(ledger=str(self.root / "naps.txt"), nap=NAP)
        (functions / "nap-background.py").write_text(source)
        super().__post_init__()

    def naps(self) -> collections.Counter[str]:
        path = self.root / "naps.txt"
        return (
            collections.Counter(path.read_text().split())
            if path.exists()
            else collections.Counter()
        )

    def states(self, ids: list[str]) -> collections.Counter[str]:
        return collections.Counter(
            r.state.value if (r := self.journal.get(i)) is not None else "missing" for i in ids
        )


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_every_worker_killed_while_invocations_sleep(broker: str, tmp_path: Path) -> None:
    url = _need(broker)
    if broker == "redis":
        url = url.rsplit("/", 1)[0] + "/10"  # its own db: the purge flushes it
    cluster = NapCluster(url=url, root=tmp_path)
    try:
        victim = cluster.start_worker()
        ids = []
        for _ in range(COUNT):
            response = cluster.app.handle(Request("POST", "/.netlify/functions/nap-background"))
            assert response.status == 202
            ids.append(response.headers["x-nf-request-id"])
        _until(f"{COUNT} asleep", lambda: cluster.states(ids)[State.SLEEPING.value] == COUNT, 45.0)
        os.killpg(victim.pid, signal.SIGKILL)  # the only worker: nobody holds the resumes
        victim.wait()
        killed = CLOCK.now()
        assert cluster.naps()["after"] == 0  # none woke before the kill
        cluster.start_worker()
        _until(
            f"{COUNT} woke and succeeded",
            lambda: cluster.states(ids)[State.SUCCEEDED.value] == COUNT,
            75.0,
        )
        naps = cluster.naps()
        assert naps["before"] == naps["after"] == COUNT, _tail_logs(cluster)
        assert all(naps[i] == 2 for i in ids)  # before and after, once each
        for request_id in ids:
            record = cluster.journal.get(request_id)
            assert record is not None
            assert [a.outcome for a in record.attempts] == [Outcome.SUSPENDED, Outcome.SUCCEEDED]
            nap = record.steps[1]
            assert record.attempts[1].started_at >= max(nap.ended_at, killed)
    finally:
        cluster.close()
        _purge_shared(cluster, broker)
