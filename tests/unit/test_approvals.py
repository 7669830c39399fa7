"""Invariant 1: a decision counts only when an authenticated person who is not the
requester signed it, bound to this cycle's candidate, evidence and policy, in time."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from upgate.approvals import (
    AUTONOMOUS_REQUESTER,
    add_person,
    authenticate,
    check_decision,
    secret_key,
    sign,
    signature_valid,
)
from upgate.errors import ApprovalError
from upgate.records import Decision
from upgate.store import Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CANDIDATE = "c" * 64
EVIDENCE = "e" * 64
POLICY_VERSION = "test@1+0123456789ab"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(tmp_path / "state" / "state.sqlite")
    yield st
    st.close()


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    return secret_key(tmp_path / "state")


def decision(key: bytes, **over: Any) -> Decision:
    """A signed approval by bob, issued ten minutes ago, for request c1."""
    fields: dict[str, Any] = {
        "cycle_id": "c1", "action": "approve", "approver": "bob", "reason": "looks right",
        "candidate_hash": CANDIDATE, "evidence_hash": EVIDENCE, "policy_version": POLICY_VERSION,
        "issued_at": (NOW - timedelta(minutes=10)).isoformat(), "channel": "cli",
    }
    return sign(Decision(**{**fields, **over}), key)


def check(d: Decision, key: bytes, **over: Any) -> None:
    """check_decision against request c1 by alice, made an hour ago, 24 h to live."""
    request: dict[str, Any] = {
        "key": key, "cycle_id": "c1", "candidate_hash": CANDIDATE, "evidence_hash": EVIDENCE,
        "policy_version": POLICY_VERSION, "requester": "alice", "approvers": ("bob", "carol"),
        "requested_at": (NOW - timedelta(hours=1)).isoformat(), "ttl_hours": 24.0, "now": NOW,
    }
    check_decision(d, **{**request, **over})


# People and tokens ---------------------------------------------------------------------


def test_a_registered_person_authenticates_with_their_token(store: Store) -> None:
    token = add_person(store, "bob")
    assert authenticate(store, "bob", token) == "bob"


def test_a_wrong_token_is_refused(store: Store) -> None:
    token = add_person(store, "bob")
    with pytest.raises(ApprovalError, match="wrong token for 'bob'"):
        authenticate(store, "bob", token + "x")
    with pytest.raises(ApprovalError, match="wrong token"):
        authenticate(store, "bob", token.upper() if token != token.upper() else token.lower())


def test_another_persons_token_is_refused(store: Store) -> None:
    add_person(store, "bob")
    alice = add_person(store, "alice")
    with pytest.raises(ApprovalError, match="wrong token for 'bob'"):
        authenticate(store, "bob", alice)


def test_an_unknown_person_is_refused_and_told_how_to_register(store: Store) -> None:
    token = add_person(store, "bob")
    with pytest.raises(ApprovalError, match=r"'mallory' is not a registered person.*"
                       r"upgate person add mallory"):
        authenticate(store, "mallory", token)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_refused(store: Store, token: str | None) -> None:
    add_person(store, "bob")
    with pytest.raises(ApprovalError, match=r"no token for 'bob'.*UPGATE_TOKEN"):
        authenticate(store, "bob", token)


def test_rotating_a_token_voids_the_old_one(store: Store) -> None:
    old = add_person(store, "bob")
    new = add_person(store, "bob")
    assert new != old
    with pytest.raises(ApprovalError, match="wrong token"):
        authenticate(store, "bob", old)
    assert authenticate(store, "bob", new) == "bob"
    assert store.people() == ["bob"]


def test_only_the_tokens_hash_is_stored(tmp_path: Path, store: Store) -> None:
    token = add_person(store, "bob")
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert store.token_hash("bob") == digest
    # The database and its write-ahead log hold the hash and never the token.
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    assert digest.encode() in blobs  # the search below looks where the data is
    assert token.encode() not in blobs


def test_the_stored_hash_is_not_a_token(store: Store) -> None:
    add_person(store, "bob")
    stored = store.token_hash("bob")
    assert stored is not None
    with pytest.raises(ApprovalError, match="wrong token"):
        authenticate(store, "bob", stored)


@pytest.mark.parametrize("name", [
    "bob smith", "upgate:autonomous", AUTONOMOUS_REQUESTER, "upgate:bob", "", " bob", "bob\n",
    "-bob", ".bob", "b" * 65, "bób", "bob/carol", "bob;drop", "../bob",
])
def test_bad_or_reserved_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(ApprovalError, match="invalid name"):
        add_person(store, name)
    assert store.people() == []


@pytest.mark.parametrize("name", ["bob", "Bob.Smith", "b_2-x", "b" * 64])
def test_plain_names_are_accepted(store: Store, name: str) -> None:
    add_person(store, name)
    assert store.people() == [name]


# The signing key ------------------------------------------------------------------------


def test_the_secret_key_is_private_and_stable(tmp_path: Path) -> None:
    first = secret_key(tmp_path / "state")
    assert len(first) == 32
    assert secret_key(tmp_path / "state") == first
    mode = stat.S_IMODE((tmp_path / "state" / "secret.key").stat().st_mode)
    assert mode == 0o600
    assert secret_key(tmp_path / "other") != first


# Signed decisions -----------------------------------------------------------------------


def test_a_valid_decision_passes(key: bytes) -> None:
    d = decision(key)
    assert signature_valid(d, key)
    check(d, key)
    check(decision(key, approver="carol"), key)
    check(decision(key, action="reject", approver="carol", reason="no"), key)


@pytest.mark.parametrize("signature", ["", "0" * 64, "not hex", "a" * 63])
def test_a_forged_signature_is_refused(key: bytes, signature: str) -> None:
    forged = decision(key).model_copy(update={"signature": signature})
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(forged, key)


def test_a_decision_signed_with_another_key_is_refused(key: bytes, tmp_path: Path) -> None:
    foreign = decision(secret_key(tmp_path / "elsewhere"))
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(foreign, key)


def test_an_uppercased_signature_is_refused(key: bytes) -> None:
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
])
def test_a_field_altered_after_signing_is_refused(key: bytes, field: str, value: str) -> None:
    signed = decision(key, action="reject") if field == "action" else decision(key)
    assert getattr(signed, field) != value
    altered = signed.model_copy(update={field: value})
    with pytest.raises(ApprovalError, match="signature does not verify"):
        check(altered, key)


def test_a_decision_for_another_cycle_is_refused(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="for cycle c2, not c1"):
        check(decision(key, cycle_id="c2"), key)


def test_a_decision_for_a_changed_candidate_is_refused(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="candidate changed"):
        check(decision(key), key, candidate_hash="d" * 64)


def test_a_decision_on_other_evidence_is_refused(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="evidence packet changed"):
        check(decision(key), key, evidence_hash="f" * 64)


def test_a_decision_under_another_policy_version_is_refused(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="policy changed"):
        check(decision(key), key, policy_version="test@1+ffffffffffff")


def test_the_requester_cannot_approve(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="alice requested this change and cannot approve"):
        check(decision(key, approver="alice"), key)
    # Not even when the policy lists them as an approver, or lists no approvers at all.
    with pytest.raises(ApprovalError, match="cannot approve"):
        check(decision(key, approver="alice"), key, approvers=("alice", "bob"))
    with pytest.raises(ApprovalError, match="cannot approve"):
        check(decision(key, approver="alice"), key, approvers=())


def test_someone_outside_the_policys_approvers_cannot_approve(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="dave is not an approver"):
        check(decision(key, approver="dave"), key)


def test_the_autonomous_requester_cannot_be_an_approver(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="cannot approve"):
        check(decision(key, approver=AUTONOMOUS_REQUESTER), key,
              requester=AUTONOMOUS_REQUESTER, approvers=())


@pytest.mark.parametrize("age", [timedelta(hours=24, seconds=1), timedelta(days=30)])
def test_a_stale_decision_is_refused(key: bytes, age: timedelta) -> None:
    old = decision(key, issued_at=(NOW - age).isoformat())
    with pytest.raises(ApprovalError, match="stale"):
        check(old, key)


def test_a_decision_just_inside_the_window_passes(key: bytes) -> None:
    check(decision(key, issued_at=(NOW - timedelta(hours=23, minutes=59)).isoformat()), key,
          requested_at=(NOW - timedelta(hours=23, minutes=59, seconds=30)).isoformat())


def test_a_decision_issued_before_its_request_is_refused(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="before the approval request"):
        check(decision(key, issued_at=(NOW - timedelta(hours=2)).isoformat()), key,
              requested_at=(NOW - timedelta(hours=1)).isoformat())


def test_a_short_ttl_makes_a_ten_minute_old_decision_stale(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="stale"):
        check(decision(key), key, ttl_hours=0.1, requested_at=NOW.isoformat())


@pytest.mark.parametrize("ahead", [timedelta(minutes=6), timedelta(days=1)])
def test_a_decision_from_the_future_is_refused(key: bytes, ahead: timedelta) -> None:
    with pytest.raises(ApprovalError, match="stale"):
        check(decision(key, issued_at=(NOW + ahead).isoformat()), key)


def test_small_clock_skew_is_tolerated(key: bytes) -> None:
    check(decision(key, issued_at=(NOW + timedelta(minutes=4)).isoformat()), key)


def test_an_expired_request_is_refused_even_with_a_fresh_decision(key: bytes) -> None:
    with pytest.raises(ApprovalError, match="request expired"):
        check(decision(key), key, requested_at=(NOW - timedelta(hours=25)).isoformat())


def test_the_check_order_reports_forgery_first(key: bytes) -> None:
    # A forged decision for the wrong cycle by the requester is reported as forged: nothing
    # about an unsigned decision is believed.
    forged = decision(key, cycle_id="c2", approver="alice").model_copy(
        update={"signature": "0" * 64})
    with pytest.raises(ApprovalError, match="signature"):
        check(forged, key)
