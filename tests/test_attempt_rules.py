"""The attempt rules every engine applies (bgfunctions.attempts, docs/executors.md): here, a
sync handler that returns after its deadline. Its thread cannot be interrupted, so it is judged
when it returns: ``timed_out`` at exactly its deadline, what it returned ignored, and retried on
the normal schedule. The handler moves a virtual clock past its deadline, so no test waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bgfunctions import (
    App,
    Context,
    Event,
    EventKind,
    Executor,
    InlineExecutor,
    Limits,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    State,
    ThreadExecutor,
    VirtualClock,
)

LIMIT = 10.0
DELAYS = (60.0, 120.0)


def _app(
    executor: Executor, clock: VirtualClock, scheduled: threading.Event, done: threading.Event
) -> App:
    registry = Registry()

    @registry.function("late-background")
    def late(request: Request, context: Context) -> str:
        if context.attempt == 1:
            clock.advance(LIMIT + 5)  # the handler "ran" past its limit, then returns
        return "ignored"

    def on_event(event: Event) -> None:
        if event.kind is EventKind.RETRY_SCHEDULED:
            scheduled.set()
        elif event.kind in (EventKind.SUCCEEDED, EventKind.FAILED):
            done.set()

    return App(
        registry,
        executor=executor,
        on_event=on_event,
        limits=Limits(background_timeout=LIMIT),
        retry=RetryPolicy(delays=DELAYS),
    )


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.shutdown(grace=0)


@pytest.mark.parametrize("engine", ["inline", "thread"])
def test_a_sync_handler_returning_after_its_deadline_timed_out(
    engine: str, apps: list[App]
) -> None:
    clock = VirtualClock()
    executor: Executor = (
        InlineExecutor(clock=clock) if engine == "inline" else ThreadExecutor(clock=clock)
    )
    scheduled, done = threading.Event(), threading.Event()
    app = _app(executor, clock, scheduled, done)
    apps.append(app)
    handle = app.enqueue("late-background")
    if isinstance(executor, InlineExecutor):
        executor.drain()
        record = handle.record
    else:
        assert scheduled.wait(30)  # the first attempt ended; its retry is due 60 virtual s on
        clock.advance(DELAYS[0])
        assert done.wait(30)
        record = handle.record
    assert record.state is State.SUCCEEDED
    late, ok = record.attempts
    assert late.outcome is Outcome.TIMED_OUT
    assert late.ended_at == late.started_at + LIMIT
    assert late.error_type == "TimeoutError"
    assert ok.outcome is Outcome.SUCCEEDED
    assert late.ended_at is not None
    assert ok.started_at >= late.ended_at + DELAYS[0]  # retried on the normal schedule
