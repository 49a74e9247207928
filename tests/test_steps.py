"""Durable steps (``context.step.run``): committed once per invocation, replayed on retries."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bgfunctions import App, Registry, RetryPolicy
from bgfunctions.clock import VirtualClock
from bgfunctions.errors import JournalError, StepError
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.invocation import InvocationRecord, Outcome, State, Step
from bgfunctions.journals.base import MemoryJournal
from bgfunctions.journals.sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteJournal
from bgfunctions.steps import MAX_RESULT_BYTES
from bgfunctions.testing import invoke, make_context, make_request


class Flaky:
    """Three steps; the second raises the first ``fail_times`` times it is called."""

    def __init__(self, fail_times: int = 1) -> None:
        self.calls = {"reserve": 0, "charge": 0, "email": 0}
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def count(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1

    def reserve(self, order: str) -> dict[str, Any]:
        self.count("reserve")
        return {"order": order, "items": (1, 2)}

    def charge(self, cents: int) -> str:
        self.count("charge")
        if self.calls["charge"] <= self.fail_times:
            raise ConnectionError("card network down")
        return f"ch_{cents}"

    def email(self, to: str) -> None:
        self.count("email")

    def handler(self, request: Any, context: Any) -> None:
        reserved = context.step.run("reserve", self.reserve, "o-1")
        charge = context.step.run("charge", self.charge, cents=500)
        assert reserved == {"order": "o-1", "items": [1, 2]}  # a JSON round trip, every time
        assert charge == "ch_500"
        context.step.run("email", self.email, to="a@example.com")


def test_retry_replays_committed_steps_on_virtual_time() -> None:
    """Attempt 1 runs step 1 and fails in step 2; attempt 2 (60 s later) replays step 1 from
    the record without calling it, then runs steps 2 and 3."""
    flaky = Flaky()
    invocation = invoke(flaky.handler)
    assert invocation.state is State.SUCCEEDED
    assert flaky.calls == {"reserve": 1, "charge": 2, "email": 1}
    accepted = invocation.record.accepted_at
    assert [a.started_at - accepted for a in invocation.attempts] == [0, 60]
    steps = {s.id: s for s in invocation.steps}
    assert list(steps) == ["reserve", "charge", "email"]
    assert steps["reserve"].attempt == 1
    assert steps["reserve"].replayed == (2,)
    assert steps["reserve"].calls == 1
    assert steps["reserve"].started_at == accepted
    assert steps["charge"].attempt == 2
    assert steps["charge"].calls == 2
    assert steps["charge"].failed == (1,)
    assert steps["charge"].started_at == accepted + 60
    assert steps["email"].attempt == 2
    assert steps["email"].result is None
    record = invocation.record
    assert [(s.id, s.attempt, s.result) for s in record.steps] == [
        ("reserve", 1, '{"order":"o-1","items":[1,2]}'),
        ("charge", 2, '"ch_500"'),
        ("email", 2, "null"),
    ]
    assert InvocationRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_async_handler_awaits_sync_and_async_steps() -> None:
    calls: list[str] = []

    async def fetch(n: int) -> list[int]:
        calls.append("fetch")
        return [n, n + 1]

    def total(values: list[int]) -> int:
        calls.append("total")
        return sum(values)

    async def handler(request: Any, context: Any) -> None:
        values = await context.step.run("fetch", fetch, 3)
        result = await context.step.run("total", total, values)
        assert result == 7
        if context.attempt == 1:
            raise RuntimeError("after both steps")

    invocation = invoke(handler)
    assert invocation.state is State.SUCCEEDED
    assert calls == ["fetch", "total"]
    assert [s.replayed for s in invocation.steps] == [(2,), (2,)]


def test_old_record_json_without_steps_loads() -> None:
    data = invoke(lambda request, context: None).record.to_json()
    assert data.pop("steps") == []  # as JSON written before steps existed
    assert InvocationRecord.from_json(data).steps == ()
    step = Step(id="s", result="[1]", attempt=1, started_at=1.0, ended_at=2.0)
    assert Step.from_json(step.to_json()) == step
    assert step.value() == [1]


# -- errors: each fails the attempt, naming the function and the step ---------------------------


def _first_error(handler: Any) -> BaseException:
    invocation = invoke(handler, retry=RetryPolicy(delays=()))
    assert invocation.state is State.FAILED
    error = invocation.attempts[0].error
    assert error is not None
    return error


def test_duplicate_step_id_is_a_clear_error() -> None:
    calls: list[int] = []

    def handler(request: Any, context: Any) -> None:
        for n in range(2):
            context.step.run("send", calls.append, n)

    error = _first_error(handler)
    assert isinstance(error, StepError)
    assert "'handler'" in str(error)
    assert "step send" in str(error)
    assert "already used" in str(error)
    assert calls == [0]


@pytest.mark.parametrize("bad", ["", 7, None])
def test_step_id_must_be_a_non_empty_str(bad: object) -> None:
    def handler(request: Any, context: Any) -> None:
        context.step.run(bad, print)

    error = _first_error(handler)
    assert isinstance(error, StepError)
    assert f"found {bad!r}" in str(error)


def test_result_that_is_not_json_is_a_clear_error_and_is_not_stored() -> None:
    def handler(request: Any, context: Any) -> None:
        context.step.run("open", lambda: {"when": object()})

    invocation = invoke(handler, retry=RetryPolicy(delays=()))
    error = invocation.attempts[0].error
    assert isinstance(error, StepError)
    assert "step open" in str(error)
    assert "found dict" in str(error)
    assert invocation.record.steps == ()
    assert invocation.steps[0].committed is False
    assert invocation.steps[0].failed == (1,)


def test_nan_result_is_refused() -> None:
    error = _first_error(lambda request, context: context.step.run("x", lambda: float("nan")))
    assert isinstance(error, StepError)
    assert "JSON" in str(error)


def test_huge_result_is_refused_and_just_under_the_limit_is_kept() -> None:
    error = _first_error(
        lambda request, context: context.step.run("big", lambda: "x" * MAX_RESULT_BYTES)
    )
    assert isinstance(error, StepError)
    assert f"at most {MAX_RESULT_BYTES} bytes" in str(error)
    invocation = invoke(
        lambda request, context: context.step.run("big", lambda: "x" * (MAX_RESULT_BYTES - 2))
    )
    assert invocation.state is State.SUCCEEDED
    assert len(invocation.record.steps[0].result) == MAX_RESULT_BYTES


def test_step_raising_base_exception_fails_the_attempt_and_the_retry_replays() -> None:
    calls: list[str] = []

    def stop() -> None:
        calls.append("stop")
        if calls.count("stop") == 1:
            raise KeyboardInterrupt

    def handler(request: Any, context: Any) -> None:
        context.step.run("first", calls.append, "first")
        context.step.run("stop", stop)

    invocation = invoke(handler)
    assert invocation.state is State.SUCCEEDED
    assert invocation.attempts[0].error_type == "KeyboardInterrupt"
    assert calls == ["first", "stop", "stop"]


def test_async_step_in_a_sync_handler_is_refused() -> None:
    async def work() -> int:
        return 1

    error = _first_error(lambda request, context: context.step.run("w", work))
    assert isinstance(error, StepError)
    assert "async" in str(error)


def test_a_context_built_by_hand_keeps_steps_in_memory() -> None:
    context = make_context(make_request())
    assert context.step.run("a", lambda: (1, 2)) == [1, 2]
    with pytest.raises(StepError, match="already used"):
        context.step.run("a", lambda: 3)


def test_memory_journal_refuses_a_step_of_an_invocation_not_running() -> None:
    journal = MemoryJournal()
    step = Step(id="s", attempt=1, started_at=0.0, ended_at=0.0)
    with pytest.raises(JournalError, match="expected invocation nope running"):
        journal.step_completed("nope", step)


# -- real time: the thread executor on SQLite, and a restart -----------------------------------


def _registry(flaky: Flaky, delays: tuple[float, ...] = (0.01,)) -> Registry:
    registry = Registry()
    registry.add("order-background", flaky.handler, retry=RetryPolicy(delays=delays))
    return registry


def test_thread_executor_on_sqlite_replays_from_the_file(tmp_path: Path) -> None:
    flaky = Flaky()
    journal = SQLiteJournal(tmp_path / "j.db")
    app = App(_registry(flaky), executor=ThreadExecutor(journal=journal))
    try:
        record = app.enqueue("order-background", make_request()).wait(timeout=30)
    finally:
        app.shutdown()
    assert record.state is State.SUCCEEDED
    assert flaky.calls == {"reserve": 1, "charge": 2, "email": 1}
    stored = SQLiteJournal(tmp_path / "j.db", read_only=True)
    try:
        kept = stored.get(record.request_id)
        listed = stored.select()
    finally:
        stored.close()
    assert kept is not None
    assert [(s.id, s.attempt) for s in kept.steps] == [("reserve", 1), ("charge", 2), ("email", 2)]
    assert listed[0].steps == kept.steps


def test_restart_recovers_and_does_not_rerun_committed_steps(tmp_path: Path) -> None:
    """The first App stops after step 1 committed and step 2 failed (its retry an hour away);
    a new App on the same file recovers the invocation and runs only steps 2 and 3."""
    path = tmp_path / "j.db"
    first = Flaky()
    journal = SQLiteJournal(path)
    app = App(_registry(first, delays=(3600.0,)), executor=ThreadExecutor(journal=journal))
    try:
        handle = app.enqueue("order-background", make_request())
        for _ in range(3000):
            if handle.state is State.RETRY_SCHEDULED:
                break
            threading.Event().wait(0.01)  # polls for the state, not a timing assertion
        assert handle.state is State.RETRY_SCHEDULED
    finally:
        app.shutdown()
        journal.close()
    assert first.calls == {"reserve": 1, "charge": 1, "email": 0}
    # The retry is due now: as if the hour had passed while the server was down.
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "UPDATE invocations SET next_run_at = 0, record = json_set(record, '$.next_run_at', 0)"
        )
    second = Flaky(fail_times=0)
    journal = SQLiteJournal(path)
    app = App(_registry(second), executor=ThreadExecutor(journal=journal))
    try:
        app.executor.recover()
        record = app.executor.get(handle.request_id).wait(timeout=30)
    finally:
        app.shutdown()
        journal.close()
    assert record.state is State.SUCCEEDED
    assert second.calls == {"reserve": 0, "charge": 1, "email": 1}
    assert [(s.id, s.attempt) for s in record.steps] == [
        ("reserve", 1),
        ("charge", 2),
        ("email", 2),
    ]


def test_sqlite_step_of_a_row_not_leased_here_is_refused(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    try:
        step = Step(id="s", attempt=1, started_at=0.0, ended_at=0.0)
        with pytest.raises(JournalError, match="step s of invocation nope not stored"):
            journal.step_completed("nope", step)
    finally:
        journal.close()


def test_schema_2_file_migrates_to_steps(tmp_path: Path) -> None:
    """A journal file as the code before steps wrote it (schema 2) opens, keeps its rows, and
    takes steps; its user_version is then the current one."""
    path = tmp_path / "old.db"
    request = make_request(json={"to": "a@example.com"})
    record = InvocationRecord.of_request(
        request, request_id="old", function="signup", params={}, accepted_at=1000.0
    )
    data = record.to_json(body=False)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(
            """
            CREATE TABLE invocations (
                request_id TEXT PRIMARY KEY NOT NULL, function TEXT NOT NULL,
                state TEXT NOT NULL, attempts INTEGER NOT NULL, accepted_at REAL NOT NULL,
                next_run_at REAL, finished_at REAL, lease_owner TEXT, lease_expires REAL,
                record TEXT NOT NULL, body BLOB
            );
            CREATE INDEX invocations_state_next ON invocations (state, next_run_at);
            CREATE INDEX invocations_function_accepted ON invocations (function, accepted_at);
            CREATE INDEX invocations_finished ON invocations (finished_at);
            """
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO invocations VALUES (?, ?, 'accepted', 0, ?, ?, NULL, NULL, NULL, ?, ?)",
            (
                record.request_id,
                record.function,
                record.accepted_at,
                record.next_run_at,
                json.dumps(data),
                record.body,
            ),
        )
    journal = SQLiteJournal(path)
    try:
        assert journal.get(record.request_id) == record
        started = record.start_attempt(record.accepted_at)
        assert journal.attempt_started(started)
        step = Step(id="one", result="1", attempt=1, started_at=1.0, ended_at=2.0)
        journal.step_completed(record.request_id, step)
        two = Step(id="two", attempt=1, started_at=2.0, ended_at=3.0)
        journal.step_completed(record.request_id, two)
        kept = journal.get(record.request_id)
        assert kept is not None
        assert [s.id for s in kept.steps] == ["one", "two"]
        assert journal.unfinished()[0].steps == kept.steps
        # The end of the attempt rewrites the record's JSON, not its steps.
        journal.attempt_ended(started.end_attempt(3.0, Outcome.SUCCEEDED, RetryPolicy()))
        ended = journal.get(record.request_id)
        assert ended is not None
        assert ended.steps == kept.steps
    finally:
        journal.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        text = conn.execute("SELECT record FROM invocations").fetchone()[0]
    assert "steps" not in json.loads(text)  # the column is the truth


def test_inline_executor_on_sqlite_virtual_time(tmp_path: Path) -> None:
    flaky = Flaky()
    clock = VirtualClock()
    journal = SQLiteJournal(tmp_path / "j.db", clock=clock)
    registry = Registry()
    registry.add("order-background", flaky.handler)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        handle = app.enqueue("order-background", make_request())
        record = handle.wait()
    finally:
        app.shutdown()
        journal.close()
    assert record.state is State.SUCCEEDED
    assert flaky.calls == {"reserve": 1, "charge": 2, "email": 1}
    assert [s.started_at - record.accepted_at for s in record.steps] == [0, 60, 60]


def test_cli_invoke_prints_each_committed_step_under_its_attempt(tmp_path: Path) -> None:
    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "signup-background.py").write_text(
        "def handler(request, context):\n"
        "    context.step.run('billing', lambda: 'cus_1')\n"
        "    if context.attempt == 1:\n"
        "        raise RuntimeError('email down')\n"
        "    context.step.run('email', lambda: None)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bgfunctions",
            "invoke",
            "signup-background",
            "--site",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [" ".join(line.split()).replace("t= ", "t=") for line in done.stdout.splitlines()[1:]]
    assert lines[0].startswith("t=0.000s attempt 1 error")
    assert lines[1].startswith("t=0.000s step billing committed")
    assert lines[2].startswith("t=60.000s attempt 2 succeeded")
    assert lines[3] == "step billing replayed: stored by attempt 1, not run again"
    assert lines[4].startswith("t=60.000s step email committed")
    assert lines[5] == "succeeded after 2 attempt(s)"


def test_the_invocations_view_lists_steps_without_their_results() -> None:
    from bgfunctions.views import record_to_view

    invocation = invoke(lambda request, context: context.step.run("card", lambda: "4242-secret"))
    (shown,) = record_to_view(invocation.record)["steps"]
    assert shown["id"] == "card"
    assert shown["attempt"] == 1
    assert shown["result_size"] == len('"4242-secret"')
    assert "4242" not in json.dumps(shown)
