"""on_event and on_failure hooks, and log lines tagged with the invocation (InvocationFilter)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from bgfunctions import (
    App,
    Context,
    Event,
    EventKind,
    InlineExecutor,
    InvocationFilter,
    InvocationRecord,
    Registry,
    Request,
    RetryPolicy,
    State,
    ThreadExecutor,
)

user_log = logging.getLogger("tests.hooks.user")


class _Collect(logging.Handler):
    """Keeps every record it sees, after the InvocationFilter ran."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(InvocationFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tags(self) -> list[tuple[str, str, object, str]]:
        return [
            (r.bg_function, r.bg_request_id, r.bg_attempt, r.getMessage())  # type: ignore[attr-defined]
            for r in self.records
        ]


@pytest.fixture
def collect() -> Iterator[_Collect]:
    handler = _Collect()
    user_log.addHandler(handler)
    user_log.setLevel(logging.DEBUG)
    yield handler
    user_log.removeHandler(handler)


def _boom(request: Request, context: Context) -> None:
    raise RuntimeError("boom")


def _app(registry: Registry, **options: object) -> App:
    return App(registry, executor=InlineExecutor(), **options)  # type: ignore[arg-type]


def _inline(app: App) -> InlineExecutor:
    assert isinstance(app.executor, InlineExecutor)
    return app.executor


def test_on_event_hears_every_state_change_in_order() -> None:
    """A failing invocation emits accepted, 3 x (started, ended), 2 retries, then failed."""
    events: list[Event] = []
    registry = Registry()
    registry.add("job-background", _boom)
    app = _app(registry, on_event=events.append)
    try:
        invocation = app.enqueue("job-background")
        invocation.wait()
    finally:
        app.shutdown()
    E = EventKind
    assert [e.kind for e in events] == [
        E.ACCEPTED,
        E.ATTEMPT_STARTED, E.ATTEMPT_ENDED, E.RETRY_SCHEDULED,
        E.ATTEMPT_STARTED, E.ATTEMPT_ENDED, E.RETRY_SCHEDULED,
        E.ATTEMPT_STARTED, E.ATTEMPT_ENDED, E.FAILED,
    ]  # fmt: skip
    assert {e.record.request_id for e in events} == {invocation.request_id}
    assert [e.record.state for e in events][-1] is State.FAILED
    times = [e.at for e in events]
    assert times == sorted(times)
    started = [e for e in events if e.kind is E.ATTEMPT_STARTED]
    assert [len(e.record.attempts) for e in started] == [1, 2, 3]


def test_on_event_success_sequence() -> None:
    """A succeeding invocation emits accepted, attempt_started, attempt_ended, succeeded."""
    events: list[Event] = []
    registry = Registry()
    registry.add("job-background", lambda req, ctx: None)
    app = _app(registry, on_event=[events.append])
    try:
        app.enqueue("job-background").wait()
    finally:
        app.shutdown()
    assert [e.kind for e in events] == [
        EventKind.ACCEPTED,
        EventKind.ATTEMPT_STARTED,
        EventKind.ATTEMPT_ENDED,
        EventKind.SUCCEEDED,
    ]


def test_on_failure_receives_the_record_once() -> None:
    """on_failure is called once, with the failed record, when the attempts are used up."""
    failed: list[InvocationRecord] = []
    registry = Registry()
    registry.add("job-background", _boom)
    registry.add("ok-background", lambda req, ctx: None)
    app = _app(registry, on_failure=failed.append)
    try:
        bad = app.enqueue("job-background")
        app.enqueue("ok-background")
        _inline(app).drain()
    finally:
        app.shutdown()
    assert len(failed) == 1
    assert failed[0].request_id == bad.request_id
    assert failed[0].state is State.FAILED
    assert len(failed[0].attempts) == 3


def test_on_failure_not_called_for_cancelled() -> None:
    """A cancelled invocation is not a dead letter: on_failure stays silent."""
    failed: list[InvocationRecord] = []
    registry = Registry()
    registry.add("job-background", _boom)
    app = _app(registry, on_failure=failed.append)
    try:
        invocation = app.enqueue("job-background")
        _inline(app).clock.advance(1)
        app.cancel(invocation.request_id)
        _inline(app).drain()
    finally:
        app.shutdown()
    assert failed == []


def test_failing_hooks_are_logged_and_do_not_break_the_executor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising on_event or on_failure hook is logged; the invocation still completes."""
    heard: list[EventKind] = []
    dead: list[str] = []

    def bad_listener(event: Event) -> None:
        raise ValueError("listener broke")

    def bad_failure(record: InvocationRecord) -> None:
        raise ValueError("dead letter broke")

    registry = Registry()
    registry.add("job-background", _boom, retry=RetryPolicy(delays=(1,)))
    registry.add("ok-background", lambda req, ctx: None)
    app = _app(
        registry,
        on_event=[bad_listener, lambda e: heard.append(e.kind)],
        on_failure=[bad_failure, lambda r: dead.append(r.request_id)],
    )
    try:
        with caplog.at_level(logging.ERROR, logger="bgfunctions"):
            bad = app.enqueue("job-background")
            ok = app.enqueue("ok-background")
            _inline(app).drain()
    finally:
        app.shutdown()
    assert bad.state is State.FAILED
    assert len(bad.record.attempts) == 2
    assert ok.state is State.SUCCEEDED
    assert dead == [bad.request_id]  # the hook after the failing one still ran
    assert heard.count(EventKind.FAILED) == 1
    assert heard.count(EventKind.SUCCEEDED) == 1
    messages = [r.getMessage() for r in caplog.records if r.exc_info]
    assert any("on_event" in m for m in messages)
    assert any("on_failure" in m for m in messages)


# -- log lines carry the invocation ------------------------------------------------------------


def test_log_lines_of_sync_handler_carry_invocation(collect: _Collect) -> None:
    """A sync handler's log lines carry function, request id and attempt (inline)."""

    def handler(request: Request, context: Context) -> None:
        user_log.info("attempt %d", context.attempt)
        if context.attempt < 2:
            raise RuntimeError("again")

    registry = Registry()
    registry.add("job-background", handler)
    app = _app(registry)
    try:
        invocation = app.enqueue("job-background")
        invocation.wait()
    finally:
        app.shutdown()
    user_log.info("outside")
    rid = invocation.request_id
    assert collect.tags() == [
        ("job-background", rid, 1, "attempt 1"),
        ("job-background", rid, 2, "attempt 2"),
        ("", "", "", "outside"),
    ]


def test_log_lines_of_async_handler_and_its_task_carry_invocation(collect: _Collect) -> None:
    """An async handler's log lines, and those of a task it spawns, carry the invocation."""

    async def child() -> None:
        await asyncio.sleep(1)
        user_log.info("child")

    async def handler(request: Request, context: Context) -> None:
        user_log.info("parent")
        context.wait_until(asyncio.ensure_future(child()))

    registry = Registry()
    registry.add("job-background", handler)
    app = _app(registry)
    try:
        invocation = app.enqueue("job-background")
        invocation.wait()
    finally:
        app.shutdown()
    rid = invocation.request_id
    assert collect.tags() == [
        ("job-background", rid, 1, "parent"),
        ("job-background", rid, 1, "child"),
    ]


@pytest.mark.realtime
def test_log_lines_in_thread_executor_carry_invocation(collect: _Collect) -> None:
    """On the ThreadExecutor (worker thread and loop thread) log lines carry the invocation.

    Real time; each wait has a 10 s timeout, far above the few ms the handlers take.
    """

    def sync_handler(request: Request, context: Context) -> None:
        user_log.info("sync")

    async def child() -> None:
        await asyncio.sleep(0.01)
        user_log.info("child")

    async def async_handler(request: Request, context: Context) -> None:
        user_log.info("async")
        await asyncio.ensure_future(child())

    registry = Registry()
    registry.add("sync-background", sync_handler)
    registry.add("async-background", async_handler)
    app = App(registry, executor=ThreadExecutor())
    try:
        one = app.enqueue("sync-background")
        one.wait(10)
        two = app.enqueue("async-background")
        two.wait(10)
    finally:
        app.shutdown()
    assert collect.tags() == [
        ("sync-background", one.request_id, 1, "sync"),
        ("async-background", two.request_id, 1, "async"),
        ("async-background", two.request_id, 1, "child"),
    ]


def test_sync_function_log_lines_carry_invocation(collect: _Collect) -> None:
    """A synchronous (non-background) function's log lines carry its request id too."""

    def handler(request: Request, context: Context) -> str:
        user_log.info("sync call")
        return "ok"

    registry = Registry()
    registry.add("f", handler)
    app = _app(registry)
    try:
        response = app.handle(Request("GET", "/.netlify/functions/f"))
    finally:
        app.shutdown()
    assert collect.tags() == [("f", response.headers["x-nf-request-id"], 1, "sync call")]
