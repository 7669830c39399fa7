"""LangChain's human-in-the-loop request shape for the approval interrupt.

The approve node's interrupt value keeps upgate's own keys (cycle_id, candidate_hash,
evidence_hash, ...) and adds `action_request`, `config` and `description` as LangGraph's
Agent Inbox (`HumanInterrupt`) expects them, so HITL front ends can list and show it. Their
responses map onto upgate's decisions; the approval service turns them into signed ones.
"""

from __future__ import annotations

from typing import Any

RESPONSES = {"accept": "approve", "edit": "request_changes", "response": "ask",
             "ignore": "reject"}
"""HITL response type -> what upgate does with it."""


def hitl_request(request: dict[str, Any], summary: list[str], baseline: float | None,
                 candidate: float | None) -> dict[str, Any]:
    """The HITL fields for one approval request (plain JSON, checkpoint-safe)."""
    score = ""
    if baseline is not None and candidate is not None:
        score = f" Score {baseline:.2f} -> {candidate:.2f}."
    description = (
        f"Cycle {request['cycle_id']} asks to deploy a {request['kind']} change requested "
        f"by {request['requester']}.{score} Critic: {'; '.join(summary)[:600]}\n\n"
        "accept: approve and deploy; edit: request changes (args.feedback); "
        "response: ask a question about the evidence packet; ignore: reject. "
        "Decisions go through the upgate approval service, which signs them."
    )
    return {
        "action_request": {
            "action": f"deploy_{request['kind']}_change",
            "args": {k: request[k] for k in ("cycle_id", "candidate_hash", "evidence_hash",
                                             "policy_version", "requester", "kind")},
        },
        "config": {"allow_accept": True, "allow_edit": True, "allow_respond": True,
                   "allow_ignore": True},
        "description": description,
        "responses": dict(RESPONSES),
    }
