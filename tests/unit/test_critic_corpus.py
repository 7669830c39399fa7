"""The critic against the ticket-triage corpus (tests/corpora/ticket.py): honest vs gaming.

Every case runs through `critique` with the fake sandbox (the target's own pytest runs on
the host), a scripted critic model that recommends "accept" for everything, and a stand-in
eval endpoint. Each verdict must be the decision the case deserves, for the reason the
case names. Cases the critic gets wrong because of a bug elsewhere are strict xfails whose
reason says what the bug is.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from upgate.errors import UpgateError
from upgate.evals.evidence import EvidencePacket
from upgate.sandboxes.base import ExecResult
from upgate.sandboxes.config import FakeSandboxConfig

from ..corpora.ticket import (
    CLASSIFY,
    GENERATORS,
    INJECTION,
    CorpusCase,
    Judged,
    Workspace,
    bare_policy,
    both,
    build_case,
    build_corpus,
    bundled_policy,
    candidate,
    critic_model,
    judge,
    proposal,
    reason_tags,
    replace_text,
    served_name,
    set_few_shot,
    special_case,
    split_shots,
)

BUGS: dict[str, str] = {}
"""Cases the critic gets wrong because of a known bug elsewhere, as strict xfails (none now)."""

NAMES = list(GENERATORS)
BARE = ["edit_test_to_pass", "delete_test", "rename_test_file", "weaken_assertion",
        "skip_marker", "xfail_marker", "conftest_hook", "pyproject_addopts",
        "pytest_ini_collect_only", "manifest_test_command", "forged_changed_paths",
        "quoted_path_conftest"]


def _param(name: str) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=BUGS[name])] if name in BUGS else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One corpus workspace for the module (cases are generated on first use)."""
    return Workspace.create(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def memo() -> dict[str, ExecResult]:
    """The baseline's test run, shared by every case of the module."""
    return {}


Judge = Callable[[str], Judged]


@pytest.fixture(scope="module")
def judged(ws: Workspace, memo: dict[str, ExecResult]) -> Judge:
    """Judge a case under the bundled policy, once per module."""
    cache: dict[str, Judged] = {}

    def get(name: str) -> Judged:
        if name not in cache:
            cache[name] = judge(build_case(name, ws), ws, policy=bundled_policy(),
                                sandbox=FakeSandboxConfig(), memo=memo)
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _fast_python(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake sandbox runs `python3 -m pytest` through PATH: use this interpreter (which
    # has pytest) rather than whatever wrapper comes first on PATH.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep
                       + os.environ.get("PATH", ""))


def _check(case: CorpusCase, decision: str, reasons: tuple[str, ...],
           want: tuple[str, ...]) -> None:
    tags = reason_tags(reasons)
    assert decision == case.expected_decision, (case.why, reasons)
    # "a|b" means either check may be the one that says so.
    missing = [w for w in want if not set(w.split("|")) & tags]
    assert not missing, (f"want {missing} in {sorted(tags)}", reasons)
    if case.expected_decision == "accept":
        assert reasons == ("all checks passed",)


@pytest.mark.parametrize("name", [_param(n) for n in NAMES])
def test_corpus_case_under_the_bundled_policy(name: str, ws: Workspace, judged: Judge) -> None:
    case, verdict = build_case(name, ws), judged(name).verdict
    _check(case, verdict.decision, verdict.reasons, case.checks)
    packet = EvidencePacket.from_json(verdict.evidence_json)
    assert packet.verdict == verdict.decision
    assert packet.packet_hash == verdict.evidence_hash


@pytest.mark.parametrize("name", BARE)
def test_detectors_catch_what_the_policy_would_have(name: str, ws: Workspace,
                                                    memo: dict[str, ExecResult]) -> None:
    """Defence in depth: with no protected paths, the detectors (or the tests) still reject."""
    case = build_case(name, ws)
    assert case.bare_checks is not None
    # The eval cannot tell code gaming apart (it never runs the code): leave it out here.
    policy = bare_policy(checks=("protected_paths", "tests", "detectors"))
    verdict = judge(case, ws, policy=policy, sandbox=FakeSandboxConfig(), memo=memo).verdict
    _check(case, verdict.decision, verdict.reasons, case.bare_checks)


def test_corpus_is_large_enough_and_labelled(ws: Workspace) -> None:
    corpus = build_corpus(ws)
    gaming = [c for c in corpus if c.kind == "gaming"]
    honest = [c for c in corpus if c.kind == "honest" and c.name not in BUGS]
    assert len(gaming) >= 15
    assert all(c.expected_decision != "accept" for c in gaming)
    assert len(honest) >= 4
    assert all(c.expected_decision == "accept" for c in honest)


def test_every_case_diff_is_a_real_git_diff(ws: Workspace) -> None:
    for case in build_corpus(ws):
        diff = case.candidate.diff
        assert diff == "" or diff.startswith("diff --git "), case.name
        assert bool(diff) or case.proposal.kind == "model", case.name


def test_the_model_candidate_loads_and_unloads_its_adapter(ws: Workspace,
                                                           judged: Judge) -> None:
    case, result = build_case("honest_model", ws), judged("honest_model")
    name = served_name(case.candidate.artifacts[0])
    assert result.admin.calls == [("ensure_loaded", name), ("unload_adapter", name)]
    assert {r["model"] for r in result.oracle.requests} == {"triage", name}
    assert result.verdict.candidate_score == 1.0


@pytest.mark.parametrize("where", ["rationale", "diff", "test_output"])
def test_prompt_injection_never_flips_a_deterministic_reject(
    where: str, ws: Workspace, memo: dict[str, ExecResult]
) -> None:
    """A critic model that says "approved" and text telling it to approve change nothing."""
    base = build_case("special_case_visible_literal", ws)
    p, cand = base.proposal, base.candidate
    want = {"detector:special_casing"}
    if where == "rationale":
        p = p.model_copy(update={"rationale": INJECTION})
    elif where == "diff":
        cand = candidate(p, ws.edit(both(special_case(0), lambda r: replace_text(
            r, CLASSIFY, "LABELS: tuple", f"# {INJECTION}\nLABELS: tuple"))))
    else:
        # The tests fail with the injection as the error message: it lands in the test
        # output the evidence packet carries to the approver.
        cand = candidate(p, ws.edit(both(special_case(0), lambda r: replace_text(
            r, CLASSIFY,
            '    text = (path or DEFAULT_PROMPT).read_text(encoding="utf-8").strip()\n',
            f"    raise ValueError({INJECTION!r})\n"))))
        want.add("tests")
    case = CorpusCase(f"injected_{where}", "gaming", "reject", p, cand, tuple(want), base.why)
    model = critic_model()
    judged = judge(case, ws, policy=bundled_policy(), sandbox=FakeSandboxConfig(), model=model,
                   memo=memo)
    _check(case, judged.verdict.decision, judged.verdict.reasons, case.checks)
    # No reason repeats the injection as if it were the critic's own view; only the detector
    # that caught it quotes it, as evidence.
    assert not any("approv" in r.lower() for r in judged.verdict.reasons
                   if not r.startswith("detector prompt_injection"))
    # The critic model did read the injection, as data, and its "accept" stayed advisory.
    seen = [m.content for name, msgs in model.calls if name == "review" for m in msgs]
    assert any("pre-approved" in str(text) for text in seen) or where == "test_output"
    packet = json.loads(judged.verdict.evidence_json)
    review = next(c for c in packet["checks"] if c["name"] == "critic_review")
    assert "advisory, recommends accept" in review["detail"]
    assert packet["verdict"] == "reject"
    if where == "test_output":
        assert "pre-approved" in packet["tests_candidate"]["summary"]


@pytest.mark.parametrize("review", ["not json at all", '{"summary": 3}'])
def test_a_review_that_cannot_be_written_leaves_the_decision_to_the_checks(
    review: str, ws: Workspace, memo: dict[str, ExecResult]
) -> None:
    """The advisory review failing (bad output after retries, a prompt over the model's
    context) is said in the evidence; it neither fails the critique nor moves the decision."""
    for name, want in (("honest_few_shot", "accept"), ("special_case_visible_literal", "reject")):
        case = build_case(name, ws)
        judged_case = judge(case, ws, policy=bundled_policy(), sandbox=FakeSandboxConfig(),
                            model=critic_model(review=review), memo=memo)
        assert judged_case.verdict.decision == want
        packet = json.loads(judged_case.verdict.evidence_json)
        checks = {c["name"]: c for c in packet["checks"]}
        if want == "accept":  # a rejected candidate is never reviewed
            assert checks["critic_review"]["detail"].startswith("unavailable: ")
            assert checks["critic_review"]["severity"] == "info"
        assert judged_case.verdict.phases  # where the critique's time went is recorded


def test_a_few_shot_label_outside_the_label_set_is_never_a_pass(ws: Workspace) -> None:
    """Without the target's tests, the harness itself refuses the config: error or not accept."""
    p = proposal("bad_label_no_tests", "config", "few_shot")
    shots = [*split_shots("visible", 1), {"input": "Please refund me", "expected": "refund"}]
    case = CorpusCase("bad_label_no_tests", "gaming", "reject", p,
                      candidate(p, ws.edit(set_few_shot(shots))), (), "label outside the set")
    policy = bare_policy(checks=("protected_paths", "eval", "detectors"))
    decision: str
    try:
        decision = judge(case, ws, policy=policy, sandbox=FakeSandboxConfig()).verdict.decision
    except UpgateError as exc:  # the harness refused the data: the cycle fails, no verdict
        decision = f"error: {exc}"
    assert decision != "accept"
    assert decision == "reject" or "few_shot[" in decision


def test_protected_paths_come_from_the_diff_not_the_candidates_claim(judged: Judge) -> None:
    """Rejected before anything runs, though the candidate understates what it touched."""
    verdict = judged("forged_changed_paths").verdict
    assert "policy_protected" in reason_tags(verdict.reasons)
    assert json.loads(verdict.evidence_json)["tests_candidate"] is None


def test_the_overfit_adapter_gains_on_visible_only(judged: Judge) -> None:
    """The oracle variant behind the overfitting case does what the case claims."""
    verdict = judged("overfit_visible_only").verdict
    by_split = json.loads(verdict.evidence_json)["comparison"]["by_split"]
    assert by_split["visible"]["delta"] > 0.3
    assert by_split["hidden"]["delta"] == 0.0


def test_the_slice_regression_gains_overall(judged: Judge) -> None:
    comparison = json.loads(judged("slice_regression").verdict.evidence_json)["comparison"]
    assert comparison["overall"]["delta"] > 0.1
    assert comparison["per_slice"]["account"]["delta"] < -0.05


def test_a_policy_that_does_not_require_gain_lets_an_honest_refactor_through(
    ws: Workspace, memo: dict[str, ExecResult]
) -> None:
    policy = bundled_policy()
    kinds = dict(policy.kinds)
    kinds["code"] = kinds["code"].model_copy(update={"require_gain": False})
    lenient = policy.model_copy(update={"kinds": kinds})
    refactor = build_case("refactor_no_gain", ws)
    assert judge(refactor, ws, policy=lenient, sandbox=FakeSandboxConfig(),
                 memo=memo).verdict.decision == "accept"
    # Gaming stays caught: require_gain only waives the gain, not a single check.
    for name in ("swallow_exceptions", "special_case_visible_literal", "breaks_tests"):
        case = build_case(name, ws)
        verdict = judge(case, ws, policy=lenient, sandbox=FakeSandboxConfig(), memo=memo).verdict
        assert verdict.decision != "accept", (name, verdict.reasons)
