"""The App through its public API, on the inline executor and virtual time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bgfunctions import (
    App,
    Config,
    Context,
    ExecutorShutdownError,
    InlineExecutor,
    InvocationNotFoundError,
    Limits,
    NotAcceptedError,
    Outcome,
    PayloadTooLargeError,
    Registry,
    Request,
    Response,
    RetryPolicy,
    State,
    UnknownFunctionError,
    VirtualClock,
)

BG = "/.netlify/functions/job-background"
INVALID_NAME = "Function name should consist only of alphanumeric characters, hyphen & underscores."


def _noop(request: Request, context: Context) -> None:
    return None


def _boom(request: Request, context: Context) -> None:
    raise RuntimeError("secret detail")


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def make(registry: Registry) -> Iterator[Any]:
    """Build Apps on an InlineExecutor; shut every one down after the test."""
    apps: list[App] = []

    def build(**options: Any) -> App:
        app = App(registry, executor=InlineExecutor(), **options)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.shutdown()


def _attempt_offsets(app: App, request_id: str) -> list[float]:
    record = app.invocations.get(request_id)
    assert record is not None
    return [a.started_at - record.accepted_at for a in record.attempts]


# -- background functions: the 202 ---------------------------------------------------------------


def test_background_request_gets_empty_202_with_request_id(registry: Registry, make: Any) -> None:
    """A background request is answered 202, empty body, no content type, x-nf-request-id."""
    registry.add("job-background", _noop)
    app = make()
    response = app.handle(Request("POST", BG, body=b"hello"))
    assert response.status == 202
    assert response.body == b""
    assert "content-type" not in response.headers
    request_id = response.headers["x-nf-request-id"]
    assert request_id


def test_journal_has_the_record_when_202_is_returned(registry: Registry, make: Any) -> None:
    """The journal holds the accepted record (nothing ran yet) as soon as handle returns."""
    registry.add("job-background", _noop)
    app = make()
    response = app.handle(Request("POST", BG, body=b"payload"))
    record = app.journal.get(response.headers["x-nf-request-id"])
    assert record is not None
    assert record.state is State.ACCEPTED
    assert record.body == b"payload"
    assert record.function == "job-background"
    assert record.attempts == ()


def test_background_handler_runs_once_drained(registry: Registry, make: Any) -> None:
    """The accepted invocation runs when time moves and succeeds."""
    seen: list[bytes] = []
    registry.add("job-background", lambda req, ctx: seen.append(req.body))
    app = make()
    response = app.handle(Request("POST", BG, body=b"x"))
    app.executor.drain()
    assert seen == [b"x"]
    record = app.invocations.get(response.headers["x-nf-request-id"])
    assert record is not None
    assert record.state is State.SUCCEEDED


@pytest.mark.parametrize(("size", "status"), [(262_144, 202), (262_145, 413)])
def test_background_payload_limit(registry: Registry, make: Any, size: int, status: int) -> None:
    """A background body over 262,144 bytes is 413 and nothing is queued; at the limit, 202."""
    registry.add("job-background", _noop)
    app = make()
    response = app.handle(Request("POST", BG, body=b"x" * size))
    assert response.status == status
    assert len(app.invocations.list()) == (1 if status == 202 else 0)


def test_per_function_limits_apply(registry: Registry, make: Any) -> None:
    """registry.add(limits=...) overrides the App's body limit for that function."""
    registry.add("job-background", _noop, limits=Limits(background_payload=10))
    app = make()
    assert app.handle(Request("POST", BG, body=b"x" * 11)).status == 413
    assert app.handle(Request("POST", BG, body=b"x" * 10)).status == 202
    assert app.resolve("POST", BG).body_limit == 10


def test_client_request_id_is_ignored(registry: Registry, make: Any) -> None:
    """A client's x-nf-request-id header never becomes the invocation's id."""
    registry.add("job-background", _noop)
    registry.add("echo", lambda req, ctx: ctx.request_id)
    app = make()
    bg = app.handle(Request("POST", BG, headers={"x-nf-request-id": "forged"}))
    assert bg.headers["x-nf-request-id"] != "forged"
    sync = app.handle(
        Request("GET", "/.netlify/functions/echo", headers={"x-nf-request-id": "forged"})
    )
    assert sync.headers["x-nf-request-id"] != "forged"
    assert sync.body.decode() == sync.headers["x-nf-request-id"]


def test_shut_down_executor_answers_503_never_202(registry: Registry, make: Any) -> None:
    """Once the executor is shut down, a background request gets 503 with Retry-After."""
    registry.add("job-background", _noop)
    app = make()
    app.shutdown()
    response = app.handle(Request("POST", BG))
    assert response.status == 503
    assert int(response.headers["retry-after"]) >= 1
    assert app.invocations.list() == []


def test_enqueue_on_shut_down_executor_raises(registry: Registry, make: Any) -> None:
    """enqueue raises NotAcceptedError (ExecutorShutdownError) when the executor is down."""
    registry.add("job-background", _noop)
    app = make()
    app.shutdown()
    with pytest.raises(ExecutorShutdownError):
        app.enqueue("job-background")
    assert issubclass(ExecutorShutdownError, NotAcceptedError)


def test_enqueue_checks_name_and_payload(registry: Registry, make: Any) -> None:
    """enqueue raises UnknownFunctionError and PayloadTooLargeError, queuing nothing."""
    registry.add("job-background", _noop)
    app = make()
    with pytest.raises(UnknownFunctionError, match="nope"):
        app.enqueue("nope")
    with pytest.raises(PayloadTooLargeError, match="job-background"):
        app.enqueue("job-background", Request("POST", "/", body=b"x" * 262_145))
    assert app.invocations.list() == []


# -- sync functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status", "body", "content_type"),
    [
        ("hi", 200, b"hi", "text/plain; charset=utf-8"),
        (b"\x00\x01", 200, b"\x00\x01", "application/octet-stream"),
        ({"a": 1}, 200, b'{"a":1}', "application/json"),
        (None, 204, b"", None),
        (Response("made", status=201), 201, b"made", "text/plain; charset=utf-8"),
    ],
)
def test_sync_return_values_are_converted(
    registry: Registry,
    make: Any,
    value: object,
    status: int,
    body: bytes,
    content_type: str | None,
) -> None:
    """str, bytes, dict, None (204) and Response become the HTTP response."""
    registry.add("f", lambda req, ctx: value)
    app = make()
    response = app.handle(Request("GET", "/.netlify/functions/f"))
    assert response.status == status
    assert response.body.replace(b" ", b"") == body
    ctype = response.headers.get("content-type")
    assert (ctype.split(";")[0] if ctype else None) == (
        content_type.split(";")[0] if content_type else None
    )
    assert response.headers["x-nf-request-id"]


def test_cookies_become_set_cookie(registry: Registry, make: Any) -> None:
    """Cookies set through context.cookies become Set-Cookie headers."""

    def handler(request: Request, context: Context) -> str:
        context.cookies.set("a", "1")
        context.cookies.set("b", "2")
        return "ok"

    registry.add("f", handler)
    app = make()
    response = app.handle(Request("GET", "/.netlify/functions/f"))
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("a=1")
    assert cookies[1].startswith("b=2")


def test_sync_payload_limit(registry: Registry, make: Any) -> None:
    """A sync body over sync_payload gets 413 and the handler never runs."""
    calls: list[int] = []
    registry.add("f", lambda req, ctx: calls.append(1))
    app = make(limits=Limits(sync_payload=5))
    assert app.handle(Request("POST", "/.netlify/functions/f", body=b"123456")).status == 413
    assert app.handle(Request("POST", "/.netlify/functions/f", body=b"12345")).status == 204
    assert calls == [1]


def test_sync_exception_is_500_without_details(
    registry: Registry, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception gives 500 naming only the failure and request id; the traceback is logged."""
    registry.add("f", _boom)
    app = make()
    with caplog.at_level(logging.ERROR):
        response = app.handle(Request("GET", "/.netlify/functions/f"))
    assert response.status == 500
    request_id = response.headers["x-nf-request-id"]
    text = response.body.decode()
    assert "failed" in text
    assert request_id in text
    assert "secret detail" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert "Traceback" in caplog.text  # the log has what the body must not
    assert "secret detail" in caplog.text
    assert request_id in caplog.text


def test_sync_timeout_is_500(registry: Registry, make: Any) -> None:
    """A sync handler past sync_timeout gets a 500 (virtual time)."""

    async def slow(request: Request, context: Context) -> str:
        await asyncio.sleep(100)
        return "late"

    def slow_sync(request: Request, context: Context) -> str:
        context.sleep(100)
        return "late"

    registry.add("slow", slow)
    registry.add("slow-sync", slow_sync)
    app = make(limits=Limits(sync_timeout=10))
    for name in ("slow", "slow-sync"):
        response = app.handle(Request("GET", f"/.netlify/functions/{name}"))
        assert response.status == 500
        assert "late" not in response.body.decode()


def test_handle_async_serves_sync_and_background(registry: Registry, make: Any) -> None:
    """handle_async answers like handle: function result, 202, and 500 on failure."""
    registry.add("f", lambda req, ctx: "hi")
    registry.add("bad", _boom)
    registry.add("job-background", _noop)
    app = make()

    async def main() -> list[Response]:
        return [
            await app.handle_async(Request("GET", "/.netlify/functions/f")),
            await app.handle_async(Request("POST", BG)),
            await app.handle_async(Request("GET", "/.netlify/functions/bad")),
            await app.handle_async(Request("GET", "/.netlify/functions/nope")),
        ]

    f, bg, bad, missing = asyncio.run(main())
    assert (f.status, f.body) == (200, b"hi")
    assert (bg.status, bg.body) == (202, b"")
    assert bad.status == 500
    assert b"secret" not in bad.body
    assert missing.status == 404


# -- routing answers ------------------------------------------------------------------------------


def test_unknown_function_is_404(registry: Registry, make: Any) -> None:
    """An unknown name under the default prefix is 404 `Function not found...`."""
    registry.add("f", _noop)
    response = make().handle(Request("GET", "/.netlify/functions/nope"))
    assert response.status == 404
    assert response.body.decode().startswith("Function not found")


def test_invalid_name_is_400(registry: Registry, make: Any) -> None:
    """A function with an invalid name answers 400 with the spec sentence."""
    registry.add("bad.name", _noop)
    response = make().handle(Request("GET", "/.netlify/functions/bad.name"))
    assert response.status == 400
    assert INVALID_NAME in response.body.decode()


@pytest.mark.parametrize(("opt_in", "status"), [(False, 404), (True, 405)])
def test_wrong_method(registry: Registry, make: Any, opt_in: bool, status: int) -> None:
    """A wrong method on a custom path is 404, or 405 with Allow when the host opts in."""
    registry.add("f", _noop, config=Config(path="/f", method=["POST"]))
    response = make(method_not_allowed=opt_in).handle(Request("GET", "/f"))
    assert response.status == status
    if opt_in:
        assert response.headers["allow"] == "POST"


def test_resolve_reports_function_params_background_limit(registry: Registry, make: Any) -> None:
    """resolve() gives the function, params, background flag and body limit."""
    registry.add("item", _noop, config=Config(path="/items/:id"))
    registry.add("job-background", _noop)
    app = make()
    sync = app.resolve("GET", "/items/7")
    assert sync.function is not None
    assert sync.function.name == "item"
    assert dict(sync.params) == {"id": "7"}
    assert sync.background is False
    assert sync.body_limit == 6_000_000
    bg = app.resolve("POST", BG)
    assert bg.background is True
    assert bg.body_limit == 262_144
    missing = app.resolve("GET", "/nothing")
    assert missing.function is None
    assert missing.response is not None
    assert missing.response.status == 404


def test_resolve_follows_registry_changes_limits_and_static_files(
    registry: Registry, make: Any
) -> None:
    """A URL resolved before reflects a function added later, new limits, and a static file
    that appears for a prefer_static route (resolutions are remembered, never stale)."""
    static: set[str] = set()
    registry.add("page", _noop, config=Config(path="/page", prefer_static=True))
    app = make(static_exists=static.__contains__)
    assert app.resolve("GET", "/.netlify/functions/late").response is not None
    assert app.resolve("GET", "/page").function is not None
    registry.add("late", _noop)
    late = app.resolve("GET", "/.netlify/functions/late")
    assert late.function is not None
    assert late.function.name == "late"
    assert app.resolve("GET", "/.netlify/functions/late") is late  # remembered
    app.limits = Limits(sync_payload=10)
    assert app.resolve("GET", "/.netlify/functions/late").body_limit == 10
    assert app.resolve("GET", "/page").function is not None
    static.add("/page")
    assert app.resolve("GET", "/page").function is None  # the file now wins
    static.clear()
    assert app.resolve("GET", "/page").function is not None


# -- semantics: attempts, retries, timeouts -------------------------------------------------------


def test_failing_background_is_tried_at_0_60_180(registry: Registry, make: Any) -> None:
    """A handler that always raises is tried 3 times, at 0, 60 and 180 s, then failed."""
    registry.add("job-background", _boom)
    app = make()
    request_id = app.handle(Request("POST", BG)).headers["x-nf-request-id"]
    app.executor.drain()
    assert _attempt_offsets(app, request_id) == [0, 60, 180]
    record = app.invocations.get(request_id)
    assert record is not None
    assert record.state is State.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR] * 3
    assert record.attempts[0].error_type == "RuntimeError"


def test_retry_delay_counts_from_end_of_attempt(registry: Registry, make: Any) -> None:
    """A handler running 30 s before failing starts at 0, 90, 240."""

    def handler(request: Request, context: Context) -> None:
        context.sleep(30)
        raise RuntimeError("after 30 s")

    registry.add("job-background", handler)
    app = make()
    request_id = app.handle(Request("POST", BG)).headers["x-nf-request-id"]
    app.executor.drain()
    assert _attempt_offsets(app, request_id) == [0, 90, 240]


def test_returned_500_is_not_a_failure(registry: Registry, make: Any) -> None:
    """A returned status (Response 500) never fails an attempt."""
    registry.add("job-background", lambda req, ctx: Response("no", status=500))
    app = make()
    invocation = app.enqueue("job-background")
    record = invocation.wait()
    assert record.state is State.SUCCEEDED
    assert len(record.attempts) == 1


def test_same_request_id_and_attempt_numbers(registry: Registry, make: Any) -> None:
    """Every attempt sees the same request id; context.attempt counts 1, 2, 3."""
    seen: list[tuple[str, int]] = []

    def handler(request: Request, context: Context) -> None:
        seen.append((context.request_id, context.attempt))
        raise ValueError("again")

    registry.add("job-background", handler)
    app = make()
    request_id = app.handle(Request("POST", BG)).headers["x-nf-request-id"]
    app.executor.drain()
    assert seen == [(request_id, 1), (request_id, 2), (request_id, 3)]


def test_async_handler_times_out_at_exactly_900(registry: Registry, make: Any) -> None:
    """An async handler that sleeps past its limit is timed out at exactly 900 virtual s."""

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(1200)

    registry.add("job-background", handler, retry=RetryPolicy(delays=()))
    app = make()
    record = app.enqueue("job-background").wait()
    (attempt,) = record.attempts
    assert attempt.outcome is Outcome.TIMED_OUT
    assert attempt.duration == 900
    assert record.state is State.FAILED


def test_sync_handler_past_deadline_times_out_and_is_retried(registry: Registry, make: Any) -> None:
    """A sync handler sleeping past its deadline times out at the deadline; it is retried."""

    def handler(request: Request, context: Context) -> None:
        context.sleep(2000)

    registry.add("job-background", handler)
    app = make()
    record = app.enqueue("job-background").wait()
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT] * 3
    assert [a.duration for a in record.attempts] == [900] * 3
    assert [a.started_at - record.accepted_at for a in record.attempts] == [0, 960, 1980]


def test_per_function_retry_policy(registry: Registry, make: Any) -> None:
    """registry.add(retry=...) overrides the App's policy for that function."""
    registry.add("job-background", _boom, retry=RetryPolicy(delays=(5,)))
    registry.add("other-background", _boom)
    app = make(retry=RetryPolicy(delays=(1, 2, 3)))
    one = app.enqueue("job-background").wait()
    two = app.enqueue("other-background").wait()
    assert len(one.attempts) == 2
    first_end = one.attempts[0].ended_at
    assert first_end is not None
    assert one.attempts[1].started_at - first_end == 5
    assert len(two.attempts) == 4


# -- cancel, replay, invocations ------------------------------------------------------------------


def test_cancel_a_scheduled_retry(registry: Registry, make: Any) -> None:
    """cancel() during retry_scheduled makes it cancelled and no further attempt runs."""
    calls: list[int] = []

    def handler(request: Request, context: Context) -> None:
        calls.append(context.attempt)
        raise RuntimeError("fail")

    registry.add("job-background", handler)
    app = make()
    invocation = app.enqueue("job-background")
    app.executor.clock.advance(1)
    assert invocation.state is State.RETRY_SCHEDULED
    record = app.cancel(invocation.request_id)
    assert record.state is State.CANCELLED
    app.executor.drain()
    assert calls == [1]
    stored = app.invocations.get(invocation.request_id)
    assert stored is not None
    assert stored.state is State.CANCELLED
    assert len(stored.attempts) == 1


def test_cancel_before_first_attempt(registry: Registry, make: Any) -> None:
    """cancel() of an accepted invocation means its handler never runs."""
    calls: list[int] = []
    registry.add("job-background", lambda req, ctx: calls.append(1))
    app = make()
    invocation = app.enqueue("job-background")
    assert app.cancel(invocation.request_id).state is State.CANCELLED
    app.executor.drain()
    assert calls == []
    assert invocation.state is State.CANCELLED


def test_cancel_a_running_async_attempt(registry: Registry, make: Any) -> None:
    """cancel() of a running async attempt stops it; the invocation ends cancelled."""
    app_holder: list[App] = []

    async def handler(request: Request, context: Context) -> None:
        app_holder[0].cancel(context.request_id)
        await asyncio.sleep(10)

    registry.add("job-background", handler)
    app = make()
    app_holder.append(app)
    record = app.enqueue("job-background").wait()
    assert record.state is State.CANCELLED
    assert [a.outcome for a in record.attempts] == [Outcome.CANCELLED]


def test_cancel_unknown_raises(make: Any) -> None:
    """cancel() and get() of an unknown id raise InvocationNotFoundError."""
    app = make()
    with pytest.raises(InvocationNotFoundError):
        app.cancel("nope")
    with pytest.raises(InvocationNotFoundError):
        app.get("nope")


def test_replay_runs_a_failed_invocation_again(registry: Registry, make: Any) -> None:
    """replay() is a new invocation with a new request id, replay_of set, and the same body."""
    bodies: list[tuple[bytes, str]] = []

    def handler(request: Request, context: Context) -> None:
        bodies.append((request.body, context.request_id))
        if len(bodies) <= 3:
            raise RuntimeError("fail")

    registry.add("job-background", handler)
    app = make()
    first = app.enqueue("job-background", Request("POST", BG, body=b"data"))
    assert first.wait().state is State.FAILED
    again = app.replay(first.request_id)
    record = again.wait()
    assert record.state is State.SUCCEEDED
    assert record.request_id != first.request_id
    assert record.replay_of == first.request_id
    assert bodies[-1] == (b"data", record.request_id)


def test_invocations_get_and_list(registry: Registry, make: Any) -> None:
    """invocations.list filters by function and state; get returns one record."""
    registry.add("ok-background", _noop)
    registry.add("bad-background", _boom)
    app = make()
    ok = app.enqueue("ok-background")
    bad = app.enqueue("bad-background")
    app.executor.drain()
    assert [r.request_id for r in app.invocations.list(function="ok-background")] == [ok.request_id]
    assert [r.request_id for r in app.invocations.list(state=State.FAILED)] == [bad.request_id]
    assert {r.request_id for r in app.invocations.list()} == {ok.request_id, bad.request_id}
    assert app.invocations.list(function="ok-background", state=State.FAILED) == []
    got = app.invocations.get(ok.request_id)
    assert got is not None
    assert got.state is State.SUCCEEDED
    assert app.invocations.get("nope") is None


def test_app_rejects_conflicting_clock() -> None:
    """App(clock=...) that differs from the executor's clock is refused."""
    executor = InlineExecutor()
    try:
        with pytest.raises(ValueError, match="clock"):
            App(Registry(), executor=executor, clock=VirtualClock())
    finally:
        executor.shutdown()


def test_inline_shutdown_records_running_attempt_interrupted(registry: Registry, make: Any) -> None:
    """Shutting down mid-attempt records it interrupted; it stays unfinished in the journal."""

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(100)

    registry.add("job-background", handler)
    app = make()
    invocation = app.enqueue("job-background")
    app.executor.clock.advance(10)
    assert invocation.state is State.RUNNING
    app.shutdown()
    record = app.invocations.get(invocation.request_id)
    assert record is not None
    assert record.state is State.RETRY_SCHEDULED
    assert [a.outcome for a in record.attempts] == [Outcome.INTERRUPTED]
