"""Cancelling a running attempt on Celery, through the public API: ``App.cancel`` in the web tier
reaches the worker child that runs the attempt, which stops the handler where it is.

The async case is in the contract suite (tests/test_contract.py, ``cancel_running``). Here: sync
handlers, which only a signal can stop, blocked in a sleep or spinning in pure Python; their
``finally`` blocks run, the attempt ends ``cancelled`` with the contract's record, no other
attempt runs, and the worker child that ran it lives on and runs the next invocation. The pairs
are the contract suite's (``contract_pairs.celery``): one worker, concurrency 1, on RabbitMQ +
PostgreSQL and on Redis + SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgfunctions import Outcome, State
from contract_pairs import CLOCK, SLOW, Pair, celery, write_site

pytestmark = [pytest.mark.server, pytest.mark.realtime]

PAIRS = ("celery-rabbitmq+postgres", "celery-redis+sqlite")
CANCELLED_STORY = ["accepted", "attempt_started", "attempt_ended", "cancelled"]


@pytest.fixture(scope="module", params=PAIRS)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    name = str(request.param)
    site = write_site(tmp_path_factory.mktemp("cancel"))
    built = celery(name, site, tmp_path_factory.mktemp(name.replace("+", "-")))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def running(pair: Pair) -> Pair:
    for before in pair.before_test:
        before()
    return pair


@pytest.mark.parametrize("function", SLOW)
def test_a_sync_handler_is_stopped_where_it_runs(running: Pair, function: str) -> None:
    """A sync handler blocked in time.sleep, or spinning in pure Python, is stopped by the
    cancel: its finally block runs, the attempt ends cancelled (the contract's record), no
    retry runs, and the same worker child runs the next invocation."""
    pair = running
    marker = pair.root / f"marker-{uuid.uuid4().hex}"
    invocation = pair.enqueue(function, f"{marker}|block".encode())
    pid_file = Path(f"{marker}.pid")
    pair.until("the handler to start", pid_file.exists)
    assert pair.state(invocation.request_id) is State.RUNNING
    asked = CLOCK.monotonic()
    pair.app.cancel(invocation.request_id)
    record = pair.wait(invocation)
    # Far below the 15 s limit (SLOW): the handler was stopped, not timed out.
    assert CLOCK.monotonic() - asked < 10.0
    assert record.state is State.CANCELLED
    assert [(a.number, a.outcome, a.error_type) for a in record.attempts] == [
        (1, Outcome.CANCELLED, None)
    ]
    assert pair.ledger.lines(record.request_id) == CANCELLED_STORY
    assert Path(f"{marker}.finally").exists()
    assert pair.app.journal.get(record.request_id) == record
    child = pid_file.read_text()

    # The child lives on: the next invocation runs in it.
    after = pair.root / f"marker-{uuid.uuid4().hex}"
    nxt = pair.wait(pair.enqueue("sync-sleep-background", str(after).encode()))
    assert nxt.state is State.SUCCEEDED
    assert Path(f"{after}.pid").read_text() == child
    CLOCK.sleep(0.3)  # nothing more is recorded for the cancelled one
    assert pair.app.journal.get(record.request_id) == record


def test_cancel_of_a_finished_invocation_changes_nothing(running: Pair) -> None:
    """A cancel that comes after the end: the record stays as it was, no event is heard."""
    pair = running
    record = pair.run("ok-background")
    assert pair.app.cancel(record.request_id) == record
    CLOCK.sleep(0.3)
    assert pair.app.journal.get(record.request_id) == record
    assert pair.ledger.lines(record.request_id) == [
        "accepted", "attempt_started", "attempt_ended", "succeeded",
    ]  # fmt: skip


def test_a_handler_that_will_not_stop_is_killed_at_its_limit_and_not_retried(
    running: Pair,
) -> None:
    """A sync handler that swallows the cancel and blocks on is killed at its limit: its
    attempt is timed_out, and the invocation ends cancelled with no other attempt."""
    pair = running
    marker = pair.root / f"marker-{uuid.uuid4().hex}"
    invocation = pair.enqueue("stubborn-background", str(marker).encode())
    pair.until("the handler to start", Path(f"{marker}.pid").exists)
    pair.app.cancel(invocation.request_id)
    record = pair.wait(invocation)
    assert record.state is State.CANCELLED
    assert [(a.number, a.outcome) for a in record.attempts] == [(1, Outcome.TIMED_OUT)]
    assert record.attempts[0].error_type == "TimeoutError"
    CLOCK.sleep(0.5)  # no retry runs later
    assert pair.app.journal.get(record.request_id) == record
