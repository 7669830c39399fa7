"""No silent skips: under CI a test that skips for want of a part fails instead.

A skip says "this part is missing here" (no Docker engine, no vLLM server, no bubblewrap,
no model folder). On a developer's machine that is useful; in CI, where `make test`
installs every part, it would hide a broken set-up behind a green run. So when the `CI`
environment variable is set (to anything but "", "0" or "false"), every skipped test
result is turned into a failure that keeps the skip's reason. Expected failures (xfail)
are left alone.

The tiers' conftest modules import `pytest_runtest_makereport` from here, which registers
the hook for the tests below them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def ci_is_set() -> bool:
    """Whether this run is a CI run, where a missing part is a failure."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped report gives, as text."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    """Under CI, turn a skipped result into a failed one that says what is missing."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not ci_is_set():
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI, which counts as a failure: {skip_reason(report)}\n"
        "`make test` installs and starts every part; run it (or the set-up target the "
        "reason names) and look at its output for why this part is missing."
    )
