"""An invocation's timeline as text: its attempts, and inside each the durable steps it ran or
took back from the journal. ``bgfunctions invoke``, ``bgfunctions invocations --request`` and
``bgfunctions replay --wait`` print it.

::

    signup-background  request 01KDVDNA00D7EJQEZWRHEFJKDB  (virtual time)
      t=   0.000s  attempt 1  error      ran 0.004s  RuntimeError: card declined
      t=   0.001s    step create-account  committed, ran 0.001s
      t=  60.004s  attempt 2  succeeded  ran 0.002s
                     step create-account  replayed: stored by attempt 1, not run again
      t=  60.005s    step charge  committed, ran 0.001s
      succeeded after 2 attempt(s)

Times are seconds since the invocation was accepted. A step of another kind than ``run`` (a
durable sleep) shows the moment it ends (``until t=...``). Step results are not shown: like the
body, they may hold user data.
"""

from __future__ import annotations

from collections.abc import Iterator

from bgfunctions.invocation import InvocationRecord, Step

__all__ = ["timeline_lines"]

_INDENT = " " * 15  # under "t=   0.000s  " and two more, for lines without a time of their own


def timeline_lines(record: InvocationRecord, clock: str) -> Iterator[str]:
    """The lines of ``record``'s timeline; ``clock`` names where its times come from
    (``virtual time``, ``journal``)."""
    start = record.accepted_at
    yield f"{record.function}  request {record.request_id}  ({clock})"
    if record.replay_of:
        yield f"  a replay of {record.replay_of}: a new invocation, its steps run afresh"
    stored: list[Step] = []  # steps committed by the attempts printed so far
    for attempt in record.attempts:
        took = attempt.duration or 0.0
        error = f"  {attempt.error_type}: {attempt.error_message}" if attempt.error_type else ""
        outcome = attempt.outcome.value if attempt.outcome else "running"
        yield (
            f"  t={attempt.started_at - start:>8.3f}s  attempt {attempt.number}  "
            f"{outcome:<10} ran {took:.3f}s{error}"
        )
        for step in stored:
            if step.kind == "run":
                yield (
                    f"{_INDENT}step {step.id}  replayed: stored by attempt {step.attempt}, "
                    "not run again"
                )
        for step in record.steps:
            if step.attempt == attempt.number:
                yield f"  t={step.started_at - start:>8.3f}s    {_describe(step, start)}"
                stored.append(step)
    if record.state.finished:
        yield f"  {record.state.value} after {len(record.attempts)} attempt(s)"
    else:
        nxt = "" if record.next_run_at is None else f", next at t={record.next_run_at - start:.3f}s"
        yield f"  {record.state.value} after {len(record.attempts)} attempt(s){nxt}"


def _describe(step: Step, start: float) -> str:
    if step.kind == "run":
        return f"step {step.id}  committed, ran {step.duration:.3f}s"
    return (
        f"{step.kind} {step.id}  until t={step.ended_at - start:.3f}s "
        f"({_span(step.ended_at - step.started_at)})"
    )


def _span(seconds: float) -> str:
    """A sleep's length for a reader: ``7d``, ``2h 30m``, ``45s``."""
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or not parts:
        parts.append(f"{whole}s")
    return " ".join(parts[:2])
