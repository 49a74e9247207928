"""What happens in an attempt: the one runner every engine calls.

An engine prepares an attempt (:class:`PreparedAttempt`: the function, its Request and Context,
the time limit) and hands it to :func:`run_async` (on the running loop), :func:`run_sync` (in
this thread) or :func:`start_sync` (in this thread, leaving any awaiting to the engine's loop).
The runner calls the handler and classifies how it ended (:class:`AttemptResult`): ``succeeded``,
``error``, ``timed_out``, ``cancelled`` or ``interrupted``. Engines differ in where this code runs
(a virtual-time loop, a worker thread, a worker process, a Celery child), not in what it decides.
``crashed`` is the one outcome the runner never gives: only the engine that watched a process die
knows it.

The rules, the same on every engine (docs/executors.md):

- A handler's ``BaseException`` that is not an ``Exception`` (``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit``, its own ``asyncio.CancelledError``, a custom one) is
  the attempt's ``error``, recorded under the exception's own type name, and retried on the
  normal schedule. Only an engine's own stop (``stopping``: a Celery child told to end) passes.
- A sync handler cannot be interrupted: one that returns after its deadline is ``timed_out``,
  at exactly its deadline, and what it returned is ignored.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bgfunctions.clock import Clock, timed_steps
from bgfunctions.context import Context, Site
from bgfunctions.errors import DeadlineExceeded
from bgfunctions.invocation import InvocationRecord, Outcome, error_type_name
from bgfunctions.logs import invocation_scope
from bgfunctions.registry import Function
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.steps import Steps, StoreStep

__all__ = [
    "AttemptResult",
    "HandlerBaseException",
    "PreparedAttempt",
    "as_failure",
    "contained",
    "make_context",
    "make_steps",
    "record_request",
    "run_async",
    "run_here",
    "run_sync",
    "settle_pending",
    "start_sync",
    "timeout_error",
    "to_response",
]

Stopping = Callable[[BaseException], bool]
"""Whether a ``BaseException`` is the engine's own stop (not the handler's): it then passes."""


@dataclass(slots=True)
class PreparedAttempt:
    """Everything one attempt needs: what to call, with what, and for how long."""

    function: Function
    request: Request
    context: Context
    timeout: float
    """Seconds the attempt may run from now."""
    limit: float | None = None
    """The function's whole time limit, named in a time-out's error (default: ``timeout``)."""

    @property
    def attempt(self) -> int:
        return self.context.attempt


log = logging.getLogger("bgfunctions.executor")
T = TypeVar("T")


@dataclass(slots=True)
class AttemptResult:
    """How one attempt ended, and what the handler returned (for sync functions)."""

    outcome: Outcome
    error: BaseException | None = None
    value: object = None
    ended_at: float | None = None
    """Set when the attempt ended at a known instant other than "now" (its deadline)."""


def record_request(record: InvocationRecord) -> Request:
    """The Request an attempt of ``record`` sees."""
    return Request(
        record.method, record.url, headers=record.headers, body=record.body, client=record.client
    )


def make_context(
    function: Function,
    request: Request,
    *,
    request_id: str,
    params: Mapping[str, str],
    attempt: int,
    deadline: float | None,
    clock: Clock,
    trust_proxy: bool,
    site: Site | None,
    step: Steps | None = None,
) -> Context:
    return Context.from_request(
        request,
        request_id=request_id,
        function=function.name,
        params=params,
        trust_proxy=trust_proxy,
        attempt=attempt,
        deadline=deadline,
        clock=clock,
        background=function.background,
        site=site,
        step=step,
    )


def make_steps(
    function: Function,
    record: InvocationRecord,
    clock: Clock,
    store: StoreStep | None,
    *,
    refusal: str | None = None,
) -> Steps:
    """``context.step`` for the newest attempt of ``record``: its committed steps are
    replayed, new ones go to ``store`` (see :mod:`bgfunctions.steps`)."""
    return Steps(
        function=function.name,
        request_id=record.request_id,
        attempt=len(record.attempts),
        clock=clock,
        is_async=function.is_async,
        done=record.steps,
        store=store,
        refusal=refusal,
    )


def timeout_error(function: Function, seconds: float, attempt: int) -> TimeoutError:
    return TimeoutError(
        f"function {function.name!r} timed out after {seconds:g} s (attempt {attempt})"
    )


async def settle_pending(context: Context) -> None:
    """Wait for every ``wait_until`` task (including ones they register); log failures."""
    if not context._pending:
        return  # most attempts register none: no list, no loop
    while True:
        pending = context._take_pending()
        if not pending:
            return
        futures = [asyncio.ensure_future(p) for p in pending]
        try:
            results = await asyncio.gather(*futures, return_exceptions=True)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.warning(
                    "a wait_until task of function %r (request %s, attempt %d) failed; "
                    "it does not fail the attempt",
                    context.function,
                    context.request_id,
                    context.attempt,
                    exc_info=result,
                )


class HandlerBaseException(Exception):
    """A handler raised a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``, its own ``asyncio.CancelledError``, a custom subclass): its attempt's error,
    recorded under the original type's name.

    Carried as an ``Exception`` because, left as it is, it would end whatever ran the handler:
    ``KeyboardInterrupt`` and ``SystemExit`` escape an asyncio task and stop its event loop (the
    server's, or the executor's loop thread), and any of them ends a worker thread.
    """

    def __init__(self, error: BaseException) -> None:
        self.remote_type = error_type_name(error)  # the name error_type_name() records
        if isinstance(error, SystemExit):
            text = f"the handler called sys.exit({error.code!r})"
        else:
            text = str(error) or f"the handler raised {type(error).__name__}"
        super().__init__(text)


def as_failure(error: BaseException) -> Exception:
    """``error`` as an attempt's error: an ``Exception`` as it is, anything else wrapped."""
    if isinstance(error, Exception):
        return error
    wrapped = HandlerBaseException(error)
    wrapped.__cause__ = error
    return wrapped


async def contained(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` (a handler's work) on an event loop that must outlive it: a
    ``BaseException`` it raises comes out as :class:`HandlerBaseException`. A cancellation
    passes as it is: whoever awaits decides whether it was asked for."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as exc:
        raise HandlerBaseException(exc) from exc


async def _body(
    function: Function, request: Request, context: Context, stopping: Stopping | None
) -> object:
    handler = function.handler
    assert handler is not None  # invalid names never reach an executor
    try:
        value = handler(request, context)
    except BaseException as exc:
        return await _failed(exc, context, stopping)
    return await _complete(value, context, stopping)


async def _complete(value: object, context: Context, stopping: Stopping | None) -> object:
    """Await what a handler returned (a coroutine, or a sync handler's awaitable) and its
    ``wait_until`` tasks; a ``BaseException`` comes out as :class:`HandlerBaseException`."""
    try:
        if inspect.isawaitable(value):
            value = await value
    except BaseException as exc:
        return await _failed(exc, context, stopping)
    await settle_pending(context)
    return value


async def _failed(exc: BaseException, context: Context, stopping: Stopping | None) -> Any:
    """The handler raised ``exc``: settle what it left, and raise it as the attempt's error."""
    if isinstance(exc, asyncio.CancelledError):
        # Cancelled at the deadline, by cancel(), by a shutdown, or by itself: whoever awaits
        # tells which; what it left running is cancelled with it.
        for pending in context._take_pending():
            if isinstance(pending, asyncio.Future):
                pending.cancel()
            elif inspect.iscoroutine(pending):
                pending.close()
        raise exc
    if stopping is not None and stopping(exc):
        raise exc  # the engine's own stop (a Celery child told to end): it ends the process
    await settle_pending(context)
    if isinstance(exc, Exception):
        raise exc
    raise HandlerBaseException(exc) from exc


async def run_async(
    prepared: PreparedAttempt,
    *,
    cancelled: set[str] | None = None,
    body: Coroutine[Any, Any, object] | None = None,
    stopping: Stopping | None = None,
    watch: tuple[float, Callable[[float], None]] | None = None,
) -> AttemptResult:
    """Run one attempt on the running loop (async handlers, and sync ones on virtual time);
    ``body``: the rest of an attempt :func:`start_sync` began, instead of calling the handler.

    The attempt is cancelled at its deadline (``prepared.timeout`` seconds of loop time from
    now); a sync handler cannot be interrupted, so it is judged on return: past its deadline it
    timed out, at exactly the deadline.

    How it ended: a cancellation at the deadline is ``timed_out``; one asked for by
    ``cancel()`` (its request id in ``cancelled``) is ``cancelled``; a cancellation of the
    caller's own task (a shutdown) cancels the attempt and propagates. Any other exception,
    ``BaseException`` included, is the attempt's ``error``: that includes a ``CancelledError``
    nobody here asked for, which the handler raised itself.

    ``watch``: ``(threshold, report)``: time the attempt's own steps (see
    :func:`~bgfunctions.clock.timed_steps`), for a loop that has no blocked-loop hook.
    """
    function, request, context = prepared.function, prepared.request, prepared.context
    loop = asyncio.get_running_loop()
    with invocation_scope(function.name, context.request_id, context.attempt):
        # The task copies the context now, so the handler's log lines carry the invocation.
        coro = contained(body) if body is not None else _body(function, request, context, stopping)
        if watch is not None:
            coro = _watched(timed_steps(coro, *watch))
        task = loop.create_task(
            coro, name=f"{function.name}:{context.request_id}:{context.attempt}"
        )
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_later(prepared.timeout, expire)
    try:
        error = await _until_done(task)
    finally:
        timer.cancel()
    if error is None:
        return judge_return(prepared, task.result())
    if task.cancelled():
        if expired:
            return _timed_out(prepared)
        if cancelled is not None and context.request_id in cancelled:
            return AttemptResult(Outcome.CANCELLED)
        # A CancelledError nobody here asked for: the handler raised it itself.
    elif isinstance(error, DeadlineExceeded):
        return AttemptResult(Outcome.TIMED_OUT, error, ended_at=context.deadline)
    elif stopping is not None and stopping(error.__cause__ or error):
        raise error.__cause__ or error
    return AttemptResult(Outcome.ERROR, as_failure(error))


async def run_here(
    prepared: PreparedAttempt,
    *,
    cancelled: set[str] | None = None,
    stopping: Stopping | None = None,
    watch: tuple[float, Callable[[float], None]] | None = None,
) -> AttemptResult:
    """:func:`run_async` in the current task, which the engine made for this attempt alone:
    no second task per attempt (Python >= 3.11, where ``Task.cancelling`` counts the
    cancellations asked of a task). The deadline's timer cancels this task; a cancellation
    nobody asked for is the handler's own ``CancelledError``, its ``error``; one asked for
    that is neither the deadline nor ``cancel()`` (a shutdown) propagates, as in
    :func:`run_async`."""
    function, context = prepared.function, prepared.context
    task = asyncio.current_task()
    assert task is not None
    # Python >= 3.11 (the caller checks); mypy also checks this module as 3.10.
    cancelling = task.cancelling  # type: ignore[attr-defined,unused-ignore]
    uncancel = task.uncancel  # type: ignore[attr-defined,unused-ignore]
    asked = cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = task.get_loop().call_later(prepared.timeout, expire)
    try:
        with invocation_scope(function.name, context.request_id, context.attempt):
            body = _body(function, prepared.request, context, stopping)
            value = await (body if watch is None else timed_steps(body, *watch))
    except asyncio.CancelledError as error:
        if cancelling() == asked:  # nobody asked: the handler raised it itself
            return AttemptResult(Outcome.ERROR, as_failure(error))
        if expired:
            uncancel()
            return _timed_out(prepared)
        if cancelled is not None and context.request_id in cancelled:
            uncancel()
            return AttemptResult(Outcome.CANCELLED)
        raise  # the engine's own (a shutdown): whoever awaits decides
    except Exception as error:
        if isinstance(error, DeadlineExceeded):
            return AttemptResult(Outcome.TIMED_OUT, error, ended_at=context.deadline)
        if stopping is not None and stopping(error.__cause__ or error):
            raise error.__cause__ or error  # noqa: B904 - the engine's stop, as it was raised
        return AttemptResult(Outcome.ERROR, as_failure(error))
    finally:
        timer.cancel()
    return judge_return(prepared, value)


def start_sync(
    prepared: PreparedAttempt, *, stopping: Stopping | None = None
) -> AttemptResult | Coroutine[Any, Any, object]:
    """Call a sync handler in this thread: how it ended, or, when it left work to await (it
    returned an awaitable, or registered ``wait_until`` tasks), the coroutine that finishes it,
    for the engine to run on a loop (:func:`run_async` with ``body=``, or :func:`run_sync`)."""
    function, request, context = prepared.function, prepared.request, prepared.context
    handler = function.handler
    assert handler is not None  # invalid names never reach an executor
    with invocation_scope(function.name, context.request_id, context.attempt):
        try:
            value = handler(request, context)
        except BaseException as exc:
            return _classify(prepared, exc, stopping)
    if inspect.isawaitable(value) or context._pending:
        return _complete(value, context, stopping)
    return judge_return(prepared, value)


def run_sync(
    prepared: PreparedAttempt,
    *,
    finish: Callable[[Coroutine[Any, Any, object]], object] = asyncio.run,
    stopping: Stopping | None = None,
) -> AttemptResult:
    """Run one attempt of a sync handler in this thread (a worker thread or process);
    ``finish`` runs what it left to await to the end (default: a loop of its own)."""
    started = start_sync(prepared, stopping=stopping)
    if isinstance(started, AttemptResult):
        return started
    context = prepared.context
    with invocation_scope(prepared.function.name, context.request_id, context.attempt):
        try:
            value = finish(started)
        except BaseException as exc:
            return _classify(prepared, exc, stopping)
    return judge_return(prepared, value)


def _classify(
    prepared: PreparedAttempt, exc: BaseException, stopping: Stopping | None
) -> AttemptResult:
    """A sync handler (or what it left to await) raised ``exc``."""
    if isinstance(exc, HandlerBaseException) and isinstance(exc.__cause__, BaseException):
        exc = exc.__cause__  # the loop that finished it carried it as an Exception
    if stopping is not None and stopping(exc):
        raise exc
    if isinstance(exc, DeadlineExceeded):
        return AttemptResult(Outcome.TIMED_OUT, exc, ended_at=prepared.context.deadline)
    # KeyboardInterrupt, sys.exit(): the handler's failure too. Signals reach only a main
    # thread: in a worker thread, it is the handler's own; a process's stop is ``stopping``.
    return AttemptResult(Outcome.ERROR, as_failure(exc))


def _timed_out(prepared: PreparedAttempt) -> AttemptResult:
    limit = prepared.limit if prepared.limit is not None else prepared.timeout
    return AttemptResult(
        Outcome.TIMED_OUT,
        timeout_error(prepared.function, limit, prepared.context.attempt),
        ended_at=prepared.context.deadline,
    )


async def _watched(steps: Awaitable[object]) -> object:
    return await steps


async def _until_done(task: asyncio.Task[object]) -> BaseException | None:
    """Wait until ``task`` is done; what it raised, if anything. Raise ``CancelledError`` only
    when the caller itself is cancelled (a shutdown); ``task`` is then cancelled with it.

    A handler's own ``CancelledError`` and a cancellation of the caller both end ``task`` as
    cancelled: only the caller's pending cancellation requests tell them apart.
    """
    if sys.version_info >= (3, 11):  # Task.cancelling() counts them
        try:
            await task  # the cheap way: no extra future or loop iteration per attempt
        except BaseException as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return exc  # the exception itself: a cancelled task's result() makes a new one
        return None
    else:  # noqa: RET505 - Python 3.10, where a task does not count cancellations asked of it
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait((task,))
            raise
        if task.cancelled():
            try:
                task.result()
            except asyncio.CancelledError as exc:
                return exc
        return task.exception()


def judge_return(prepared: PreparedAttempt, value: object) -> AttemptResult:
    """A handler returned ``value``: it succeeded, unless it returned past its deadline (a
    sync handler cannot be interrupted, so it is judged on return, at exactly the deadline)."""
    deadline = prepared.context.deadline
    if deadline is not None and prepared.context.clock.now() > deadline:
        return _timed_out(prepared)
    return AttemptResult(Outcome.SUCCEEDED, value=value)


def to_response(value: object, function: Function, context: Context) -> Response:
    """A sync function's return value as a Response, with the cookies the handler set."""
    response = Response.from_return(value, function=function.name)
    for header in context.cookies.set_cookie_headers():
        response.headers.append("set-cookie", header)
    return response


def warn_ignored_return(function: Function, value: object) -> None:
    """Background handlers' return values are discarded; a stream is not even consumed."""
    if value is None:
        return
    if inspect.isasyncgen(value) or inspect.isgenerator(value):
        log.warning(
            "background function %r returned a stream; background functions cannot stream, "
            "so it was not consumed",
            function.name,
        )
