"""The plain runner's report, and its comparison with the trusted pytest run.

A test that passes under pytest on the candidate but fails when its function is called
plainly (no pytest, no test markers, repeated calls), while on the baseline both runners
agree about it, is code that behaves differently under test. Tests the baseline itself runs
inconsistently between the two runners are noise; tests that cannot run plainly (fixtures,
parameters, marks) are skipped, never failed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from upgate.evals.testruns import TestReport

PlainOutcome = Literal["passed", "failed", "not_plain"]
_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PlainReport:
    """Test id (`module::name`, as in JUnit) -> plain outcome and first error."""

    outcomes: dict[str, PlainOutcome] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    problem: str = ""

    def summary(self) -> str:
        """One line: counts per outcome, and the problem if any."""
        counts = Counter(self.outcomes.values())
        text = ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "no tests"
        return text + (f"; {self.problem}" if self.problem else "")


def parse_plain(stdout: str, marker: str) -> PlainReport:
    """The driver's JSON line after `marker` (the last one); anything else is a problem."""
    if len(stdout.encode()) > _MAX_BYTES:
        return PlainReport(problem="the plain report is too large")
    at = stdout.rfind(marker)
    if at < 0:
        return PlainReport(problem="the plain runner printed no report")
    try:
        raw = json.loads(stdout[at + len(marker):].splitlines()[0])
    except (ValueError, IndexError) as exc:
        return PlainReport(problem=f"the plain report is not valid JSON: {exc}")
    if not isinstance(raw, dict):
        return PlainReport(problem="the plain report is not a JSON object")
    outcomes: dict[str, PlainOutcome] = {}
    errors: dict[str, str] = {}
    for key, value in raw.items():
        if (not isinstance(value, list) or len(value) != 2
                or value[0] not in ("passed", "failed", "not_plain")):
            return PlainReport(problem=f"the plain report has a bad entry for {key!r}")
        outcomes[str(key)] = value[0]
        errors[str(key)] = str(value[1])[:300]
    return PlainReport(outcomes=outcomes, errors=errors)


def _agree(pytest: str | None, plain: str | None) -> bool:
    if pytest is None or plain is None or plain == "not_plain":
        return False
    return (pytest == "passed") == (plain == "passed")


def differs_under_test(base_pytest: TestReport, base_plain: PlainReport,
                       cand_pytest: TestReport, cand_plain: PlainReport) -> list[str]:
    """Tests the candidate passes under pytest and fails plainly, the baseline consistent.

    A test missing from the candidate's plain report (its module no longer imports plainly)
    counts as failed there when the baseline ran it plainly.
    """
    found: list[str] = []
    for test_id, outcome in sorted(cand_pytest.outcomes.items()):
        if outcome != "passed":
            continue
        before = base_plain.outcomes.get(test_id)
        if not _agree(base_pytest.outcomes.get(test_id), before):
            continue
        after = cand_plain.outcomes.get(test_id, "failed")
        if after == "failed":
            found.append(test_id)
    return found
