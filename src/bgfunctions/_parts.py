"""The parts an invocation record is made of: where it stands (:class:`State`), how each
attempt ended (:class:`Outcome`), its attempts (:class:`Attempt`) and its durable steps
(:class:`Step`). Re-exported by :mod:`bgfunctions.invocation`, where the record is."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Attempt", "EnqueueOptions", "Outcome", "State", "Step", "error_type_name"]


class State(str, Enum):
    """Where an invocation stands."""

    ACCEPTED = "accepted"
    """Recorded; its first attempt has not started."""
    RUNNING = "running"
    """An attempt is running."""
    RETRY_SCHEDULED = "retry_scheduled"
    """An attempt failed; the next one starts at ``next_run_at``."""
    SUCCEEDED = "succeeded"
    """An attempt finished without an exception."""
    FAILED = "failed"
    """Every attempt failed."""
    CANCELLED = "cancelled"
    """Cancelled before it finished; no further attempts."""
    REJECTED = "rejected"
    """Recorded, but the engine refused to take it; the client got a 503, never a 202."""
    SLEEPING = "sleeping"
    """A durable sleep (``context.step.sleep``) suspended it; it resumes at ``next_run_at``."""

    _value_: str
    finished: bool
    """True when no further attempt will run (a plain attribute: read on every transition)."""
    waiting: bool
    """True when its next attempt is due at ``next_run_at`` (accepted, retry_scheduled,
    sleeping): what an engine schedules, a journal's claim takes and recovery resumes."""

    def __init__(self, value: str) -> None:
        self.finished = value in ("succeeded", "failed", "cancelled", "rejected")
        self.waiting = value in ("accepted", "retry_scheduled", "sleeping")

    def __str__(self) -> str:
        return self._value_


class Outcome(str, Enum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    """The handler returned (whatever it returned)."""
    ERROR = "error"
    """The handler raised."""
    TIMED_OUT = "timed_out"
    """The attempt reached its time limit."""
    CRASHED = "crashed"
    """The process running it died (exit, signal, out of memory)."""
    INTERRUPTED = "interrupted"
    """It was running when its executor stopped or vanished; found dead later."""
    CANCELLED = "cancelled"
    """The invocation was cancelled while this attempt ran."""
    SUSPENDED = "suspended"
    """A durable sleep ended it; the invocation resumes at the wake time. Not a failure, and
    not one of the retries."""

    @property
    def failed(self) -> bool:
        """True when this outcome counts as a failed attempt (and may be retried)."""
        return self not in (Outcome.SUCCEEDED, Outcome.CANCELLED, Outcome.SUSPENDED)

    def __str__(self) -> str:
        return self.value


def error_type_name(error: BaseException) -> str:
    """The name recorded for an exception type: ``ValueError``, ``package.module.MyError``."""
    remote = getattr(error, "remote_type", None)
    if isinstance(remote, str):  # raised in another process and carried here by name
        return remote
    cls = type(error)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One try of an invocation."""

    number: int
    """1-based."""
    started_at: float
    """Epoch seconds on the executor's clock."""
    ended_at: float | None = None
    """Epoch seconds, or None while it runs."""
    outcome: Outcome | None = None
    """How it ended, or None while it runs."""
    error_type: str | None = None
    """The exception's type name when it failed."""
    error_message: str | None = None
    """``str()`` of the exception when it failed."""

    @property
    def duration(self) -> float | None:
        """Seconds it ran, or None while it runs."""
        return None if self.ended_at is None else self.ended_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        # Written out: dataclasses.asdict deep-copies, and this runs on every journal write.
        return {
            "number": self.number,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": None if self.outcome is None else self.outcome.value,
            "error_type": self.error_type,
            "error_message": self.error_message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        outcome = data.get("outcome")
        return cls(
            number=int(data["number"]),
            started_at=float(data["started_at"]),
            ended_at=None if data.get("ended_at") is None else float(data["ended_at"]),
            outcome=None if outcome is None else Outcome(outcome),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One durable step of an invocation, kept once it committed.

    Only committed steps are kept: a step whose function raised, or whose attempt ended before
    its result was stored, leaves nothing and runs again on the next attempt. ``kind`` is
    ``"run"`` (``context.step.run``: ``result`` is its function's return value) or ``"sleep"``
    (``context.step.sleep``: it began at ``started_at`` and wakes at ``ended_at``).
    """

    id: str
    """The step id the handler gave; unique within an invocation."""
    kind: str = "run"
    status: str = "succeeded"
    """``succeeded``: its result is stored and replayed on every later attempt."""
    result: str = "null"
    """The function's return value as JSON text."""
    attempt: int
    """The attempt that ran it (1-based)."""
    started_at: float
    """Epoch seconds on the executor's clock when its function was called."""
    ended_at: float
    """Epoch seconds when its function returned (its result was stored just after); for a
    sleep, its wake time."""

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at

    def value(self) -> Any:
        """The stored result, decoded from its JSON (a fresh copy at every call)."""
        return json.loads(self.result)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "result": self.result,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        return cls(
            id=str(data["id"]),
            kind=str(data.get("kind", "run")),
            status=str(data.get("status", "succeeded")),
            result=str(data.get("result", "null")),
            attempt=int(data["attempt"]),
            started_at=float(data["started_at"]),
            ended_at=float(data["ended_at"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueOptions:
    """How an invocation was enqueued, when not the default way
    (``App.enqueue(delay=, not_before=, priority=)``): the record keeps one of these, or None,
    in one field (every state change copies each field of the record: one costs less than
    two)."""

    priority: int = 0
    """-50 to 50: among due invocations, a higher one starts first when workers are scarce."""
    not_before: float | None = None
    """The first attempt's earliest start, epoch seconds; None when it was due at once."""

    def to_json(self) -> dict[str, Any]:
        return {"priority": self.priority, "not_before": self.not_before}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnqueueOptions:
        not_before = data.get("not_before")
        return cls(
            priority=int(data.get("priority", 0)),
            not_before=None if not_before is None else float(not_before),
        )
