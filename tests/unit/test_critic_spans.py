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


def test_hidden_tests_enter_the_sandbox_only_after_setup_and_the_visible_run(
        ws: SpansWorkspace, cases: dict[str, SpansCase]) -> None:
    """Order of operations in the candidate's sandbox: nothing hidden before its code ran."""
    from upgate.agents.critic_tests import HIDDEN_DIR, TestPlan, read_baseline_files, run_side
    from upgate.config import load_manifest
    from upgate.evals.codescope import default_scope
    from upgate.sandboxes.base import Mount, Sandbox
    from upgate.sandboxes.config import get_sandbox

    from ..corpora.spans import HIDDEN

    events: list[str] = []

    class Recording(Sandbox):
        def __init__(self, inner: Sandbox) -> None:
            self.inner = inner

        def start(self) -> None:
            self.inner.start()

        def stop(self) -> None:
            self.inner.stop()

        def reset(self) -> None:
            self.inner.reset()

        def describe(self) -> str:
            return self.inner.describe()

        def exec(self, command: list[str] | str, **kw: object) -> object:  # type: ignore[override]
            events.append("exec:" + (command if isinstance(command, str) else " ".join(command)))
            return self.inner.exec(command, **kw)  # type: ignore[arg-type]

        def read_file(self, path: str) -> str:
            return self.inner.read_file(path)

        def write_file(self, path: str, content: str) -> None:
            events.append("write:" + path)
            self.inner.write_file(path, content)

        def list_files(self, path: str = ".") -> list[str]:
            return self.inner.list_files(path)

        def copy_in(self, source: Path) -> None:
            events.append("copy_in")
            self.inner.copy_in(source)

        def copy_out(self, path: str, dest: Path) -> None:
            self.inner.copy_out(path, dest)

        def diff(self) -> str:
            return self.inner.diff()

    manifest = load_manifest(ws.target).model_copy(update={"sandbox_setup": "true"})
    files = [p.relative_to(ws.target).as_posix() for p in ws.target.rglob("*")
             if p.is_file() and ".git" not in p.parts]
    scope = default_scope(files)
    from upgate.agents.critic_tests import read_hidden

    plan = TestPlan(manifest=manifest, scope=scope, hidden=read_hidden(HIDDEN),
                    baseline_files=read_baseline_files(ws.target, scope), timeout_s=120)

    def box(mounts: list[Mount]) -> Sandbox:
        return Recording(get_sandbox(FakeSandboxConfig(), mounts))

    run = run_side(box, ws.target, cases["honest_sort_fix"].diff, plan)
    assert run.hidden is not None and run.hidden.counts == {"passed": 32}
    first_hidden = next(i for i, e in enumerate(events) if e.startswith(f"write:{HIDDEN_DIR}/"))
    setup = events.index("exec:true")
    visible = next(i for i, e in enumerate(events) if "pytest" in e and HIDDEN_DIR not in e)
    assert setup < visible < first_hidden
    # The plain runner (no pytest) runs last, on the visible and the hidden tests.
    plain = next(i for i, e in enumerate(events) if "upgate-plain-" in e)
    assert first_hidden < plain and HIDDEN_DIR in events[plain]
    assert run.plain is not None and not run.plain.problem
