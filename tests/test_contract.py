"""The contract: every engine x journal pair a user can build keeps the same record for the same
handler behaviour (issue 12, item 5).

One set of cases runs over six pairs (see ``contract_pairs.py``): inline+memory, thread+memory,
thread+sqlite, process+sqlite, Celery on RabbitMQ + PostgreSQL and Celery on Redis + SQLite (real
brokers, a real worker process). Each case compares :func:`seen` of the record, a normalised form
that drops ids and times and keeps the state, each attempt's number, outcome and error type, the
``on_event`` kinds in the order heard and the ``on_failure`` calls, with one expected value:
"the same record" is an equality. Times are checked apart (:func:`check_times`): attempt
numbers and times in the journal, each retry no earlier than its delay after the previous
attempt ended (real time: lower bounds only; the inline pair's virtual clock: exactly Netlify's
60 s and 120 s), a time-out no earlier than the limit.

Differences between engines that are allowed are stated in ``ALLOWED``, with why. Differences
that are bugs are in ``KNOWN_BUGS``: those cases are strict xfails, so that the fix shows up as
an XPASS that fails the run until the entry is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from bgfunctions import InlineExecutor, InvocationRecord, Outcome, State
from contract_pairs import CLOCK, NAP, Pair, celery, embedded, write_site

pytestmark = [pytest.mark.server, pytest.mark.realtime]

PAIRS = (
    "inline+memory",
    "thread+memory",
    "thread+sqlite",
    "process+sqlite",
    "celery-rabbitmq+postgres",
    "celery-redis+sqlite",
)
CELERY = ("celery-rabbitmq+postgres", "celery-redis+sqlite")
IN_PROCESS = ("inline+memory", "thread+memory", "thread+sqlite")
EPS = 1e-6  # float rounding of epoch seconds, not a timing tolerance


# -- the normalised record -------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a pair did with one invocation, without ids and times."""

    state: State
    attempts: tuple[tuple[int, Outcome | None, str | None], ...]
    """(number, outcome, error type) of each attempt."""
    events: tuple[str, ...]
    """The ``on_event`` kinds heard for it, in order."""
    on_failure: int
    """How many times ``on_failure`` was called with it."""
    steps: tuple[tuple[str, str, int], ...] = ()
    """(id, kind, attempt) of each committed durable step, in order."""


def seen(pair: Pair, record: InvocationRecord) -> Seen:
    # The order heard, across processes: a Celery web tier hears accepted (and a cancel of a
    # waiting invocation) before the message is published, the worker every other event.
    kinds = [kind for kind, _ in pair.ledger.heard(record.request_id)]
    return Seen(
        state=record.state,
        attempts=tuple((a.number, a.outcome, a.error_type) for a in record.attempts),
        events=tuple(kind for kind in kinds if kind != "on_failure"),
        on_failure=kinds.count("on_failure"),
        steps=tuple((s.id, s.kind, s.attempt) for s in record.steps),
    )


def story(*outcomes: Outcome, state: State, steps: tuple[tuple[str, str, int], ...] = ()) -> Seen:
    """The record of attempts ending with ``outcomes`` (with the error type each outcome has on
    every engine) and the events they cause, the invocation ending in ``state``."""
    types = {
        Outcome.SUCCEEDED: None,
        Outcome.TIMED_OUT: "TimeoutError",
        Outcome.CRASHED: "RuntimeError",
        Outcome.CANCELLED: None,
        Outcome.SUSPENDED: None,
    }
    attempts, events = [], ["accepted"]
    for number, outcome in enumerate(outcomes, 1):
        attempts.append((number, outcome, types.get(outcome)))
        events += ["attempt_started", "attempt_ended"]
        if outcome.failed and number < len(outcomes):
            events.append("retry_scheduled")
        if outcome is Outcome.SUSPENDED:
            events.append("sleeping")
    events.append(state.value)
    return Seen(state, tuple(attempts), tuple(events), int(state is State.FAILED), steps)


def error(seen_: Seen, error_type: str, *numbers: int) -> Seen:
    """``seen_`` with attempts ``numbers`` each an ``error`` of ``error_type``."""
    attempts = list(seen_.attempts)
    for number in numbers:
        attempts[number - 1] = (number, Outcome.ERROR, error_type)
    return replace(seen_, attempts=tuple(attempts))


OK, ERR, TIMEOUT = Outcome.SUCCEEDED, Outcome.ERROR, Outcome.TIMED_OUT
SLEPT = Outcome.SUSPENDED
EXPECTED: dict[str, Seen] = {
    "success": story(OK, state=State.SUCCEEDED),
    "exception": error(story(ERR, ERR, ERR, state=State.FAILED), "ValueError", 1, 2, 3),
    "sys_exit": error(story(ERR, OK, state=State.SUCCEEDED), "SystemExit", 1),
    "keyboard_interrupt": error(story(ERR, OK, state=State.SUCCEEDED), "KeyboardInterrupt", 1),
    "async_timeout": story(TIMEOUT, OK, state=State.SUCCEEDED),
    "sync_timeout": story(TIMEOUT, OK, state=State.SUCCEEDED),
    "crash": story(Outcome.CRASHED, OK, state=State.SUCCEEDED),
    "cancel_before": Seen(State.CANCELLED, (), ("accepted", "cancelled"), 0),
    "cancel_running": story(Outcome.CANCELLED, state=State.CANCELLED),
    "replay": story(OK, state=State.SUCCEEDED),
    # A step, a durable sleep, a step: the sleep suspends attempt 1 (not a failure); attempt 2
    # replays "before" and the sleep, and runs "after".
    "sleep": story(
        SLEPT,
        OK,
        state=State.SUCCEEDED,
        steps=(("before", "run", 1), ("nap", "sleep", 1), ("after", "run", 2)),
    ),
    # A sleep, then a step that fails once: the retry after it is the first (the sleep used
    # none), 60 s (the first delay) after the failure.
    "sleep_then_fail": error(
        story(
            SLEPT, ERR, OK, state=State.SUCCEEDED, steps=(("nap", "sleep", 1), ("after", "run", 3))
        ),
        "ValueError",
        2,
    ),
}


# -- what may differ, and what is a bug ----------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    reason: str
    runs: bool = True
    """False: the case does not apply to the pair (it is not generated)."""
    expect: Callable[[Seen], Seen] | None = None
    """The pair's record, when it is allowed to differ from the contract's."""


ALLOWED: dict[tuple[str, str], Allowed] = {
    **{
        (pair, "crash"): Allowed(
            "the attempt runs in the test's own process: a handler's os._exit ends the run, and "
            "there is no worker process whose death could be told apart",
            runs=False,
        )
        for pair in IN_PROCESS
    },
    ("inline+memory", "sync_timeout"): Allowed(
        "a sync handler runs on the caller's thread and cannot be pre-empted; on the virtual "
        "clock it passes its deadline by waiting on that clock (context.sleep), which ends it at "
        "the deadline: timed_out like the others, under the type of the exception that wait "
        "raised (DeadlineExceeded) rather than the engine's TimeoutError",
        expect=lambda s: replace(
            s, attempts=((1, TIMEOUT, "bgfunctions.errors.DeadlineExceeded"), *s.attempts[1:])
        ),
    ),
    **{
        (pair, "sync_timeout"): Allowed(
            "a thread cannot be killed: the attempt is recorded timed_out at its deadline and its "
            "thread is abandoned (it runs on until the handler returns; its result is ignored)"
        )
        for pair in ("thread+memory", "thread+sqlite")
    },
}

KNOWN_BUGS: dict[tuple[str, str], str] = {}


def pairs_for(case: str) -> list[Any]:
    params = []
    for name in PAIRS:
        allowed = ALLOWED.get((name, case))
        if allowed is not None and not allowed.runs:
            continue
        marks = []
        if (name, case) in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name, case]))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def expected(pair: Pair, case: str) -> Seen:
    allowed = ALLOWED.get((pair.name, case))
    if allowed is not None and allowed.expect is not None:
        return allowed.expect(EXPECTED[case])
    return EXPECTED[case]


# -- the pairs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_site(tmp_path_factory.mktemp("contract"))


def _celery_pair(name: str, site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp(name.replace("+", "-"))
    pair = celery(name, site, root)
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture(scope="module")
def celery_rabbitmq(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _celery_pair("celery-rabbitmq+postgres", site, tmp_path_factory)


@pytest.fixture(scope="module")
def celery_redis(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _celery_pair("celery-redis+sqlite", site, tmp_path_factory)


@pytest.fixture
def pair(request: pytest.FixtureRequest, site: Path, tmp_path: Path) -> Iterator[Pair]:
    name = str(request.param)
    if name in CELERY:
        shared: Pair = request.getfixturevalue(
            "celery_rabbitmq" if "rabbitmq" in name else "celery_redis"
        )
        for before in shared.before_test:
            before()
        yield shared
        return
    built = embedded(name, site, tmp_path)
    try:
        yield built
    finally:
        built.close()


# -- times -----------------------------------------------------------------------------------------


def check_times(pair: Pair, record: InvocationRecord) -> None:
    """Attempt numbers and times: in the journal as in the record, in order, each retry no
    earlier than its delay after the attempt before it ended, a time-out no earlier than the
    limit; exactly so on the virtual clock."""
    assert pair.app.journal.get(record.request_id) == record
    assert [a.number for a in record.attempts] == list(range(1, len(record.attempts) + 1))
    previous_end = record.accepted_at
    failures = 0  # the retry schedule counts failed attempts; a suspended one is none
    for attempt in record.attempts:
        assert attempt.ended_at is not None, attempt
        assert previous_end - EPS <= attempt.started_at <= attempt.ended_at, record
        before = record.attempts[attempt.number - 2] if attempt.number > 1 else None
        if before is not None and before.outcome is Outcome.SUSPENDED:
            # Resumed at the wake time of the sleep that suspended the attempt before it.
            (wake,) = [
                s.ended_at for s in record.steps if s.kind == "sleep" and s.attempt == before.number
            ]
            assert before.ended_at is not None, record
            assert wake >= before.ended_at - EPS, record
            if pair.virtual:
                assert attempt.started_at == pytest.approx(wake), (attempt, record)
            else:
                assert attempt.started_at >= wake - EPS, (attempt, wake, record)
        elif before is not None:
            delay = pair.delays[failures - 1]
            gap = attempt.started_at - previous_end
            if pair.virtual:
                assert gap == pytest.approx(delay), (attempt, record)
            else:
                assert gap >= delay - EPS, (attempt.number, gap, delay, record)
        if attempt.outcome is not None and attempt.outcome.failed:
            failures += 1
        if attempt.outcome is Outcome.TIMED_OUT:
            duration = attempt.ended_at - attempt.started_at
            if pair.virtual:
                assert duration == pytest.approx(pair.limit), record
            else:
                assert duration >= pair.limit - EPS, (duration, record)
        previous_end = attempt.ended_at
    assert record.finished_at is not None
    assert record.finished_at >= previous_end - EPS, record


def run_case(pair: Pair, case: str, function: str) -> InvocationRecord:
    record = pair.run(function)
    assert seen(pair, record) == expected(pair, case), record
    check_times(pair, record)
    return record


# -- the cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", pairs_for("success"), indirect=True)
def test_success(pair: Pair) -> None:
    """A handler that returns: one succeeded attempt."""
    run_case(pair, "success", "ok-background")


@pytest.mark.parametrize("pair", pairs_for("exception"), indirect=True)
def test_exception_retried_on_schedule_then_on_failure_once(pair: Pair) -> None:
    """A handler that raises: three error attempts on the retry schedule, then failed, and
    on_failure called exactly once."""
    record = run_case(pair, "exception", "fail-background")
    messages = [a.error_message for a in record.attempts]
    assert messages == [f"attempt {n} fails" for n in (1, 2, 3)]


@pytest.mark.parametrize("pair", pairs_for("sys_exit"), indirect=True)
def test_sys_exit_is_an_error(pair: Pair) -> None:
    """sys.exit(3) in a handler: an error attempt (SystemExit), retried; the engine lives on."""
    run_case(pair, "sys_exit", "exit-background")


@pytest.mark.parametrize("pair", pairs_for("keyboard_interrupt"), indirect=True)
def test_keyboard_interrupt_is_an_error(pair: Pair) -> None:
    """A KeyboardInterrupt raised by a handler: an error attempt, retried."""
    run_case(pair, "keyboard_interrupt", "interrupt-background")


@pytest.mark.parametrize("pair", pairs_for("async_timeout"), indirect=True)
def test_async_timeout(pair: Pair) -> None:
    """An async handler past its limit: timed_out at the limit, retried."""
    run_case(pair, "async_timeout", "async-timeout-background")


@pytest.mark.parametrize("pair", pairs_for("sync_timeout"), indirect=True)
def test_sync_timeout(pair: Pair) -> None:
    """A sync handler blocked past its limit: timed_out at the limit (killed where the engine
    can kill), retried."""
    run_case(pair, "sync_timeout", "sync-timeout-background")


@pytest.mark.parametrize("pair", pairs_for("crash"), indirect=True)
def test_a_process_that_dies_is_crashed_and_retried(pair: Pair) -> None:
    """os._exit in a handler, where the engine runs processes: crashed, retried."""
    run_case(pair, "crash", "crash-background")


@pytest.mark.parametrize("pair", pairs_for("cancel_before"), indirect=True)
def test_cancel_before_the_attempt_runs(pair: Pair) -> None:
    """A cancel while the invocation waits: cancelled, no attempt ever runs."""
    with pair.slot_held():
        invocation = pair.enqueue("ok-background")
        cancelled = pair.app.cancel(invocation.request_id)
        assert cancelled.state is State.CANCELLED
    record = pair.wait(invocation)
    assert seen(pair, record) == expected(pair, "cancel_before")
    check_times(pair, record)
    if not pair.virtual:  # a message delivered later is dropped, not run
        CLOCK.sleep(0.3)
        assert pair.app.journal.get(record.request_id) == record


@pytest.mark.parametrize("pair", pairs_for("cancel_running"), indirect=True)
def test_cancel_while_it_runs(pair: Pair) -> None:
    """A cancel while the attempt runs: that attempt ends cancelled, and no other runs."""
    invocation = pair.enqueue("sleep-background")
    if pair.virtual:
        executor = pair.app.executor
        assert isinstance(executor, InlineExecutor)
        executor.run_until(pair.app.clock.now() + 1.0)  # the attempt starts and awaits
    else:

        def running() -> bool:
            return pair.state(invocation.request_id) is State.RUNNING

        pair.until("the attempt to start", running)
    pair.app.cancel(invocation.request_id)
    record = pair.wait(invocation)
    assert seen(pair, record) == expected(pair, "cancel_running")
    check_times(pair, record)


@pytest.mark.parametrize("pair", pairs_for("replay"), indirect=True)
def test_replay(pair: Pair) -> None:
    """A replay: a new invocation with its own id that names the first, with the same record."""
    first = pair.run("ok-background")
    again = pair.wait(pair.app.replay(first.request_id))
    assert again.request_id != first.request_id
    assert again.replay_of == first.request_id
    assert seen(pair, again) == expected(pair, "replay")
    check_times(pair, again)
    assert pair.app.journal.get(first.request_id) == first


@pytest.mark.parametrize("pair", pairs_for("sleep"), indirect=True)
def test_durable_sleep_suspends_and_resumes_with_the_steps_remembered(pair: Pair) -> None:
    """step, sleep, step: attempt 1 is suspended at the sleep (no failure, no retry used) and
    the invocation resumes at the wake time (7 days on the virtual clock), replaying what
    committed."""
    record = run_case(pair, "sleep", "nap-background")
    _, nap, after = record.steps
    assert nap.ended_at - nap.started_at == pytest.approx(7 * 86400 if pair.virtual else NAP)
    assert after.started_at >= nap.ended_at - EPS


@pytest.mark.parametrize("pair", pairs_for("sleep_then_fail"), indirect=True)
def test_a_failure_after_a_sleep_gets_the_first_retry_delay(pair: Pair) -> None:
    """sleep, then a step that fails once: the failure is the first, retried after the first
    delay; the invocation succeeds on attempt 3."""
    record = run_case(pair, "sleep_then_fail", "nap-fail-background")
    assert record.attempts[1].error_message == "fails once, after the sleep"
