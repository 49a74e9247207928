"""Durable sleeps (``context.step.sleep`` / ``sleep_until``): a suspended attempt, then a resume
at the wake time with every committed step remembered (issue 14, item 2)."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from bgfunctions import App, Registry, RetryPolicy, Suspended
from bgfunctions.clock import VirtualClock
from bgfunctions.errors import JournalUnavailableError, StepError
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.invocation import EventKind, Outcome, State
from bgfunctions.journals.sqlite import SQLiteJournal
from bgfunctions.testing import invoke, make_request

DAY = 86400.0


class Trial:
    """sign up, sleep 7 days, then email; the email fails ``fail_times`` times."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[str, float]] = []
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def signup(self, now: float) -> str:
        with self.lock:
            self.calls.append(("signup", now))
        return "cus_1"

    def email(self, now: float) -> str:
        with self.lock:
            self.calls.append(("email", now))
            failures = sum(1 for name, _ in self.calls if name == "email") <= self.fail_times
        if failures:
            raise ConnectionError("mail server down")
        return "sent"

    def handler(self, request: Any, context: Any) -> None:
        customer = context.step.run("signup", self.signup, context.clock.now())
        context.step.sleep("wait-for-trial", days=7)
        assert customer == "cus_1"
        context.step.run("email", self.email, context.clock.now())


def test_a_seven_day_sleep_between_steps_with_one_failure_on_virtual_time() -> None:
    trial = Trial(fail_times=1)
    invocation = invoke(trial.handler)
    assert invocation.state is State.SUCCEEDED
    accepted = invocation.record.accepted_at
    assert [(name, at - accepted) for name, at in trial.calls] == [
        ("signup", 0.0),
        ("email", 7 * DAY),
        ("email", 7 * DAY + 60),  # the first retry delay: the sleep used no retry
    ]
    attempts = [(a.number, a.outcome, a.started_at - accepted) for a in invocation.attempts]
    assert attempts == [
        (1, Outcome.SUSPENDED, 0.0),
        (2, Outcome.ERROR, 7 * DAY),
        (3, Outcome.SUCCEEDED, 7 * DAY + 60),
    ]
    assert invocation.attempts[0].error is None
    assert invocation.attempts[0].error_type is None
    signup, wait, email = invocation.steps
    assert (signup.calls, signup.attempt, signup.replayed) == (1, 1, (2, 3))
    assert (wait.kind, wait.calls, wait.attempt, wait.replayed) == ("sleep", 1, 1, (2, 3))
    assert (wait.started_at, wait.ended_at) == (accepted, accepted + 7 * DAY)
    assert (email.calls, email.failed, email.attempt) == (2, (2,), 3)
    assert email.started_at == accepted + 7 * DAY + 60


def test_the_retry_schedule_after_a_sleep_counts_failures_only() -> None:
    """One retry allowed: sleep, fail, fail is failed (two failures), though three attempts ran
    and the second failure came after attempt 2."""
    trial = Trial(fail_times=2)
    invocation = invoke(trial.handler, retry=RetryPolicy(delays=(30.0,)))
    assert invocation.state is State.FAILED
    outcomes = [a.outcome for a in invocation.attempts]
    assert outcomes == [Outcome.SUSPENDED, Outcome.ERROR, Outcome.ERROR]
    assert invocation.attempts[2].started_at == (invocation.attempts[1].ended_at or 0) + 30.0


def test_sleeps_use_no_retries_and_each_segment_gets_the_full_limit() -> None:
    deadlines: list[float] = []

    def handler(request: Any, context: Any) -> None:
        deadlines.append(context.deadline - context.clock.now())
        for n in range(3):
            context.step.sleep(f"nap-{n}", hours=1)
        deadlines.append(context.deadline - context.clock.now())

    invocation = invoke(handler, retry=RetryPolicy(delays=()))
    assert invocation.state is State.SUCCEEDED
    assert [a.outcome for a in invocation.attempts] == [Outcome.SUSPENDED] * 3 + [Outcome.SUCCEEDED]
    assert [a.started_at - invocation.record.accepted_at for a in invocation.attempts] == [
        0,
        3600,
        7200,
        10800,
    ]
    assert deadlines == [900.0] * 5


def test_durations_timedelta_and_sleep_until() -> None:
    woke: list[float] = []
    start = VirtualClock().now()
    until = dt.datetime.fromtimestamp(start + 5 * DAY, tz=dt.timezone.utc)

    async def handler(request: Any, context: Any) -> None:
        await context.step.sleep("a", dt.timedelta(minutes=2))
        await context.step.sleep("b", 30)
        await context.step.sleep("c", minutes=1, seconds=30)
        await context.step.sleep_until("d", until)
        await context.step.sleep_until("e", start)  # past: returns at once, still a step
        woke.append(context.clock.now())

    invocation = invoke(handler)
    assert invocation.state is State.SUCCEEDED
    steps = [(s.id, s.ended_at - s.started_at) for s in invocation.record.steps]
    assert steps[:3] == [("a", 120.0), ("b", 30.0), ("c", 90.0)]
    assert invocation.record.steps[3].ended_at == start + 5 * DAY
    assert steps[4] == ("e", 0.0)
    assert woke == [start + 5 * DAY]
    assert len(invocation.attempts) == 5  # four sleeps suspended it; "e" did not


@pytest.mark.parametrize(
    ("call", "found"),
    [
        (lambda s: s.sleep("x", seconds=-1), "expected seconds as a finite number of 0 or more"),
        (lambda s: s.sleep("x", days=float("nan")), "found nan"),
        (lambda s: s.sleep("x", hours="2"), "expected hours as a number or a timedelta"),
        (lambda s: s.sleep("x", True), "found True (bool)"),
        (lambda s: s.sleep("x", 5, minutes=1), "expected a duration or keywords"),
        (lambda s: s.sleep_until("x", dt.datetime(2030, 1, 1)), "expected an aware datetime"),
        (lambda s: s.sleep_until("x", "tomorrow"), "found 'tomorrow' (str)"),
        (lambda s: s.sleep("", seconds=1), "expected a non-empty str as the step id"),
    ],
)
def test_bad_sleeps_are_clear_errors(call: Any, found: str) -> None:
    def handler(request: Any, context: Any) -> None:
        call(context.step)

    invocation = invoke(handler, retry=RetryPolicy(delays=()))
    assert invocation.state is State.FAILED
    error = invocation.attempts[0].error
    assert isinstance(error, StepError)
    assert found in str(error)
    assert "function 'handler'" in str(error)


def test_a_sleep_inside_a_step_and_an_id_shared_with_a_step_are_refused() -> None:
    def inside(request: Any, context: Any) -> None:
        context.step.run("outer", lambda: context.step.sleep("nap", seconds=1))

    error = invoke(inside, retry=RetryPolicy(delays=())).attempts[0].error
    assert isinstance(error, StepError)
    assert "a sleep inside the function of step outer" in str(error)

    def shared(request: Any, context: Any) -> None:
        if context.attempt == 1:
            context.step.sleep("same", seconds=1)
        context.step.run("same", int, "1")

    record = invoke(shared, retry=RetryPolicy(delays=()))
    error = record.attempts[1].error
    assert isinstance(error, StepError)
    assert "found a 'sleep' step stored under this id by attempt 1" in str(error)


def test_a_handler_that_catches_the_suspension_is_still_suspended() -> None:
    caught: list[BaseException] = []

    def handler(request: Any, context: Any) -> None:
        try:
            context.step.sleep("nap", minutes=5)
        except BaseException as exc:
            caught.append(exc)
            raise RuntimeError("swallowed and raised something else") from None

    invocation = invoke(handler)
    assert isinstance(caught[0], Suspended)
    assert len(caught) == 1  # the resumed attempt's sleep returned
    assert [a.outcome for a in invocation.attempts] == [Outcome.SUSPENDED, Outcome.SUCCEEDED]
    assert invocation.attempts[0].error_type is None


def test_cancel_while_sleeping_runs_no_further_attempt() -> None:
    trial = Trial()
    registry = Registry()
    registry.add("trial-background", trial.handler)
    heard: list[EventKind] = []
    executor = InlineExecutor()
    app = App(registry, executor=executor, on_event=lambda e: heard.append(e.kind))
    try:
        handle = app.enqueue("trial-background", make_request())
        executor.run_until(app.clock.now() + DAY)
        assert handle.state is State.SLEEPING
        assert handle.record.next_run_at == handle.record.accepted_at + 7 * DAY
        cancelled = app.cancel(handle.request_id)
        executor.drain()
    finally:
        app.shutdown()
    assert cancelled.state is State.CANCELLED
    assert [name for name, _ in trial.calls] == ["signup"]
    assert heard[-2:] == [EventKind.SLEEPING, EventKind.CANCELLED]


def test_thread_executor_holds_no_worker_while_sleeping(tmp_path: Path) -> None:
    """Real time (0.3 s): while it sleeps, nothing runs; it wakes no earlier than its time."""
    calls: list[str] = []

    def handler(request: Any, context: Any) -> None:
        context.step.run("one", calls.append, "one")
        context.step.sleep("nap", seconds=0.3)
        context.step.run("two", calls.append, "two")

    registry = Registry()
    registry.add("nap-background", handler)
    journal = SQLiteJournal(tmp_path / "j.db")
    app = App(registry, executor=ThreadExecutor(journal=journal, max_workers=1))
    try:
        handle = app.enqueue("nap-background", make_request())
        for _ in range(3000):
            if handle.state is State.SLEEPING:
                break
            threading.Event().wait(0.01)  # polls for the state, not a timing assertion
        assert handle.state is State.SLEEPING
        assert app.executor.stats().running == 0
        record = handle.wait(timeout=30)
    finally:
        app.shutdown()
        journal.close()
    assert record.state is State.SUCCEEDED
    assert calls == ["one", "two"]
    nap = record.steps[1]
    assert record.attempts[1].started_at >= nap.ended_at
    assert nap.ended_at - nap.started_at == pytest.approx(0.3)


def test_a_sleep_survives_a_restart_of_the_server(tmp_path: Path) -> None:
    """The first App stops while the invocation sleeps (a day); the file keeps the wake time,
    and a new App recovers it and resumes it at that time, running only the step after it."""
    path = tmp_path / "j.db"
    first = Trial()
    journal = SQLiteJournal(path)
    registry = Registry()
    registry.add("trial-background", first.handler)
    app = App(registry, executor=ThreadExecutor(journal=journal))
    try:
        handle = app.enqueue("trial-background", make_request())
        for _ in range(3000):
            if handle.state is State.SLEEPING:
                break
            threading.Event().wait(0.01)  # polls for the state, not a timing assertion
    finally:
        app.shutdown()
        journal.close()
    reopened = SQLiteJournal(path, read_only=True)
    try:
        kept = reopened.get(handle.request_id)
    finally:
        reopened.close()
    assert kept is not None
    assert kept.state is State.SLEEPING
    assert kept.next_run_at == pytest.approx(kept.accepted_at + 7 * DAY)
    assert [(s.id, s.kind) for s in kept.steps] == [("signup", "run"), ("wait-for-trial", "sleep")]
    # Seven days pass while the server is down: the virtual clock of the second App starts then.
    clock = VirtualClock(start=kept.accepted_at + 7 * DAY)
    second = Trial()
    registry = Registry()
    registry.add("trial-background", second.handler)
    journal = SQLiteJournal(path, clock=clock)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        assert app.executor.recover() == 1
        record = app.executor.get(handle.request_id).wait()
    finally:
        app.shutdown()
        journal.close()
    assert record.state is State.SUCCEEDED
    assert [name for name, _ in second.calls] == ["email"]
    assert record.attempts[1].started_at == kept.next_run_at
    assert [a.outcome for a in record.attempts] == [Outcome.SUSPENDED, Outcome.SUCCEEDED]


def test_resumed_before_the_wake_time_it_sleeps_on_without_a_write(tmp_path: Path) -> None:
    """A resume that comes early (its row edited to be due now, as after a crash between the
    sleep's commit and the attempt's end) sleeps again until the stored wake time."""
    path = tmp_path / "j.db"
    clock = VirtualClock()
    journal = SQLiteJournal(path, clock=clock)
    trial = Trial()
    registry = Registry()
    registry.add("trial-background", trial.handler)
    executor = InlineExecutor(clock=clock, journal=journal)
    app = App(registry, executor=executor)
    try:
        handle = app.enqueue("trial-background", make_request())
        executor.run_until(clock.now() + 1)
        wake = handle.record.next_run_at
        assert handle.state is State.SLEEPING
        assert wake is not None
    finally:
        app.shutdown()
        journal.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "UPDATE invocations SET next_run_at = 0, record = json_set(record, '$.next_run_at', 0)"
        )
    journal = SQLiteJournal(path, clock=clock)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        app.executor.recover()
        record = app.executor.get(handle.request_id).wait()
    finally:
        app.shutdown()
        journal.close()
    assert [a.outcome for a in record.attempts] == [
        Outcome.SUSPENDED,
        Outcome.SUSPENDED,  # early: slept on to the same wake time
        Outcome.SUCCEEDED,
    ]
    assert record.attempts[2].started_at == wake
    assert len([s for s in record.steps if s.kind == "sleep"]) == 1
    assert [name for name, _ in trial.calls] == ["signup", "email"]


V3_FILE = Path(__file__).parent / "data" / "journal-v3.sqlite3"


def test_a_schema_3_file_written_before_sleeps_migrates_to_4(tmp_path: Path) -> None:
    """tests/data/journal-v3.sqlite3 was written by bgfunctions 560107a (schema 3; see
    make_journal_v3.py): a finished invocation with two steps and one retry-scheduled after its
    first step. Opened now, it is migrated to schema 4: rows and steps kept, priority 0, and the
    retry runs, replaying its step, then sleeps and finishes."""
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(V3_FILE.read_bytes())
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        before = conn.execute("SELECT request_id, state FROM invocations ORDER BY rowid").fetchall()
    calls: list[str] = []

    def retrying(request: Any, context: Any) -> None:
        assert context.step.run("reserve", calls.append, "reserve") == {"order": 2}
        context.step.sleep("cool-off", hours=1)
        context.step.run("charge", calls.append, "charge")

    registry = Registry()
    registry.add("retry-background", retrying)
    registry.add("done-background", retrying)
    clock = VirtualClock(start=VirtualClock().now() + 3600)  # the retry is due
    journal = SQLiteJournal(path, clock=clock)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        done, waiting = (journal.get(rid) for rid, _ in before)
        assert done is not None
        assert waiting is not None
        assert (done.state, waiting.state) == (State.SUCCEEDED, State.RETRY_SCHEDULED)
        assert [s.id for s in done.steps] == ["reserve", "charge"]
        assert (done.priority, done.not_before) == (0, None)
        assert [r.request_id for r in journal.unfinished()] == [waiting.request_id]
        assert app.executor.recover() == 1
        record = app.executor.get(waiting.request_id).wait()
    finally:
        app.shutdown()
        journal.close()
    assert calls == ["charge"]  # "reserve" replayed from the v3 row
    assert [a.outcome for a in record.attempts] == [
        Outcome.ERROR,
        Outcome.SUSPENDED,
        Outcome.SUCCEEDED,
    ]
    assert [(s.id, s.kind) for s in record.steps] == [
        ("reserve", "run"),
        ("cool-off", "sleep"),
        ("charge", "run"),
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        rows = conn.execute("SELECT state, priority FROM invocations ORDER BY rowid").fetchall()
    assert rows == [("succeeded", 0), ("succeeded", 0)]


def test_cli_invoke_and_the_server_log_show_the_sleep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgfunctions.cli import main
    from bgfunctions.invocation import Event
    from bgfunctions.serverlog import format_event

    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "trial-background.py").write_text(
        "def handler(request, context):\n"
        "    context.step.run('billing', lambda: 'cus_1')\n"
        "    context.step.sleep('wait-for-trial', days=7)\n"
        "    context.step.run('email', lambda: None)\n"
    )
    assert main(["invoke", "trial-background", "--site", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()[1:]
    lines = [" ".join(line.split()).replace("t= ", "t=") for line in out]
    assert lines[0].startswith("t=0.000s attempt 1 suspended")
    assert lines[1].startswith("t=0.000s step billing committed")
    assert lines[2] == "t=0.000s sleep wait-for-trial until t=604800.000s (7d)"
    assert lines[3].startswith("t=604800.000s attempt 2 succeeded")
    assert lines[4] == "step billing replayed: stored by attempt 1, not run again"
    assert lines[5].startswith("t=604800.000s step email committed")
    assert lines[6] == "succeeded after 2 attempt(s)"

    seen: list[Event] = []
    registry = Registry()
    registry.add("trial-background", Trial().handler)
    executor = InlineExecutor()
    app = App(registry, executor=executor, on_event=seen.append)
    try:
        app.enqueue("trial-background")
        executor.run_until(app.clock.now() + DAY)
        sleeping = [e for e in seen if e.kind is EventKind.SLEEPING]
        line = format_event(sleeping[0], app.clock)
    finally:
        app.shutdown(wait=False)
    assert line is not None
    assert line.endswith("trial-background: sleeping, wakes in 518400.0 s")


def test_sleeping_invocations_do_not_fill_the_thread_executors_queue() -> None:
    """max_pending bounds work waiting for a worker; invocations asleep for an hour are not."""

    def handler(request: Any, context: Any) -> None:
        context.step.sleep("nap", hours=1)

    registry = Registry()
    registry.add("nap-background", handler)
    executor = ThreadExecutor(max_workers=1, max_pending=2)
    app = App(registry, executor=executor)
    try:
        handles = []
        for _ in range(5):
            handles.append(app.enqueue("nap-background"))
            for _ in range(3000):
                if handles[-1].state is State.SLEEPING:
                    break
                threading.Event().wait(0.01)  # polls for the state, not a timing assertion
        assert [h.state for h in handles] == [State.SLEEPING] * 5
        assert executor.stats().pending == 0
    finally:
        app.shutdown()


def test_an_async_workflow_sleeps_and_resumes_on_the_servers_own_loop() -> None:
    """The host loop (ASGI, memory journal): both segments run on the server's loop thread,
    and nothing runs there while the invocation sleeps (0.2 s, real time)."""
    import asyncio

    import httpx

    from bgfunctions.asgi import ASGIApp

    threads: list[int] = []

    async def handler(request: Any, context: Any) -> None:
        threads.append(threading.get_ident())
        await context.step.run("one", int, "1")
        await context.step.sleep("nap", seconds=0.2)
        await context.step.run("two", int, "2")

    registry = Registry()
    registry.add("nap-background", handler)
    app = App(registry, executor=ThreadExecutor())

    async def scenario(asgi: ASGIApp) -> tuple[Any, int]:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/.netlify/functions/nap-background")
        handle = app.executor.get(response.headers["x-nf-request-id"])
        while handle.state is not State.SLEEPING:
            await asyncio.sleep(0.01)  # polls for the state, not a timing assertion
        assert app.executor.stats().running == 0
        return await handle.wait_async(), threading.get_ident()

    async def main() -> tuple[Any, int]:
        asgi = ASGIApp(app)
        async with asgi.lifespan():
            return await asyncio.wait_for(scenario(asgi), 10)

    record, server_thread = asyncio.run(main())
    assert record.state is State.SUCCEEDED
    assert [a.outcome for a in record.attempts] == [Outcome.SUSPENDED, Outcome.SUCCEEDED]
    assert threads == [server_thread, server_thread]
    assert [s.id for s in record.steps] == ["one", "nap", "two"]


@pytest.mark.realtime
def test_a_sleep_already_over_returns_at_once_on_the_real_clock() -> None:
    """sleep_until(a time past) and sleep(0) return at once on a real clock too: the attempt
    succeeds, the handler runs once (no suspended attempt)."""
    runs: list[int] = []
    registry = Registry()

    def handler(request: Any, context: Any) -> None:
        runs.append(context.attempt)
        context.step.sleep_until("already", 0.0)  # epoch 0: long past
        context.step.sleep("zero", seconds=0)

    registry.add("nap-background", handler)
    app = App(registry, executor=ThreadExecutor(), retry=RetryPolicy(delays=()))
    try:
        record = app.enqueue("nap-background").wait(30)
    finally:
        app.shutdown()
    assert [a.outcome for a in record.attempts] == [Outcome.SUCCEEDED]
    assert runs == [1]
    assert [s.kind for s in record.steps] == ["sleep", "sleep"]


class BodyReadsFail(SQLiteJournal):
    """A SQLite journal whose body reads fail after the first (a locked file, say)."""

    reads = 0

    def with_body(self, record: Any) -> Any:
        self.reads += 1
        if self.reads > 1:
            raise JournalUnavailableError("database is locked")
        return super().with_body(record)


@pytest.mark.realtime
def test_an_attempt_that_fails_to_start_after_a_sleep_is_a_failure(tmp_path: Path) -> None:
    """After a sleep, the next attempt cannot start (its body cannot be read): that attempt is
    an error, counted against the retries, not taken for the earlier attempt's sleep (which
    would resume it at once, for ever)."""
    registry = Registry()
    registry.add("flow-background", lambda request, context: context.step.sleep("nap", seconds=0.2))
    journal = BodyReadsFail(tmp_path / "j.db")
    app = App(registry, executor=ThreadExecutor(journal=journal), retry=RetryPolicy(delays=()))
    try:
        record = app.enqueue("flow-background").wait(30)
    finally:
        app.shutdown()
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.SUSPENDED, Outcome.ERROR]
