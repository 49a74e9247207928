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
    Event,
    EventKind,
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
from bgfunctions.invocation import Step

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


def test_async_steps_on_sqlite_commit_off_the_loop_and_replay(tmp_path: Path) -> None:
    """An async handler's steps on a SQLite journal (stored on commit threads): 50 concurrent
    invocations each commit two steps, fail once between them, and the retry replays the first
    from the file and runs only the second."""
    ran: list[tuple[str, str, int]] = []
    registry = Registry()

    async def fetch(rid: str, name: str, attempt: int) -> str:
        ran.append((rid, name, attempt))
        await asyncio.sleep(0)
        return name.upper()

    async def workflow(request: Request, context: Context) -> None:
        rid, attempt = context.request_id, context.attempt
        assert await context.step.run("one", fetch, rid, "one", attempt) == "ONE"
        if attempt == 1:
            raise RuntimeError("fails once, between the steps")
        assert await context.step.run("two", fetch, rid, "two", attempt) == "TWO"

    registry.add("flow-background", workflow)
    app = App(
        registry,
        executor=ThreadExecutor(journal=SQLiteJournal(tmp_path / "j.db"), loop="thread"),
        retry=RetryPolicy(delays=(0.05,)),
    )
    try:
        records = [h.wait(WAIT) for h in [app.enqueue("flow-background") for _ in range(50)]]
    finally:
        app.shutdown()
    assert {r.state for r in records} == {State.SUCCEEDED}
    for record in records:
        assert [(s.id, s.attempt) for s in record.steps] == [("one", 1), ("two", 2)]
        mine = [(name, attempt) for rid, name, attempt in ran if rid == record.request_id]
        assert mine == [("one", 1), ("two", 2)]
    reader = SQLiteJournal(tmp_path / "j.db", read_only=True)
    try:
        stored = reader.get(records[0].request_id)
    finally:
        reader.close()
    assert stored is not None
    assert [(s.id, s.attempt) for s in stored.steps] == [("one", 1), ("two", 2)]


class SlowStepReplies(SQLiteJournal):
    """A SQLite journal whose first step commit lands, then its reply comes back late (a disk
    or PostgreSQL round trip that outlasts the attempt's deadline)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="FULL")
        self.late = threading.Event()

    def step_completed(self, request_id: str, step: Step) -> None:
        super().step_completed(request_id, step)
        if not self.late.is_set():
            self.late.set()
            threading.Event().wait(1.5)  # the reply, held up past the 1 s limit


def test_a_step_committed_as_its_deadline_hits_is_not_run_again(tmp_path: Path) -> None:
    """An async step whose commit is under way when the attempt times out: the commit lands,
    so the step counts as committed and the retry replays it instead of running it again."""
    runs: list[int] = []
    registry = Registry()

    async def charge(request: Request, context: Context) -> None:
        def pay() -> str:
            runs.append(context.attempt)
            return "paid"

        assert await context.step.run("charge", pay) == "paid"

    registry.add("charge-background", charge)
    journal = SlowStepReplies(tmp_path / "j.db")
    app = App(
        registry,
        executor=ThreadExecutor(journal=journal, loop="thread"),
        retry=RetryPolicy(delays=(0.05,)),
        limits=Limits(background_timeout=1),
    )
    try:
        record = app.enqueue("charge-background").wait(WAIT)
    finally:
        app.shutdown()
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT, Outcome.SUCCEEDED]
    assert runs == [1]
    assert [(s.id, s.attempt) for s in record.steps] == [("charge", 1)]


def test_cancel_while_the_claim_commits_stops_the_attempt(tmp_path: Path) -> None:
    """cancel() of an attempt whose claim is committing on a commit thread (an on_event
    listener on its start keeps it there a while): it is recorded cancelled, and the handler
    never runs."""
    ran: list[str] = []
    registry = Registry()

    async def slow(request: Request, context: Context) -> None:
        ran.append(context.request_id)
        await asyncio.sleep(1.0)

    def listener(event: Event) -> None:  # metrics shipped on each start, say
        if event.kind is EventKind.ATTEMPT_STARTED:
            threading.Event().wait(0.3)

    registry.add("slow-background", slow)
    app = App(
        registry,
        executor=ThreadExecutor(journal=SQLiteJournal(tmp_path / "j.db"), loop="thread"),
        retry=RetryPolicy(delays=()),
        on_event=listener,
    )
    try:
        invocation = app.enqueue("slow-background")
        while invocation.state is not State.RUNNING:
            _poll()
        app.cancel(invocation.request_id)
        record = invocation.wait(WAIT)
    finally:
        app.shutdown()
    assert record.state is State.CANCELLED
    assert [a.outcome for a in record.attempts] == [Outcome.CANCELLED]
    assert ran == []
