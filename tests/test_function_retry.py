"""A function module declares its own retry schedule: ``retry = RetryPolicy(delays=(...))``
(issue 14, item 4). Netlify's schedule stays the default; Config's keys are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgfunctions import App, ConfigError, RetryPolicy, discover
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.invocation import State

FAILING = """
from bgfunctions import Config, RetryPolicy

config = Config(background=True)
{retry}

def handler(request, context):
    raise ValueError(f"attempt {{context.attempt}}")
"""


def _site(tmp_path: Path, retry: str, name: str = "charge") -> Path:
    (tmp_path / f"{name}.py").write_text(FAILING.format(retry=retry))
    return tmp_path


def _starts(tmp_path: Path) -> list[float]:
    app = App(discover(tmp_path), executor=InlineExecutor())
    try:
        record = app.enqueue("charge").wait()
    finally:
        app.shutdown()
    assert record.state is State.FAILED
    return [a.started_at - record.accepted_at for a in record.attempts]


def test_the_module_schedule_is_used(tmp_path: Path) -> None:
    site = _site(tmp_path, "retry = RetryPolicy(delays=(10, 30, 90))")
    function = discover(site)["charge"]
    assert function.retry == RetryPolicy(delays=(10, 30, 90))
    assert function.config.to_dict() == {"background": True}  # Config keeps Netlify's keys
    assert _starts(site) == [0, 10, 40, 130]


def test_without_one_netlify_schedule_applies(tmp_path: Path) -> None:
    site = _site(tmp_path, "")
    assert discover(site)["charge"].retry is None
    assert _starts(site) == [0, 60, 180]


def test_a_single_attempt(tmp_path: Path) -> None:
    assert _starts(_site(tmp_path, "retry = RetryPolicy(delays=())")) == [0]


def test_a_helper_named_retry_is_not_a_setting(tmp_path: Path) -> None:
    """An imported decorator or a function of the module's own called retry is left alone."""
    site = _site(tmp_path, "def retry(fn):\n    return fn\n")
    assert discover(site)["charge"].retry is None


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("retry = (10, 30, 90)", "found (10, 30, 90) (tuple)"),
        ("retry = 3", "found 3 (int)"),
        ("retry = {'delays': [1]}", "found {'delays': [1]} (dict)"),
        ("retry = RetryPolicy", "found the RetryPolicy class itself"),
    ],
)
def test_a_wrong_retry_names_the_file_and_key(tmp_path: Path, source: str, found: str) -> None:
    site = _site(tmp_path, source)
    with pytest.raises(ConfigError) as caught:
        discover(site)
    message = str(caught.value)
    assert str(site / "charge.py") in message
    assert "'retry' must be a bgfunctions.RetryPolicy" in message
    assert found in message


def test_a_bad_delay_in_the_module_is_an_import_error_naming_the_file(tmp_path: Path) -> None:
    site = _site(tmp_path, "retry = RetryPolicy(delays=(10, -1))")
    with pytest.raises(Exception, match=r"charge\.py.*RetryPolicy\.delays\[1\]"):
        discover(site)
