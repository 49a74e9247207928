"""The App: a registry, a router and an executor that turn a Request into a Response.

It knows nothing of HTTP servers; the ASGI and WSGI adapters (and the test client) sit on top::

    app = App(Registry.from_site("."))
    response = app.handle(Request("POST", "/.netlify/functions/hello-background"))
    assert response.status == 202
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar, cast

from bgfunctions._enqueue import scheduled
from bgfunctions.clock import Clock
from bgfunctions.context import Site
from bgfunctions.errors import NotAcceptedError, PayloadTooLargeError
from bgfunctions.executors.base import Binding, Executor, Invocation
from bgfunctions.ids import new_request_id
from bgfunctions.invocation import InvocationRecord, OnEvent, OnFailure, State
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function, FunctionMatch, Registry
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy
from bgfunctions.routing import NoMatch

__all__ = ["App", "Invocations", "Resolution"]

log = logging.getLogger("bgfunctions.app")
_RESOLVED_MAX = 1024
# Functions whose "has custom paths" line was logged: once per function and process.
_LOGGED_CUSTOM_PATHS: set[str | None] = set()
L = TypeVar("L")


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a request would reach, decided from its method, path and headers alone.

    Adapters use it to refuse an oversized body before reading it: ``body_limit`` is the most
    the matched function accepts. ``response`` is set (404, 400, 405) when nothing matched.
    """

    match: FunctionMatch | None
    response: Response | None
    body_limit: int

    @property
    def function(self) -> Function | None:
        return None if self.match is None else self.match.function

    @property
    def params(self) -> Mapping[str, str]:
        return {} if self.match is None else self.match.params

    @property
    def background(self) -> bool:
        return self.match is not None and self.match.function.background


class Invocations:
    """Read the invocation record: ``app.invocations.get(request_id)``, ``.list(...)``."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def get(self, request_id: str) -> InvocationRecord | None:
        return self._journal.get(request_id)

    def list(
        self,
        *,
        function: str | None = None,
        state: State | Iterable[State] | None = None,
        limit: int | None = None,
    ) -> list[InvocationRecord]:
        """Newest first, filtered by function name and state."""
        return self._journal.select(function=function, state=state, limit=limit)


class App:
    """Serve a registry's functions: sync ones answer, background ones answer 202 and run later."""

    def __init__(
        self,
        registry: Registry,
        *,
        executor: Executor | None = None,
        journal: Journal | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        method_not_allowed: bool = False,
        trust_proxy: bool = False,
        site: Site | None = None,
        on_event: OnEvent | Sequence[OnEvent] = (),
        on_failure: OnFailure | Sequence[OnFailure] = (),
        static_exists: Callable[[str], bool] | None = None,
    ) -> None:
        if executor is None:
            from bgfunctions.executors.threads import ThreadExecutor

            executor = ThreadExecutor(clock=clock, journal=journal)
        else:
            if clock is not None and clock is not executor.clock:
                raise ValueError(
                    "App(clock=...) differs from the executor's clock; give the clock to the "
                    "executor only"
                )
            if journal is not None and journal is not executor.journal:
                raise ValueError(
                    "App(journal=...) differs from the executor's journal; give the journal to "
                    "the executor only"
                )
        self.registry = registry
        self.executor = executor
        self.clock = executor.clock
        self.journal = executor.journal
        self.limits = limits if limits is not None else Limits()
        self.retry = retry if retry is not None else RetryPolicy()
        self.method_not_allowed = method_not_allowed
        self.static_exists = static_exists
        self.invocations = Invocations(self.journal)
        # Matches of (method, path) that did not depend on static files, valid while the
        # routes, limits and static check they were made with are the App's: (those, matches).
        self._resolved: tuple[tuple[object, ...], dict[tuple[str, str], Resolution]] = ((), {})
        executor.bind(
            Binding(
                lookup=self._lookup,
                limits=self.limits,
                retry=self.retry,
                on_event=_listeners(on_event),
                on_failure=_listeners(on_failure),
                trust_proxy=trust_proxy,
                site=site,
            )
        )

    def _lookup(self, name: str) -> Function:
        return self.registry[name]

    def reload(self, registry: Registry) -> None:
        """Serve ``registry`` from now on. Accepted invocations are kept: an attempt that starts
        after this runs the new code."""
        self.registry = registry

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.executor.start()

    def shutdown(self, wait: bool = True, *, grace: float | None = None) -> None:
        self.executor.shutdown(wait, grace=grace)

    def __enter__(self) -> App:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    # -- requests ---------------------------------------------------------------------------

    def resolve(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> Resolution:
        """The function ``method path`` reaches, its params, and the body limit that applies."""
        # Every request resolves its URL; most hit the same few. A cached match is valid while
        # the registry's routes (a new Router on every change), the limits and the static-file
        # check are the ones it was made with. Without it an accept costs 48 % more
        # instructions (benchmarks/README.md, issue 12).
        valid_for = (self.registry.router, self.limits, self.static_exists)
        made_for, resolved = self._resolved
        if made_for == valid_for:
            hit = resolved.get((method, path))
            if hit is not None:
                return hit
        else:
            resolved = {}
            self._resolved = (valid_for, resolved)
        consulted = False

        def static_exists(static_path: str) -> bool:
            nonlocal consulted
            consulted = True
            return self.static_exists is not None and self.static_exists(static_path)

        found = self.registry.match(
            method, path, static_exists=static_exists if self.static_exists is not None else None
        )
        if isinstance(found, NoMatch):
            return Resolution(None, self._no_match(found), self.limits.sync_payload)
        limits = found.function.limits or self.limits
        resolution = Resolution(found, None, limits.payload(background=found.function.background))
        if not consulted:  # a file may appear or go: never cache what depended on one
            if len(resolved) >= _RESOLVED_MAX:
                resolved.clear()  # paths come from clients: keep the table small
            resolved[method, path] = resolution
        return resolution

    def _no_match(self, found: NoMatch) -> Response:
        # Never cached (see resolve): each refused request gets its own id, as every request
        # does, in the header and in the 404 body that Netlify's CLI writes.
        request_id = new_request_id(self.clock)
        headers = {"x-nf-request-id": request_id}
        if found.has_custom_paths and found.function not in _LOGGED_CUSTOM_PATHS:
            _LOGGED_CUSTOM_PATHS.add(found.function)
            log.info("%s", found.message)
        if found.reason == "invalid_name":
            return Response.text(found.message, status=400, headers=headers)
        if found.reason == "path_too_long":
            return Response.text(
                f"URI Too Long - Request ID: {request_id}\n", status=414, headers=headers
            )
        if found.reason == "method_not_allowed" and self.method_not_allowed:
            headers["allow"] = ", ".join(found.allowed)
            return Response.text("Method Not Allowed", status=405, headers=headers)
        if found.reason == "function_not_found":
            return Response.text(found.message, status=404, headers=headers)
        return Response.text(f"Not Found - Request ID: {request_id}\n", status=404, headers=headers)

    def handle(self, request: Request, *, resolution: Resolution | None = None) -> Response:
        """Answer ``request``: 202 for a background function once it is accepted, else the
        function's own response; 404, 400, 405, 413, 500 or 503 as the rules say.

        Adapters that already called :meth:`resolve` (to limit the body) pass its result."""
        call = self._route(request, resolution)
        if isinstance(call, Response):
            return call
        function, params, request_id = call
        if function.background:
            return self._accept(function, request, params, request_id)
        try:
            response = self.executor.call(function, request, params, request_id)
        except Exception as exc:
            return self._sync_failed(exc, function, request_id)
        response.headers["x-nf-request-id"] = request_id
        return response

    async def handle_async(
        self, request: Request, *, resolution: Resolution | None = None
    ) -> Response:
        """:meth:`handle` for async hosts: neither sync handlers nor a durable journal's
        commit block the caller's loop."""
        call = self._route(request, resolution)
        if isinstance(call, Response):
            return call
        function, params, request_id = call
        if function.background:
            if not self.journal.durable:
                return self._accept(function, request, params, request_id)
            # The commit waits for the disk: awaited, so that concurrent requests reach the
            # journal together and share one commit (group commit).
            record = self._record(function, request, params, request_id)
            try:
                await self.executor.submit_async(record, request)
            except NotAcceptedError as exc:
                return _unavailable(exc, request_id)
            return Response._trusted(202, [("x-nf-request-id", request_id)])
        try:
            response = await self.executor.call_async(function, request, params, request_id)
        except Exception as exc:
            return self._sync_failed(exc, function, request_id)
        response.headers["x-nf-request-id"] = request_id
        return response

    def _route(
        self, request: Request, resolution: Resolution | None
    ) -> Response | tuple[Function, Mapping[str, str], str]:
        """The answer when there is one without running anything (404, 400, 405, 413); else
        the function the request reaches, its params, and the new request id."""
        if resolution is None:
            resolution = self.resolve(request.method, request.path)
        if resolution.response is not None:
            return resolution.response
        assert resolution.match is not None
        too_large = _too_large(request, resolution)
        if too_large is not None:
            return too_large
        function, params = resolution.match.function, resolution.match.params
        return function, params, new_request_id(self.clock)

    def _sync_failed(self, exc: Exception, function: Function, request_id: str) -> Response:
        if isinstance(exc, NotAcceptedError):
            return _unavailable(exc, request_id)
        return self._failed(function, request_id)

    def _accept(
        self, function: Function, request: Request, params: Mapping[str, str], request_id: str
    ) -> Response:
        try:
            self.executor.submit(self._record(function, request, params, request_id), request)
        except NotAcceptedError as exc:
            return _unavailable(exc, request_id)
        return Response._trusted(202, [("x-nf-request-id", request_id)])

    def _record(
        self,
        function: Function,
        request: Request,
        params: Mapping[str, str],
        request_id: str,
        *,
        replay_of: str | None = None,
    ) -> InvocationRecord:
        return InvocationRecord.of_request(
            request,
            request_id=request_id,
            function=function.name,
            params=params,
            accepted_at=self.clock.now(),
            replay_of=replay_of,
        )

    def _failed(self, function: Function, request_id: str) -> Response:
        log.exception("function %r failed (request %s)", function.name, request_id)
        return Response.text(
            f"Function {function.name!r} failed; request id {request_id}\n",
            status=500,
            headers={"x-nf-request-id": request_id},
        )

    # -- without HTTP -------------------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        request: Request | None = None,
        *,
        delay: dt.timedelta | float | None = None,
        not_before: dt.datetime | float | None = None,
        priority: int = 0,
    ) -> Invocation:
        """Start background work without HTTP: run function ``name`` with background semantics.

        ``delay`` (seconds or a timedelta) or ``not_before`` (an aware datetime or epoch
        seconds): the first attempt starts no earlier. ``priority`` (-50 to 50, default 0):
        among due invocations, a higher one starts first when workers are scarce. Both are
        kept in the record (``not_before``, ``priority``).

        Raises ``UnknownFunctionError``, ``PayloadTooLargeError``, ``NotAcceptedError``, and
        ``TypeError`` / ``ValueError`` naming the function for a wrong delay or priority.
        """
        function = self.registry[name]
        request = request if request is not None else Request("POST", f"/.netlify/functions/{name}")
        limit = (function.limits or self.limits).background_payload
        if len(request.body) > limit:
            raise PayloadTooLargeError(
                f"function {name!r} accepts bodies up to {limit} bytes; got {len(request.body)}"
            )
        record = self._record(function, request, {}, new_request_id(self.clock))
        record = scheduled(record, delay=delay, not_before=not_before, priority=priority)
        return self.executor.submit(record, request)

    def get(self, request_id: str) -> Invocation:
        """A handle on an invocation by request id (raises ``InvocationNotFoundError``)."""
        return self.executor.get(request_id)

    def cancel(self, request_id: str) -> InvocationRecord:
        """Stop an invocation: no further attempts (a running one finishes or is cancelled)."""
        return self.executor.cancel(request_id)

    def replay(self, request_id: str) -> Invocation:
        """Run a finished invocation again, as a new invocation with a new request id."""
        # A live record over a durable journal has left its body there.
        record = self.journal.with_body(self.executor.get(request_id).record)
        function = self.registry[record.function]
        request = Request(
            record.method,
            record.url,
            headers=record.headers,
            body=record.body,
            client=record.client,
        )
        again = self._record(
            function, request, record.params, new_request_id(self.clock), replay_of=request_id
        )
        return self.executor.submit(again, request)


def _listeners(value: L | Sequence[L]) -> tuple[L, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (cast("L", value),)


def _too_large(request: Request, resolution: Resolution) -> Response | None:
    size = len(request.body)
    if size <= resolution.body_limit:
        return None
    kind = "background" if resolution.background else "synchronous"
    return Response.text(
        f"Payload Too Large: this {kind} function accepts at most {resolution.body_limit} bytes; "
        f"the request body has {size}\n",
        status=413,
    )


def _unavailable(exc: NotAcceptedError, request_id: str) -> Response:
    # The reason may name the journal's path and a database error: it goes to the log, and the
    # client gets a generic text with the request id that finds that log line.
    log.warning("request %s not accepted (503): %s", request_id, exc)
    return Response.text(
        f"Service Unavailable: the request was not accepted; try again later "
        f"(request id {request_id})\n",
        status=503,
        headers={
            "retry-after": str(max(1, round(exc.retry_after))),
            "x-nf-request-id": request_id,
        },
    )
