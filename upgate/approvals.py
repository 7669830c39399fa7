"""Authenticated, signed, bound and expiring human decisions.

A person authenticates with a token (only its SHA-256 is stored). A decision is signed with
the state folder's secret key (HMAC-SHA256) over the cycle, the candidate's content hash, the
evidence packet's hash and the policy version, so a decision for another cycle or for a
changed candidate does not verify, and no one without the key can forge one. The approve
node checks it all again before it lets the graph go on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from upgate.errors import ApprovalError
from upgate.hashing import canonical_json
from upgate.records import Decision
from upgate.store import Store

AUTONOMOUS_REQUESTER = "upgate:autonomous"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def secret_key(state_dir: Path) -> bytes:
    """The state folder's signing key, created (mode 0600) on first use."""
    path = state_dir / "secret.key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def add_person(store: Store, name: str) -> str:
    """Register a person (or rotate their token); returns the new token, shown once."""
    if not _NAME.fullmatch(name):
        raise ApprovalError(
            f"invalid name {name!r}: use letters, digits, '-', '_' or '.'; 'upgate:' is reserved"
        )
    token = secrets.token_urlsafe(24)
    store.set_person(name, hashlib.sha256(token.encode()).hexdigest())
    return token


def authenticate(store: Store, name: str, token: str | None) -> str:
    """Check a person's token; returns the name or raises saying what to do."""
    stored = store.token_hash(name)
    if stored is None:
        raise ApprovalError(
            f"{name!r} is not a registered person; an admin adds them with "
            f"`upgate person add {name}`"
        )
    if not token:
        raise ApprovalError(
            f"no token for {name!r}: pass --token or set UPGATE_TOKEN to the token "
            "`upgate person add` printed"
        )
    given = hashlib.sha256(token.encode()).hexdigest()
    if not hmac.compare_digest(given, stored):
        raise ApprovalError(f"wrong token for {name!r}")
    return name


def sign(decision: Decision, key: bytes) -> Decision:
    """The decision with its signature."""
    mac = hmac.new(key, canonical_json(decision.signing_payload()).encode(), hashlib.sha256)
    return decision.model_copy(update={"signature": mac.hexdigest()})


def signature_valid(decision: Decision, key: bytes) -> bool:
    """Whether a decision's signature matches its fields."""
    expected = sign(decision, key).signature
    return hmac.compare_digest(expected, decision.signature)


def check_decision(
    decision: Decision,
    *,
    key: bytes,
    cycle_id: str,
    candidate_hash: str,
    evidence_hash: str,
    policy_version: str,
    requester: str,
    approvers: tuple[str, ...],
    requested_at: str,
    ttl_hours: float,
    now: datetime | None = None,
) -> None:
    """Raise ApprovalError unless the decision is valid for exactly this request."""
    now = now or datetime.now(UTC)
    if not signature_valid(decision, key):
        raise ApprovalError("the decision's signature does not verify (forged or altered)")
    if decision.cycle_id != cycle_id:
        raise ApprovalError(f"the decision is for cycle {decision.cycle_id}, not {cycle_id}")
    if decision.candidate_hash != candidate_hash:
        raise ApprovalError(
            "the candidate changed after it was reviewed: the decision binds to "
            f"{decision.candidate_hash[:12]}, the candidate is {candidate_hash[:12]}"
        )
    if decision.evidence_hash != evidence_hash:
        raise ApprovalError("the evidence packet changed since the decision was made")
    if decision.policy_version != policy_version:
        raise ApprovalError(
            f"the policy changed ({decision.policy_version} -> {policy_version}); review again"
        )
    if decision.action == "approve":
        if decision.approver == requester:
            raise ApprovalError(
                f"{decision.approver} requested this change and cannot approve it; "
                "another person must"
            )
        if approvers and decision.approver not in approvers:
            raise ApprovalError(
                f"{decision.approver} is not an approver under the policy "
                f"(approvers: {', '.join(approvers)})"
            )
    ttl = timedelta(hours=ttl_hours)
    skew = timedelta(minutes=5)
    try:
        issued = datetime.fromisoformat(decision.issued_at)
        requested = datetime.fromisoformat(requested_at)
    except ValueError as exc:
        raise ApprovalError(f"unreadable timestamp in the decision: {exc}") from exc
    if issued.tzinfo is None or requested.tzinfo is None:
        raise ApprovalError("decision timestamps must carry a timezone")
    if now - issued > ttl or issued - now > skew:
        raise ApprovalError("the decision is stale (issued outside the approval window)")
    if issued < requested - skew:
        raise ApprovalError("the decision was issued before the approval request existed")
    if now - requested > ttl:
        raise ApprovalError(
            "the approval request expired; run the critique again with `upgate resume`"
        )
