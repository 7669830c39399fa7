"""Plain JSON views of a cycle for the API and the page: state, pending request, timeline."""

from __future__ import annotations

from typing import Any

from upgate.graphs.runner import Runner
from upgate.ledger import Entry
from upgate.server.costs import cycle_cost


def entry_view(e: Entry) -> dict[str, Any]:
    """One ledger entry without its (long) lineage."""
    return {"seq": e.seq, "at": e.at, "cycle_id": e.cycle_id, "node": e.node,
            "event": e.event, "hash": e.hash,
            "detail": {k: v for k, v in e.payload.items() if k != "lineage"}}


def cycle_summary(runner: Runner, cycle_id: str) -> dict[str, Any]:
    """A line of the cycle list: outcome and what it is."""
    entries = runner.deps.ledger.entries(cycle_id)
    records = [e for e in entries if e.node == "record"]
    state = runner.state(cycle_id) or {}
    proposal = state.get("proposal") or {}
    return {"cycle_id": cycle_id, "outcome": state.get("outcome", records[-1].event
                                                       if records else "running"),
            "recipe": proposal.get("recipe"), "kind": proposal.get("kind"),
            "requester": state.get("requester"), "started": entries[0].at if entries else "",
            "entries": len(entries)}


def cycle_view(runner: Runner, cycle_id: str) -> dict[str, Any] | None:
    """Everything the page shows about one cycle, or None when there is no such cycle."""
    entries = runner.deps.ledger.entries(cycle_id)
    state = runner.state(cycle_id) or {}
    if not entries and not state:
        return None
    candidate = dict(state.get("candidate") or {})
    verdict = dict(state.get("verdict") or {})
    for key in ("evidence_json", "evidence_markdown", "evidence_svg", "visible_case_scores"):
        verdict.pop(key, None)
    lineage: dict[str, Any] = next((e.payload["lineage"] for e in reversed(entries)
                    if isinstance(e.payload.get("lineage"), dict)), {})
    return {
        "cycle_id": cycle_id,
        "outcome": state.get("outcome", "running"),
        "reason": state.get("reason", ""),
        "requester": state.get("requester", ""),
        "started_at": state.get("started_at", entries[0].at if entries else ""),
        "revisions": state.get("revisions", 0),
        "feedback": state.get("feedback", ""),
        "observation": {k: v for k, v in (state.get("observation") or {}).items()
                        if k in ("visible_score", "per_slice", "baseline", "suite")},
        "proposal": state.get("proposal"),
        "candidate": candidate or None,
        "verdict": verdict or None,
        "approval": state.get("approval"),
        "approval_error": state.get("approval_error", ""),
        "deployment": state.get("deployment"),
        "monitor": state.get("monitor"),
        "pending": runner.pending(cycle_id),
        "lineage": lineage,
        "timeline": [entry_view(e) for e in entries],
        "cost": cycle_cost(entries),
    }
