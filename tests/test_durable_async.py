"""Async background attempts on a durable journal: their claims and ends commit on commit
threads (``Lifecycle.commit_off_loop``), not on the loop, so concurrent attempts share group
commits. Through the public API, on the real clock and a real SQLite file."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from bgfunctions import (
    App,
    Context,
    InvocationRecord,
    Limits,
    MemoryJournal,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    SQLiteJournal,
    State,
    ThreadExecutor,
)

pytestmark = pytest.mark.realtime

WAIT = 30.0


def _poll() -> None:
    """A pause between two looks at the executor's state (polling, not timing a schedule)."""
    threading.Event().wait(0.005)


def _registry(started: list[str]) -> Registry:
    registry = Registry()

    async def noop(request: Request, context: Context) -> None:
        await asyncio.sleep(0)

    async def slow(request: Request, context: Context) -> None:
        started.append(context.request_id)
        await asyncio.sleep(600)

    registry.add("noop-background", noop)
    registry.add("slow-background", slow)
    return registry


def _app(path: Path, started: list[str], **kw: object) -> App:
    journal = SQLiteJournal(path, synchronous="FULL")
    return App(
        _registry(started),
        executor=ThreadExecutor(journal=journal, loop="thread"),
        retry=RetryPolicy(delays=(0.05,)),
        limits=Limits(background_timeout=30),
        **kw,  # type: ignore[arg-type]
    )


def test_a_burst_of_async_attempts_on_sqlite_all_succeed_once(tmp_path: Path) -> None:
    """500 async no-ops accepted at once on a SQLite journal: each succeeds in one attempt,
    and the file says so."""
    app = _app(tmp_path / "journal.db", [])
    try:
        handles = [app.enqueue("noop-background") for _ in range(500)]
        records = [h.wait(WAIT) for h in handles]
    finally:
        app.shutdown()
    assert {r.state for r in records} == {State.SUCCEEDED}
    assert {len(r.attempts) for r in records} == {1}
    reader = SQLiteJournal(tmp_path / "journal.db", read_only=True)
    try:
        stored = reader.select(limit=1000)
    finally:
        reader.close()
    assert len(stored) == 500
    assert {r.state for r in stored} == {State.SUCCEEDED}


def test_cancel_of_a_running_async_attempt_on_sqlite(tmp_path: Path) -> None:
    """cancel() of an async attempt running on a SQLite journal records it cancelled, in
    memory and in the file."""
    started: list[str] = []
    app = _app(tmp_path / "journal.db", started)
    try:
        invocation = app.enqueue("slow-background")
        while invocation.state is not State.RUNNING or not started:
            _poll()
        app.cancel(invocation.request_id)
        record = invocation.wait(WAIT)
    finally:
        app.shutdown()
    assert record.state is State.CANCELLED
    assert [a.outcome for a in record.attempts] == [Outcome.CANCELLED]
    reader = SQLiteJournal(tmp_path / "journal.db", read_only=True)
    try:
        stored = reader.get(invocation.request_id)
    finally:
        reader.close()
    assert stored is not None
    assert stored.state is State.CANCELLED


def test_shutdown_mid_burst_leaves_nothing_running_and_a_restart_finishes_all(
    tmp_path: Path,
) -> None:
    """shutdown(grace=0) while 200 async attempts are claimed, running or ending on a SQLite
    journal: none is left marked running by this process (each ended interrupted, or never
    claimed); a new App on the file finishes every one."""
    path = tmp_path / "journal.db"
    started: list[str] = []
    app = _app(path, started)
    ids = [app.enqueue("slow-background").request_id for _ in range(100)]
    ids += [app.enqueue("noop-background").request_id for _ in range(100)]
    while len(started) < 20:
        _poll()
    app.executor.shutdown(wait=True, grace=0)
    app.journal.close()
    reader = SQLiteJournal(path, read_only=True)
    try:
        after = {rid: reader.get(rid) for rid in ids}
    finally:
        reader.close()
    assert all(r is not None and r.state is not State.RUNNING for r in after.values()), {
        rid: r.state for rid, r in after.items() if r is not None
    }
    # The slow ones: the function now returns at once; a new App on the file runs the rest.
    registry = Registry()

    async def quick(request: Request, context: Context) -> None:
        return None

    registry.add("slow-background", quick)
    registry.add("noop-background", quick)
    again = App(
        registry,
        executor=ThreadExecutor(journal=SQLiteJournal(path), loop="thread"),
        retry=RetryPolicy(delays=(0.05,)),
    )
    try:
        again.start()
        finals = [again.get(rid).wait(WAIT) for rid in ids]
    finally:
        again.shutdown()
    assert {r.state for r in finals} == {State.SUCCEEDED}


class SlowClaims(MemoryJournal):
    """A durable journal whose claims wait for ``gate`` (a commit held up by the disk, or by
    another process's turn at the file)."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def attempt_started(self, record: InvocationRecord) -> bool:
        self.gate.wait(WAIT)
        return super().attempt_started(record)


def _slow_app(journal: SlowClaims) -> App:
    return App(
        _registry([]),
        executor=ThreadExecutor(journal=journal, loop="thread"),
        retry=RetryPolicy(delays=(0.05,)),
    )


def test_shutdown_while_claims_wait_ends_each_claim_that_went_through() -> None:
    """shutdown(grace=0) while 20 claims wait for their commit: the loop is not held by them
    (shutdown proceeds), and once they commit each is ended interrupted at once, so none is
    left running with nobody running it."""
    journal = SlowClaims()
    app = _slow_app(journal)
    handles = [app.enqueue("noop-background") for _ in range(20)]
    while app.executor.stats().running < 20:  # all 20 on the loop, their claims waiting
        _poll()
    opener = threading.Timer(0.3, journal.gate.set)
    opener.start()
    try:
        app.executor.shutdown(wait=True, grace=0)
    finally:
        opener.cancel()
        journal.gate.set()
    records = [journal.get(h.request_id) for h in handles]
    assert all(r is not None for r in records)
    assert {r.state for r in records if r is not None} == {State.RETRY_SCHEDULED}
    assert {tuple(a.outcome for a in r.attempts) for r in records if r is not None} == {
        (Outcome.INTERRUPTED,)
    }
