"""The rollout node of the cycle graph, and the edges around it: a staged deployment goes
through the rollout before the monitor; an aborted one ends the cycle as rolled back."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from upgate.errors import UpgateError
from upgate.graphs.deps import Deps
from upgate.graphs.nodes import _candidate, _record
from upgate.graphs.rollout import plan_for, run_rollout
from upgate.graphs.state import CycleState
from upgate.records import Deployment


def after_deploy(state: CycleState) -> str:
    """A staged deployment goes through the rollout; any other straight to the monitor."""
    if state.get("outcome") in ("failed", "blocked"):
        return "record"
    return "rollout" if (state.get("rollout") or {}).get("staged") else "monitor"


def rollout(state: CycleState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Move traffic to the staged version step by step through the gateway; promote it, or
    abort and restore the stable version (the controller records each step itself, before
    it changes traffic, so a run again after a crash resumes where the ledger says)."""
    deps = runtime.context
    deployment = Deployment.model_validate(state["deployment"])

    def record(node: str, event: str, data: dict[str, Any], key: str) -> None:
        _record(deps, state, node, event, data, key=key)

    try:
        plan = plan_for(deps, state["cycle_id"], deployment)
        result = run_rollout(deps, plan, _candidate(state), record)
    except UpgateError as exc:
        _record(deps, state, "rollout", "failed", {"reason": str(exc)})
        return {"outcome": "failed", "reason": f"rollout: {exc}"}
    done = {**(state.get("rollout") or {}), **result.model_dump(mode="json")}
    if result.status == "aborted":
        return {"rollout": done, "outcome": "rolled_back",
                "reason": "rollout aborted: " + "; ".join(result.breaches)}
    return {"rollout": done, "outcome": "deployed"}


def after_rollout(state: CycleState) -> str:
    """A promoted version goes on to the monitor; an aborted or failed rollout ends."""
    return "monitor" if state.get("outcome") == "deployed" else "record"
