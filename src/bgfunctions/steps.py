"""Durable steps: ``context.step.run(step_id, fn, *args, **kwargs)`` and durable sleeps,
``context.step.sleep(step_id, days=7)`` / ``context.step.sleep_until(step_id, when)``.

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

A sleep is a step too: the first time it is reached, its wake time is stored (one journal
write) and :class:`~bgfunctions.errors.Suspended` ends the attempt as ``suspended``: not a
failure, not a used retry. The invocation resumes at the wake time as a new attempt (with the
full time limit) that replays every committed step; the sleep then returns at once. Nothing
runs, and no thread or process is held, while it sleeps.

One :class:`Steps` is made per attempt by the executor, with the steps the invocation already
committed and a callable that stores a new one durably.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import inspect
import json
import math
from collections.abc import Callable, Generator
from typing import Any

from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import StepError, Suspended
from bgfunctions.invocation import Step

__all__ = ["MAX_RESULT_BYTES", "StepEvent", "Steps", "StoreStep", "StoreStepAsync"]

MAX_RESULT_BYTES = 1 << 20
"""The largest step result, as JSON text (1 MiB): a step's result is stored with the
invocation and read with its record. Keep large data elsewhere and return a reference."""

StoreStep = Callable[[Step], None]
StoreStepAsync = Callable[[Step], concurrent.futures.Future[None]]
"""Start storing a step on another thread (a durable journal's commit); its future."""
"""Stores one committed step with its invocation; returns once it is durable, raises when it
cannot be stored (the step then counts as not committed)."""

StepEvent = tuple[str, str, float]
"""What happened to a step in this attempt: (step id, ``ran`` / ``failed`` / ``replayed`` /
``slept``, the clock's time)."""


class Steps:
    """``context.step``: runs durable steps for one attempt (see the module docstring)."""

    __slots__ = (
        "_attempt",
        "_clock",
        "_done",
        "_function",
        "_in_step",
        "_is_async",
        "_refusal",
        "_request_id",
        "_store",
        "_store_async",
        "_used",
        "completed",
        "events",
        "sleeping",
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
        store_async: StoreStepAsync | None = None,
    ) -> None:
        """``store``: None keeps steps in this object only (a Context built by hand);
        ``refusal``: why this engine cannot run steps (each ``run`` then raises it);
        ``store_async``: how an async handler's step is stored without holding its loop (a
        durable journal's commit on another thread), else ``store`` is called on the loop."""
        self._function = function
        self._request_id = request_id
        self._attempt = attempt
        self._clock = clock if clock is not None else SystemClock()
        self._is_async = is_async
        self._store = store
        self._store_async = store_async
        self._refusal = refusal
        self._done = {step.id: step for step in done}
        self._used: set[str] = set()
        self.completed: tuple[Step, ...] = done
        """Every committed step of the invocation: earlier attempts' and this one's."""
        self.events: list[StepEvent] = []
        """This attempt's steps as they ran, failed or were replayed (for the test kit)."""
        self.sleeping: float | None = None
        """The wake time when a sleep suspended this attempt (the engine schedules it)."""
        self._in_step: str | None = None

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
        self._in_step = step_id
        try:
            value = fn(*args, **kwargs)
        except BaseException:
            self._failed(step_id)
            raise
        finally:
            self._in_step = None
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
        self._in_step = step_id
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            self._failed(step_id)
            raise
        finally:
            self._in_step = None
        if self._store_async is None:
            return self._commit(step_id, value, started)
        step = self._step(step_id, value, started)
        future = self._store_async(step)
        try:
            await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Cut off (its deadline, a cancel) while the commit was under way: the commit goes
            # on regardless. Wait for it (one commit), so that a step that did commit counts
            # as committed and a later attempt replays it instead of running it again.
            if _committed(future):
                self._ran(step)
            else:
                self._failed(step_id)
            raise
        except BaseException:
            self._failed(step_id)
            raise
        return self._ran(step)

    def sleep(
        self,
        step_id: str,
        duration: dt.timedelta | float | None = None,
        /,
        *,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
    ) -> Any:
        """Sleep durably for ``duration`` (a ``timedelta`` or seconds) or the sum of
        ``seconds``, ``minutes``, ``hours`` and ``days``, as the step ``step_id``.

        The first time: stores the wake time, then raises
        :class:`~bgfunctions.errors.Suspended` (let it pass), which ends the attempt until
        then. On the attempt that resumes it: returns at once (``None``). In an async handler
        ``await`` it (the suspension happens at the call either way). Raises
        :class:`~bgfunctions.errors.StepError` for a duration that is not a finite number of
        0 or more, both ``duration`` and keywords, or a sleep inside a step's function."""
        self._claim(step_id, None)
        parts: dict[str, object] = {
            "seconds": seconds,
            "minutes": minutes,
            "hours": hours,
            "days": days,
        }
        if duration is not None:
            if any(value != 0 for value in parts.values()):
                raise self._error(
                    step_id,
                    f"expected a duration or keywords (days=, hours=, ...), found both "
                    f"{duration!r} and {', '.join(f'{k}={v!r}' for k, v in parts.items() if v)}",
                )
            parts = {"duration": duration}
        total = 0.0
        for name, value in parts.items():
            if isinstance(value, dt.timedelta):
                value = value.total_seconds()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self._error(
                    step_id,
                    f"expected {name} as a number or a timedelta, found {value!r} "
                    f"({type(value).__name__})",
                )
            if not math.isfinite(value) or value < 0:
                raise self._error(
                    step_id, f"expected {name} as a finite number of 0 or more, found {value!r}"
                )
            total += float(value) * _UNIT.get(name, 1.0)
        return self._sleep(step_id, lambda now: now + total)

    def sleep_until(self, step_id: str, when: dt.datetime | float, /) -> Any:
        """Sleep durably until ``when``: an aware ``datetime``, or epoch seconds on the
        engine's clock. A time already past returns at once (the step is still stored).
        Otherwise as :meth:`sleep`."""
        self._claim(step_id, None)
        if isinstance(when, dt.datetime):
            if when.tzinfo is None or when.utcoffset() is None:
                raise self._error(
                    step_id,
                    f"expected an aware datetime (with a tzinfo, e.g. timezone.utc), found the "
                    f"naive {when!r}",
                )
            wake = when.timestamp()
        elif isinstance(when, bool) or not isinstance(when, (int, float)):
            raise self._error(
                step_id,
                f"expected an aware datetime or epoch seconds, found {when!r} "
                f"({type(when).__name__})",
            )
        elif not math.isfinite(when):
            raise self._error(step_id, f"expected finite epoch seconds, found {when!r}")
        else:
            wake = float(when)
        return self._sleep(step_id, lambda now: wake)

    def _sleep(self, step_id: str, wake_of: Callable[[float], float]) -> Any:
        if self._in_step is not None:
            raise self._error(
                step_id,
                f"a sleep inside the function of step {self._in_step}: sleep between steps, "
                "in the handler itself",
            )
        now = self._clock.now()
        stored = self._done.get(step_id)
        if stored is not None:
            if stored.kind != "sleep":
                raise self._error(
                    step_id,
                    f"expected a sleep, found a {stored.kind!r} step stored under this id by "
                    f"attempt {stored.attempt}: step ids must be unique within an invocation",
                )
            if now < stored.ended_at:  # resumed early (after a crash): sleep on, no write
                self.sleeping = stored.ended_at
                raise Suspended(step_id, stored.ended_at)
            self.events.append((step_id, "replayed", now))
            return _Ready() if self._is_async else None
        wake = wake_of(now)
        step = Step(
            id=step_id,
            kind="sleep",
            attempt=self._attempt,
            started_at=now,
            ended_at=max(now, wake),
        )
        if self._store is not None:
            self._store(step)
        self._done[step_id] = step
        self.completed = (*self.completed, step)
        self.events.append((step_id, "slept", now))
        if wake <= now:
            return _Ready() if self._is_async else None
        self.sleeping = wake
        raise Suspended(step_id, wake)

    def _claim(self, step_id: object, fn: object) -> None:
        """Check the id (and ``fn``, unless None: a sleep) and mark it used."""
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
        if fn is not None and not callable(fn):
            raise self._error(step_id, f"expected a callable to run, found {fn!r}")
        if self._refusal is not None:
            raise self._error(step_id, self._refusal)
        self._used.add(step_id)

    def _failed(self, step_id: str) -> None:
        self.events.append((step_id, "failed", self._clock.now()))

    def _replay(self, stored: Step) -> Any:
        if stored.kind != "run":
            raise self._error(
                stored.id,
                f"expected a step run, found a {stored.kind!r} step stored under this id by "
                f"attempt {stored.attempt}: step ids must be unique within an invocation",
            )
        self.events.append((stored.id, "replayed", self._clock.now()))
        return json.loads(stored.result)

    def _commit(self, step_id: str, value: Any, started: float) -> Any:
        step = self._step(step_id, value, started)
        if self._store is not None:
            try:
                self._store(step)
            except BaseException:
                self._failed(step_id)
                raise
        return self._ran(step)

    def _step(self, step_id: str, value: Any, started: float) -> Step:
        """The step to store for ``value``; a StepError when it cannot be stored as JSON."""
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
        return Step(
            id=step_id, result=text, attempt=self._attempt, started_at=started, ended_at=ended
        )

    def _ran(self, step: Step) -> Any:
        """Note ``step``, stored: later attempts replay it; its result, decoded again."""
        self._done[step.id] = step
        self.completed = (*self.completed, step)
        self.events.append((step.id, "ran", step.ended_at))
        return json.loads(step.result)

    def _error(self, step_id: str, what: str) -> StepError:
        return StepError(
            f"function {self._function!r} (request {self._request_id}, attempt "
            f"{self._attempt}), step {step_id}: {what}"
        )

    def __repr__(self) -> str:
        return f"<Steps {self._function!r} attempt {self._attempt}: {len(self.completed)} done>"


_UNIT = {"minutes": 60.0, "hours": 3600.0, "days": 86400.0}


class _Ready:
    """An awaitable that is already done (``await step.sleep`` of a sleep that is over)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


def _committed(future: concurrent.futures.Future[None]) -> bool:
    """Whether a step's store went through, once it is done (blocks until then)."""
    if future.cancelled():
        return False  # never started
    return future.exception() is None


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
