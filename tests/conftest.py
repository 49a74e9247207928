"""Suite-wide rules: under CI (``CI=true``) a skipped test fails the run.

Tests that need a real server or worker start it themselves; on CI they must run, not skip.
"""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        names = ", ".join(getattr(r, "nodeid", "?") for r in skipped[:10])
        if reporter is not None:
            reporter.write_line(f"CI=true: {len(skipped)} test(s) were skipped: {names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
