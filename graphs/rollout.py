"""The cycle's side of a staged rollout: when it applies, and the controller's parts built
from the cycle's dependencies (route table, ledger, suite probe through the gateway, the
LoRA deployer that promotes)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.errors import DeployError
from upgate.gateway.routes import Backend
from upgate.graphs.deps import Deps
from upgate.policy import Policy
from upgate.records import Candidate, Deployment
from upgate.rollout.controller import Recorder, RolloutController, RolloutParts
from upgate.rollout.plan import RolloutPlan, RolloutResult
from upgate.rollout.probe import SuiteProbe
from upgate.target_tree import read_prompting

log = logging.getLogger(__name__)


def rollout_applies(policy: Policy, target: str) -> bool:
    """A served model (LoRA) goes live by staged rollout when the policy turns it on."""
    return policy.rollout.enabled and target == "vllm"


def lora_deployer(deps: Deps) -> LoraAliasDeployer:
    """The served-model deployer, which can stage a version without moving the alias."""
    deployer = deps.deployer("vllm")
    if not isinstance(deployer, LoraAliasDeployer):
        raise DeployError(f"a staged rollout needs the LoRA alias deployer, not "
                          f"{type(deployer).__name__}; set [rollout] enabled = false")
    return deployer


def stage(deps: Deps, candidate: Candidate, deployment_id: str) -> Deployment:
    """Load the candidate under its version name beside the stable version (idempotent)."""
    return lora_deployer(deps).stage(candidate, deployment_id)


def plan_for(deps: Deps, cycle_id: str, deployment: Deployment) -> RolloutPlan:
    """The rollout of a staged deployment: its version against the one it would replace."""
    previous = deployment.previous or {}
    if not deployment.alias or not deployment.version_name or not previous.get("version_name"):
        raise DeployError(
            f"{deployment.deployment_id}: no stable version of the alias is recorded to "
            "compare the new one with; a first deployment cannot be rolled out in steps "
            "(set [rollout] enabled = false for it)")
    url = deps.settings.serving.openai_url
    stable = str(previous["version_name"])
    return RolloutPlan(
        cycle_id=cycle_id, deployment_id=deployment.deployment_id, alias=deployment.alias,
        new=Backend(version=deployment.version_name, base_url=url,
                    model=deployment.version_name, weight=0),
        stable=Backend(version=stable, base_url=url, model=stable, weight=100),
        limits=deps.policy.rollout)


def restore_routes(deps: Deps, state: dict[str, Any], deployment: Deployment) -> None:
    """A rollback of a version that went live by rollout also puts the gateway's traffic
    back on the stable version (idempotent; nothing for any other deployment)."""
    if not (state.get("rollout") or {}).get("staged"):
        return
    plan = plan_for(deps, str(state["cycle_id"]), deployment)
    current = {b.version: b.weight for b in deps.routes.routes(plan.alias)}
    if current != {b.version: b.weight for b in plan.restored()}:
        deps.routes.set_routes(plan.alias, plan.restored(),
                               reason=f"rollback {deployment.deployment_id}")


def suite_probe(deps: Deps, alias: str, cases: int) -> SuiteProbe:
    """The first `cases` visible suite cases, sent through the gateway like the critic's."""
    prompt, shots = read_prompting(deps.base_tree(), deps.manifest)
    return SuiteProbe(
        gateway_url=deps.settings.gateway.openai_url, alias=alias,
        cases=deps.suite.split("visible")[:cases], system_prompt=prompt, few_shot=shots,
        labels=deps.suite.labels, scorer=deps.suite.scorer,
        scorer_options=deps.suite.scorer_options, client_factory=deps.pinned_client)


def run_rollout(deps: Deps, plan: RolloutPlan, candidate: Candidate,
                record: Recorder) -> RolloutResult:
    """Run (or resume) the plan to promotion or abort."""
    probe = suite_probe(deps, plan.alias, plan.limits.suite_cases)

    def promote() -> None:
        lora_deployer(deps).promote(candidate, plan.deployment_id, cycle_id=plan.cycle_id)

    def verify_stable() -> dict[str, Any]:
        served = deps.admin.models() if deps.admin is not None else {}
        smoke = dataclasses.replace(probe, cases=probe.cases[:1]).score(plan.stable.version)
        return {"models_ok": plan.stable.model in served,
                "smoke_ok": smoke.cases > 0 and smoke.errors == 0,
                "detail": {"served": sorted(served), "smoke_cases": smoke.cases,
                           "smoke_errors": smoke.errors}}

    parts = RolloutParts(routes=deps.routes, ledger=deps.ledger, record=record, probe=probe,
                         promote=promote, verify_stable=verify_stable,
                         sleep=deps.rollout_sleep)
    return RolloutController(plan, parts).run()
