"""The test kit: build Requests and Contexts in one line, run handlers on virtual time.

::

    from bgfunctions.testing import invoke

    def handler(request, context):
        raise RuntimeError("boom")

    invocation = invoke(handler)
    accepted = invocation.record.accepted_at
    assert [a.started_at - accepted for a in invocation.attempts] == [0, 60, 180]

Everything here is a real implementation (the inline executor, the in-memory journal, a
virtual clock), not a mock: what passes here behaves the same on the thread executor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bgfunctions.app import App
from bgfunctions.clock import Clock, VirtualClock
from bgfunctions.config import Config
from bgfunctions.context import Context
from bgfunctions.datastructures import HeadersInit
from bgfunctions.executor import Executor, Invocation
from bgfunctions.ids import new_request_id
from bgfunctions.inline import InlineExecutor
from bgfunctions.invocation import OnEvent, OnFailure
from bgfunctions.journal import Journal
from bgfunctions.registry import Function, Registry
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy

__all__ = [
    "TestClient",
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
) -> Invocation:
    """Run ``handler`` as a background invocation on virtual time and return its Invocation.

    With ``drain=True`` (the default) every attempt has run when it returns (the story of a
    handler that always fails, tried at 0, 60 and 180 s, takes milliseconds). With
    ``drain=False`` nothing has run yet: advance ``clock`` to run what is due.
    """
    registry = Registry()
    if isinstance(handler, Function):
        fn = handler
        assert fn.handler is not None
        registry.add(fn.name, fn.handler, config=fn.config, limits=fn.limits, retry=fn.retry)
        fname = fn.name
    else:
        fname = name if name is not None else getattr(handler, "__name__", "handler")
        if name is None and not fname.isidentifier():
            fname = "handler"  # a lambda's "<lambda>" is not a valid function name
        fname = fname.replace("_", "-") if fname.isidentifier() else fname
        # It runs as a background invocation, so its Context says so unless config says otherwise.
        if config is None:
            config = Config(background=True)
        registry.add(fname, handler, config=config)
    app = App(
        registry,
        executor=InlineExecutor(clock=clock),
        retry=retry,
        limits=limits,
        on_event=on_event,
        on_failure=on_failure,
    )
    invocation = app.enqueue(fname, request if request is not None else make_request())
    if drain:
        executor = app.executor
        assert isinstance(executor, InlineExecutor)
        executor.drain()
        app.shutdown()  # everything ran; close the loop (and its watchdog thread)
    return invocation


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
