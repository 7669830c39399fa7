"""Authenticated, signed, bound and expiring human decisions.

A decision is signed with an ed25519 key the runner does not hold: the person's own key on
the CLI (`signer == "person:<approver>"`), or the approval service's key for a decision it
took from a person it logged in (`signer == "service:<name>"`, channel chat or slack). The
signature covers the cycle, the candidate's content hash, the evidence packet's hash and
the policy version, so a decision for another cycle or a changed candidate does not
verify. The approve node checks it all again with the `Keyring` (public keys only).

A person logs in to the approval service with a token; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from upgate.errors import ApprovalError, IdentityError
from upgate.hashing import canonical_json
from upgate.identity import Keyring, Signer, person_key_id
from upgate.records import Decision
from upgate.store import Store

AUTONOMOUS_REQUESTER = "upgate:autonomous"
SKEW = timedelta(minutes=5)


def authenticate(store: Store, name: str, token: str | None) -> str:
    """Check a person's login token (the approval service's login); returns the name."""
    stored = store.token_hash(name)
    if stored is None:
        raise ApprovalError(
            f"{name!r} is not a registered person; an admin adds them with "
            f"`upgate person add {name} --as ADMIN`"
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


def prove_identity(keyring: Keyring, name: str, signer: Signer, *,
                   role: str | tuple[str, ...]) -> str:
    """Check the caller holds `name`'s registered key and the role; returns the name.

    The signer signs a fresh challenge that the keyring verifies, so a key file that is
    not the one registered for `name` (another person's, a stale one) gets nowhere.
    """
    if signer.key_id != person_key_id(name):
        raise IdentityError(f"the key given is {signer.key_id}'s, not person:{name}'s")
    if person_key_id(name) not in keyring.public_keys:
        raise IdentityError(
            f"{name!r} is not a registered person; an admin adds them with "
            f"`upgate person add {name} --as ADMIN`"
        )
    challenge = secrets.token_bytes(32)
    if not keyring.verify(signer.key_id, challenge, signer.sign(challenge)):
        raise IdentityError(
            f"the private key used for {name} is not the one registered for them (re-keyed? "
            "ask an admin for `upgate person rekey`)"
        )
    wanted = (role,) if isinstance(role, str) else role
    if not any(keyring.has_role(name, r) for r in wanted):
        raise IdentityError(
            f"{name} does not hold the {' or '.join(wanted)} role under the adopted policy; "
            "an admin adds "
            f"them under [roles] and adopts it with `upgate policy adopt FILE --as ADMIN`"
        )
    return name


def payload(decision: Decision) -> bytes:
    """The bytes a decision's signature covers (every field but the signature)."""
    return canonical_json(decision.signing_payload()).encode()


def sign(decision: Decision, signer: Signer) -> Decision:
    """The decision signed by `signer` (its key id is part of what is signed)."""
    bound = decision.model_copy(update={"signer": signer.key_id, "signature": ""})
    return bound.model_copy(update={"signature": signer.sign(payload(bound))})


def signature_valid(decision: Decision, keyring: Keyring) -> bool:
    """Whether a registered key made the decision's signature over its fields."""
    return bool(decision.signer) and keyring.verify(decision.signer, payload(decision),
                                                    decision.signature)


def check_signer(decision: Decision, keyring: Keyring) -> None:
    """Raise ApprovalError unless a registered key that may sign for the approver signed it."""
    if not signature_valid(decision, keyring):
        raise ApprovalError(
            "the decision's signature does not verify (forged, altered, or signed by a key "
            "upgate does not know)"
        )
    kind = decision.signer.partition(":")[0]
    if kind == "person" and decision.signer != person_key_id(decision.approver):
        raise ApprovalError(
            f"the decision names {decision.approver} but is signed by {decision.signer}"
        )
    if kind == "service" and decision.channel == "cli":
        raise ApprovalError("a CLI decision must be signed by the person's own key")
    if kind not in ("person", "service"):
        raise ApprovalError(f"unknown signer {decision.signer!r}")
    if person_key_id(decision.approver) not in keyring.public_keys:
        raise ApprovalError(f"{decision.approver} is not a registered person")


def _check_time(decision: Decision, requested_at: str, ttl_hours: float,
                now: datetime) -> None:
    ttl = timedelta(hours=ttl_hours)
    try:
        issued = datetime.fromisoformat(decision.issued_at)
        requested = datetime.fromisoformat(requested_at)
    except ValueError as exc:
        raise ApprovalError(f"unreadable timestamp in the decision: {exc}") from exc
    if issued.tzinfo is None or requested.tzinfo is None:
        raise ApprovalError("decision timestamps must carry a timezone")
    if now - issued > ttl or issued - now > SKEW:
        raise ApprovalError("the decision is stale (issued outside the approval window)")
    if issued < requested - SKEW:
        raise ApprovalError("the decision was issued before the approval request existed")
    if now - requested > ttl:
        raise ApprovalError(
            "the approval request expired; run the critique again with `upgate resume` "
            "(or reject it)"
        )


def check_decision(
    decision: Decision,
    *,
    keyring: Keyring,
    cycle_id: str,
    candidate_hash: str,
    evidence_hash: str,
    policy_version: str,
    requester: str,
    requested_at: str,
    ttl_hours: float,
    approved_by: Sequence[str] = (),
    now: datetime | None = None,
) -> None:
    """Raise ApprovalError unless the decision is valid for exactly this request.

    A rejection needs a valid signature by someone entitled to decide, and nothing else:
    reject is always possible, even after the request expired or the policy changed.
    """
    now = now or datetime.now(UTC)
    check_signer(decision, keyring)
    if decision.cycle_id != cycle_id:
        raise ApprovalError(f"the decision is for cycle {decision.cycle_id}, not {cycle_id}")
    who = decision.approver
    if decision.action == "reject":
        if who != requester and not (keyring.has_role(who, "approver")
                                     or keyring.has_role(who, "admin")):
            raise ApprovalError(f"{who} may not reject: not an approver, admin or the requester")
        if datetime.fromisoformat(decision.issued_at) - now > SKEW:
            raise ApprovalError("the decision is stale (issued outside the approval window)")
        return
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
    requester_key = keyring.public_keys.get(person_key_id(requester))
    if who == requester or (requester_key is not None
                            and keyring.public_keys[person_key_id(who)] == requester_key):
        raise ApprovalError(f"{who} requested this change and cannot approve it; "
                            "another person must")
    if not keyring.has_role(who, "approver"):
        approvers = keyring.role_members.get("approver", ())
        raise ApprovalError(
            f"{who} is not an approver under the policy (approvers: "
            f"{', '.join(approvers) or 'none'})"
        )
    if who in approved_by:
        raise ApprovalError(f"{who} already approved this change; another approver must")
    _check_time(decision, requested_at, ttl_hours, now)
