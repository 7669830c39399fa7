"""The critic: judges a candidate against the baseline with deterministic checks first.

Order matters: protected paths are checked before anything runs; then the target's own
tests run in sandboxes on baseline and candidate; then the trusted harness runs the eval
suite (visible and hidden splits) on both; then the gaming detectors. Only then does the
critic model write a review for the approver, which can add concerns but never turn a
failed check into a pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from upgate.agents.coder import changed_paths
from upgate.agents.probes import metamorphic_probes, model_probes, summarise
from upgate.agents.structured import call_structured
from upgate.config import TargetManifest
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import EvalError
from upgate.evals.detectors import Finding, run_detectors
from upgate.evals.evidence import (
    CandidateSummary,
    Check,
    EvidencePacket,
    RunSummary,
    delta_plot_svg,
)
from upgate.evals.harness import CaseResult, ChatChoiceHarness
from upgate.evals.stats import Comparison, compare, non_regression
from upgate.evals.suite import Case, Suite, load_suite
from upgate.policy import Policy
from upgate.prompts import load_prompt
from upgate.records import Candidate, ModelRef, Proposal, Verdict
from upgate.sandboxes.base import ExecResult, Mount, Sandbox

log = logging.getLogger(__name__)


_RECIPE_SCOPE: dict[str, str | None] = {
    "few_shot": "config_file",
    "prompt_variant": "prompt_file",
    "lora_finetune": None,
}
"""The one manifest file each recipe may change (None: no file at all)."""


class Review(BaseModel):
    """The critic model's review for the approver (advisory)."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(..., min_length=1, max_length=300)
    concerns: list[Annotated[str, Field(max_length=160)]] = Field(
        default_factory=list, max_length=3
    )
    recommendation: Literal["accept", "revise", "reject"]


@dataclass
class CriticContext:
    """What the critic uses; it alone sees the hidden split."""

    suite: Suite
    manifest: TargetManifest
    policy: Policy
    target_tree: Path
    sandbox: Callable[[list[Mount]], Sandbox]
    harness: ChatChoiceHarness
    serving_url: str
    admin: VllmAdmin | None
    model: BaseChatModel
    made_by: ModelRef
    retries: int
    versions: dict[str, Any]
    cycle_id: str
    suite_path: Path | None = None
    """Re-read after the runs: a suite that changed on disk meanwhile blocks the verdict."""
    test_timeout_s: float = 600.0


def _run_tests(ctx: CriticContext, diff: str | None) -> ExecResult:
    with ctx.sandbox([]) as box:
        box.copy_in(ctx.target_tree)
        if diff:
            applied = box.apply_diff(diff)
            if not applied.ok:
                return ExecResult(
                    exit_code=applied.exit_code or 1,
                    stderr="the candidate's diff does not apply: " + applied.summary(1000),
                )
        if ctx.manifest.sandbox_setup:
            setup = box.exec(ctx.manifest.sandbox_setup, timeout_s=ctx.test_timeout_s)
            if not setup.ok:
                return setup
        return box.exec(ctx.manifest.test_command, timeout_s=ctx.test_timeout_s)


def _prompt_and_shots(
    tree_reader: Callable[[str], str], m: TargetManifest
) -> tuple[str, list[Any]]:
    prompt = tree_reader(m.prompt_file) if m.prompt_file else ""
    shots: list[Any] = []
    if m.config_file:
        shots = list(json.loads(tree_reader(m.config_file)).get("few_shot", []))
    return prompt, shots


def _candidate_files(ctx: CriticContext, diff: str) -> Callable[[str], str]:
    """Read files of the candidate tree (data only) from a sandbox that applied the diff."""
    contents: dict[str, str] = {}
    with ctx.sandbox([]) as box:
        box.copy_in(ctx.target_tree)
        if diff:
            box.apply_diff(diff)
        for name in (ctx.manifest.prompt_file, ctx.manifest.config_file):
            if name:
                contents[name] = box.read_file(name)
    return lambda name: contents[name]


def _evaluate(
    ctx: CriticContext, model: str, prompt: str, shots: list[Any],
    cases: Sequence[Case] | None = None,
) -> list[CaseResult]:
    return ctx.harness.run(
        ctx.suite.cases if cases is None else cases, base_url=ctx.serving_url, model=model,
        system_prompt=prompt, few_shot=shots, labels=ctx.suite.labels, scorer=ctx.suite.scorer,
        scorer_options=ctx.suite.scorer_options,
    )


def critique(proposal: Proposal, candidate: Candidate, ctx: CriticContext) -> Verdict:
    """Judge one candidate; the verdict carries the evidence packet and its hash."""
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    policy = ctx.policy
    m = ctx.manifest
    # Paths come from the diff itself, not from what the candidate claims it touched.
    paths = changed_paths(candidate.diff)
    hits = policy.protected_hits(list(paths))
    checks.append({"name": "protected_paths", "passed": not hits,
                   "detail": ", ".join(hits) or "no protected path touched"})
    if hits:
        reasons.append("the diff touches protected paths: " + ", ".join(hits))
    diff_lines = candidate.diff.count("\n")
    too_big = diff_lines > policy.thresholds.max_diff_lines
    checks.append({"name": "diff_size", "passed": not too_big,
                   "detail": f"{diff_lines} lines (max {policy.thresholds.max_diff_lines})"})
    if too_big:
        reasons.append(f"the diff has {diff_lines} lines, over max_diff_lines")
    # A recipe may only change what it is for; anything else rides along unreviewed.
    extra: set[str] = set()
    if proposal.recipe in _RECIPE_SCOPE:
        scope = _RECIPE_SCOPE[proposal.recipe]
        allowed = {str(getattr(m, scope))} if scope else set()
        extra = set(paths) - allowed
        checks.append({"name": "recipe_scope", "passed": not extra,
                       "detail": f"{proposal.recipe} changed {sorted(extra) or 'only its file'}"})
        if extra:
            reasons.append(f"detector recipe_scope: {proposal.recipe} may not change "
                           f"{sorted(extra)}")
    if reasons:
        return _verdict(ctx, proposal, candidate, "reject", reasons, checks, None, None, [],
                        None, None)
    rule = policy.rule(candidate.kind)

    tests_base: ExecResult | None = None
    tests_cand: ExecResult | None = None
    if "tests" in rule.checks:
        tests_base = _run_tests(ctx, None)
        tests_cand = _run_tests(ctx, candidate.diff)
        checks.append({"name": "tests", "passed": tests_cand.ok,
                       "detail": f"baseline exit {tests_base.exit_code}, "
                                 f"candidate exit {tests_cand.exit_code}"})
        if not tests_cand.ok:
            reasons.append("the target's tests fail on the candidate")

    comparison: Comparison | None = None
    cand_results: list[CaseResult] | None = None
    base_results: list[CaseResult] | None = None
    if "eval" in rule.checks and not reasons:
        try:
            comparison, base_results, cand_results = _eval_both(
                ctx, proposal, candidate, reasons, checks
            )
        except EvalError as exc:
            # The harness refused the candidate's data (a few-shot label outside the label
            # set, say): a verdict, not a crash.
            checks.append({"name": "eval", "passed": False, "detail": str(exc)})
            reasons.append(f"detector harness_refused: {exc}")

    findings: list[Finding] = []
    if "detectors" in rule.checks:
        # Recipes that copy visible examples into their own data file (few-shot examples,
        # a template's examples) legitimately contain visible inputs; hidden inputs
        # appearing anywhere is always a leak.
        literal_cases = (ctx.suite.split("hidden")
                         if proposal.recipe in ("few_shot", "prompt_variant") and not extra
                         else ctx.suite.cases)
        findings = run_detectors(
            diff=candidate.diff, protected_patterns=policy.all_protected(),
            cases=literal_cases, comparison=comparison, candidate_results=cand_results,
            baseline_results=base_results, result_cases=ctx.suite.cases,
            suite_hash_before=str(ctx.versions.get("suite_hash") or ctx.suite.content_hash),
            suite_hash_after=(load_suite(ctx.suite_path).content_hash if ctx.suite_path
                              else ctx.suite.content_hash),
        )
        blocks = [f for f in findings if f.triggered and f.severity == "block"]
        for f in blocks:
            reasons.append(f"detector {f.name}: {f.evidence.splitlines()[0][:200]}")
    review = _review(ctx, proposal, candidate, checks, reasons)
    decision: Literal["accept", "revise", "reject"] = "accept"
    if reasons:
        blocked = any(r.startswith("detector ") for r in reasons)
        decision = "reject" if blocked else "revise"
    return _verdict(ctx, proposal, candidate, decision, reasons, checks, comparison, review,
                    findings, tests_base, tests_cand, cand_results)


def _eval_both(
    ctx: CriticContext, proposal: Proposal, candidate: Candidate, reasons: list[str],
    checks: list[dict[str, Any]],
) -> tuple[Comparison, list[CaseResult], list[CaseResult]]:
    m = ctx.manifest
    alias = m.model_alias or m.base_model or ""
    base_reader = lambda name: (ctx.target_tree / name).read_text()  # noqa: E731
    b_prompt, b_shots = _prompt_and_shots(base_reader, m)
    baseline = _evaluate(ctx, alias, b_prompt, b_shots)
    cand_model = alias
    loaded: str | None = None
    adapters = [a for a in candidate.artifacts if a.kind == "adapter"]
    if adapters:
        if ctx.admin is None:
            raise RuntimeError("a model candidate needs the vLLM admin endpoint")
        loaded = f"upgate-candidate-{adapters[0].sha256[:12]}"
        ctx.admin.ensure_loaded(loaded, Path(adapters[0].path),
                                expected_sha256=adapters[0].sha256)
        cand_model = loaded
    c_prompt, c_shots = _prompt_and_shots(_candidate_files(ctx, candidate.diff), m)
    try:
        cand = _evaluate(ctx, cand_model, c_prompt, c_shots)
        visible = ctx.suite.split("visible")
        probes = metamorphic_probes(visible) + model_probes(
            ctx.model, visible, change=f"{proposal.recipe} {proposal.rationale}",
            retries=ctx.retries,
        )
        report = summarise(
            _evaluate(ctx, alias, b_prompt, b_shots, probes),
            _evaluate(ctx, cand_model, c_prompt, c_shots, probes),
            ctx.policy.thresholds.regression_tolerance,
        )
    finally:
        if loaded and ctx.admin is not None:
            ctx.admin.unload_adapter(loaded)
    comparison = compare(baseline, cand, cases=ctx.suite.cases)
    t = ctx.policy.thresholds
    o = comparison.overall
    gain = o.delta
    checks.append({"name": "eval_gain", "passed": gain > t.min_gain,
                   "detail": f"overall {o.baseline_mean:.3f} -> {o.candidate_mean:.3f} "
                             f"(delta {gain:+.3f}, 95% CI {o.ci_low:+.3f}..{o.ci_high:+.3f})"})
    if gain <= t.min_gain and ctx.policy.rule(candidate.kind).require_gain:
        reasons.append(f"no gain: overall delta {gain:+.3f} is not above {t.min_gain}")
    regressed = non_regression(comparison, t.regression_tolerance)
    checks.append({"name": "non_regression", "passed": not regressed,
                   "detail": ", ".join(regressed) or "no slice regressed beyond tolerance"})
    if regressed:
        reasons.append("regressed slices: " + ", ".join(regressed))
    checks.append({"name": "adversarial_probes", "passed": report.verdict == "ok",
                   "detail": f"{report.n} probes: baseline {report.baseline_accuracy:.2f}, "
                             f"candidate {report.candidate_accuracy:.2f}; "
                             f"by source {report.by_source}"})
    if report.verdict != "ok":
        reasons.append(f"the candidate is less robust on adversarial probes "
                       f"({report.baseline_accuracy:.2f} -> {report.candidate_accuracy:.2f})")
    return comparison, baseline, cand


def _review(
    ctx: CriticContext, proposal: Proposal, candidate: Candidate,
    checks: list[dict[str, Any]], reasons: list[str],
) -> Review:
    prompt = load_prompt("critic")
    system = prompt.render(
        proposal=proposal.model_dump_json(indent=1)[:3000],
        checks=json.dumps({"checks": checks, "failures": reasons}, indent=1)[:4000],
        diff=candidate.diff[:6000] or "(no diff)",
    )
    return call_structured(
        ctx.model,
        [SystemMessage(content=system), HumanMessage(content="Write your review now.")],
        Review, name="review", retries=ctx.retries,
    )


def _verdict(
    ctx: CriticContext, proposal: Proposal, candidate: Candidate,
    decision: Literal["accept", "revise", "reject"], reasons: list[str],
    checks: list[dict[str, Any]], comparison: Comparison | None, review: Review | None,
    findings: list[Finding], tests_base: ExecResult | None, tests_cand: ExecResult | None,
    cand_results: list[CaseResult] | None = None,
) -> Verdict:
    if review is not None:
        concerns = "; ".join(review.concerns) or "none"
        checks.append({"name": "critic_review", "passed": True,
                       "detail": f"advisory, recommends {review.recommendation}: "
                                 f"{review.summary} Concerns: {concerns}"})

    def run_summary(r: ExecResult | None) -> RunSummary | None:
        if r is None:
            return None
        return RunSummary(passed=r.ok, exit_code=r.exit_code, summary=r.summary(3000))

    packet = EvidencePacket(
        cycle_id=ctx.cycle_id,
        proposal=proposal.model_dump(mode="json"),
        candidate=CandidateSummary(
            kind=candidate.kind, content_hash=candidate.content_hash, diff=candidate.diff,
            artifacts={a.name: a.sha256 for a in candidate.artifacts},
            description=f"{proposal.recipe} {json.dumps(proposal.args, sort_keys=True)}",
        ),
        checks=[Check.model_validate(c) for c in checks],
        tests_baseline=run_summary(tests_base),
        tests_candidate=run_summary(tests_cand),
        comparison=comparison,
        findings=findings,
        versions=ctx.versions,
        verdict=decision,
        reasons=reasons,
    )
    return Verdict(
        decision=decision,
        reasons=tuple(reasons) or ("all checks passed",),
        evidence_hash=packet.packet_hash,
        evidence_json=packet.to_json(),
        evidence_markdown=packet.to_markdown(),
        evidence_svg=delta_plot_svg(comparison),
        visible_case_scores={r.case_id: (r.score if r.score == r.score else 0.0)
                             for r in cand_results or () if r.split == "visible"},
        baseline_score=comparison.overall.baseline_mean if comparison else None,
        candidate_score=comparison.overall.candidate_mean if comparison else None,
    )
