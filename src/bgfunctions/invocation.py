"""The invocation record: one accepted request to a background function and its attempts.

The record is plain data that round-trips through JSON (``to_json`` / ``from_json``), so a worker
process, a journal row and a broker message can all carry it. It is immutable: the state machine
below returns a new record for every change, and every engine moves through it the same way::

    accepted ──► running ──► succeeded
                   │  ▲
                   ▼  │
            retry_scheduled        (attempt failed, attempts left)
                   │
                   ▼
                 failed            (attempt failed, none left)

    running ──► sleeping ──► running   (a durable sleep suspended it: not a failure)

    any unfinished state ──► cancelled
    accepted ──► rejected          (the engine refused it after it was recorded)
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from bgfunctions._parts import Attempt, EnqueueOptions, Outcome, State, Step, error_type_name
from bgfunctions._slots import copier as _copier
from bgfunctions._slots import evolve as _evolve
from bgfunctions.requests import Request
from bgfunctions.retry import RetryPolicy

__all__ = [
    "Attempt",
    "EnqueueOptions",
    "Event",
    "EventKind",
    "InvocationRecord",
    "OnEvent",
    "OnFailure",
    "Outcome",
    "State",
    "Step",
    "error_type_name",
]


_NO_ATTEMPT = Attempt(number=1, started_at=0.0)
"""The blank that new attempts are copied from (faster than ``__init__``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InvocationRecord:
    """Everything needed to run (and re-run) one background invocation, and its history."""

    request_id: str
    """The id every attempt shares; sent to the client as ``x-nf-request-id``."""
    function: str
    """The function's name in the registry."""
    method: str
    url: str
    """The request URL with its query string."""
    headers: tuple[tuple[str, str], ...] = ()
    """The request headers as (lower-cased name, value) pairs, in order."""
    body: bytes = b""
    """The request body, or ``b""`` when it is not loaded (see :attr:`body_loaded`)."""
    body_size: int = -1
    """The body's length in bytes, kept even when the body is not loaded; by default
    ``len(body)``."""
    client: str | None = None
    """The peer address the request came from."""
    params: Mapping[str, str] = field(default_factory=dict)
    """The route parameters the request matched."""
    accepted_at: float
    """Epoch seconds at which it was accepted."""
    state: State = State.ACCEPTED
    attempts: tuple[Attempt, ...] = ()
    next_run_at: float | None = None
    """When the next attempt is due (epoch seconds); None when finished or running."""
    finished_at: float | None = None
    replay_of: str | None = None
    """The request id of the invocation this one replays, if any."""
    steps: tuple[Step, ...] = ()
    """The committed steps (``context.step.run`` and ``sleep``), in the order they committed."""
    enqueue_options: EnqueueOptions | None = None
    """The priority and first start ``App.enqueue`` was given; None for the defaults (read
    them as :attr:`priority` and :attr:`not_before`)."""

    def __post_init__(self) -> None:
        size = len(self.body)
        if self.body_size < 0:
            object.__setattr__(self, "body_size", size)
        elif size and size != self.body_size:
            raise ValueError(
                f"invocation {self.request_id}: body_size is {self.body_size} but the body "
                f"has {size} bytes; expected equal sizes, or an empty body (not loaded)"
            )

    @property
    def priority(self) -> int:
        """-50 to 50 (``enqueue(priority=)``, default 0): among due invocations, a higher one
        starts first when workers are scarce."""
        options = self.enqueue_options
        return 0 if options is None else options.priority

    @property
    def not_before(self) -> float | None:
        """The first attempt's earliest start (``enqueue(delay=)`` / ``not_before=``), epoch
        seconds; None when it was due at once."""
        options = self.enqueue_options
        return None if options is None else options.not_before

    @property
    def body_loaded(self) -> bool:
        """False when the body stays in a durable journal and ``body`` is ``b""``: records
        that executors keep while invocations wait, and those listed by ``select``, carry
        only :attr:`body_size`. ``Journal.with_body`` loads it."""
        return len(self.body) == self.body_size

    def without_body(self) -> InvocationRecord:
        """This record with the body left out (its ``body_size`` kept)."""
        return _evolve(self, body=b"") if self.body else self

    def with_body(self, body: bytes) -> InvocationRecord:
        """This record with ``body`` loaded; ValueError unless it has ``body_size`` bytes."""
        if len(body) != self.body_size:
            raise ValueError(
                f"invocation {self.request_id}: expected a body of {self.body_size} bytes; "
                f"got {len(body)}"
            )
        return _evolve(self, body=body) if body else self

    @classmethod
    def of_request(
        cls,
        request: Request,
        *,
        request_id: str,
        function: str,
        params: Mapping[str, str],
        accepted_at: float,
        replay_of: str | None = None,
    ) -> InvocationRecord:
        """The record of ``request`` accepted at ``accepted_at``, due at once."""
        if cls is not InvocationRecord:
            return cls(
                request_id=request_id,
                function=function,
                method=request.method,
                url=request.url,
                headers=tuple(request.headers.raw),
                body=request.body,
                client=request.client,
                params=params,
                accepted_at=accepted_at,
                next_run_at=accepted_at,
                replay_of=replay_of,
            )
        # One per accepted request: copied from a blank, as the state machine's changes are
        # (through __init__ the accept path costs 24 % more instructions: benchmarks/README.md).
        return _accepted(
            _BLANK,
            request_id,
            function,
            request.method,
            request.url,
            tuple(request.headers.raw),
            request.body,
            len(request.body),
            request.client,
            params,
            accepted_at,
            accepted_at,
            replay_of,
        )

    @property
    def attempt_count(self) -> int:
        return len(self.attempts)

    @property
    def last_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    # -- the state machine: every engine changes a record only through these ---------------------

    def start_attempt(self, now: float) -> InvocationRecord:
        """A new attempt starts at ``now``."""
        if not self.state.waiting:
            raise ValueError(
                f"invocation {self.request_id}: cannot start an attempt in state {self.state}"
            )
        attempt = _new_attempt(_NO_ATTEMPT, len(self.attempts) + 1, now)
        return _with_schedule(self, State.RUNNING, (*self.attempts, attempt), None)

    def end_attempt(
        self,
        now: float,
        outcome: Outcome,
        retry: RetryPolicy,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        wake_at: float | None = None,
    ) -> InvocationRecord:
        """The running attempt ended at ``now``; schedule the next one or finish.

        ``Outcome.SUSPENDED`` (a durable sleep) needs ``wake_at``: the invocation sleeps until
        then. The retry schedule counts failed attempts only: after a sleep, the first failure
        still gets the first delay."""
        attempt = self.last_attempt
        if self.state is not State.RUNNING or attempt is None:
            raise ValueError(
                f"invocation {self.request_id}: no running attempt to end (state {self.state})"
            )
        ended = _attempt_ended(attempt, now, outcome, error_type, error_message)
        attempts = (*self.attempts[:-1], ended)
        if outcome is Outcome.SUCCEEDED:
            return _with_end(self, State.SUCCEEDED, attempts, now)
        if outcome is Outcome.CANCELLED:
            return _with_end(self, State.CANCELLED, attempts, now)
        if outcome is Outcome.SUSPENDED:
            if wake_at is None:
                raise ValueError(
                    f"invocation {self.request_id}: a suspended attempt needs its wake time"
                )
            return _with_schedule(self, State.SLEEPING, attempts, max(now, wake_at))
        failures = ended.number
        if failures > 1 and self.steps:  # a suspended attempt (its sleep is a step) is no retry
            failures = sum(1 for a in attempts if a.outcome is not None and a.outcome.failed)
        delay = retry.delay_after(failures)
        if delay is None:
            return _with_end(self, State.FAILED, attempts, now)
        return _with_schedule(self, State.RETRY_SCHEDULED, attempts, now + delay)

    def cancel(self, now: float) -> InvocationRecord:
        """No further attempts; a running attempt keeps its record until it ends."""
        if self.state.finished:
            return self
        return _evolve(self, state=State.CANCELLED, next_run_at=None, finished_at=now)

    def reject(self, now: float) -> InvocationRecord:
        """The engine refused it after it was recorded."""
        return _evolve(self, state=State.REJECTED, next_run_at=None, finished_at=now)

    # -- JSON ------------------------------------------------------------------------------------

    def with_steps(self, steps: tuple[Step, ...]) -> InvocationRecord:
        """This record with ``steps`` as its committed steps."""
        return self if steps == self.steps else _evolve(self, steps=steps)

    def to_json(self, *, body: bool = True, steps: bool = True) -> dict[str, Any]:
        """A JSON-able dict (the body is base64); ``body=False`` leaves the body out, as
        durable journals store it in a column of its own (``body_size`` is always there);
        ``steps=False`` leaves the steps out, as SQL journals keep them in a column too."""
        data: dict[str, Any] = {
            "request_id": self.request_id,
            "function": self.function,
            "method": self.method,
            "url": self.url,
            "headers": [list(pair) for pair in self.headers],
            "body_size": self.body_size,
            "client": self.client,
            "params": dict(self.params),
            "accepted_at": self.accepted_at,
            "state": self.state.value,
            "attempts": [a.to_json() for a in self.attempts],
            "next_run_at": self.next_run_at,
            "finished_at": self.finished_at,
            "replay_of": self.replay_of,
            "enqueue_options": None
            if self.enqueue_options is None
            else self.enqueue_options.to_json(),
        }
        if steps:
            data["steps"] = [step.to_json() for step in self.steps]
        if body:
            data["body"] = base64.b64encode(self.body).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InvocationRecord:
        """The inverse of :meth:`to_json`."""
        return cls(
            request_id=str(data["request_id"]),
            function=str(data["function"]),
            method=str(data["method"]),
            url=str(data["url"]),
            headers=tuple((str(k), str(v)) for k, v in data.get("headers", ())),
            body=base64.b64decode(data.get("body", "")),
            body_size=int(data.get("body_size", -1)),  # absent before body_size existed
            client=data.get("client"),
            params={str(k): str(v) for k, v in data.get("params", {}).items()},
            accepted_at=float(data["accepted_at"]),
            state=State(data.get("state", State.ACCEPTED.value)),
            attempts=tuple(Attempt.from_json(a) for a in data.get("attempts", ())),
            next_run_at=None if data.get("next_run_at") is None else float(data["next_run_at"]),
            finished_at=None if data.get("finished_at") is None else float(data["finished_at"]),
            replay_of=data.get("replay_of"),
            steps=tuple(
                Step.from_json(s) for s in data.get("steps", ())
            ),  # absent before steps existed
            enqueue_options=None  # absent before schema 4
            if data.get("enqueue_options") is None
            else EnqueueOptions.from_json(data["enqueue_options"]),
        )


# The state machine's own copiers, one per kind of change (see _copier). Kept on their figures
# (issue 12; benchmarks/README.md): dataclasses.replace instead costs 66 % more instructions per
# invocation on count_instructions.py inline, 38 % on threads.
_new_attempt: Callable[[Attempt, int, float], Attempt] = _copier(Attempt, ("number", "started_at"))
_attempt_ended: Callable[[Attempt, float, Outcome, str | None, str | None], Attempt] = _copier(
    Attempt, ("ended_at", "outcome", "error_type", "error_message")
)
_Changed = Callable[
    [InvocationRecord, State, tuple[Attempt, ...], "float | None"], InvocationRecord
]
_with_schedule: _Changed = _copier(InvocationRecord, ("state", "attempts", "next_run_at"))
_with_end: _Changed = _copier(InvocationRecord, ("state", "attempts", "finished_at"))
_BLANK = InvocationRecord(request_id="", function="", method="", url="", accepted_at=0.0)
_accepted: Callable[..., InvocationRecord] = _copier(
    InvocationRecord,
    (
        "request_id",
        "function",
        "method",
        "url",
        "headers",
        "body",
        "body_size",
        "client",
        "params",
        "accepted_at",
        "next_run_at",
        "replay_of",
    ),
)


class EventKind(str, Enum):
    """The state changes that ``on_event`` listeners hear about."""

    ACCEPTED = "accepted"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_ENDED = "attempt_ended"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    SLEEPING = "sleeping"
    """An attempt ended in a durable sleep; the record's ``next_run_at`` is the wake time."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of one invocation: what happened, the record after it, and when."""

    kind: EventKind
    record: InvocationRecord
    at: float


class OnEvent(Protocol):
    """A listener for every state change (logs, metrics). It must not block for long."""

    def __call__(self, event: Event, /) -> None: ...


class OnFailure(Protocol):
    """Called once with the record of an invocation that used up its attempts (a dead letter)."""

    def __call__(self, record: InvocationRecord, /) -> None: ...
