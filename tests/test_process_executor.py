"""The process executor kills attempts past their limit for real and survives crashing handlers.

Real processes and real time: every test here is marked ``realtime``. Limits are short (a 1 s
attempt limit, retries after 0.1 s and 0.2 s); tolerances are stated where timing is checked.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgfunctions import App, Limits, Outcome, Request, RetryPolicy, State, discover
from bgfunctions.executors.processes import ProcessExecutor
from bgfunctions.journals.sqlite import SQLiteJournal

pytestmark = pytest.mark.realtime

HANDLERS = {
    "ok-background": """
        def handler(request, context):
            pass
    """,
    "spin-background": """
        def handler(request, context):
            while True:
                pass
    """,
    "sleepy-background": """
        import time

        def handler(request, context):
            time.sleep(60)
    """,
    "exit-background": """
        import os

        def handler(request, context):
            os._exit(3)
    """,
    "kill-background": """
        import os
        import signal

        def handler(request, context):
            os.kill(os.getpid(), signal.SIGKILL)
    """,
    "flaky-background": """
        def handler(request, context):
            if context.attempt < 3:
                raise ValueError(f"attempt {context.attempt} fails")
    """,
    "async-spin-background": """
        import asyncio

        async def handler(request, context):
            await asyncio.sleep(60)
    """,
    "interrupt-background": """
        def handler(request, context):
            raise KeyboardInterrupt
    """,
    "sys-exit-background": """
        import sys

        def handler(request, context):
            sys.exit(3)
    """,
    "custom-background": """
        class Custom(BaseException):
            pass

        def handler(request, context):
            raise Custom("its own")
    """,
    "async-interrupt-background": """
        import asyncio

        async def handler(request, context):
            await asyncio.sleep(0)
            raise KeyboardInterrupt
    """,
    "async-cancelled-background": """
        import asyncio

        async def handler(request, context):
            raise asyncio.CancelledError()
    """,
    "interrupt": """
        async def handler(request, context):
            raise KeyboardInterrupt
    """,
    "started-then-sleeps-background": """
        import time
        from pathlib import Path

        def handler(request, context):
            Path(__file__).with_name(context.request_id + ".started").touch()
            time.sleep(60)
    """,
    "generator-exit-background": """
        def handler(request, context):
            raise GeneratorExit
    """,
    "steps-flaky-background": """
        import os
        from pathlib import Path

        def ran(context, name):
            with open(Path(__file__).with_name(context.request_id + ".log"), "a") as log:
                log.write(name + "\\n")
                log.flush()
                os.fsync(log.fileno())

        def reserve(context, order):
            ran(context, "reserve")
            return {"order": order, "items": (1, 2)}

        def charge(context, cents):
            ran(context, "charge")
            if context.attempt == 1:
                raise ConnectionError("card network down")
            return f"ch_{cents}"

        def handler(request, context):
            reserved = context.step.run("reserve", reserve, context, "o-1")
            assert reserved == {"order": "o-1", "items": [1, 2]}  # a JSON round trip
            assert context.step.run("charge", charge, context, cents=500) == "ch_500"
            context.step.run("email", ran, context, "email")
    """,
    "steps-killed-background": """
        import os
        import signal
        from pathlib import Path

        def charge(context):
            with open(Path(__file__).with_name(context.request_id + ".log"), "a") as log:
                log.write("charge\\n")
                log.flush()
                os.fsync(log.fileno())
            return {"charge": "ch_1", "attempt": context.attempt}

        def handler(request, context):
            charged = context.step.run("charge", charge, context)
            if context.attempt == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # after the commit, before the end
            assert charged == {"charge": "ch_1", "attempt": 1}  # replayed, not run again
    """,
    "steps-then-hang-background": """
        import time

        def handler(request, context):
            first = context.step.run("first", lambda: context.attempt)
            if context.attempt == 1:
                time.sleep(60)  # killed at its limit, after the step committed
            assert first == 1
    """,
    "steps-async-background": """
        import asyncio

        async def later(value):
            await asyncio.sleep(0)
            return value

        async def handler(request, context):
            one = await context.step.run("sync", lambda: "one")
            two = await context.step.run("async", later, "two")
            if context.attempt == 1:
                raise RuntimeError("after two steps")
            assert (one, two) == ("one", "two")
    """,
    "steps-misused-background": """
        def handler(request, context):
            if context.attempt == 1:
                context.step.run("twice", lambda: 1)
                context.step.run("twice", lambda: 2)
            context.step.run("not-json", lambda: object())
    """,
    "hello": """
        import os

        def handler(request, context):
            return {"pid": os.getpid(), "path": request.path}
    """,
}

LIMIT = 1.0
DELAYS = (0.1, 0.2)


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    for name, source in HANDLERS.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def app(functions: Path) -> Iterator[App]:
    executor = ProcessExecutor(max_workers=2)
    app = App(
        discover(functions),
        executor=executor,
        limits=Limits(background_timeout=LIMIT, sync_timeout=LIMIT),
        retry=RetryPolicy(delays=DELAYS),
    )
    yield app
    app.shutdown(grace=0)


def run(app: App, name: str) -> list[tuple[Outcome | None, str | None]]:
    record = app.enqueue(name).wait(30)
    return [(a.outcome, a.error_type) for a in record.attempts]


def test_many_invocations_share_one_process(app: App) -> None:
    """A worker process loads a function once and runs many invocations."""
    handles = [app.enqueue("ok-background") for _ in range(10)]
    assert all(h.wait(30).state is State.SUCCEEDED for h in handles)
    executor = app.executor
    assert isinstance(executor, ProcessExecutor)
    assert executor.processes_spawned <= 2


@pytest.mark.parametrize("name", ["spin-background", "sleepy-background", "async-spin-background"])
def test_attempt_past_its_limit_is_killed_and_retried(app: App, name: str) -> None:
    """A busy loop or a long sleep is killed at its limit, recorded timed out, and retried."""
    record = app.enqueue(name).wait(30)
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT] * 3
    for attempt in record.attempts:
        assert attempt.duration == pytest.approx(LIMIT)
    # Retries follow the schedule: each gap is at least the delay, which is the promise. The
    # upper bound only catches a lost timer: a loaded machine may start the replacement worker
    # process late, so it is generous rather than a timing claim.
    pairs = zip(record.attempts, record.attempts[1:], strict=False)
    for delay, (before, after) in zip(DELAYS, pairs, strict=True):
        assert before.ended_at is not None
        gap = after.started_at - before.ended_at
        assert delay - 0.01 <= gap <= delay + 5
    executor = app.executor
    assert isinstance(executor, ProcessExecutor)
    # one process per kill (three kills), plus at most the pool's first two
    assert executor.processes_spawned <= 3 + 2


@pytest.mark.parametrize("name", ["exit-background", "kill-background"])
def test_a_process_that_dies_is_a_crashed_attempt(app: App, name: str) -> None:
    """os._exit or a SIGKILL of its own process is a crashed attempt, retried on schedule."""
    record = app.enqueue(name).wait(30)
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.CRASHED] * 3
    assert record.attempts[0].error_message is not None
    assert "worker process" in record.attempts[0].error_message


@pytest.mark.parametrize(
    ("name", "error_type"),
    [
        ("interrupt-background", "KeyboardInterrupt"),
        ("sys-exit-background", "SystemExit"),
        ("custom-background", "Custom"),
        ("async-interrupt-background", "KeyboardInterrupt"),
        ("async-cancelled-background", "asyncio.exceptions.CancelledError"),
        ("generator-exit-background", "GeneratorExit"),
    ],
)
def test_a_base_exception_is_an_error_and_its_process_lives_on(
    app: App, name: str, error_type: str
) -> None:
    """KeyboardInterrupt, sys.exit(), a CancelledError or a custom BaseException of a handler is
    an error attempt with its type (not a crash), retried, and the worker process survives."""
    record = app.enqueue(name).wait(30)
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR] * 3
    for attempt in record.attempts:
        assert attempt.error_type is not None
        assert attempt.error_type.endswith(error_type)
        assert attempt.error_message
    executor = app.executor
    assert isinstance(executor, ProcessExecutor)
    assert executor.processes_spawned <= 2  # the pool's first processes, never replaced


def test_a_base_exception_in_a_sync_function_answers_500(app: App) -> None:
    """A sync function's KeyboardInterrupt in its process answers 500 with the request id."""
    response = app.handle(Request("GET", "/.netlify/functions/interrupt"))
    assert response.status == 500
    assert response.headers["x-nf-request-id"]
    assert app.handle(Request("GET", "/.netlify/functions/hello")).status == 200


def test_pool_keeps_capacity_and_others_are_undisturbed(app: App) -> None:
    """While handlers crash and hang, other invocations still succeed, and the pool recovers."""
    bad = [app.enqueue(n) for n in ("spin-background", "exit-background", "kill-background")]
    good = [app.enqueue("ok-background") for _ in range(6)]
    assert all(h.wait(30).state is State.SUCCEEDED for h in good)
    assert all(h.wait(30).state is State.FAILED for h in bad)
    later = [app.enqueue("ok-background") for _ in range(4)]
    assert all(h.wait(30).state is State.SUCCEEDED for h in later)
    assert app.executor.stats().workers == 2


def test_failure_then_success(app: App) -> None:
    """Exceptions cross the process boundary by type name and message."""
    record = app.enqueue("flaky-background").wait(30)
    assert record.state is State.SUCCEEDED
    assert [(a.outcome, a.error_type) for a in record.attempts] == [
        (Outcome.ERROR, "ValueError"),
        (Outcome.ERROR, "ValueError"),
        (Outcome.SUCCEEDED, None),
    ]


def test_sync_function_answers_from_a_worker_process(app: App) -> None:
    """A synchronous function's response comes back from its process."""
    response = app.handle(Request("GET", "/.netlify/functions/hello/extra"))
    assert response.status == 200
    assert b'"path":"/.netlify/functions/hello/extra"' in response.body


def test_functions_added_in_code_are_refused_clearly(functions: Path) -> None:
    """The process executor runs functions from their files; one added in code fails clearly."""
    registry = discover(functions)
    registry.add("inline-background", lambda request, context: None)
    app = App(registry, executor=ProcessExecutor(max_workers=1), retry=RetryPolicy(delays=()))
    try:
        record = app.enqueue("inline-background").wait(30)
    finally:
        app.shutdown(grace=0)
    assert record.state is State.FAILED
    assert record.attempts[0].error_message is not None
    assert "from their files" in record.attempts[0].error_message


def test_cancel_of_a_running_attempt_kills_its_process(functions: Path) -> None:
    """cancel() of an attempt running in a worker process kills that process (a thread could
    not be stopped; a process can): the record ends cancelled, with a cancelled attempt and no
    retry, and a new process takes the old one's place."""
    executor = ProcessExecutor(max_workers=1)
    app = App(
        discover(functions),
        executor=executor,
        limits=Limits(background_timeout=120.0),  # far beyond the test: only cancel ends it
        retry=RetryPolicy(delays=DELAYS),
    )
    try:
        handle = app.enqueue("started-then-sleeps-background")
        started = functions / f"{handle.request_id}.started"
        give_up = time.monotonic() + 30
        while not started.exists():  # a poll for a fact, not a timing
            assert time.monotonic() < give_up, "the handler never started"
            time.sleep(0.01)
        app.cancel(handle.request_id)
        record = handle.wait(30)
        assert record.state is State.CANCELLED
        assert [a.outcome for a in record.attempts] == [Outcome.CANCELLED]
        spawned = executor.processes_spawned
        assert app.enqueue("ok-background").wait(30).state is State.SUCCEEDED
        assert executor.processes_spawned == spawned + 1  # the killed one was replaced
    finally:
        app.shutdown(grace=0)


# -- durable steps: the worker process sends each step to the parent, which commits it --------


def _step_runs(functions: Path, request_id: str) -> list[str]:
    """What the step functions ran, from the handler's own fsynced log."""
    log = functions / f"{request_id}.log"
    return log.read_text().split() if log.exists() else []


def test_steps_are_committed_by_the_parent_and_replayed_by_the_retry(
    app: App, functions: Path
) -> None:
    """A step that raised runs again on the retry; the committed one does not; each result
    is the stored JSON (a tuple comes back as a list) on the first run as on a replay."""
    record = app.enqueue("steps-flaky-background").wait(30)
    assert [(a.outcome, a.error_type) for a in record.attempts] == [
        (Outcome.ERROR, "ConnectionError"),
        (Outcome.SUCCEEDED, None),
    ]
    assert [(s.id, s.attempt) for s in record.steps] == [
        ("reserve", 1),
        ("charge", 2),
        ("email", 2),
    ]
    assert record.steps[0].value() == {"order": "o-1", "items": [1, 2]}
    assert _step_runs(functions, record.request_id) == ["reserve", "charge", "charge", "email"]
    assert app.executor.get(record.request_id).record.steps == record.steps


def test_async_handler_steps_in_a_process(app: App) -> None:
    record = app.enqueue("steps-async-background").wait(30)
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR, Outcome.SUCCEEDED]
    assert [(s.id, s.attempt, s.value()) for s in record.steps] == [
        ("sync", 1, "one"),
        ("async", 1, "two"),
    ]


def test_a_step_committed_before_its_process_is_killed_is_not_run_again(
    functions: Path, tmp_path: Path
) -> None:
    """kill -9 of the worker process after a step committed: the attempt is crashed, the
    retry replays the step from the SQLite file (its function ran once), and succeeds."""
    journal = SQLiteJournal(tmp_path / "j.db")
    app = App(
        discover(functions),
        executor=ProcessExecutor(max_workers=1, journal=journal),
        limits=Limits(background_timeout=30.0),
        retry=RetryPolicy(delays=DELAYS),
    )
    try:
        record = app.enqueue("steps-killed-background").wait(30)
    finally:
        app.shutdown(grace=0)
        journal.close()
    assert [a.outcome for a in record.attempts] == [Outcome.CRASHED, Outcome.SUCCEEDED]
    assert "SIGKILL" in (record.attempts[0].error_message or "")
    assert _step_runs(functions, record.request_id) == ["charge"]
    stored = SQLiteJournal(tmp_path / "j.db", read_only=True)
    try:
        kept = stored.get(record.request_id)
    finally:
        stored.close()
    assert kept is not None
    assert [(s.id, s.attempt, s.value()) for s in kept.steps] == [
        ("charge", 1, {"charge": "ch_1", "attempt": 1})
    ]


def test_a_step_committed_before_a_time_out_is_replayed(app: App) -> None:
    """The process is killed at the attempt's limit; the step it committed stays committed."""
    record = app.enqueue("steps-then-hang-background").wait(30)
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT, Outcome.SUCCEEDED]
    assert [(s.id, s.attempt, s.value()) for s in record.steps] == [("first", 1, 1)]


def test_misused_steps_fail_clearly_in_a_process(app: App) -> None:
    """A repeated step id and a result that is not JSON get the same clear errors as on the
    other engines, naming the function and the step; nothing of them is stored."""
    record = app.enqueue("steps-misused-background").wait(30)
    assert record.state is State.FAILED
    errors = [(a.error_type, a.error_message or "") for a in record.attempts]
    assert all(kind == "bgfunctions.errors.StepError" for kind, _ in errors)
    assert "'steps-misused-background'" in errors[0][1]
    assert "step twice" in errors[0][1]
    assert "already used" in errors[0][1]
    assert "step not-json" in errors[1][1]
    assert "stored as JSON" in errors[1][1]
    assert [s.id for s in record.steps] == ["twice"]  # the first use committed
