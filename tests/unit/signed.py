"""Real signed approvals in a ledger, for tests that deploy without running the graph.

Everything that acts on an approval re-verifies it from the ledger (`upgate.verified`), so a
test that stands in for the graph records what the approve and deploy nodes record: a
decision signed by an approver's own key (registered by an admin-signed record), and a
deployment bound to the candidate hash that decision signs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from upgate import admin, approvals
from upgate.identity import generate_key, load_signer, person_key_id
from upgate.ledger import Ledger
from upgate.records import Candidate, Decision, Deployment
from upgate.store import Store
from upgate.verified import candidate_binding

from ..conftest import POLICY


def ensure_people(store: Store, ledger: Ledger, keys: Path) -> None:
    """alice (admin) and the approvers bob and carol, unless the state has people already."""
    if admin.replay(store, ledger).seq:
        return
    admin.init_state(store, ledger, admin="alice", policy_text=POLICY, key_dir=keys)
    alice = load_signer(person_key_id("alice"), keys)
    for name in ("bob", "carol"):
        admin.add_person(store, ledger, alice, name,
                         public_key=generate_key(person_key_id(name), keys))


def signed_decision(store: Store, ledger: Ledger, keys: Path, cycle: str, candidate_hash: str,
                    approver: str = "bob") -> Decision:
    """`approver`'s approval of one cycle's candidate, signed with their own key."""
    policy = admin.replay(store, ledger).policy
    assert policy is not None
    decision = Decision(cycle_id=cycle, action="approve", approver=approver,
                        candidate_hash=candidate_hash, evidence_hash="e" * 64,
                        policy_version=policy.version_id,
                        issued_at=datetime.now(UTC).isoformat())
    return approvals.sign(decision, load_signer(person_key_id(approver), keys))


def record_approval(ledger: Ledger, decision: Decision, *, event: str = "approve") -> None:
    """What the approve node records for a valid decision."""
    ledger.append(decision.cycle_id, "approve", event,
                  {"approver": decision.approver, "decision": decision.model_dump(mode="json")})


def record_deploy(ledger: Ledger, cycle: str, candidate: Candidate,
                  deployment: Deployment) -> None:
    """What the deploy node records."""
    ledger.append(cycle, "deploy", "deployed", {
        "deployment": deployment.model_dump(mode="json"),
        "lineage": {"candidate_hash": candidate.content_hash},
        "binding": candidate_binding(candidate)})
