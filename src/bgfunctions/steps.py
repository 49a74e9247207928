"""Durable steps: ``context.step.run(step_id, fn, *args, **kwargs)``.

A step runs ``fn`` once per invocation, not once per attempt: when it returns, its result is
stored as JSON with the invocation (a journal write that returns once committed) before the
handler goes on, and a later attempt that reaches the same step id gets the stored result back
without calling ``fn``. What that guarantees, and what it does not:

- a step whose result was committed is never run again by this invocation;
- a step interrupted before its commit (its function raised, the attempt timed out, the
  process died) runs again on the next attempt: at least once, as any background work.

How it is called depends on the handler, not on ``fn``: in an ``async def`` handler
``step.run`` returns an awaitable (always ``await`` it; ``fn`` may be sync or async); in a
plain ``def`` handler it calls ``fn`` (which must be sync) and returns the result. Either way
the result is the stored JSON decoded again, the same on the first run as on a replay (a tuple
comes back as a list).

One :class:`Steps` is made per attempt by the executor, with the steps the invocation already
committed and a callable that stores a new one durably.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import StepError
from bgfunctions.invocation import Step

__all__ = ["MAX_RESULT_BYTES", "StepEvent", "Steps", "StoreStep"]

MAX_RESULT_BYTES = 1 << 20
"""The largest step result, as JSON text (1 MiB): a step's result is stored with the
invocation and read with its record. Keep large data elsewhere and return a reference."""

StoreStep = Callable[[Step], None]
"""Stores one committed step with its invocation; returns once it is durable, raises when it
cannot be stored (the step then counts as not committed)."""

StepEvent = tuple[str, str, float]
"""What happened to a step in this attempt: (step id, ``ran`` / ``failed`` / ``replayed``,
the clock's time)."""


class Steps:
    """``context.step``: runs durable steps for one attempt (see the module docstring)."""

    __slots__ = (
        "_attempt",
        "_clock",
        "_done",
        "_function",
        "_is_async",
        "_refusal",
        "_request_id",
        "_store",
        "_used",
        "completed",
        "events",
    )

    def __init__(
        self,
        *,
        function: str = "",
        request_id: str = "",
        attempt: int = 1,
        clock: Clock | None = None,
        is_async: bool = False,
        done: tuple[Step, ...] = (),
        store: StoreStep | None = None,
        refusal: str | None = None,
    ) -> None:
        """``store``: None keeps steps in this object only (a Context built by hand);
        ``refusal``: why this engine cannot run steps (each ``run`` then raises it)."""
        self._function = function
        self._request_id = request_id
        self._attempt = attempt
        self._clock = clock if clock is not None else SystemClock()
        self._is_async = is_async
        self._store = store
        self._refusal = refusal
        self._done = {step.id: step for step in done}
        self._used: set[str] = set()
        self.completed: tuple[Step, ...] = done
        """Every committed step of the invocation: earlier attempts' and this one's."""
        self.events: list[StepEvent] = []
        """This attempt's steps as they ran, failed or were replayed (for the test kit)."""

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as the step ``step_id``, or return its stored result.

        In an async handler this returns an awaitable; in a sync one, the result. Raises
        :class:`~bgfunctions.errors.StepError` for an id that is not a non-empty str or was
        used before in this attempt, an async ``fn`` in a sync handler, and a result that
        cannot be stored as JSON (or is over :data:`MAX_RESULT_BYTES`); whatever ``fn``
        raises propagates and nothing is stored.
        """
        self._claim(step_id, fn)
        if self._is_async:
            return self._run_async(step_id, fn, args, kwargs)
        stored = self._done.get(step_id)
        if stored is not None:
            return self._replay(stored)
        if inspect.iscoroutinefunction(fn):
            raise self._error(
                step_id,
                f"expected a sync function in the sync handler, found the async function "
                f"{_name(fn)}: make the handler async (and await step.run), or the step sync",
            )
        started = self._clock.now()
        try:
            value = fn(*args, **kwargs)
        except BaseException:
            self._failed(step_id)
            raise
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: no "was never awaited" warning on top of this
            self._failed(step_id)
            raise self._error(
                step_id,
                f"{_name(fn)} returned an awaitable ({type(value).__name__}) in a sync "
                "handler: make the handler async and await step.run",
            )
        return self._commit(step_id, value, started)

    async def _run_async(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        stored = self._done.get(step_id)
        if stored is not None:
            return self._replay(stored)
        started = self._clock.now()
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            self._failed(step_id)
            raise
        return self._commit(step_id, value, started)

    def _claim(self, step_id: object, fn: object) -> None:
        if not isinstance(step_id, str) or not step_id:
            raise self._error(
                repr(step_id), f"expected a non-empty str as the step id, found {step_id!r}"
            )
        if step_id in self._used:
            raise self._error(
                step_id,
                "the step id was already used in this attempt: step ids must be unique "
                "within an invocation (add the loop index, or a key of the item)",
            )
        if not callable(fn):
            raise self._error(step_id, f"expected a callable to run, found {fn!r}")
        if self._refusal is not None:
            raise self._error(step_id, self._refusal)
        self._used.add(step_id)

    def _failed(self, step_id: str) -> None:
        self.events.append((step_id, "failed", self._clock.now()))

    def _replay(self, stored: Step) -> Any:
        self.events.append((stored.id, "replayed", self._clock.now()))
        return json.loads(stored.result)

    def _commit(self, step_id: str, value: Any, started: float) -> Any:
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            self._failed(step_id)
            raise self._error(
                step_id,
                f"expected a result that can be stored as JSON, found {type(value).__name__} "
                f"({exc}); return plain data (dict, list, str, int, float, bool, None)",
            ) from exc
        if len(text) > MAX_RESULT_BYTES:  # characters; bytes when the JSON is ASCII (default)
            self._failed(step_id)
            raise self._error(
                step_id,
                f"expected a result of at most {MAX_RESULT_BYTES} bytes as JSON, found "
                f"{len(text)}: store large data elsewhere and return a reference to it",
            )
        ended = self._clock.now()
        step = Step(
            id=step_id, result=text, attempt=self._attempt, started_at=started, ended_at=ended
        )
        if self._store is not None:
            try:
                self._store(step)
            except BaseException:
                self._failed(step_id)
                raise
        self._done[step_id] = step
        self.completed = (*self.completed, step)
        self.events.append((step_id, "ran", ended))
        return json.loads(text)

    def _error(self, step_id: str, what: str) -> StepError:
        return StepError(
            f"function {self._function!r} (request {self._request_id}, attempt "
            f"{self._attempt}), step {step_id}: {what}"
        )

    def __repr__(self) -> str:
        return f"<Steps {self._function!r} attempt {self._attempt}: {len(self.completed)} done>"


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
