"""The one place the approval service meets the identity and decision contract.

A decision from the page is taken by an authenticated person and signed by the service
(channel "chat"); it must carry the evidence packet hash that was on screen, and a stale
page is refused. Decisions on one cycle are serialised. Roles are read from the policy.
Request changes (not a graph decision) sends the waiting cycle back to implement with the
person's feedback, bounded by the policy's `max_revisions`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from typing import Any, Literal

from upgate.errors import ApprovalError
from upgate.graphs.runner import Progress, Runner
from upgate.graphs.state import CycleState
from upgate.hashing import canonical_json

log = logging.getLogger(__name__)

Action = Literal["approve", "reject", "request_changes"]
ROLES = ("admin", "approver", "operator", "viewer")
SERVICE_KEY_ID = "service:approvals"


class StaleEvidenceError(ApprovalError):
    """The page showed another evidence packet than the one the cycle waits on."""


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _cycle_lock(cycle_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(cycle_id, threading.Lock())


def roles(runner: Runner, person: str) -> set[str]:
    """A person's roles under the adopted policy (every registered person may view)."""
    deps = runner.deps
    out = {"viewer"}
    approvers = deps.policy.approvers
    if not approvers or person in approvers:
        out.add("approver")
    if person == deps.settings.operator:
        out.add("operator")
    return out


def service_sign(runner: Runner, payload: dict[str, Any]) -> tuple[str, str]:
    """The service's signature over a record it writes on someone's behalf: (key id, sig)."""
    mac = hmac.new(runner.deps.secret, canonical_json(payload).encode(), hashlib.sha256)
    return SERVICE_KEY_ID, mac.hexdigest()


def pending_or_refuse(runner: Runner, cycle_id: str, evidence_hash: str) -> dict[str, Any]:
    """The request the cycle waits on, if it is the one the page showed; else refuse."""
    request = runner.pending(cycle_id)
    if request is None:
        raise ApprovalError(f"cycle {cycle_id} is not waiting for a decision; reload the inbox")
    if not hmac.compare_digest(str(request["evidence_hash"]), evidence_hash):
        raise StaleEvidenceError(
            "the evidence packet changed since this page was loaded "
            f"(page {evidence_hash[:12] or '(none)'}, now {str(request['evidence_hash'])[:12]}); "
            "reload the page and review the new packet"
        )
    return request


def decide(runner: Runner, cycle_id: str, *, action: Action, person: str, reason: str,
           evidence_hash: str, progress: Progress | None = None) -> CycleState:
    """Take one decision from the page for an authenticated person; serialised per cycle."""
    with _cycle_lock(cycle_id):
        request = pending_or_refuse(runner, cycle_id, evidence_hash)
        if action == "request_changes":
            return _request_changes(runner, cycle_id, request, person=person,
                                    feedback=reason, progress=progress)
        if action == "reject" and not reason.strip():
            raise ApprovalError("a rejection needs a reason; say why in the reason field")
        return runner.decide(cycle_id, action=action, person=person, reason=reason,
                             channel="chat", progress=progress)


def _request_changes(runner: Runner, cycle_id: str, request: dict[str, Any], *, person: str,
                     feedback: str, progress: Progress | None) -> CycleState:
    deps = runner.deps
    if not feedback.strip():
        raise ApprovalError("request changes needs feedback: say what the coder should change")
    state = runner.state(cycle_id)
    done = int(state.get("revisions", 0))
    limit = deps.policy.thresholds.max_revisions
    if done >= limit:
        raise ApprovalError(
            f"the policy allows {limit} revision(s) and this cycle has had {done}; "
            "approve or reject it"
        )
    record = {"person": person, "feedback": feedback, "channel": "chat",
              "candidate_hash": request["candidate_hash"],
              "evidence_hash": request["evidence_hash"],
              "policy_version": request["policy_version"], "revision": done + 1,
              "issued_at": deps.now().isoformat()}
    signer, signature = service_sign(runner, record)
    deps.ledger.append(cycle_id, "approve", "changes_requested",
                       {**record, "signer": signer, "signature": signature},
                       key=f"{cycle_id}/approve/changes_requested/{done + 1}")
    # As if the revise node had run: the graph goes back to implement with the feedback.
    runner.graph.update_state(
        {"configurable": {"thread_id": cycle_id}},
        {"feedback": f"Requested by {person}: {feedback}", "revisions": done + 1,
         "approval": None, "approval_error": "", "verdict": None, "outcome": "running"},
        as_node="revise",
    )
    log.info("cycle %s sent back to implement by %s", cycle_id, person)
    return runner.resume(cycle_id, progress=progress)
