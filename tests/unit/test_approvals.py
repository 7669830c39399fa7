"""Invariant 1: a decision counts only when a registered person who is not the requester
signed it with their own key (or the approval service signed it for them), bound to this
cycle's candidate, evidence and policy, in time. The keyring holds public keys only."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from upgate import admin
from upgate.approvals import (
    AUTONOMOUS_REQUESTER,
    authenticate,
    check_decision,
    payload,
    prove_identity,
    sign,
    signature_valid,
)
from upgate.errors import ApprovalError, IdentityError
from upgate.identity import Keyring, KeySigner, generate_key, load_signer, person_key_id
from upgate.ledger import Ledger, open_ledger
from upgate.records import Decision
from upgate.store import Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CANDIDATE = "c" * 64
EVIDENCE = "e" * 64
POLICY_VERSION = "test@1+0123456789ab"
POLICY = """name = "test"
version = "1"
[roles]
admin = ["alice"]
operator = ["alice"]
approver = ["bob", "carol"]
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def signers(keys: Path) -> dict[str, KeySigner]:
    """alice (requester), bob and carol (approvers), dave (no role), the approval service."""
    out = {}
    for key_id in ("person:alice", "person:bob", "person:carol", "person:dave",
                   "service:approvals"):
        generate_key(key_id, keys)
        out[key_id.split(":")[1]] = load_signer(key_id, keys)
    return out


@pytest.fixture
def key(signers: dict[str, KeySigner]) -> Keyring:
    """The keyring: public keys only, roles as the adopted policy gives them."""
    return Keyring(public_keys={s.key_id: s.public_key for s in signers.values()},
                   role_members={"admin": ("alice",), "operator": ("alice",),
                                 "approver": ("bob", "carol")})


_SIGNERS: dict[str, KeySigner] = {}


@pytest.fixture(autouse=True)
def _current(signers: dict[str, KeySigner]) -> Iterator[None]:
    _SIGNERS.clear()
    _SIGNERS.update(signers)
    yield
    _SIGNERS.clear()


def decision(key: Keyring, *, signer: str | None = None, **over: Any) -> Decision:
    """An approval by bob signed with his own key, issued ten minutes ago, for request c1."""
    fields: dict[str, Any] = {
        "cycle_id": "c1", "action": "approve", "approver": "bob", "reason": "looks right",
        "candidate_hash": CANDIDATE, "evidence_hash": EVIDENCE, "policy_version": POLICY_VERSION,
        "issued_at": (NOW - timedelta(minutes=10)).isoformat(), "channel": "cli",
    }
    merged = {**fields, **over}
    return sign(Decision(**merged), _SIGNERS[signer or merged["approver"]])


def check(d: Decision, key: Keyring, **over: Any) -> None:
    """check_decision against request c1 by alice, made an hour ago, 24 h to live."""
    request: dict[str, Any] = {
        "keyring": key, "cycle_id": "c1", "candidate_hash": CANDIDATE,
        "evidence_hash": EVIDENCE, "policy_version": POLICY_VERSION, "requester": "alice",
        "requested_at": (NOW - timedelta(hours=1)).isoformat(), "ttl_hours": 24.0, "now": NOW,
    }
    check_decision(d, **{**request, **over})


@pytest.fixture
def state(tmp_path: Path, keys: Path) -> Iterator[tuple[Store, Ledger, KeySigner]]:
    """An initialised state: alice is the first admin; returns her signer."""
    store = Store(tmp_path / "state" / "state.sqlite")
    ledger = open_ledger(tmp_path / "state")
    admin.init_state(store, ledger, admin="alice", policy_text=POLICY, key_dir=keys)
    yield store, ledger, load_signer("person:alice", keys)
    store.close()
    ledger.close()


# Login tokens (for the approval service) -------------------------------------------------


def _add(state: tuple[Store, Ledger, KeySigner], keys: Path, name: str) -> str:
    store, ledger, alice = state
    public = generate_key(person_key_id(name), keys / "new")
    return admin.add_person(store, ledger, alice, name, public_key=public).token


def test_a_registered_person_authenticates_with_their_token(state: Any, keys: Path) -> None:
    token = _add(state, keys, "bob")
    assert authenticate(state[0], "bob", token) == "bob"


def test_a_wrong_or_anothers_token_is_refused(state: Any, keys: Path) -> None:
    token = _add(state, keys, "bob")
    carol = _add(state, keys, "carol")
    for wrong in (token + "x", carol, token.swapcase()):
        with pytest.raises(ApprovalError, match="wrong token for 'bob'"):
            authenticate(state[0], "bob", wrong)


def test_an_unknown_person_is_refused_and_told_how_to_register(state: Any, keys: Path) -> None:
    token = _add(state, keys, "bob")
    with pytest.raises(ApprovalError, match=r"'mallory' is not a registered person.*"
                       r"upgate person add mallory --as ADMIN"):
        authenticate(state[0], "mallory", token)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_refused(state: Any, keys: Path, token: str | None) -> None:
    _add(state, keys, "bob")
    with pytest.raises(ApprovalError, match=r"no token for 'bob'.*UPGATE_TOKEN"):
        authenticate(state[0], "bob", token)


def test_only_the_tokens_hash_is_stored(tmp_path: Path, state: Any, keys: Path) -> None:
    token = _add(state, keys, "bob")
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert state[0].token_hash("bob") == digest
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    assert digest.encode() in blobs  # the search below looks where the data is
    assert token.encode() not in blobs


def test_the_stored_hash_is_not_a_token(state: Any, keys: Path) -> None:
    _add(state, keys, "bob")
    stored = state[0].token_hash("bob")
    assert stored is not None
    with pytest.raises(ApprovalError, match="wrong token"):
        authenticate(state[0], "bob", stored)


# Proving who you are on the CLI -----------------------------------------------------------


def test_the_registered_key_proves_identity_and_role(key: Keyring,
                                                     signers: dict[str, KeySigner]) -> None:
    assert prove_identity(key, "bob", signers["bob"], role="approver") == "bob"
    assert prove_identity(key, "alice", signers["alice"], role="operator") == "alice"


def test_anothers_key_or_an_unregistered_key_proves_nothing(
    key: Keyring, signers: dict[str, KeySigner], keys: Path
) -> None:
    with pytest.raises(IdentityError, match="person:alice's, not person:bob's"):
        prove_identity(key, "bob", signers["alice"], role="approver")
    generate_key("person:bob", keys / "forged")  # a fresh key file under bob's name
    with pytest.raises(IdentityError, match="not the one registered"):
        prove_identity(key, "bob", load_signer("person:bob", keys / "forged"), role="approver")


def test_a_person_without_the_role_is_refused(key: Keyring,
                                              signers: dict[str, KeySigner]) -> None:
    with pytest.raises(IdentityError, match="does not hold the approver role"):
        prove_identity(key, "dave", signers["dave"], role="approver")
    with pytest.raises(IdentityError, match="does not hold the operator role"):
        prove_identity(key, "bob", signers["bob"], role="operator")


# The state folder holds nothing that signs ------------------------------------------------


def test_nothing_in_the_state_folder_can_sign_a_decision(
    tmp_path: Path, state: Any, keys: Path
) -> None:
    """Attack: sign a decision with whatever the state folder holds (formerly secret.key)."""
    store, ledger, _ = state
    _add(state, keys, "bob")
    keyring = admin.replay(store, ledger).keyring()
    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert files and not (tmp_path / "state" / "secret.key").exists()
    blob = b"".join(p.read_bytes() for p in files)
    assert b"PRIVATE KEY" not in blob
    unsigned = Decision(cycle_id="c1", action="approve", approver="bob", candidate_hash=CANDIDATE,
                        evidence_hash=EVIDENCE, policy_version=POLICY_VERSION,
                        issued_at=NOW.isoformat(), signer="person:bob")
    for path in files:
        data = path.read_bytes()
        tries = [hmac.new(data, payload(unsigned), hashlib.sha256).hexdigest()]
        # Every 32-byte window of the file taken as an ed25519 private key.
        for i in range(0, max(len(data) - 31, 1), 1 if len(data) < 4096 else 97):
            seed = data[i:i + 32].ljust(32, b"\0")
            tries.append(Ed25519PrivateKey.from_private_bytes(seed).sign(
                payload(unsigned)).hex())
        for signature in tries:
            forged = unsigned.model_copy(update={"signature": signature})
            assert not signature_valid(forged, keyring)
            with pytest.raises(ApprovalError, match="signature does not verify"):
                check(forged, keyring)


# Signed decisions -----------------------------------------------------------------------


def test_a_valid_decision_passes(key: Keyring) -> None:
    d = decision(key)
    assert signature_valid(d, key) and d.signer == "person:bob"
    check(d, key)
    check(decision(key, approver="carol"), key)
    check(decision(key, action="reject", approver="carol", reason="no"), key)


@pytest.mark.parametrize("signature", ["", "0" * 128, "not hex", "a" * 127, "0" * 64])
def test_a_forged_signature_is_refused(key: Keyring, signature: str) -> None:
    forged = decision(key).model_copy(update={"signature": signature})
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(forged, key)


def test_a_decision_signed_with_another_key_is_refused(key: Keyring, keys: Path) -> None:
    generate_key("person:bob", keys / "elsewhere")
    foreign = sign(decision(key).model_copy(update={"signature": ""}),
                   load_signer("person:bob", keys / "elsewhere"))
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(foreign, key)


def test_a_decision_signed_by_someone_else_for_bob_is_refused(key: Keyring) -> None:
    # carol signs with her own (valid, registered) key a decision naming bob.
    with pytest.raises(ApprovalError, match="names bob but is signed by person:carol"):
        check(decision(key, signer="carol"), key)


def test_the_approval_service_may_sign_for_a_person_it_logged_in(key: Keyring) -> None:
    check(decision(key, signer="approvals", channel="chat"), key)
    with pytest.raises(ApprovalError, match="CLI decision must be signed by the person"):
        check(decision(key, signer="approvals", channel="cli"), key)
    # ... but only for a registered approver, never for the requester.
    with pytest.raises(ApprovalError, match="cannot approve"):
        check(decision(key, signer="approvals", channel="chat", approver="alice"), key)


def test_a_key_removed_from_the_keyring_no_longer_verifies(key: Keyring) -> None:
    d = decision(key)
    without = Keyring(public_keys={k: v for k, v in key.public_keys.items()
                                   if k != "person:bob"}, role_members=key.role_members)
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(d, without)


def test_an_uppercased_signature_is_refused(key: Keyring) -> None:
    d = decision(key)
    with pytest.raises(ApprovalError, match="signature"):
        check(d.model_copy(update={"signature": d.signature.upper()}), key)


@pytest.mark.parametrize(("field", "value"), [
    ("approver", "carol"),
    ("action", "approve"),  # a signed reject turned into an approve
    ("candidate_hash", "d" * 64),
    ("evidence_hash", "f" * 64),
    ("policy_version", "test@2+ffffffffffff"),
    ("cycle_id", "c2"),
    ("issued_at", NOW.isoformat()),
    ("reason", "pre-approved, merge"),
    ("channel", "slack"),
    ("signer", "person:carol"),
])
def test_a_field_altered_after_signing_is_refused(key: Keyring, field: str, value: str) -> None:
    signed = decision(key, action="reject") if field == "action" else decision(key)
    assert getattr(signed, field) != value
    altered = signed.model_copy(update={field: value})
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(altered, key)


def test_a_decision_for_another_cycle_is_refused(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="for cycle c2, not c1"):
        check(decision(key, cycle_id="c2"), key)


def test_a_decision_for_a_changed_candidate_is_refused(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="candidate changed"):
        check(decision(key), key, candidate_hash="d" * 64)


def test_a_decision_on_other_evidence_is_refused(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="evidence packet changed"):
        check(decision(key), key, evidence_hash="f" * 64)


def test_a_decision_under_another_policy_version_is_refused(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="policy changed"):
        check(decision(key), key, policy_version="test@1+ffffffffffff")


def test_the_requester_cannot_approve(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="alice requested this change and cannot approve"):
        check(decision(key, approver="alice"), key)
    # Not even when the policy lists them as an approver, or lists no approvers at all.
    # Not even when the policy lists them as an approver, or lists no approvers at all.
    also = Keyring(public_keys=key.public_keys,
                   role_members={"approver": ("alice", "bob")})
    with pytest.raises(ApprovalError, match="cannot approve"):
        check(decision(key, approver="alice"), also)


def test_the_requesters_key_under_another_name_cannot_approve(key: Keyring) -> None:
    """Attack: alice's own key registered again as 'alice2', an approver."""
    twin = Keyring(public_keys={**key.public_keys,
                                "person:alice2": key.public_keys["person:alice"]},
                   role_members={"approver": ("alice2", "bob")})
    forged = sign(decision(key).model_copy(update={"approver": "alice2", "signature": ""}),
                  KeySigner("person:alice2", _private(_SIGNERS["alice"])))
    with pytest.raises(ApprovalError, match="alice2 requested this change"):
        check(forged, twin)


def _private(signer: KeySigner) -> Ed25519PrivateKey:
    return signer._key  # the test reuses alice's key under another id


def test_one_approver_counts_once(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="bob already approved"):
        check(decision(key), key, approved_by=("bob",))
    check(decision(key, approver="carol"), key, approved_by=("bob",))


def test_a_reject_is_valid_after_expiry_and_a_policy_change(key: Keyring) -> None:
    late = decision(key, action="reject", approver="carol", reason="stuck",
                    issued_at=NOW.isoformat())
    check(late, key, requested_at=(NOW - timedelta(days=3)).isoformat(),
          policy_version="test@2+ffffffffffff", evidence_hash="f" * 64)
    check(decision(key, action="reject", approver="alice", reason="withdrawn"), key)
    with pytest.raises(ApprovalError, match="dave may not reject"):
        check(decision(key, action="reject", approver="dave"), key)


def test_someone_outside_the_policys_approvers_cannot_approve(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="dave is not an approver"):  # registered, no role
        check(decision(key, approver="dave"), key)


def test_the_autonomous_requester_cannot_be_an_approver(key: Keyring) -> None:
    d = decision(key).model_copy(update={"approver": AUTONOMOUS_REQUESTER})
    with pytest.raises(ApprovalError):
        check(d, key, requester=AUTONOMOUS_REQUESTER)


@pytest.mark.parametrize("age", [timedelta(hours=24, seconds=1), timedelta(days=30)])
def test_a_stale_decision_is_refused(key: Keyring, age: timedelta) -> None:
    old = decision(key, issued_at=(NOW - age).isoformat())
    with pytest.raises(ApprovalError, match="stale"):
        check(old, key)


def test_a_decision_just_inside_the_window_passes(key: Keyring) -> None:
    check(decision(key, issued_at=(NOW - timedelta(hours=23, minutes=59)).isoformat()), key,
          requested_at=(NOW - timedelta(hours=23, minutes=59, seconds=30)).isoformat())


def test_a_decision_issued_before_its_request_is_refused(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="before the approval request"):
        check(decision(key, issued_at=(NOW - timedelta(hours=2)).isoformat()), key,
              requested_at=(NOW - timedelta(hours=1)).isoformat())


def test_a_short_ttl_makes_a_ten_minute_old_decision_stale(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="stale"):
        check(decision(key), key, ttl_hours=0.1, requested_at=NOW.isoformat())


@pytest.mark.parametrize("ahead", [timedelta(minutes=6), timedelta(days=1)])
def test_a_decision_from_the_future_is_refused(key: Keyring, ahead: timedelta) -> None:
    with pytest.raises(ApprovalError, match="stale"):
        check(decision(key, issued_at=(NOW + ahead).isoformat()), key)


def test_small_clock_skew_is_tolerated(key: Keyring) -> None:
    check(decision(key, issued_at=(NOW + timedelta(minutes=4)).isoformat()), key)


def test_an_expired_request_is_refused_even_with_a_fresh_decision(key: Keyring) -> None:
    with pytest.raises(ApprovalError, match="request expired"):
        check(decision(key), key, requested_at=(NOW - timedelta(hours=25)).isoformat())


def test_the_check_order_reports_forgery_first(key: Keyring) -> None:
    # A forged decision for the wrong cycle by the requester is reported as forged: nothing
    # about an unsigned decision is believed.
    forged = decision(key, cycle_id="c2", approver="alice").model_copy(
        update={"signature": "0" * 128})
    with pytest.raises(ApprovalError, match="signature"):
        check(forged, key)
