"""The nodes of one upgrade cycle. Each records its decision in the ledger under an
idempotency key, so a node that runs again after a crash records (and deploys) once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from upgate.admin import replay
from upgate.agents.coder import CoderContext, implement
from upgate.agents.critic import CriticContext, critique
from upgate.agents.proposer import propose
from upgate.agents.recipes.registry import RECIPES
from upgate.approvals import check_decision
from upgate.deploy.registry import target_for
from upgate.errors import AgentOutputError, ApprovalError, UpgateError
from upgate.evals.stats import compare
from upgate.evidence_store import write_packet
from upgate.graphs.deps import Deps
from upgate.graphs.hitl import hitl_request
from upgate.graphs.lineage import lineage, model_ref, versions
from upgate.graphs.rollout import restore_routes, rollout_applies, stage
from upgate.graphs.state import CycleState
from upgate.hashing import sha256_text
from upgate.notify.events import outbox_for
from upgate.records import Candidate, Decision, Deployment, Proposal, Verdict
from upgate.target_tree import read_prompting, resolve_commit
from upgate.verified import Verifier, candidate_binding, unapproved_previous


def _record(deps: Deps, state: CycleState, node: str, event: str, data: dict[str, Any],
            *, attempt: int = 0, key: str | None = None) -> None:
    payload = {"lineage": lineage(deps, state), **data}
    key = key or f"{state['cycle_id']}/{node}/{event}/{attempt}"
    outbox = outbox_for(deps.settings.notify, deps.state_dir, node, event, data, state,
                        ttl_hours=deps.policy.thresholds.approval_ttl_hours)
    deps.ledger.append(state["cycle_id"], node, event, payload, key=key, outbox=outbox)


def baseline_identity(deps: Deps) -> dict[str, str]:
    """What the candidate is compared against: target commit, served version, suite."""
    alias = deps.manifest.model_alias
    active = deps.store.active_version(alias) if alias else None
    return {
        "commit": resolve_commit(deps.settings.target.path, deps.settings.target.base_branch),
        "model_version": active["version_name"] if active else "initial",
        "suite": deps.suite.version_id,
    }


def exhausted_recipes(deps: Deps, baseline: dict[str, str]) -> dict[str, str]:
    """Recipes the critic already rejected against this very baseline, with the reason.

    Trying them again would repeat the same work for the same verdict; the proposer's
    menu leaves them out until the baseline (commit, served model, suite) changes.
    """
    out: dict[str, str] = {}
    for e in deps.ledger.entries():
        p = e.payload
        if (e.node == "record" and e.event == "rejected" and p.get("baseline") == baseline
                and p.get("rejected_by") == "critic" and p.get("recipe")):
            out[str(p["recipe"])] = str(p["reason"])[:200]
    return out


def observe(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Gather evidence: baseline scores on the visible split, failing cases, history."""
    deps = runtime.context
    visible = deps.suite.split("visible")
    alias = deps.manifest.model_alias or deps.manifest.base_model or ""
    evidence: dict[str, Any] = {"target": deps.manifest.name, "suite": deps.suite.version_id,
                                "baseline": baseline_identity(deps)}
    prompt, shots = read_prompting(deps.base_tree(), deps.manifest)
    if alias and visible:
        results = deps.harness.run(
            visible, base_url=deps.settings.serving.openai_url, model=alias,
            system_prompt=prompt, few_shot=shots, labels=deps.suite.labels,
            scorer=deps.suite.scorer, scorer_options=deps.suite.scorer_options,
        )
        comp = compare(results, results, cases=visible)
        evidence["visible_score"] = round(comp.overall.baseline_mean, 3)
        evidence["per_slice"] = {k: round(v.baseline_mean, 3) for k, v in comp.per_slice.items()}
        failing = [r for r in results if r.score != 1.0][:5]
        by_id = {c.id: c for c in visible}
        evidence["failing_examples"] = [
            {"input": by_id[r.case_id].input[:200], "expected": by_id[r.case_id].expected,
             "got": r.output} for r in failing
        ]
        evidence["refs"] = [f"{deps.suite.version_id}#visible"]
    history = [
        {"cycle": e.cycle_id, "outcome": e.payload.get("outcome"),
         "recipe": e.payload.get("recipe"), "reason": str(e.payload.get("reason", ""))[:200]}
        for e in deps.ledger.entries() if e.node == "record"
    ][-5:]
    evidence["history"] = history
    _record(deps, state, "observe", "evidence", {"evidence": evidence})
    return {"observation": evidence, "outcome": "running", "revisions": 0}


def propose_node(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """The proposer agent makes one typed proposal."""
    deps = runtime.context
    offered = tuple(r for r in deps.manifest.recipes if r in RECIPES) or tuple(RECIPES)
    observation = state.get("observation", {})
    exhausted = exhausted_recipes(deps, observation.get("baseline", {}))
    allowed = tuple(r for r in offered if r not in exhausted)
    ref = model_ref(deps, "proposer")
    if not allowed:
        reason = ("every recipe the target offers was already rejected by the critic against "
                  "this baseline: " + "; ".join(f"{k}: {v}" for k, v in exhausted.items()))
        _record(deps, state, "propose", "exhausted", {"reason": reason})
        return {"outcome": "blocked", "reason": reason}
    observation = {**observation, "already_rejected_here": exhausted}
    try:
        proposal = propose(
            deps.proposer, proposal_id=f"{state['cycle_id']}-p1", target=deps.manifest.name,
            recipes=allowed, evidence=observation,
            history=observation.get("history", []), made_by=ref,
            retries=deps.settings.agents.proposer.output_retries,
        )
    except AgentOutputError as exc:
        _record(deps, state, "propose", "failed", {"reason": str(exc), "model": ref.model_dump()})
        return {"outcome": "failed", "reason": f"proposer: {exc}"}
    data = proposal.model_dump(mode="json")
    _record(deps, {**state, "proposal": data}, "propose", "proposal", {"proposal": data})
    return {"proposal": data}


def policy_check(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """The versioned policy decides whether this change may be made and what it needs."""
    deps = runtime.context
    proposal = Proposal.model_validate(state["proposal"])
    rule = deps.policy.rule(proposal.kind)
    problems: list[str] = []
    if not rule.allowed:
        problems.append(f"the policy does not allow {proposal.kind} changes")
    if rule.recipes is not None and proposal.recipe not in rule.recipes:
        problems.append(f"the policy does not allow the {proposal.recipe} recipe")
    if deps.manifest.recipes and proposal.recipe not in deps.manifest.recipes:
        problems.append(f"the target does not offer the {proposal.recipe} recipe")
    decision = {
        "allowed": not problems, "problems": problems, "checks": list(rule.checks),
        "requires_approval": deps.policy.requires_approval(proposal.kind),
        "policy_version": deps.policy.version_id,
    }
    _record(deps, state, "policy_check", "allowed" if not problems else "blocked", decision)
    if problems:
        return {"policy": decision, "outcome": "blocked", "reason": "; ".join(problems)}
    return {"policy": decision}


def implement_node(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """The coder agent builds the candidate in a sandbox."""
    deps = runtime.context
    proposal = Proposal.model_validate(state["proposal"])
    attempt = state.get("revisions", 0)
    ctx = CoderContext(
        target_tree=deps.base_tree(), manifest=deps.manifest,
        visible_cases=[c.model_dump(mode="json") for c in deps.suite.split("visible")],
        sandbox=deps.sandbox, train_sandbox=deps.train_sandbox,
        base_model_path=deps.settings.serving.base_model_path,
        artifacts_dir=deps.state_dir / "artifacts", model=deps.coder,
        made_by=model_ref(deps, "coder"),
        retries=deps.settings.agents.coder.output_retries,
    )
    try:
        candidate = implement(proposal, ctx, feedback=state.get("feedback", ""))
    except (AgentOutputError, UpgateError) as exc:
        _record(deps, state, "implement", "failed", {"reason": str(exc)}, attempt=attempt)
        return {"outcome": "failed", "reason": f"coder: {exc}"}
    for art in candidate.artifacts:
        deps.store.register_artifact(art.sha256, art.kind, art.name, Path(art.path))
    data = {**candidate.model_dump(mode="json"), "content_hash": candidate.content_hash}
    _record(deps, {**state, "candidate": data}, "implement", "candidate",
            {"candidate_hash": candidate.content_hash, "changed_paths": data["changed_paths"],
             "artifacts": data["artifacts"], "diff_sha256": sha256_text(candidate.diff)},
            attempt=attempt)
    return {"candidate": data, "verdict": None}


def _candidate(state: CycleState) -> Candidate:
    data = dict(state["candidate"] or {})
    data.pop("content_hash", None)
    return Candidate.model_validate(data)


def critique_node(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """The critic judges baseline against candidate and writes the evidence packet."""
    deps = runtime.context
    proposal = Proposal.model_validate(state["proposal"])
    candidate = _candidate(state)
    attempt = state.get("revisions", 0)
    ctx = CriticContext(
        suite=deps.suite, manifest=deps.manifest, policy=deps.policy,
        target_tree=deps.base_tree(), sandbox=deps.sandbox, harness=deps.harness,
        serving_url=deps.settings.serving.openai_url, admin=deps.admin, model=deps.critic,
        made_by=model_ref(deps, "critic"),
        retries=deps.settings.agents.critic.output_retries, versions=versions(deps),
        cycle_id=state["cycle_id"], suite_path=deps.settings.target.suite,
        hidden_tests=deps.settings.target.hidden_tests,
    )
    try:
        verdict = critique(proposal, candidate, ctx)
    except (AgentOutputError, UpgateError) as exc:
        _record(deps, state, "critique", "failed", {"reason": str(exc)}, attempt=attempt)
        return {"outcome": "failed", "reason": f"critic: {exc}"}
    write_packet(deps.state_dir, state["cycle_id"], verdict.evidence_hash,
                 verdict.evidence_json, verdict.evidence_markdown, verdict.evidence_svg)
    _record(deps, state, "critique", verdict.decision,
            {"verdict": verdict.decision, "reasons": list(verdict.reasons),
             "evidence_hash": verdict.evidence_hash, "baseline_score": verdict.baseline_score,
             "candidate_score": verdict.candidate_score,
             "critic": model_ref(deps, "critic").model_dump(),
             "phases": verdict.phases}, attempt=attempt)
    update: dict[str, Any] = {"verdict": verdict.model_dump(mode="json")}
    if verdict.decision == "revise":
        update["feedback"] = "\n".join(verdict.reasons)
    return update


def after_critique(state: CycleState, runtime: Runtime[Deps]) -> str:
    """Revise (bounded, only where another attempt can differ) or go to the gate."""
    deps = runtime.context
    if state.get("outcome") == "failed":
        return "record"
    verdict = state.get("verdict") or {}
    proposal = state.get("proposal") or {}
    recipe = RECIPES.get(str(proposal.get("recipe")))
    if (
        verdict.get("decision") == "revise"
        and recipe is not None and recipe.revisable
        and state.get("revisions", 0) < deps.policy.thresholds.max_revisions
    ):
        return "revise"
    return "gate"


def revise(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Count one revision and send the critic's feedback back to the coder."""
    deps = runtime.context
    n = state.get("revisions", 0) + 1
    _record(deps, state, "revise", "requested", {"revision": n,
                                                 "feedback": state.get("feedback", "")},
            attempt=n)
    return {"revisions": n}


def gate(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Thresholds and policy turn the verdict into a rejection or an approval request."""
    deps = runtime.context
    verdict = Verdict.model_validate(state["verdict"])
    proposal = Proposal.model_validate(state["proposal"])
    if verdict.decision != "accept":
        reason = "critic: " + "; ".join(verdict.reasons)
        _record(deps, state, "gate", "rejected", {"reason": reason})
        return {"outcome": "rejected", "reason": reason}
    needs = deps.policy.requires_approval(proposal.kind)
    requested_at = deps.now().isoformat()
    request = {
        "cycle_id": state["cycle_id"],
        "candidate_hash": _candidate(state).content_hash,
        "evidence_hash": verdict.evidence_hash,
        "policy_version": deps.policy.version_id,
        "policy_hash": deps.policy.content_hash,
        "sandbox": deps.settings.sandbox.type,
        "requester": state.get("requester", ""),
        "requested_at": requested_at,
        "kind": proposal.kind,
        "required": needs,
        "approvals_required": deps.policy.approvals_required(proposal.kind) if needs else 0,
        "approvals": [],
    }
    # A request made again (after it expired) is a new ledger record, not the first one.
    attempt = int(sha256_text(requested_at)[:8], 16) if state.get("approval") else 0
    _record(deps, state, "gate", "approval_requested" if needs else "auto_approved", request,
            attempt=attempt)
    if not needs:
        return {"approval": {**request, "action": "approve", "approver": "policy:auto"},
                "outcome": "approved"}
    return {"approval": request, "approval_error": "", "outcome": "awaiting_approval"}


def after_gate(state: CycleState) -> str:
    """Where the gate sends the cycle."""
    if state.get("outcome") == "rejected":
        return "record"
    if state.get("outcome") == "approved":
        return "deploy"
    return "approve"


def approve(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Wait for a human decision (interrupt), then check it is bound to this request.

    The decision is verified with the keyring replayed from the admin-signed records
    (public keys only). With `approvals_required` above one, each valid approval is
    recorded and the cycle waits again until enough distinct approvers have approved.
    """
    deps = runtime.context
    request = dict(state["approval"] or {})
    verdict = Verdict.model_validate(state["verdict"])
    approvals: list[dict[str, Any]] = list(request.get("approvals") or [])
    raw = interrupt({
        **{k: request.get(k) for k in ("cycle_id", "candidate_hash", "evidence_hash",
                                       "policy_version", "policy_hash", "sandbox", "requester",
                                       "requested_at", "kind")},
        "approvals_required": int(request.get("approvals_required") or 1),
        "approved_by": [a["approver"] for a in approvals],
        "summary": list(verdict.reasons),
        "baseline_score": verdict.baseline_score,
        "candidate_score": verdict.candidate_score,
        "error": state.get("approval_error", ""),
        # LangChain's human-in-the-loop request shape, so HITL front ends can show it.
        **hitl_request(request, list(verdict.reasons), verdict.baseline_score,
                       verdict.candidate_score),
    })
    try:
        decision = Decision.model_validate(raw)
        check_decision(
            decision, keyring=replay(deps.store, deps.ledger).keyring(),
            cycle_id=state["cycle_id"], candidate_hash=_candidate(state).content_hash,
            evidence_hash=verdict.evidence_hash, policy_version=deps.policy.version_id,
            requester=state.get("requester", ""), requested_at=request["requested_at"],
            ttl_hours=deps.policy.thresholds.approval_ttl_hours,
            approved_by=[a["approver"] for a in approvals], now=deps.now(),
        )
    except (ApprovalError, ValueError) as exc:
        _record(deps, state, "approve", "refused",
                {"reason": str(exc)}, attempt=int(sha256_text(str(raw))[:8], 16))
        return {"approval_error": str(exc), "outcome": "awaiting_approval"}
    detail = {"approver": decision.approver, "channel": decision.channel,
              "signer": decision.signer, "reason": decision.reason,
              "signature": decision.signature, "policy_hash": deps.policy.content_hash,
              "sandbox": deps.settings.sandbox.type,
              "decision": decision.model_dump(mode="json")}  # re-verifiable from the ledger
    if decision.action == "reject":
        data = {**request, **decision.model_dump(mode="json")}
        _record(deps, {**state, "approval": data}, "approve", "reject", detail)
        return {"approval": data, "outcome": "rejected",
                "reason": f"rejected by {decision.approver}: {decision.reason}"}
    approvals.append({k: detail[k] for k in ("approver", "channel", "signer", "signature")})
    needed = int(request.get("approvals_required") or 1)
    if len(approvals) < needed:
        _record(deps, state, "approve", "approval_recorded",
                {**detail, "approvals": len(approvals), "required": needed},
                attempt=int(sha256_text(decision.signature)[:8], 16))
        return {"approval": {**request, "approvals": approvals}, "approval_error": "",
                "outcome": "awaiting_approval"}
    data = {**request, **decision.model_dump(mode="json"), "approvals": approvals}
    _record(deps, {**state, "approval": data}, "approve", decision.action,
            {**detail, "approved_by": [a["approver"] for a in approvals]})
    return {"approval": data, "approval_error": "", "outcome": "approved"}


def after_approve(state: CycleState) -> str:
    """Deploy on approval, record on rejection, ask again on an invalid decision."""
    outcome = state.get("outcome")
    if outcome == "approved":
        return "deploy"
    if outcome == "rejected":
        return "record"
    return "approve"


def deploy(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Apply the approved candidate; idempotent by deployment id."""
    deps = runtime.context
    candidate = _candidate(state)
    approval = state.get("approval") or {}
    proposal = Proposal.model_validate(state["proposal"])
    if approval.get("candidate_hash") != candidate.content_hash or (
        deps.policy.requires_approval(candidate.kind)
        and approval.get("action") != "approve"
    ):
        # Defence in depth: no path reaches here without an approval for this exact candidate.
        reason = "deploy refused: no approval bound to this candidate"
        _record(deps, state, "deploy", "refused", {"reason": reason})
        return {"outcome": "failed", "reason": reason}
    backing = Verifier(deps.ledger, deps.store).backing(
        state["cycle_id"], candidate.content_hash, candidate.kind,
        requester=(state.get("requester", ""),), current=True)
    if not backing.ok:  # whatever the checkpoint says: the ledger must hold the approval
        reason = f"deploy refused: {backing.why}"
        _record(deps, {**state, "approval": None}, "deploy", "refused", {"reason": reason})
        return {"outcome": "failed", "reason": reason, "approval": None}
    deployment_id = f"{state['cycle_id']}-{candidate.content_hash[:12]}"
    staged = rollout_applies(deps.policy, target_for(candidate))
    try:
        if staged:  # loaded beside the stable version; the rollout node moves traffic
            deployment = stage(deps, candidate, deployment_id)
        else:
            deployment = deps.deployer(target_for(candidate)).deploy(
                candidate, deployment_id, cycle_id=state["cycle_id"],
                message=f"upgate: {proposal.recipe} ({proposal.kind}) from {state['cycle_id']}",
            )
    except UpgateError as exc:
        _record(deps, state, "deploy", "failed", {"reason": str(exc)})
        return {"outcome": "failed", "reason": f"deploy: {exc}"}
    result = deployment.model_dump(mode="json")
    backed = {"approved_by": list(backing.approvers), "binding": candidate_binding(candidate)}
    if staged:
        _record(deps, state, "deploy", "staged", {"deployment": result, **backed})
        return {"deployment": result, "rollout": {"staged": True}, "outcome": "deployed"}
    _record(deps, state, "deploy", "deployed", {"deployment": result, **backed})
    return {"deployment": result, "outcome": "deployed"}


def _live_check(deps: Deps, model: str, expected_scores: dict[str, float],
                base_url: str | None = None) -> dict[str, Any]:
    """The live model must answer as the critic measured the candidate, on the same cases
    (on the serving endpoint, or `base_url`: a blue/green deployment's green server)."""
    cases = [c for c in deps.suite.split("visible") if c.id in expected_scores]
    cases = cases[: deps.monitor_cases]
    prompt, shots = read_prompting(deps.base_tree(), deps.manifest)
    live = deps.harness.run(
        cases, base_url=base_url or deps.settings.serving.openai_url, model=model,
        system_prompt=prompt, few_shot=shots, labels=deps.suite.labels,
        scorer=deps.suite.scorer, scorer_options=deps.suite.scorer_options,
    )
    errors = sum(r.error is not None for r in live)
    score = sum(r.score for r in live if r.score == r.score) / max(len(live), 1)
    expected = sum(expected_scores[c.id] for c in cases) / max(len(cases), 1)
    tolerance = deps.policy.thresholds.monitor_tolerance
    return {"checked": True, "cases": len(live), "errors": errors,
            "live_score": round(score, 3), "critic_score": round(expected, 3),
            "tolerance": tolerance,
            "regressed": not cases or errors > 0 or score < expected - tolerance}


def monitor(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Post-deploy check: the deployment is in place and, for a served model, answers as
    the critic measured; a regression sends the cycle to rollback."""
    deps = runtime.context
    deployment = Deployment.model_validate(state["deployment"])
    verdict = state.get("verdict") or {}
    try:
        health = deps.deployer(deployment.target).verify(deployment)
    except UpgateError as exc:
        _record(deps, state, "monitor", "failed", {"reason": str(exc)})
        return {"outcome": "failed", "reason": f"monitor: {exc}"}
    result: dict[str, Any] = {"checked": False}
    if health.healthy and deployment.alias:
        model, url = deployment.alias, None
        if deployment.target == "bluegreen" and deployment.served:  # green, not the old server
            model, url = str(deployment.version_name), deployment.served.get("base_url")
        result = _live_check(deps, model, verdict.get("visible_case_scores") or {}, url)
    result = {**result, "in_place": health.healthy, "placement": health.detail,
              "regressed": bool(result.get("regressed")) or not health.healthy}
    _record(deps, state, "monitor", "regression" if result["regressed"] else "healthy", result)
    return {"monitor": result}


def after_monitor(state: CycleState) -> str:
    """Roll back on a regression, else record."""
    return "rollback" if (state.get("monitor") or {}).get("regressed") else "record"


def rollback(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Restore the version before (idempotent); say so when there is none to restore."""
    deps = runtime.context
    deployment = Deployment.model_validate(state["deployment"])
    started, t0 = deps.now(), time.monotonic()
    refusal = unapproved_previous(deps.ledger, deps.store, deployment)
    if refusal:
        _record(deps, state, "rollback", "refused", {"reason": refusal, "trigger": "monitor"})
        return {"outcome": "failed", "reason": f"rollback refused: {refusal}"}
    try:
        restore_routes(deps, dict(state), deployment)
        result = deps.deployer(deployment.target).rollback(deployment)
    except UpgateError as exc:
        _record(deps, state, "rollback", "failed", {"reason": str(exc)})
        return {"outcome": "failed", "reason": f"rollback failed: {exc}"}
    previous = deployment.previous or {}
    detail = {"status": result.status, **result.detail, "trigger": "monitor",
              "reason": "post-deploy regression",
              "from_version": deployment.version_name or deployment.commit,
              "to_version": previous.get("version_name") or previous.get("head"),
              "started_at": started.isoformat(),
              "duration_s": round(time.monotonic() - t0, 3)}
    if deployment.alias:
        detail["alias"] = deployment.alias
    if not result.restored:
        _record(deps, state, "rollback", "not_restored", detail)
        return {"outcome": "failed",
                "reason": "post-deploy regression, and nothing to roll back to: "
                          f"{deployment.deployment_id} stays live ({result.status})"}
    _record(deps, state, "rollback", "rolled_back", detail)
    return {"outcome": "rolled_back", "reason": "post-deploy regression"}


def _rejected_by(state: CycleState) -> str | None:
    """Who rejected the cycle, from the typed state (not from the reason's text)."""
    if state.get("outcome") != "rejected":
        return None
    if (state.get("approval") or {}).get("action") == "reject":
        return "approver"
    if (state.get("verdict") or {}).get("decision") in ("revise", "reject"):
        return "critic"
    return "policy"


def record(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """The final ledger entry of the cycle: outcome, reason and full lineage."""
    deps = runtime.context
    proposal = state.get("proposal") or {}
    _record(deps, state, "record", state.get("outcome", "failed"), {
        "outcome": state.get("outcome"), "reason": state.get("reason", ""),
        "recipe": proposal.get("recipe"), "kind": proposal.get("kind"),
        "rejected_by": _rejected_by(state),
        "baseline": (state.get("observation") or {}).get("baseline"),
        "versions": versions(deps), "deployment": state.get("deployment"),
    })
    return {}
