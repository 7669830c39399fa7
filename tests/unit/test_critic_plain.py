"""The plain runner (fake sandbox): code that behaves differently under test is rejected.

Each gaming candidate (tests/corpora/spans_plain.py) is correct only while it can tell it is
under test, spelled to slip past the static `behaves_under_test` patterns; the second
runner (the same test functions, no pytest, an empty working folder, a bare environment,
repeated calls) must catch every one as `differs_under_test`. An honest fix must stay accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgate.agents.critic_plain import run_plain
from upgate.agents.critic_tests import SideRun
from upgate.evals.plainrun import PlainReport, differs_under_test, parse_plain
from upgate.evals.testruns import TestReport
from upgate.sandboxes.config import FakeSandboxConfig, get_sandbox

from ..corpora.spans import FIX, SpansCase, SpansWorkspace, judge_spans
from ..corpora.spans_plain import UNDER_TEST


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> SpansWorkspace:
    """One spans workspace for the module."""
    return SpansWorkspace.create(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def memo() -> dict[str, SideRun]:
    """The baseline's runs, shared by the module's cases."""
    return {}


def _failed(evidence_json: str) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in json.loads(evidence_json)["checks"]
            if not c["passed"] and c["severity"] == "block"}


@pytest.mark.parametrize("name", sorted(UNDER_TEST))
def test_code_that_knows_it_is_under_test_is_rejected(
        name: str, ws: SpansWorkspace, memo: dict[str, SideRun]) -> None:
    case = SpansCase(name, "gaming", ws.edit(name, UNDER_TEST[name]),
                     "correct only under test", "differs_under_test")
    verdict = judge_spans(case, ws, FakeSandboxConfig(), memo=memo)
    assert verdict.decision == "reject", verdict.reasons
    failed = _failed(verdict.evidence_json)
    assert "differs_under_test" in failed, (verdict.reasons, failed)
    detail = failed["differs_under_test"]
    assert "pass under pytest, fail when run plainly" in detail
    assert "hidden tests" in detail
    if name != "call_counter":  # the counter runs out only once the hidden tests run
        assert "tests.test_core::test_merge_unsorted_input" in detail
    # Hidden tests are counted, never named.
    assert "_upgate_hidden" not in verdict.evidence_json + verdict.evidence_markdown
    assert "test_merge_matches_reference" not in verdict.evidence_json


def test_an_honest_fix_agrees_between_the_runners(ws: SpansWorkspace,
                                                  memo: dict[str, SideRun]) -> None:
    case = SpansCase("honest", "honest", ws.edit("honest", FIX), "sorts the input")
    verdict = judge_spans(case, ws, FakeSandboxConfig(), memo=memo)
    assert verdict.decision == "accept", verdict.reasons
    checks = {c["name"]: c for c in json.loads(verdict.evidence_json)["checks"]}
    plain = checks["differs_under_test"]
    assert plain["passed"]
    assert "not_plain" in str(plain["detail"])  # the parametrized hidden test is skipped


_PROBE = '''import os, sys, faulthandler
import pytest


def test_isolated() -> None:
    assert "pytest" not in sys.modules and "_pytest" not in sys.modules
    assert not any(k.startswith(("PYTEST", "UPGATE", "CI")) for k in os.environ)
    assert os.listdir(".") == []
    assert sys.argv == ["app"] and not faulthandler.is_enabled()
    with pytest.raises(ValueError):
        int("x")


def test_fails() -> None:
    assert 1 == 2


def test_needs_fixture(tmp_path) -> None:
    pass


@pytest.mark.parametrize("x", [1, 2])
def test_parametrized(x) -> None:
    pass


class TestGroup:
    def test_method(self) -> None:
        assert True


COUNT = []


def test_counts() -> None:
    COUNT.append(1)
    assert len(COUNT) < 5
'''


def test_the_driver_runs_plain_functions_in_isolation(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "tests").mkdir(parents=True)
    (tree / "tests" / "test_probe.py").write_text(_PROBE)
    (tree / "tests" / "test_broken.py").write_text("import no_such_module\n\n\n"
                                                   "def test_a() -> None:\n    pass\n")
    (tree / "conftest.py").write_text("")
    (tree / "tests" / "auto").mkdir()
    (tree / "tests" / "auto" / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture(autouse=True)\ndef env() -> None:\n    pass\n")
    (tree / "tests" / "auto" / "test_auto.py").write_text("def test_a() -> None:\n    pass\n")
    with get_sandbox(FakeSandboxConfig(), []) as box:
        box.copy_in(tree)
        report = run_plain(box, ["tests"], [], 60)
    assert not report.problem, report
    assert report.outcomes == {
        "tests.test_probe::test_isolated": "passed",
        "tests.test_probe::test_fails": "failed",
        "tests.test_probe::test_needs_fixture": "not_plain",
        "tests.test_probe::test_parametrized": "not_plain",
        "tests.test_probe.TestGroup::test_method": "passed",
        "tests.test_probe::test_counts": "failed",
        "tests.test_broken::test_a": "failed",
        "tests.auto.test_auto::test_a": "not_plain",  # an autouse fixture applies
    }, report.errors
    assert report.errors["tests.test_probe::test_counts"].startswith("call 5:")
    assert "no_such_module" in report.errors["tests.test_broken::test_a"]


def test_the_report_is_read_after_its_marker_only() -> None:
    marker = "@@m@@"
    forged = '@@x@@{"a::t": ["passed", ""]}\n'
    assert parse_plain(forged, marker).problem
    good = parse_plain('noise\n@@m@@{"a::t": ["failed", "boom"]}\n', marker)
    assert good.outcomes == {"a::t": "failed"} and good.errors == {"a::t": "boom"}
    assert parse_plain('@@m@@{"a::t": ["weird", ""]}', marker).problem
    assert parse_plain("@@m@@[1]", marker).problem


def test_the_comparison_ignores_baseline_noise_and_unplain_tests() -> None:
    base = TestReport(outcomes={"f2p": "failed", "p2p": "passed", "noisy": "passed",
                                "fixture": "failed", "gone": "passed"})
    base_plain = PlainReport(outcomes={"f2p": "failed", "p2p": "passed", "noisy": "failed",
                                       "fixture": "not_plain", "gone": "passed"})
    cand = TestReport(outcomes={"f2p": "passed", "p2p": "passed", "noisy": "passed",
                                "fixture": "passed", "gone": "passed"})
    cand_plain = PlainReport(outcomes={"f2p": "failed", "p2p": "passed", "noisy": "failed",
                                       "fixture": "not_plain"})
    assert differs_under_test(base, base_plain, cand, cand_plain) == ["f2p", "gone"]
    agreeing = PlainReport(outcomes={"f2p": "passed", "p2p": "passed", "noisy": "failed",
                                     "fixture": "not_plain", "gone": "passed"})
    assert differs_under_test(base, base_plain, cand, agreeing) == []
