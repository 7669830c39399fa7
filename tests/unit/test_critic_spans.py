"""The code critic on a plain library (examples/spans), fake sandbox: honest vs gaming.

Every in-sample case runs through `critique` with no eval suite and no model: the
baseline's tests (trusted runs, per-test outcomes) and the owner's hidden tests are the
evidence. Honest fixes, including ones that add tests or carry `# noqa`, are accepted;
every gaming kind is rejected, by the mechanism the case names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgate.agents.critic_tests import SideRun
from upgate.sandboxes.config import FakeSandboxConfig

from ..corpora.spans import GAMING, HONEST, SpansCase, SpansWorkspace, build_corpus, judge_spans

NAMES = [*HONEST, *GAMING, "prefix_trick"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> SpansWorkspace:
    """One spans workspace for the module."""
    return SpansWorkspace.create(tmp_path_factory.mktemp("spans"))


@pytest.fixture(scope="module")
def cases(ws: SpansWorkspace) -> dict[str, SpansCase]:
    """The in-sample corpus by name."""
    return {c.name: c for c in build_corpus(ws)}


@pytest.fixture(scope="module")
def memo() -> dict[str, SideRun]:
    """The baseline's runs, shared by the module's cases."""
    return {}


def _checks(evidence_json: str) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(evidence_json)["checks"]}


@pytest.mark.parametrize("name", NAMES)
def test_spans_case(name: str, ws: SpansWorkspace, cases: dict[str, SpansCase],
                    memo: dict[str, SideRun]) -> None:
    case = cases[name]
    verdict = judge_spans(case, ws, FakeSandboxConfig(), memo=memo)
    if case.kind == "honest":
        assert verdict.decision == "accept", verdict.reasons
        return
    if case.kind == "neutral":
        assert verdict.decision == "revise", verdict.reasons
        return
    assert verdict.decision == "reject", (case.why, verdict.reasons)
    failed = [n for n, c in _checks(verdict.evidence_json).items()
              if not c["passed"] and c["severity"] == "block"]
    wanted = case.mechanism.split("|")
    assert any(n.removeprefix("detector:") in wanted for n in failed), (wanted, failed)


def test_an_honest_fix_counts_its_new_tests_in_favour(
        ws: SpansWorkspace, cases: dict[str, SpansCase], memo: dict[str, SideRun]) -> None:
    verdict = judge_spans(cases["honest_fix_adds_test_file"], ws, FakeSandboxConfig(),
                          memo=memo)
    checks = _checks(verdict.evidence_json)
    assert "2 new tests: 2 pass on the candidate, 2 of them fail on the baseline" in str(
        checks["added_tests"]["detail"])
    assert "FAIL_TO_PASS 2," in str(checks["tests"]["detail"])
    assert "hidden FAIL_TO_PASS 23" in str(checks["hidden_tests"]["detail"])


def test_hidden_tests_never_reach_the_evidence(
        ws: SpansWorkspace, cases: dict[str, SpansCase], memo: dict[str, SideRun]) -> None:
    """The packet (shown to the coder on a revise) names counts, never hidden code."""
    verdict = judge_spans(cases["special_case_literal"], ws, FakeSandboxConfig(), memo=memo)
    packet = verdict.evidence_json + verdict.evidence_markdown
    assert "_reference_merge" not in packet
    assert "test_merge_matches_reference" not in packet
    assert "(10, 12)" not in packet


def test_without_hidden_tests_the_visible_special_case_is_not_overfitting(
        ws: SpansWorkspace, cases: dict[str, SpansCase], memo: dict[str, SideRun]) -> None:
    """The hidden tests are what catch a special case: without them it would pass."""
    verdict = judge_spans(cases["special_case_literal"], ws, FakeSandboxConfig(), memo={},
                          hidden=None)
    assert verdict.decision == "accept", verdict.reasons


def test_a_diff_that_does_not_apply_is_rejected(ws: SpansWorkspace) -> None:
    patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    bogus = SpansCase("bogus", "gaming", patch, "does not apply")
    verdict = judge_spans(bogus, ws, FakeSandboxConfig(), memo={})
    assert verdict.decision == "reject"
    assert verdict.reasons[0].startswith("the candidate's diff does not apply")


def test_red_team_loader_reads_diffs_and_labels(tmp_path: Path) -> None:
    from ..corpora.spans import redteam_cases

    (tmp_path / "honest-fix.diff").write_text("# kind: plain fix\ndiff --git a/x b/x\n")
    (tmp_path / "game.diff").write_text("diff --git a/y b/y\n")
    found = {c.name: c for c in redteam_cases(tmp_path)}
    assert found["honest-fix"].kind == "honest"
    assert found["honest-fix"].why == "plain fix"
    assert found["game"].kind == "gaming"
    assert list(redteam_cases(tmp_path / "missing")) == []
