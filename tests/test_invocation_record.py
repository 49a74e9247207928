"""The invocation record: its state machine's copies and its JSON form."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgfunctions import InvocationRecord, Outcome, Request, RetryPolicy, State
from bgfunctions.invocation import Attempt, Step

OUTCOMES = st.sampled_from(list(Outcome))


def _record(body: bytes, headers: dict[str, str]) -> InvocationRecord:
    request = Request("POST", "/.netlify/functions/f?x=1", headers=headers, body=body)
    return InvocationRecord.of_request(
        request, request_id="01J", function="f", params={"id": "7"}, accepted_at=100.0
    )


@given(
    body=st.binary(max_size=64),
    headers=st.dictionaries(
        st.text("abcdefghij-", min_size=1, max_size=8),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
        max_size=3,
    ),
    outcomes=st.lists(OUTCOMES, max_size=4),
    message=st.text(max_size=20),
)
def test_records_survive_json_at_every_step(
    body: bytes, headers: dict[str, str], outcomes: list[Outcome], message: str
) -> None:
    """Every record the state machine makes comes back equal from its JSON text."""
    record = _record(body, headers)
    retry = RetryPolicy(delays=(60.0, 120.0))
    steps = [record]
    now = 100.0
    for outcome in outcomes:
        if record.state.finished:
            break
        now += 1
        record = record.start_attempt(now)
        steps.append(record)
        now += 1
        error = None if outcome is Outcome.SUCCEEDED else "RuntimeError"
        wake = now + 3600 if outcome is Outcome.SUSPENDED else None  # a durable sleep's
        record = record.end_attempt(
            now, outcome, retry, error_type=error, error_message=message, wake_at=wake
        )
        steps.append(record)
    for step in steps:
        assert InvocationRecord.from_json(json.loads(json.dumps(step.to_json()))) == step


def test_json_names_every_field() -> None:
    """A field added to the record or to an attempt cannot be left out of its JSON."""
    record = _record(b"x", {})
    record = record.start_attempt(101.0).end_attempt(102.0, Outcome.ERROR, RetryPolicy())
    fields = {f.name for f in dataclasses.fields(InvocationRecord)}
    assert set(record.to_json()) == fields
    assert set(record.attempts[0].to_json()) == {f.name for f in dataclasses.fields(Attempt)}
    step = Step(id="s", attempt=1, started_at=101.0, ended_at=101.5)
    assert set(step.to_json()) == {f.name for f in dataclasses.fields(Step)}


def test_copies_change_only_what_the_transition_changes() -> None:
    """start_attempt and end_attempt keep every other field, and leave the original as it was."""
    accepted = _record(b"body", {"x-a": "1"})
    started = accepted.start_attempt(101.0)
    ended = started.end_attempt(103.5, Outcome.SUCCEEDED, RetryPolicy())
    assert accepted.state is State.ACCEPTED
    assert accepted.attempts == ()
    assert dataclasses.replace(started, state=State.ACCEPTED, attempts=(), next_run_at=100.0) == (
        accepted
    )
    assert ended.attempts == (
        Attempt(number=1, started_at=101.0, ended_at=103.5, outcome=Outcome.SUCCEEDED),
    )
    assert (ended.state, ended.finished_at, ended.body, ended.params) == (
        State.SUCCEEDED,
        103.5,
        b"body",
        {"id": "7"},
    )


class _Tagged(InvocationRecord):
    """A subclass, as an embedder might make to carry its own helpers."""

    def tag(self) -> str:
        return f"{self.function}#{self.attempt_count}"


def test_a_subclass_stays_itself_through_every_transition() -> None:
    """Records of a subclass keep their class through start, end, cancel and reject."""
    request = Request("POST", "/.netlify/functions/f")
    record = _Tagged.of_request(request, request_id="01J", function="f", params={}, accepted_at=1.0)
    started = record.start_attempt(2.0)
    ended = started.end_attempt(3.0, Outcome.ERROR, RetryPolicy(delays=(60.0,)))
    for step in (record, started, ended, ended.cancel(4.0), record.reject(2.0)):
        assert type(step) is _Tagged
    assert isinstance(ended, _Tagged)
    assert ended.tag() == "f#1"
    assert ended.state is State.RETRY_SCHEDULED


def test_a_record_keeps_its_body_size_without_its_body() -> None:
    """body_size is the body's length, kept when the body is left out; with_body checks it."""
    record = _record(b"12345", {})
    assert (record.body_size, record.body_loaded) == (5, True)
    bare = record.without_body()
    assert (bare.body, bare.body_size, bare.body_loaded) == (b"", 5, False)
    assert bare.start_attempt(101.0).body_size == 5  # the state machine's copies keep it
    assert bare.with_body(b"12345") == record
    with pytest.raises(ValueError, match="expected a body of 5 bytes; got 3"):
        bare.with_body(b"123")
    with pytest.raises(ValueError, match="body_size is 2 but the body has 5 bytes"):
        dataclasses.replace(record, body_size=2)
    empty = _record(b"", {})
    assert (empty.body_size, empty.body_loaded, empty.without_body()) == (0, True, empty)


def test_json_without_the_body_and_json_from_before_body_size() -> None:
    """to_json(body=False) leaves the body out but keeps its size; JSON written before
    body_size existed reads back with the size of its body."""
    record = _record(b"12345", {})
    data = record.to_json(body=False)
    assert "body" not in data
    assert InvocationRecord.from_json(data) == record.without_body()
    old = record.to_json()
    del old["body_size"]
    assert InvocationRecord.from_json(old) == record
