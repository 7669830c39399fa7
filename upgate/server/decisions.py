"""The one place the approval service meets the identity and decision contract.

A decision from the page is taken by an authenticated person and signed with the service's
own key (channel "chat"); it must carry the evidence packet hash that was on screen, and a
stale page is refused. Roles come from the adopted policy through the keyring. Request
changes (not a graph decision) sends the waiting cycle back to implement with the person's
feedback, bounded by the policy's `max_revisions`, and is signed and recorded the same way.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Literal

from upgate.admin import replay
from upgate.errors import ApprovalError
from upgate.graphs.runner import Progress, Runner
from upgate.graphs.state import CycleState
from upgate.hashing import canonical_json
from upgate.identity import Signer

log = logging.getLogger(__name__)

Action = Literal["approve", "reject", "request_changes"]


class StaleEvidenceError(ApprovalError):
    """The page showed another evidence packet than the one the cycle waits on."""


def roles(runner: Runner, person: str) -> set[str]:
    """A person's roles under the adopted policy (none when unregistered or roleless)."""
    deps = runner.deps
    return set(replay(deps.store, deps.ledger).keyring().roles(person))


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
           evidence_hash: str, signer: Signer, progress: Progress | None = None) -> CycleState:
    """Take one decision from the page for an authenticated person, signed by the service.

    The runner serialises decisions on a cycle and checks the evidence hash again under
    its lock; the check here only gives a stale page its own answer (409)."""
    pending_or_refuse(runner, cycle_id, evidence_hash)
    if action == "request_changes":
        return _request_changes(runner, cycle_id, person=person, feedback=reason,
                                evidence_hash=evidence_hash, signer=signer,
                                progress=progress)
    if action == "reject" and not reason.strip():
        raise ApprovalError("a rejection needs a reason; say why in the reason field")
    return runner.decide(cycle_id, action=action, person=person, reason=reason,
                         channel="chat", signer=signer, evidence_hash=evidence_hash,
                         progress=progress)


def _request_changes(runner: Runner, cycle_id: str, *, person: str, feedback: str,
                     evidence_hash: str, signer: Signer,
                     progress: Progress | None) -> CycleState:
    deps = runner.deps
    if not feedback.strip():
        raise ApprovalError("request changes needs feedback: say what the coder should change")
    with runner.cycle_lock(cycle_id):
        request = pending_or_refuse(runner, cycle_id, evidence_hash)
        done = int(runner.state(cycle_id).get("revisions", 0))
        limit = deps.policy.thresholds.max_revisions
        if done >= limit:
            raise ApprovalError(
                f"the policy allows {limit} revision(s) and this cycle has had {done}; "
                "approve or reject it"
            )
        record = {"cycle_id": cycle_id, "person": person, "feedback": feedback,
                  "channel": "chat", "candidate_hash": request["candidate_hash"],
                  "evidence_hash": request["evidence_hash"],
                  "policy_version": request["policy_version"], "revision": done + 1,
                  "issued_at": deps.now().isoformat(), "signer": signer.key_id}
        signature = signer.sign(canonical_json(record).encode())
        deps.ledger.append(cycle_id, "approve", "changes_requested",
                           {**record, "signature": signature},
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
