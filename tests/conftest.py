"""Suite-wide rules: under CI (``CI=true``) a skipped test fails the run; property tests
assert no timing.

Tests that need a real server or worker start it themselves; on CI they must run, not skip.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis's defaults time every example (a 200 ms deadline) and its input generation (the
# too_slow health check). On a shared 2-CPU machine a loaded moment fails those with no fault in
# the code: the full suite failed twice that way during the issue 10/11 audit (a 1.9 s example
# that took 0.9 ms on replay). Tests never assert a timing; the property tests keep asserting
# behaviour only. A test's own @settings still overrides the other fields.
settings.register_profile(
    "bgfunctions", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("bgfunctions")


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
