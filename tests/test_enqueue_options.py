"""Delay and priority at enqueue (issue 14, item 3): ``app.enqueue(..., delay=, not_before=,
priority=)``, recorded, shown, and checked with errors that name the function and value."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from bgfunctions import App, InvocationRecord, Registry
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.invocation import State
from bgfunctions.journals.sqlite import SQLiteJournal
from bgfunctions.testing import make_request


def _inline() -> tuple[App, InlineExecutor, list[float]]:
    starts: list[float] = []
    registry = Registry()
    registry.add("job-background", lambda request, context: starts.append(context.clock.now()))
    executor = InlineExecutor()
    return App(registry, executor=executor), executor, starts


def test_delay_starts_the_first_attempt_later_and_is_recorded() -> None:
    app, _, starts = _inline()
    try:
        handle = app.enqueue("job-background", delay=dt.timedelta(hours=2), priority=7)
        accepted = handle.record.accepted_at
        assert handle.state is State.ACCEPTED
        assert handle.record.next_run_at == handle.record.not_before == accepted + 7200
        record = handle.wait()
    finally:
        app.shutdown()
    assert starts == [accepted + 7200]
    assert (record.priority, record.not_before) == (7, accepted + 7200)
    again = InvocationRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record


def test_not_before_as_datetime_or_epoch_and_a_past_time_runs_at_once() -> None:
    app, executor, starts = _inline()
    try:
        now = app.clock.now()
        when = dt.datetime.fromtimestamp(now + 600, tz=dt.timezone.utc)
        app.enqueue("job-background", not_before=when)
        app.enqueue("job-background", not_before=now + 60.0)
        past = app.enqueue("job-background", not_before=now - 60.0)
        assert past.record.next_run_at == now  # due at once; not_before kept as given
        assert past.record.not_before == now - 60.0
        executor.drain()
    finally:
        app.shutdown()
    assert starts == [now, now + 60, now + 600]


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"priority": 51}, ValueError, "priority: expected an int from -50 to 50, found 51"),
        ({"priority": -51}, ValueError, "found -51"),
        ({"priority": 1.5}, TypeError, "found 1.5 (float)"),
        ({"priority": True}, TypeError, "found True (bool)"),
        ({"delay": -1}, ValueError, "delay: expected a finite number of seconds of 0 or more"),
        ({"delay": float("inf")}, ValueError, "found inf"),
        ({"delay": "10"}, TypeError, "delay: expected seconds (a number) or a timedelta"),
        ({"delay": 1, "not_before": 2.0}, TypeError, "expected delay= or not_before=, found both"),
        ({"not_before": dt.datetime(2030, 1, 1)}, ValueError, "expected an aware datetime"),
        ({"not_before": "soon"}, TypeError, "found 'soon' (str)"),
        ({"not_before": float("nan")}, ValueError, "expected finite epoch seconds"),
    ],
)
def test_bad_options_name_the_function_and_value(
    options: dict[str, Any], error: type[Exception], text: str
) -> None:
    app, _, starts = _inline()
    try:
        with pytest.raises(error) as caught:
            app.enqueue("job-background", **options)
        assert app.invocations.list() == []  # nothing was recorded
    finally:
        app.shutdown()
    assert str(caught.value).startswith("enqueue('job-background'): ")
    assert text in str(caught.value)
    assert starts == []


def test_priority_decides_which_due_invocation_runs_first_on_one_worker() -> None:
    """One worker, held by a first invocation; then low (-10), default (0), high (+20) and
    high again are due at once. When the worker frees: high, high, default, low."""
    ran: list[str] = []
    release = threading.Event()

    def hold(request: Any, context: Any) -> None:
        release.wait(30)

    def job(request: Any, context: Any) -> None:
        ran.append(request.text())

    registry = Registry()
    registry.add("hold-background", hold)
    registry.add("job-background", job)
    app = App(registry, executor=ThreadExecutor(max_workers=1))
    try:
        holding = app.enqueue("hold-background")
        for _ in range(3000):
            if holding.state is State.RUNNING:
                break
            threading.Event().wait(0.01)  # polls for the state, not a timing assertion
        handles = [
            app.enqueue("job-background", make_request(body=name.encode()), priority=priority)
            for name, priority in [("low", -10), ("default", 0), ("high", 20), ("high2", 20)]
        ]
        release.set()
        for handle in handles:
            assert handle.wait(timeout=30).state is State.SUCCEEDED
    finally:
        release.set()
        app.shutdown()
    assert ran == ["high", "high2", "default", "low"]


def test_priority_survives_in_the_journal_and_recovery_takes_the_highest_first(
    tmp_path: Path,
) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    registry = Registry()
    registry.add("job-background", lambda request, context: None)
    app = App(registry, executor=ThreadExecutor(journal=journal))
    try:
        ids = {
            p: app.enqueue("job-background", delay=3600, priority=p).request_id for p in (-5, 9, 0)
        }
        unfinished = journal.unfinished()
    finally:
        app.shutdown()
        journal.close()
    assert [r.request_id for r in unfinished] == [ids[9], ids[0], ids[-5]]
    assert [r.priority for r in unfinished] == [9, 0, -5]
    assert all(r.not_before == r.next_run_at for r in unfinished)


def test_bgfunctions_invocations_shows_the_next_run_and_the_priority(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgfunctions.cli import main
    from bgfunctions.clock import VirtualClock
    from bgfunctions.views import iso_utc

    path = tmp_path / "journal.sqlite3"
    clock = VirtualClock()
    journal = SQLiteJournal(path, clock=clock)
    registry = Registry()
    registry.add("nap-background", lambda request, context: context.step.sleep("nap", days=7))
    registry.add("job-background", lambda request, context: None)
    executor = InlineExecutor(clock=clock, journal=journal)
    app = App(registry, executor=executor)
    try:
        sleeping = app.enqueue("nap-background", priority=-3)
        later = app.enqueue("job-background", delay=3600, priority=12)
        executor.run_until(clock.now() + 1)
        assert sleeping.state is State.SLEEPING
    finally:
        app.shutdown(wait=False)
        journal.close()
    assert main(["invocations", str(tmp_path), "--journal", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = re.split(r"\s{2,}", lines[0].strip())
    assert head[-3:] == ["NEXT RUN (UTC)", "PRIORITY", "LAST ERROR"]
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(head, cells, strict=False))  # no LAST ERROR: one cell less
    accepted = later.record.accepted_at
    assert rows[later.request_id]["STATE"] == "accepted"
    assert rows[later.request_id]["NEXT RUN (UTC)"] == iso_utc(accepted + 3600)
    assert rows[later.request_id]["PRIORITY"] == "+12"
    assert rows[sleeping.request_id]["STATE"] == "sleeping"
    assert rows[sleeping.request_id]["NEXT RUN (UTC)"] == iso_utc(accepted + 7 * 86400)
    assert rows[sleeping.request_id]["PRIORITY"] == "-3"
    assert main(["invocations", str(tmp_path), "--journal", str(path), "--json"]) == 0
    listed = {r["request_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[later.request_id]["priority"] == 12
    assert listed[later.request_id]["not_before"] == accepted + 3600
    assert [s["kind"] for s in listed[sleeping.request_id]["steps"]] == ["sleep"]


def test_a_delayed_invocation_does_not_count_against_max_pending() -> None:
    """Two invocations delayed a week do not fill max_pending=2: a third, due now, is accepted
    (work waiting for a worker counts; work not yet due does not)."""
    registry = Registry()
    registry.add("r-background", lambda request, context: None)
    executor = ThreadExecutor(max_pending=2)
    app = App(registry, executor=executor)
    try:
        app.enqueue("r-background", delay=7 * 86400)
        app.enqueue("r-background", delay=7 * 86400)
        assert executor.stats().pending == 0
        now = app.enqueue("r-background")
        assert now.wait(30).state is State.SUCCEEDED
    finally:
        app.shutdown(wait=False)
