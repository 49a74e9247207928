"""The test kit: build Requests and Contexts in one line, run handlers on virtual time.

::

    from bgfunctions.testing import invoke

    def handler(request, context):
        raise RuntimeError("boom")

    invocation = invoke(handler)
    accepted = invocation.record.accepted_at
    assert [a.started_at - accepted for a in invocation.attempts] == [0, 60, 180]
    assert isinstance(invocation.attempts[0].error, RuntimeError)
    invocation.print_tracebacks()      # prints nothing unless asked

``invoke`` keeps what each failed attempt raised on its attempts (``error``, ``traceback``)
and prints nothing; ``print_tracebacks()`` shows them in the library's log format.

Everything here is a real implementation (the inline executor, the in-memory journal, a
virtual clock), not a mock: what passes here behaves the same on the thread executor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import sys
import traceback as tb
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from bgfunctions._loader import is_async_handler
from bgfunctions.app import App
from bgfunctions.clock import Clock, VirtualClock
from bgfunctions.config import Config
from bgfunctions.context import Context
from bgfunctions.datastructures import HeadersInit
from bgfunctions.executors.base import Executor, Invocation
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.ids import new_request_id
from bgfunctions.invocation import (
    Attempt,
    InvocationRecord,
    OnEvent,
    OnFailure,
    State,
    error_type_name,
)
from bgfunctions.journals.base import Journal
from bgfunctions.logs import InvocationFilter, LineFormatter
from bgfunctions.registry import Function, Registry
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy
from bgfunctions.steps import Steps

__all__ = [
    "TestAttempt",
    "TestClient",
    "TestInvocation",
    "TestStep",
    "drain",
    "invoke",
    "make_app",
    "make_context",
    "make_request",
    "run_until_idle",
]

_MISSING: Any = object()


def make_request(
    method: str = "POST",
    url: str = "/",
    *,
    json: object = _MISSING,
    body: bytes | str | None = None,
    headers: HeadersInit | None = None,
    client: str | None = "127.0.0.1",
) -> Request:
    """A Request in one line: ``make_request(json={"to": "a@example.com"})``."""
    if json is _MISSING:
        return Request(method, url, headers=headers, body=body, client=client)
    return Request(method, url, headers=headers, json=json, client=client)


def make_context(
    request: Request | None = None,
    *,
    function: str = "test",
    request_id: str | None = None,
    params: Mapping[str, str] | None = None,
    attempt: int = 1,
    timeout: float | None = None,
    clock: Clock | None = None,
    background: bool = False,
) -> Context:
    """A Context in one line, for calling a handler directly.

    ``timeout`` sets ``deadline`` that many seconds after now on ``clock`` (a new
    ``VirtualClock`` by default, so ``context.sleep`` takes no wall time).
    """
    clock = clock if clock is not None else VirtualClock()
    return Context.from_request(
        request if request is not None else make_request(),
        request_id=request_id if request_id is not None else new_request_id(clock),
        function=function,
        params=params,
        attempt=attempt,
        deadline=None if timeout is None else clock.now() + timeout,
        clock=clock,
        background=background,
    )


def make_app(
    functions: str | Path | Registry,
    *,
    clock: VirtualClock | None = None,
    journal: Journal | None = None,
    **options: Any,
) -> App:
    """An App on an :class:`InlineExecutor` over a site directory, a functions directory or a
    registry. A directory holding ``netlify.toml`` or ``netlify/functions`` is read as a site."""
    if isinstance(functions, Registry):
        registry = functions
    else:
        path = Path(functions)
        if (path / "netlify.toml").is_file() or (path / "netlify" / "functions").is_dir():
            registry = Registry.from_site(path)
        else:
            from bgfunctions.registry import discover

            registry = discover(path)
    return App(registry, executor=InlineExecutor(clock=clock, journal=journal), **options)


def invoke(
    handler: Callable[..., Any] | Function,
    request: Request | None = None,
    *,
    name: str | None = None,
    config: Config | Mapping[str, Any] | None = None,
    clock: VirtualClock | None = None,
    retry: RetryPolicy | None = None,
    limits: Limits | None = None,
    on_event: OnEvent | Sequence[OnEvent] = (),
    on_failure: OnFailure | Sequence[OnFailure] = (),
    drain: bool = True,
) -> TestInvocation:
    """Run ``handler`` as a background invocation on virtual time and return its invocation.

    With ``drain=True`` (the default) every attempt has run when it returns (the story of a
    handler that always fails, tried at 0, 60 and 180 s, takes milliseconds). With
    ``drain=False`` nothing has run yet: advance ``clock`` to run what is due.
    What each attempt raised stays on ``invocation.attempts[i].error`` and ``.traceback``;
    nothing is printed unless asked (:meth:`TestInvocation.print_tracebacks`).
    """
    errors: dict[int, BaseException] = {}
    seen: dict[int, Steps] = {}
    registry = Registry()
    if isinstance(handler, Function):
        fn = handler
        assert fn.handler is not None
        registry.add(
            fn.name,
            _recording(fn.handler, errors, seen),
            config=fn.config,
            limits=fn.limits,
            retry=fn.retry,
        )
        fname = fn.name
    else:
        fname = name if name is not None else getattr(handler, "__name__", "handler")
        if name is None and not fname.isidentifier():
            fname = "handler"  # a lambda's "<lambda>" is not a valid function name
        fname = fname.replace("_", "-") if fname.isidentifier() else fname
        # It runs as a background invocation, so its Context says so unless config says otherwise.
        if config is None:
            config = Config(background=True)
        registry.add(fname, _recording(handler, errors, seen), config=config)
    app = App(
        registry,
        executor=InlineExecutor(clock=clock),
        retry=retry,
        limits=limits,
        on_event=on_event,
        on_failure=on_failure,
    )
    invocation = TestInvocation(
        app.enqueue(fname, request if request is not None else make_request()), errors, app, seen
    )
    if drain:
        executor = app.executor
        assert isinstance(executor, InlineExecutor)
        with _kept_quiet():
            executor.drain()
        app.shutdown()  # everything ran; close the loop (and its watchdog thread)
    return invocation


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TestAttempt(Attempt):
    """An :class:`~bgfunctions.Attempt` as the test kit saw it run."""

    __test__ = False  # not a pytest test class

    error: BaseException | None = None
    """What the handler raised in this attempt; None when it did not raise (it succeeded, or
    the runner ended it at its deadline)."""
    traceback: str | None = None
    """``error``'s traceback, formatted; None without an error."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TestStep:
    """A durable step (``context.step.run``, or a sleep: ``kind`` ``"sleep"``, which began at
    ``started_at`` and wakes at ``ended_at``; its ``calls``: the times it began to sleep)
    as the test kit saw it across attempts."""

    __test__ = False  # not a pytest test class

    id: str
    committed: bool
    """True when its result was stored (it is in ``record.steps``)."""
    result: Any
    """The stored result, decoded; None when it never committed."""
    attempt: int | None
    """The attempt that ran it to its commit; None when it never committed."""
    started_at: float | None
    """When the committed run started (clock seconds); None when it never committed."""
    ended_at: float | None
    calls: int
    """How many times its function was called (runs that raised included)."""
    replayed: tuple[int, ...]
    """The attempts that got its stored result without calling the function."""
    failed: tuple[int, ...]
    """The attempts in which its function raised (or its result could not be stored)."""
    kind: str = "run"
    """``run`` or ``sleep`` (``None`` result); a step that never committed says ``run``."""


class TestInvocation:
    """What :func:`invoke` returns: the invocation's state and attempts, each failed attempt
    with the exception its handler raised and its traceback, and its durable steps."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        handle: Invocation,
        errors: Mapping[int, BaseException],
        app: App,
        seen: Mapping[int, Steps] | None = None,
    ) -> None:
        self.handle = handle
        """The executor's handle on the invocation."""
        self.app = app
        """The App it ran in (with ``drain=False``, shut it down when done)."""
        self._errors = errors
        self._seen = seen if seen is not None else {}

    @property
    def steps(self) -> tuple[TestStep, ...]:
        """Every step the handler ran, committed ones first in commit order, then those that
        never committed, with how often each was called, replayed or failed."""
        calls: dict[str, int] = {}
        replayed: dict[str, list[int]] = {}
        failed: dict[str, list[int]] = {}
        order: list[str] = []
        for number in sorted(self._seen):
            for step_id, what, _at in self._seen[number].events:
                if step_id not in calls:
                    order.append(step_id)
                    calls[step_id] = 0
                if what == "replayed":
                    replayed.setdefault(step_id, []).append(number)
                else:
                    calls[step_id] += 1
                    if what == "failed":
                        failed.setdefault(step_id, []).append(number)
        kept = {step.id: step for step in self.record.steps}
        out = []
        for step_id in [*kept, *(i for i in order if i not in kept)]:
            step = kept.get(step_id)
            out.append(
                TestStep(
                    id=step_id,
                    committed=step is not None,
                    result=None if step is None else step.value(),
                    attempt=None if step is None else step.attempt,
                    started_at=None if step is None else step.started_at,
                    ended_at=None if step is None else step.ended_at,
                    calls=calls.get(step_id, 0),
                    replayed=tuple(replayed.get(step_id, ())),
                    failed=tuple(failed.get(step_id, ())),
                    kind="run" if step is None else step.kind,
                )
            )
        return tuple(out)

    @property
    def record(self) -> InvocationRecord:
        return self.handle.record

    @property
    def request_id(self) -> str:
        return self.handle.request_id

    @property
    def function(self) -> str:
        return self.handle.function

    @property
    def state(self) -> State:
        return self.handle.state

    @property
    def attempts(self) -> tuple[TestAttempt, ...]:
        """Every attempt so far, with what it raised."""
        kept = []
        for attempt in self.handle.attempts:
            error = self._errors.get(attempt.number)
            failed = attempt.outcome is not None and attempt.outcome.failed
            if error is None or not failed or error_type_name(error) != attempt.error_type:
                error = None  # e.g. the CancelledError of a handler cancelled at its deadline
            fields = {f.name: getattr(attempt, f.name) for f in dataclasses.fields(attempt)}
            kept.append(
                TestAttempt(
                    **fields,
                    error=error,
                    traceback=None if error is None else "".join(tb.format_exception(error)),
                )
            )
        return tuple(kept)

    def done(self) -> bool:
        return self.handle.done()

    def wait(self, timeout: float | None = None) -> InvocationRecord:
        """Run virtual time until it is finished (see :meth:`Invocation.wait`)."""
        with _kept_quiet():
            return self.handle.wait(timeout)

    def print_tracebacks(self, file: TextIO | None = None) -> None:
        """Print each failed attempt's traceback in the library's log format (stderr by
        default): ``[request id] function: attempt N traceback:`` and the traceback."""
        handler = logging.StreamHandler(file if file is not None else sys.stderr)
        handler.addFilter(InvocationFilter())
        handler.setFormatter(LineFormatter())
        for attempt in self.attempts:
            if attempt.error is None:
                continue
            record = logging.LogRecord(
                "bgfunctions.testing",
                logging.WARNING,
                __file__,
                0,
                "attempt %d failed",
                (attempt.number,),
                (type(attempt.error), attempt.error, attempt.error.__traceback__),
            )
            record.bg_function = self.function
            record.bg_request_id = self.request_id
            record.bg_attempt = attempt.number
            record.bg_failed_attempt = True
            handler.handle(record)
        handler.flush()

    def __repr__(self) -> str:
        return repr(self.handle).replace("<Invocation", "<TestInvocation", 1)


def _recording(
    handler: Callable[..., Any], errors: dict[int, BaseException], seen: dict[int, Steps]
) -> Any:
    """``handler``, keeping what each attempt raised in ``errors`` and its ``context.step``
    in ``seen`` (by attempt number)."""

    def keep(exc: BaseException, context: Context) -> None:
        # Drop this wrapper's frame: the traceback starts in the handler.
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            exc.__traceback__ = exc.__traceback__.tb_next
        errors[context.attempt] = exc

    async def finish(value: Awaitable[Any], context: Context) -> Any:
        try:
            return await value
        except BaseException as exc:
            keep(exc, context)
            raise

    if is_async_handler(handler):

        @functools.wraps(handler)
        async def recording_async(request: Request, context: Context) -> Any:
            seen[context.attempt] = context.step
            try:
                return await handler(request, context)
            except BaseException as exc:
                keep(exc, context)
                raise

        return recording_async

    @functools.wraps(handler)
    def recording(request: Request, context: Context) -> Any:
        seen[context.attempt] = context.step
        try:
            value = handler(request, context)
        except BaseException as exc:
            keep(exc, context)
            raise
        # A sync handler may return a coroutine: what it raises is the attempt's error too.
        return finish(value, context) if inspect.isawaitable(value) else value

    return recording


@contextlib.contextmanager
def _kept_quiet() -> Iterator[None]:
    """Keep the executor's failure lines off Python's last-resort printer while the kit runs
    attempts: the errors are on the attempts. Configured handlers still get every line."""
    quiet = logging.NullHandler()
    executor_log = logging.getLogger("bgfunctions.executor")
    executor_log.addHandler(quiet)
    try:
        yield
    finally:
        executor_log.removeHandler(quiet)


def drain(target: App | Executor) -> None:
    """Run virtual time forward until nothing is pending (inline executor only)."""
    executor = target.executor if isinstance(target, App) else target
    if not isinstance(executor, InlineExecutor):
        raise TypeError(
            f"drain() needs an InlineExecutor (virtual time); got {type(executor).__name__}"
        )
    executor.drain()


run_until_idle = drain


class TestClient:
    """Call an App like an HTTP client would, without sockets: ``client.post(url, json=...)``."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, *, client: str = "127.0.0.1") -> None:
        self.app = app
        self.client = client

    def request(
        self,
        method: str,
        url: str,
        *,
        json: object = _MISSING,
        body: bytes | str | None = None,
        headers: HeadersInit | None = None,
    ) -> Response:
        return self.app.handle(
            make_request(method, url, json=json, body=body, headers=headers, client=self.client)
        )

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Response:
        return self.request("DELETE", url, **kwargs)
