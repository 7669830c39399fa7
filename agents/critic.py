"""The critic: judges a candidate against the baseline with deterministic checks first.

Order matters: the diff is re-derived by trusted git on the host; protected paths, the
recipe's and the code scope are checked before anything runs; then the target's own tests
run as the baseline has them (trusted runs, per-test outcomes, hidden tests) in sandboxes
on baseline and candidate; then the trusted harness runs the eval suite (visible and
hidden splits) on both when the target has one; then the gaming detectors. Every check is
a typed `Check`; the decision is computed from them (`critic_code.decide`). Only then does
the critic model, when one is configured, write a review for the approver, which can add
concerns but never turn a failed check into a pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from upgate.agents.critic_code import (
    TestEvidence,
    check,
    decide,
    file_mode_check,
    from_finding,
    protected_hits,
    reasons,
    run_tests,
    scope_check,
    under_test_check,
)
from upgate.agents.critic_tests import SideRun, TestPlan, read_baseline_files, read_hidden
from upgate.agents.probes import metamorphic_probes, model_probes, summarise
from upgate.agents.recipes.registry import recipe_scope
from upgate.agents.serving import (
    AdapterLoader,
    CandidateServing,
    NoServing,
    VllmCandidateServing,
)
from upgate.agents.structured import call_structured
from upgate.config import TargetManifest
from upgate.errors import AgentOutputError, EvalError
from upgate.evals.codescope import default_scope
from upgate.evals.detectors import Finding, run_detectors
from upgate.evals.evidence import (
    CandidateSummary,
    Check,
    EvidencePacket,
    RunSummary,
    delta_plot_svg,
)
from upgate.evals.gitdiff import rederive
from upgate.evals.harness import CaseResult, ChatChoiceHarness
from upgate.evals.stats import Comparison, compare, non_regression
from upgate.evals.suite import Case, Suite, load_suite
from upgate.policy import Policy
from upgate.prompts import load_prompt
from upgate.records import Candidate, ModelRef, Proposal, Verdict
from upgate.sandboxes.base import Mount, Sandbox
from upgate.timing import Stopwatch, concurrently

log = logging.getLogger(__name__)


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
    """What the critic uses; it alone sees the hidden split and the hidden tests."""

    suite: Suite | None
    """The eval suite; None for a code-only target (the tests are the evidence)."""
    manifest: TargetManifest
    policy: Policy
    target_tree: Path
    sandbox: Callable[[list[Mount]], Sandbox]
    harness: ChatChoiceHarness | None
    serving_url: str
    admin: AdapterLoader | None
    """Kept for callers that pass the vLLM admin API; `serving` wraps it."""
    model: BaseChatModel | None
    """The critic model for the advisory review; None skips it (noted in the evidence)."""
    made_by: ModelRef
    retries: int
    versions: dict[str, Any]
    cycle_id: str
    suite_path: Path | None = None
    """Re-read after the runs: a suite that changed on disk meanwhile blocks the verdict."""
    test_timeout_s: float = 600.0
    hidden_tests: Path | None = None
    """The owner's hidden tests; copied into the sandbox only after the candidate's setup."""
    serving: CandidateServing | None = None
    """Serves candidate adapters under candidate names (default: vLLM through `admin`)."""
    baseline_memo: MutableMapping[str, SideRun] | None = None
    """Baseline test runs kept across candidates of one baseline (keyed by content)."""
    stopwatch: Stopwatch = field(default_factory=Stopwatch)
    """Where the critique's time went (tests, each eval, probes, review), for the record."""

    def candidate_serving(self) -> CandidateServing:
        """The serving interface for candidate adapters."""
        if self.serving is not None:
            return self.serving
        if self.admin is not None:
            return VllmCandidateServing(self.admin, self.manifest.model_alias)
        return NoServing()


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
    suite, harness = ctx.suite, ctx.harness
    if suite is None or harness is None:
        raise EvalError("the eval needs a suite and a harness; configure [target] suite")
    return harness.run(
        suite.cases if cases is None else cases, base_url=ctx.serving_url, model=model,
        system_prompt=prompt, few_shot=shots, labels=suite.labels, scorer=suite.scorer,
        scorer_options=suite.scorer_options,
    )


def critique(proposal: Proposal, candidate: Candidate, ctx: CriticContext) -> Verdict:
    """Judge one candidate; the verdict carries the evidence packet and its hash.

    The candidate's diff is untrusted text: it is re-derived by trusted git on the host
    (`rederive`), and every check below reads git's paths and the canonical diff.
    """
    policy, m = ctx.policy, ctx.manifest
    rule = policy.rule(candidate.kind)
    problems = [f"the policy does not allow {candidate.kind} changes"] if not rule.allowed else []
    if rule.recipes is not None and proposal.recipe not in rule.recipes:
        problems.append(f"the policy does not allow the {proposal.recipe} recipe")
    trusted = rederive(ctx.target_tree, candidate.diff)
    checks: list[Check] = [
        check("policy", not problems, "block", "; ".join(problems) or
              f"{candidate.kind} changes by {proposal.recipe} are allowed ({policy.version_id})",
              "; ".join(problems)),
        check("diff_applies", trusted.applied, "block",
              trusted.error or "git applies the diff to the baseline",
              f"the candidate's diff does not apply: {trusted.error[:200]}")]
    if problems or not trusted.applied:
        return _verdict(ctx, proposal, candidate, checks, None, None, [], None)
    paths = list(trusted.paths)
    hits = protected_hits(paths, policy.all_protected())
    checks.append(check("protected_paths", not hits, "block",
                        ", ".join(hits) or "no protected path touched",
                        "the diff touches protected paths: " + ", ".join(hits)))
    checks.append(file_mode_check(trusted))
    diff_lines = trusted.diff.count("\n")
    checks.append(check("diff_size", diff_lines <= policy.thresholds.max_diff_lines, "block",
                        f"{diff_lines} lines (max {policy.thresholds.max_diff_lines})",
                        f"the diff has {diff_lines} lines, over max_diff_lines"))
    # A recipe may only change what it is for; anything else rides along unreviewed.
    extra: set[str] = set()
    recipe_files = recipe_scope(proposal.recipe)
    if recipe_files is not None:  # None: the recipe (edit, external) may change any file
        allowed = {str(getattr(m, field)) for field in recipe_files if getattr(m, field)}
        extra = set(paths) - allowed
        checks.append(check("recipe_scope", not extra, "block",
                            f"{proposal.recipe} changed {sorted(extra) or 'only its file'}",
                            f"detector recipe_scope: {proposal.recipe} may not change "
                            f"{sorted(extra)}"))
    tree_files = _tree_files(ctx.target_tree)
    scope = default_scope(tree_files, m.code_paths, m.test_paths)
    baseline_files = read_baseline_files(ctx.target_tree, scope)
    if candidate.kind == "code":
        checks.append(scope_check(trusted, scope, baseline_files))
    findings: list[Finding] = []
    if decide(checks) == "reject":
        # Nothing runs; the diff's own detectors still add their evidence.
        if "detectors" in rule.checks:
            findings = _detectors(ctx, proposal, trusted.diff, bool(extra))
            checks += [from_finding(f) for f in findings
                       if f.triggered and f.severity == "block"]
        return _verdict(ctx, proposal, candidate, checks, None, None, findings, None)

    tests: TestEvidence | None = None
    has_eval = "eval" in rule.checks and ctx.suite is not None
    if "tests" in rule.checks:
        plan = TestPlan(manifest=m, scope=scope,
                        baseline_files=baseline_files, baseline_paths=frozenset(tree_files),
                        hidden=read_hidden(ctx.hidden_tests) if ctx.hidden_tests else {},
                        timeout_s=ctx.test_timeout_s)
        with ctx.stopwatch.phase("tests"):
            tests = run_tests(ctx.sandbox, ctx.target_tree, trusted, plan,
                              require_gain=rule.require_gain and not has_eval,
                              memo=ctx.baseline_memo)
        checks += tests.checks

    comparison: Comparison | None = None
    cand_results: list[CaseResult] | None = None
    base_results: list[CaseResult] | None = None
    if "eval" in rule.checks and ctx.suite is None:
        checks.append(check("eval", True, "info", "no eval suite configured: not run"))
    if has_eval and decide(checks) == "accept":
        try:
            comparison, base_results, cand_results = _eval_both(
                ctx, proposal, candidate, trusted.diff, checks)
        except EvalError as exc:
            # The harness refused the candidate's data (a few-shot label outside the label
            # set, say): a verdict, not a crash.
            checks.append(check("eval", False, "block", str(exc),
                                f"detector harness_refused: {exc}"))

    if "detectors" in rule.checks:
        with ctx.stopwatch.phase("detectors"):
            findings = (_detectors(ctx, proposal, trusted.diff, bool(extra))
                        + _late_detectors(ctx, comparison, cand_results, base_results))
        checks += [from_finding(f) for f in findings if f.triggered and f.severity == "block"]
        if candidate.kind == "code":
            checks.append(under_test_check(trusted, scope))
    return _verdict(ctx, proposal, candidate, checks, comparison, tests, findings,
                    cand_results, review=True)


def _tree_files(tree: Path) -> list[str]:
    return [p.relative_to(tree).as_posix() for p in tree.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(tree).parts]


def _detectors(ctx: CriticContext, proposal: Proposal, diff: str,
               out_of_recipe: bool) -> list[Finding]:
    """The detectors that read the (canonical) diff alone."""
    cases: Sequence[Case] = ()
    if ctx.suite is not None:
        # Recipes that copy visible examples into their own data file (few-shot examples,
        # a template's examples) legitimately contain visible inputs; hidden inputs
        # appearing anywhere is always a leak.
        cases = (ctx.suite.split("hidden")
                 if proposal.recipe in ("few_shot", "prompt_variant") and not out_of_recipe
                 else ctx.suite.cases)
    return run_detectors(diff=diff, protected_patterns=ctx.policy.all_protected(),
                         cases=cases)


def _late_detectors(
    ctx: CriticContext, comparison: Comparison | None, cand_results: list[CaseResult] | None,
    base_results: list[CaseResult] | None,
) -> list[Finding]:
    """The detectors that read eval results and the suite after the runs."""
    suite = ctx.suite
    if suite is None:
        return []
    return run_detectors(
        comparison=comparison, candidate_results=cand_results,
        baseline_results=base_results, result_cases=suite.cases,
        suite_hash_before=str(ctx.versions.get("suite_hash") or suite.content_hash),
        suite_hash_after=(load_suite(ctx.suite_path).content_hash if ctx.suite_path
                          else suite.content_hash),
    )


def _eval_both(
    ctx: CriticContext, proposal: Proposal, candidate: Candidate, diff: str,
    checks: list[Check],
) -> tuple[Comparison, list[CaseResult], list[CaseResult]]:
    suite = ctx.suite
    if suite is None:
        raise EvalError("the eval needs a suite; configure [target] suite")
    m = ctx.manifest
    alias = m.model_alias or m.base_model or ""
    base_reader = lambda name: (ctx.target_tree / name).read_text()  # noqa: E731
    b_prompt, b_shots = _prompt_and_shots(base_reader, m)
    watch = ctx.stopwatch
    adapters = [a for a in candidate.artifacts if a.kind == "adapter"]
    c_prompt, c_shots = _prompt_and_shots(_candidate_files(ctx, diff), m)
    visible = suite.split("visible")

    def written_probes() -> list[Case]:
        probes = metamorphic_probes(visible)
        if ctx.model is not None:
            probes += model_probes(ctx.model, visible,
                                   change=f"{proposal.recipe} {proposal.rationale}",
                                   retries=ctx.retries)
        return probes

    with contextlib.ExitStack() as stack:
        with watch.phase("serve_candidate"):
            cand_model = (stack.enter_context(ctx.candidate_serving().serve(adapters[0]))
                          if adapters else alias)
        # The runs do not depend on one another: sent at once, the server batches them
        # (on a CPU server a bigger batch is most of the speed), and the critic model writes
        # its probes meanwhile.
        with watch.phase("evals"):
            baseline, cand, probe_cases = concurrently(
                lambda: _evaluate(ctx, alias, b_prompt, b_shots),
                lambda: _evaluate(ctx, cand_model, c_prompt, c_shots),
                written_probes,
            )
        with watch.phase("probes_eval"):
            base_probes, cand_probes = concurrently(
                lambda: _evaluate(ctx, alias, b_prompt, b_shots, probe_cases),
                lambda: _evaluate(ctx, cand_model, c_prompt, c_shots, probe_cases),
            )
            report = summarise(base_probes, cand_probes,
                               ctx.policy.thresholds.regression_tolerance)
    comparison = compare(baseline, cand, cases=suite.cases)
    t = ctx.policy.thresholds
    o = comparison.overall
    gain = o.delta
    needs_gain = ctx.policy.rule(candidate.kind).require_gain
    checks.append(check("eval_gain", gain > t.min_gain or not needs_gain,
                        "revise" if needs_gain else "info",
                        f"overall {o.baseline_mean:.3f} -> {o.candidate_mean:.3f} "
                        f"(delta {gain:+.3f}, 95% CI {o.ci_low:+.3f}..{o.ci_high:+.3f})",
                        f"no gain: overall delta {gain:+.3f} is not above {t.min_gain}"))
    regressed = non_regression(comparison, t.regression_tolerance)
    checks.append(check("non_regression", not regressed, "revise",
                        ", ".join(regressed) or "no slice regressed beyond tolerance",
                        "regressed slices: " + ", ".join(regressed)))
    checks.append(check("adversarial_probes", report.verdict == "ok", "revise",
                        f"{report.n} probes: baseline {report.baseline_accuracy:.2f}, "
                        f"candidate {report.candidate_accuracy:.2f}; by source {report.by_source}",
                        f"the candidate is less robust on adversarial probes "
                        f"({report.baseline_accuracy:.2f} -> {report.candidate_accuracy:.2f})"))
    return comparison, baseline, cand


def _review(ctx: CriticContext, proposal: Proposal, candidate: Candidate,
            checks: list[Check]) -> Check:
    """The critic model's advisory review as an info check (skipped without a model)."""
    if ctx.model is None:
        return check("critic_review", True, "info",
                     "skipped: no critic model endpoint is configured ([agents.critic])")
    prompt = load_prompt("critic")
    system = prompt.render(
        proposal=proposal.model_dump_json(indent=1)[:3000],
        checks=json.dumps({"checks": [c.model_dump() for c in checks],
                           "failures": reasons(checks)}, indent=1)[:4000],
        diff=candidate.diff[:6000] or "(no diff)",
    )
    try:
        review = call_structured(
            ctx.model,
            [SystemMessage(content=system), HumanMessage(content="Write your review now.")],
            Review, name="review", retries=ctx.retries,
        )
    except AgentOutputError as exc:
        # Advisory: a review that could not be written (no valid output, a prompt over the
        # model's context, an endpoint down) is said in the evidence; the decision rests on
        # the checks, which are all in already, and the cycle goes on.
        log.warning("critic review unavailable: %s", exc)
        return check("critic_review", True, "info",
                     f"unavailable: {str(exc)[:400]}; the decision rests on the checks alone")
    concerns = "; ".join(review.concerns) or "none"
    return check("critic_review", True, "info",
                 f"advisory, recommends {review.recommendation}: {review.summary} "
                 f"Concerns: {concerns}")


def _run_summary(run: SideRun | None) -> RunSummary | None:
    if run is None:
        return None
    parts = [f"visible: {run.visible.summary()}"]
    if run.hidden is not None:
        parts.append(f"hidden: {run.hidden.summary()}")
    if run.extra is not None:
        parts.append(f"added tests: {run.extra.summary()}")
    ok = run.visible.ran and not run.visible.problem and not any(
        o in ("failed", "error") for o in run.visible.outcomes.values())
    if run.visible.output:
        parts.append(run.visible.output)
    return RunSummary(passed=ok, exit_code=run.visible.exit_code, summary="\n".join(parts))


def _verdict(
    ctx: CriticContext, proposal: Proposal, candidate: Candidate, checks: list[Check],
    comparison: Comparison | None, tests: TestEvidence | None, findings: list[Finding],
    cand_results: list[CaseResult] | None, *, review: bool = False,
) -> Verdict:
    """The decision, computed from the typed checks alone, and the evidence packet."""
    decision = decide(checks)
    why = reasons(checks)
    if review:
        with ctx.stopwatch.phase("review"):
            checks = [*checks, _review(ctx, proposal, candidate, checks)]
    packet = EvidencePacket(
        cycle_id=ctx.cycle_id,
        proposal=proposal.model_dump(mode="json"),
        candidate=CandidateSummary(
            kind=candidate.kind, content_hash=candidate.content_hash, diff=candidate.diff,
            artifacts={a.name: a.sha256 for a in candidate.artifacts},
            description=f"{proposal.recipe} {json.dumps(proposal.args, sort_keys=True)}",
        ),
        checks=checks,
        tests_baseline=_run_summary(tests.baseline if tests else None),
        tests_candidate=_run_summary(tests.candidate if tests else None),
        comparison=comparison,
        findings=findings,
        versions=ctx.versions,
        verdict=decision,
        reasons=why,
    )
    return Verdict(
        decision=decision,
        reasons=tuple(why) or ("all checks passed",),
        evidence_hash=packet.packet_hash,
        evidence_json=packet.to_json(),
        evidence_markdown=packet.to_markdown(),
        evidence_svg=delta_plot_svg(comparison),
        visible_case_scores={r.case_id: (r.score if r.score == r.score else 0.0)
                             for r in cand_results or () if r.split == "visible"},
        baseline_score=comparison.overall.baseline_mean if comparison else None,
        candidate_score=comparison.overall.candidate_mean if comparison else None,
        phases=ctx.stopwatch.rounded(),
    )
