"""Lineage: which models, prompts, policy and suite versions took part in a cycle."""

from __future__ import annotations

from typing import Any

from upgate.graphs.deps import Deps
from upgate.graphs.state import CycleState
from upgate.prompts import load_prompt
from upgate.records import ModelRef


def model_ref(deps: Deps, agent: str) -> ModelRef:
    """The endpoint, model id and prompt version an agent decides with."""
    endpoint = getattr(deps.settings.agents, agent)
    prompt = load_prompt(agent)
    return ModelRef(
        agent=agent, endpoint=endpoint.base_url, model=endpoint.model,
        prompt=prompt.version_id, prompt_hash=prompt.sha256,
    )


def versions(deps: Deps) -> dict[str, Any]:
    """Every version a decision depends on."""
    return {
        "policy": deps.policy.version_id,
        "suite": deps.suite.version_id,
        "suite_hash": deps.suite.content_hash,
        "target": deps.manifest.name,
        "agents": {a: model_ref(deps, a).model_dump() for a in ("proposer", "coder", "critic")},
    }


def lineage(deps: Deps, state: CycleState) -> dict[str, Any]:
    """The lineage fields recorded with every ledger entry of a cycle."""
    proposal = state.get("proposal") or {}
    candidate = state.get("candidate") or {}
    approval = state.get("approval") or {}
    return {
        "cycle_id": state.get("cycle_id"),
        "requester": state.get("requester"),
        "proposal_id": proposal.get("id"),
        "candidate_hash": candidate.get("content_hash"),
        "policy_version": deps.policy.version_id,
        "suite_version": deps.suite.version_id,
        "approver": approval.get("approver"),
    }
