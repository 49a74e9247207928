"""The test kit: one-line Requests and Contexts, TestClient, invoke(), drain, and the fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bgfunctions import (
    App,
    Config,
    Context,
    DeadlineExceeded,
    Event,
    EventKind,
    InlineExecutor,
    InvocationRecord,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    State,
    VirtualClock,
)
from bgfunctions.testing import (
    TestClient,
    drain,
    invoke,
    make_app,
    make_context,
    make_request,
    run_until_idle,
)


def _offsets(record: InvocationRecord) -> list[float]:
    return [a.started_at - record.accepted_at for a in record.attempts]


# -- make_request / make_context ------------------------------------------------------------------


def test_make_request_with_json() -> None:
    """make_request(json=...) is a POST with a JSON body and a JSON content type."""
    request = make_request(json={"to": "a@example.com"})
    assert request.method == "POST"
    assert request.json() == {"to": "a@example.com"}
    assert "application/json" in (request.headers.get("content-type") or "")
    assert request.client == "127.0.0.1"


def test_make_request_with_body_and_headers() -> None:
    """make_request takes a method, a URL with a query, a body and headers."""
    request = make_request("PUT", "/x?a=1", body="hi", headers={"x-test": "yes"})
    assert (request.method, request.path, request.query["a"]) == ("PUT", "/x", "1")
    assert request.body == b"hi"
    assert request.headers["x-test"] == "yes"


def test_make_context_defaults() -> None:
    """make_context() builds a first-attempt Context with a request id and no deadline."""
    context = make_context()
    assert context.attempt == 1
    assert context.request_id
    assert context.deadline is None
    assert isinstance(context.clock, VirtualClock)


def test_make_context_timeout_sleeps_on_virtual_time() -> None:
    """make_context(timeout=...) sets a deadline; sleeping past it raises at the deadline."""
    clock = VirtualClock()
    start = clock.now()
    context = make_context(timeout=10, clock=clock, attempt=2, function="mail")
    assert context.deadline == start + 10
    context.sleep(4)
    assert context.remaining_time() == 6
    with pytest.raises(DeadlineExceeded, match="mail"):
        context.sleep(100)
    assert clock.now() == start + 10
    assert context.attempt == 2


def test_handler_called_directly() -> None:
    """A handler can be called with make_request and make_context, no App at all."""

    def handler(request: Request, context: Context) -> dict[str, object]:
        return {"hello": request.json()["name"], "attempt": context.attempt}

    request = make_request(json={"name": "ada"})
    assert handler(request, make_context(request)) == {"hello": "ada", "attempt": 1}


# -- invoke ---------------------------------------------------------------------------------------


def test_invoke_failing_handler_schedule() -> None:
    """invoke() of a handler that always fails tries it at 0, 60 and 180 s and ends failed."""

    def handler(request: Request, context: Context) -> None:
        raise RuntimeError("boom")

    invocation = invoke(handler)
    assert invocation.state is State.FAILED
    assert _offsets(invocation.record) == [0, 60, 180]
    assert invocation.wait().state is State.FAILED  # finished: wait returns at once


def test_invoke_context_is_background() -> None:
    """A handler run by invoke() sees a background Context with its function name."""
    seen: list[tuple[bool, str]] = []

    def send_mail(request: Request, context: Context) -> None:
        seen.append((context.background, context.function))

    invoke(send_mail)
    assert seen == [(True, "send-mail")]


def test_invoke_lambda() -> None:
    """A lambda runs under the name "handler" (``<lambda>`` is not a valid function name)."""
    invocation = invoke(lambda request, context: None)
    assert invocation.function == "handler"
    assert invocation.state is State.SUCCEEDED


def test_invoke_on_failure_receives_dead_letter() -> None:
    """on_failure gets the record once, after the last attempt failed."""
    dead: list[InvocationRecord] = []

    def handler(request: Request, context: Context) -> None:
        raise ValueError(f"bad payload {request.json()['id']}")

    invocation = invoke(handler, make_request(json={"id": 7}), on_failure=dead.append)
    assert len(dead) == 1
    assert dead[0] == invocation.record
    assert dead[0].state is State.FAILED
    last = dead[0].last_attempt
    assert last is not None
    assert (last.error_type, last.error_message) == ("ValueError", "bad payload 7")


def test_invoke_no_dead_letter_on_success() -> None:
    """on_failure is not called for an invocation that succeeds on a retry."""
    dead: list[InvocationRecord] = []

    def handler(request: Request, context: Context) -> None:
        if context.attempt < 3:
            raise RuntimeError("not yet")

    invocation = invoke(handler, on_failure=dead.append)
    assert dead == []
    assert invocation.state is State.SUCCEEDED
    assert _offsets(invocation.record) == [0, 60, 180]


def test_invoke_events_and_retry_policy() -> None:
    """invoke() passes on_event listeners and a RetryPolicy through to the executor."""
    events: list[Event] = []

    def handler(request: Request, context: Context) -> None:
        raise RuntimeError("boom")

    invocation = invoke(handler, retry=RetryPolicy(delays=(5,)), on_event=events.append)
    assert _offsets(invocation.record) == [0, 5]
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.ACCEPTED
    assert kinds[-1] is EventKind.FAILED
    assert kinds.count(EventKind.ATTEMPT_STARTED) == 2


def test_invoke_without_drain_runs_when_the_clock_moves() -> None:
    """invoke(drain=False) runs nothing until the given clock is advanced."""
    clock = VirtualClock()
    calls: list[int] = []

    async def handler(request: Request, context: Context) -> None:
        calls.append(context.attempt)
        await asyncio.sleep(30)

    invocation = invoke(handler, clock=clock, drain=False)
    assert calls == []
    assert invocation.state is State.ACCEPTED
    clock.advance(10)
    assert (calls, invocation.state) == ([1], State.RUNNING)
    clock.advance(20)
    assert (calls, invocation.state) == ([1], State.SUCCEEDED)
    # invoke() keeps no App to shut down when it does not drain; close its loop by hand.
    drain(invocation.app)
    invocation.app.shutdown()


# -- drain, TestClient, make_app ------------------------------------------------------------------


def _registry(log: list[float], clock: VirtualClock) -> Registry:
    registry = Registry()

    def work(request: Request, context: Context) -> None:
        log.append(clock.now())
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")

    def hello(request: Request, context: Context) -> str:
        return f"hello {request.query.get('name', 'world')}"

    registry.add("work-background", work)
    registry.add("hello", hello)
    return registry


@pytest.mark.parametrize("runner", [drain, run_until_idle])
def test_drain_app_and_executor(runner: Callable[[App | InlineExecutor], None]) -> None:
    """drain / run_until_idle accept an App or its InlineExecutor and run every attempt."""
    clock = VirtualClock()
    log: list[float] = []
    app = make_app(_registry(log, clock), clock=clock)
    try:
        client = TestClient(app)
        response = client.post("/.netlify/functions/work-background", json={"n": 1})
        assert response.status == 202
        assert log == []
        runner(app)
        assert [t - log[0] for t in log] == [0, 60]
        request_id = response.headers["x-nf-request-id"]
        record = app.invocations.get(request_id)
        assert record is not None
        assert record.state is State.SUCCEEDED
        assert isinstance(app.executor, InlineExecutor)
        runner(app.executor)  # nothing left: a no-op
        assert len(log) == 2
    finally:
        app.shutdown()


def test_drain_needs_an_inline_executor() -> None:
    """drain() on an App that runs on real time is a TypeError naming the executor."""
    from bgfunctions import ThreadExecutor

    executor = ThreadExecutor()
    app = App(Registry(), executor=executor)
    try:
        with pytest.raises(TypeError, match="ThreadExecutor"):
            drain(app)
    finally:
        app.shutdown()


def test_test_client_sync_function() -> None:
    """TestClient calls a sync function and returns its Response with a request id."""
    clock = VirtualClock()
    app = make_app(_registry([], clock), clock=clock)
    try:
        client = TestClient(app)
        response = client.get("/.netlify/functions/hello?name=ada")
        assert (response.status, response.body) == (200, b"hello ada")
        assert response.headers["x-nf-request-id"]
        assert client.get("/.netlify/functions/missing").status == 404
        assert client.put("/.netlify/functions/hello").status == 200
        assert client.delete("/.netlify/functions/hello").status == 200
        assert client.patch("/.netlify/functions/hello").status == 200
    finally:
        app.shutdown()


def test_make_app_from_a_directory(tmp_path: Path) -> None:
    """make_app reads a functions directory, or a site with netlify/functions."""
    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "ping.py").write_text("def handler(request, context):\n    return 'pong'\n")
    for target in (tmp_path, functions):
        app = make_app(target)
        try:
            assert TestClient(app).get("/.netlify/functions/ping").body == b"pong"
        finally:
            app.shutdown()


# -- the pytest plugin's fixtures -----------------------------------------------------------------


def test_virtual_clock_fixture(virtual_clock: VirtualClock) -> None:
    """The virtual_clock fixture is a fresh VirtualClock at its fixed start."""
    assert virtual_clock.monotonic() == 0.0
    assert virtual_clock.now() == VirtualClock().now()


def test_inline_executor_fixture(
    inline_executor: InlineExecutor, virtual_clock: VirtualClock
) -> None:
    """The inline_executor fixture runs on the virtual_clock fixture and serves an App."""
    assert inline_executor.clock is virtual_clock
    registry = Registry()
    registry.add("job", lambda request, context: None, config=Config(background=True))
    app = App(registry, executor=inline_executor)
    invocation = app.enqueue("job")
    virtual_clock.advance(0)
    assert invocation.state is State.SUCCEEDED


def test_functions_app_fixture(
    functions_app: Callable[..., App], virtual_clock: VirtualClock, tmp_path: Path
) -> None:
    """functions_app(path) builds an App on the inline executor and the virtual_clock."""
    (tmp_path / "flaky-background.py").write_text(
        "def handler(request, context):\n"
        "    if context.attempt < 3:\n"
        "        raise RuntimeError('flaky')\n"
    )
    app = functions_app(tmp_path)
    assert app.clock is virtual_clock
    response = TestClient(app).post("/.netlify/functions/flaky-background")
    assert response.status == 202
    record = app.get(response.headers["x-nf-request-id"]).wait()
    assert _offsets(record) == [0, 60, 180]
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR, Outcome.ERROR, Outcome.SUCCEEDED]


# -- tracebacks stay on the record ---------------------------------------------------------------


def test_invoke_keeps_each_attempts_error_and_traceback() -> None:
    """invoke() keeps what each failed attempt raised, and its traceback, on the attempt."""

    def handler(request: Request, context: Context) -> None:
        if context.attempt < 3:
            raise ValueError(f"attempt {context.attempt} is down")

    invocation = invoke(handler)
    first, second, third = invocation.attempts
    assert isinstance(first.error, ValueError)
    assert str(first.error) == "attempt 1 is down"
    assert str(second.error) == "attempt 2 is down"
    assert first.traceback is not None
    assert first.traceback.startswith("Traceback (most recent call last):")
    assert "in handler" in first.traceback
    assert first.traceback.rstrip().endswith("ValueError: attempt 1 is down")
    assert (third.outcome, third.error, third.traceback) == (Outcome.SUCCEEDED, None, None)
    assert first.number == 1
    assert first.error_type == "ValueError"


def test_a_timed_out_attempt_has_no_handler_error() -> None:
    """An attempt the runner ended at its deadline records no error of the handler's."""

    async def handler(request: Request, context: Context) -> None:
        await asyncio.sleep(10_000)

    invocation = invoke(handler, retry=RetryPolicy(delays=()))
    (attempt,) = invocation.attempts
    assert attempt.outcome is Outcome.TIMED_OUT
    assert (attempt.error, attempt.traceback) == (None, None)


def test_print_tracebacks_uses_the_library_format() -> None:
    """print_tracebacks() prints each failed attempt's traceback under its request id."""
    import io

    def handler(request: Request, context: Context) -> None:
        raise RuntimeError("the mail server is down")

    invocation = invoke(handler, retry=RetryPolicy(delays=(60,)))
    out = io.StringIO()
    invocation.print_tracebacks(out)
    text = out.getvalue()
    for number in (1, 2):
        assert f"[{invocation.request_id}] handler: attempt {number} traceback:\n" in text
    assert text.count("RuntimeError: the mail server is down") == 2


SNIPPET = """
from bgfunctions.testing import invoke

def handler(request, context):
    raise RuntimeError("the mail server is down")

invocation = invoke(handler)
starts = [a.started_at - invocation.record.accepted_at for a in invocation.attempts]
assert starts == [0, 60, 180]
assert invocation.state.value == "failed"
print("ok")
"""


def test_the_readme_snippet_prints_nothing_but_its_own_output(tmp_path: Path) -> None:
    """The README's invoke() snippet, with logging left unconfigured, prints no traceback."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_cli_invoke_prints_the_traceback_in_the_library_format(tmp_path: Path) -> None:
    """`bgfunctions invoke` prints its timeline, then the last attempt's traceback under its
    request id, in the library's format (not Python's last-resort logger)."""
    import subprocess
    import sys

    functions = tmp_path / "netlify" / "functions"
    functions.mkdir(parents=True)
    (functions / "mail-background.py").write_text(
        "def handler(request, context):\n    raise RuntimeError('the mail server is down')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "bgfunctions", "invoke", "mail-background", "--site", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    request_id = first.split("request ")[1].split()[0]
    assert done.stdout.rstrip().endswith("failed after 3 attempt(s)")
    lines = done.stderr.splitlines()
    assert lines[0] == f"[{request_id}] mail-background: attempt 3 traceback:"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: the mail server is down"
