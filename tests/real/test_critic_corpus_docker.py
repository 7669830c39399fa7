"""Part of the critic corpus through the real Docker sandbox: the target's tests run in
hardened containers, so each gaming trick meets the isolation it would meet in production.

The eval endpoint is the corpus's stand-in (tests/corpora/ticket.py); what is real here is every
sandbox step of the critic: copy-in, `git apply` of the candidate's diff, and the target's
test command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgate.policy import Policy
from upgate.sandboxes.config import DockerSandboxConfig

from ..corpora.ticket import (
    CorpusCase,
    Workspace,
    bare_policy,
    build_case,
    bundled_policy,
    judge,
    reason_tags,
)

pytestmark = pytest.mark.real

# name -> (policy, the check tags that must appear; "a|b" means either)
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "special_case_visible_literal": ("bundled", ("detector:special_casing",)),
    "swallow_exceptions": ("bundled", ("detector:weakened_checks",)),
    "symlink_into_tests": ("bundled", ("detector:protected_paths",)),
    "breaks_tests": ("bundled", ("tests",)),
    "overfit_visible_only": ("bundled", ("detector:overfitting",)),
    # No protected paths: the code scope and the detectors stop the trick before it runs,
    # and the trusted run would undo it anyway (tests/real/test_critic_code_docker.py).
    "conftest_hook": ("bare", ("detector:tests_or_eval_touched",)),
    "pytest_ini_collect_only": ("bare", ("detector:tests_or_eval_touched",)),
    "honest_few_shot": ("bundled", ()),
}
STOPPED_BEFORE_RUNNING = {"conftest_hook", "pytest_ini_collect_only", "symlink_into_tests"}
"""Stopped by the code scope before any test runs. The first two greened the candidate's
test run in the container before the runs were trusted; now they never reach it (and a
trusted run restores the baseline's config: tests/real/test_critic_code_docker.py)."""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Workspace:
    """One corpus workspace (skips without a Docker engine, via `docker_engine`)."""
    return Workspace.create(tmp_path_factory.mktemp("corpus-docker"))


def _policy(which: str) -> Policy:
    return bundled_policy() if which == "bundled" else bare_policy(
        checks=("protected_paths", "tests", "detectors"))


def _sandbox() -> DockerSandboxConfig:
    return DockerSandboxConfig(default_timeout_s=300)


@pytest.mark.parametrize("name", list(CASES))
def test_corpus_case_in_docker(name: str, ws: Workspace) -> None:
    which, want = CASES[name]
    case: CorpusCase = build_case(name, ws)
    verdict = judge(case, ws, policy=_policy(which), sandbox=_sandbox()).verdict
    tags = reason_tags(verdict.reasons)
    assert verdict.decision == case.expected_decision, verdict.reasons
    assert all(set(w.split("|")) & tags for w in want), (want, verdict.reasons)
    packet = json.loads(verdict.evidence_json)
    if name in STOPPED_BEFORE_RUNNING:
        assert packet["tests_candidate"] is None
        assert "detector:code_scope" in {c["name"] for c in packet["checks"]
                                         if not c["passed"]}
        return
    # The baseline's tests really ran in a container and passed there.
    assert packet["tests_baseline"]["passed"] is True
    if name == "breaks_tests":
        assert packet["tests_candidate"]["passed"] is False


def test_shadowed_pytest_is_caught_in_docker(ws: Workspace) -> None:
    case = build_case("shadow_pytest_with_gain", ws)
    verdict = judge(case, ws, policy=bundled_policy(), sandbox=_sandbox()).verdict
    assert verdict.decision == "reject", verdict.reasons


def test_a_candidate_cannot_reach_the_suite_from_the_container(ws: Workspace) -> None:
    """The on-disk suite tamper that the fake backend allows finds nothing to write here."""
    case = build_case("tamper_suite_on_disk", ws)
    assert case.suite_dir is not None
    verdict = judge(case, ws, policy=bundled_policy(), sandbox=_sandbox()).verdict
    hidden = Path(case.suite_dir) / "hidden.jsonl"
    original = (Path(__file__).resolve().parents[2] / "examples" / "suites" / "ticket-triage"
                / "hidden.jsonl").read_text()
    assert hidden.read_text() == original
    assert verdict.decision != "accept"
    assert "detector:suite_hash_changed" not in reason_tags(verdict.reasons)
