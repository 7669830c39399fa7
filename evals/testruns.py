"""Per-test outcomes: read a JUnit XML report safely and compare baseline with candidate.

The report comes from a run of the candidate's code, so it is untrusted XML: it is parsed
with defusedxml (no entities, no external references). The comparison is SWE-bench's:
FAIL_TO_PASS is the gain, PASS_TO_PASS must hold, and a baseline test that is missing,
skipped, xfailed, deselected or errored on the candidate is a regression.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

Outcome = Literal["passed", "failed", "error", "skipped"]
MAX_REPORT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TestReport:
    """The outcome of every test one run reported, plus the runner's exit code."""

    __test__ = False  # not a pytest test class

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    exit_code: int = 0
    ran: bool = True
    """False when the run never started (the diff did not apply, setup failed)."""
    problem: str = ""
    """Why there is no usable report (missing, unreadable), or why the run did not start."""
    output: str = ""
    """The tail of the runner's output (never kept for hidden tests)."""

    @property
    def counts(self) -> dict[str, int]:
        """How many tests had each outcome."""
        return dict(Counter(self.outcomes.values()))

    def summary(self) -> str:
        """One line: counts per outcome and the exit code."""
        counts = ", ".join(f"{n} {o}" for o, n in sorted(self.counts.items())) or "no tests"
        extra = f"; {self.problem}" if self.problem else ""
        return f"{counts} (exit {self.exit_code}){extra}"


def _outcome(case: object) -> Outcome:
    children = {getattr(c, "tag", "") for c in list(case)}  # type: ignore[call-overload]
    if "error" in children:
        return "error"
    if "failure" in children:
        return "failed"
    if "skipped" in children:
        return "skipped"
    return "passed"


def parse_junit(xml_text: str, exit_code: int) -> TestReport:
    """Every testcase of a JUnit XML report, keyed `classname::name`; bad XML is a value."""
    if len(xml_text.encode()) > MAX_REPORT_BYTES:
        return TestReport(exit_code=exit_code, problem="the test report is too large")
    try:
        root = SafeET.fromstring(xml_text)
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        return TestReport(exit_code=exit_code, problem=f"the test report is not valid XML: {exc}")
    outcomes: dict[str, Outcome] = {}
    for case in root.iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        new = _outcome(case)
        # A test reported twice (a teardown error after a pass) keeps its worst outcome.
        old = outcomes.get(key)
        if old is None or _RANK[new] > _RANK[old]:
            outcomes[key] = new
    return TestReport(outcomes=outcomes, exit_code=exit_code)


_RANK: dict[Outcome, int] = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def exit_code_disagrees(report: TestReport) -> str | None:
    """Why the exit code contradicts the report (a tamper finding), or None.

    pytest's codes: 0 all passed, 1 some failed, 5 no tests collected; other runners are
    held to the same rule: exit 0 if and only if nothing failed or errored.
    """
    if not report.ran or report.problem:
        return None
    bad = sum(1 for o in report.outcomes.values() if o in ("failed", "error"))
    if report.exit_code == 0 and bad:
        return f"exit code 0 while the report has {bad} failed or errored tests"
    if report.exit_code == 0 and not report.outcomes:
        return "exit code 0 while the report has no tests"
    if report.exit_code != 0 and not bad and report.outcomes:
        return f"exit code {report.exit_code} while every reported test passed or was skipped"
    return None


@dataclass(frozen=True)
class TestDelta:
    """Baseline against candidate, test by test."""

    __test__ = False

    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    regressions: tuple[str, ...]
    """`id: baseline -> candidate` for every baseline pass that did not pass on the candidate."""
    still_failing: tuple[str, ...]


def compare_runs(baseline: TestReport, candidate: TestReport) -> TestDelta:
    """FAIL_TO_PASS, PASS_TO_PASS and regressions; only ids the baseline reported count."""
    f2p: list[str] = []
    p2p: list[str] = []
    regressions: list[str] = []
    still: list[str] = []
    for test_id, before in sorted(baseline.outcomes.items()):
        after = candidate.outcomes.get(test_id, "missing")
        if before == "passed":
            (p2p if after == "passed" else regressions).append(
                test_id if after == "passed" else f"{test_id}: passed -> {after}")
        elif before in ("failed", "error"):
            (f2p if after == "passed" else still).append(test_id)
    return TestDelta(fail_to_pass=tuple(f2p), pass_to_pass=tuple(p2p),
                     regressions=tuple(regressions), still_failing=tuple(still))
