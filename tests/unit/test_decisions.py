"""Decisions that try to get through anyway (issue 7): self-approval under another name,
a forged keyring, a lax policy from the environment, the fake sandbox outside tests, a
request left stuck by expiry or a policy edit, and two approvals at the same moment. Each
test tries the attack on the whole graph (scripted models, fake sandbox, real SQLite and
git) and checks it does not get through."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from upgate import admin, guard
from upgate.app import build_deps
from upgate.config import load_settings
from upgate.errors import ApprovalError, ConfigError, IdentityError, PolicyError
from upgate.graphs.runner import Runner
from upgate.hashing import canonical_json
from upgate.identity import generate_key, load_signer
from upgate.ledger import open_ledger
from upgate.store import Store

from ..conftest import REPO, adopt, decide
from .test_cycle import REVIEW, branches, draft, make_runner


def waiting(workdir: Path) -> tuple[Runner, str]:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"
    return runner, state["cycle_id"]


def events(runner: Runner, cycle: str) -> list[tuple[str, str]]:
    return [(e.node, e.event) for e in runner.deps.ledger.entries(cycle)]


def later(runner: Runner, hours: float) -> None:
    """Move the runner's clock forward."""
    start = datetime.now(runner.deps.now().tzinfo)
    offset = timedelta(hours=hours)
    runner.deps.now = lambda: datetime.now(start.tzinfo) + offset


# Self-approval under another name -----------------------------------------------------


def test_the_requester_cannot_register_her_own_key_again_under_another_name(
    workdir: Path,
) -> None:
    """Attack: alice (an admin who requests) registers her key as 'alice2' or 'Alice'."""
    store, ledger = Store(workdir / "state" / "state.sqlite"), open_ledger(workdir / "state")
    alice = load_signer("person:alice", workdir / "keys")
    try:
        with pytest.raises(IdentityError, match="already person:alice's; one person, one key"):
            admin.add_person(store, ledger, alice, "alice2", public_key=alice.public_key)
        fresh = generate_key("person:x", workdir / "other")
        with pytest.raises(IdentityError, match="'alice' is already registered"):
            admin.add_person(store, ledger, alice, "Alice", public_key=fresh)
        assert "alice2" not in admin.replay(store, ledger).people
    finally:
        store.close()
        ledger.close()


def test_a_decision_signed_by_the_requester_in_an_approvers_name_is_refused(
    workdir: Path,
) -> None:
    runner, cycle = waiting(workdir)
    alice = load_signer("person:alice", workdir / "keys")
    request = runner.pending(cycle) or {}
    with pytest.raises(ApprovalError, match="names bob but is signed by person:alice"):
        runner.decide(cycle, action="approve", person="bob", signer=alice,
                      evidence_hash=request["evidence_hash"])
    assert runner.pending(cycle) is not None and branches(workdir / "target") == ["main"]


def test_a_key_pasted_into_the_people_table_signs_nothing(workdir: Path) -> None:
    """Attack: write your own public key into the state's people table as bob's."""
    runner, cycle = waiting(workdir)
    mallory = workdir / "mallory"
    public = generate_key("person:bob", mallory)
    runner.deps.store.execute("UPDATE people SET public_key = ? WHERE name = 'bob'", (public,))
    request = runner.pending(cycle) or {}
    with pytest.raises(ApprovalError, match="signature does not verify"):
        runner.decide(cycle, action="approve", person="bob",
                      signer=load_signer("person:bob", mallory),
                      evidence_hash=request["evidence_hash"])
    assert branches(workdir / "target") == ["main"]


def test_a_forged_admin_record_in_the_state_stops_everything(workdir: Path) -> None:
    """Attack: append an identity record signed with your own key, claiming to be alice."""
    store, ledger = Store(workdir / "state" / "state.sqlite"), open_ledger(workdir / "state")
    try:
        ids = admin.replay(store, ledger)
        generate_key("person:alice", workdir / "mallory")
        forged = load_signer("person:alice", workdir / "mallory")
        public = generate_key("person:mallory", workdir / "mallory")
        with pytest.raises(IdentityError, match="signature does not verify"):
            admin._commit(store, ledger, ids, forged, "person.add",
                          {"name": "mallory", "public_key": public, "token_sha256": ""})
        # Written straight into the table instead, it makes the state refuse to load.
        record = canonical_json({"by": "person:alice", "name": "mallory", "op": "person.add",
                                 "prev": ids.head, "public_key": public, "seq": ids.seq + 1})
        store.append_identity(record, "person:alice", forged.sign(record.encode()),
                              ids.seq + 1)
    finally:
        store.close()
        ledger.close()
    with pytest.raises(IdentityError, match="signature does not verify"):
        make_runner(workdir, {})


def test_an_identity_record_missing_from_the_ledger_is_refused(workdir: Path) -> None:
    store, ledger = Store(workdir / "state" / "state.sqlite"), open_ledger(workdir / "state")
    try:
        alice = load_signer("person:alice", workdir / "keys")
        ids = admin.replay(store, ledger)
        public = generate_key("person:erin", workdir / "keys")
        record = canonical_json({"by": "person:alice", "name": "erin", "op": "person.add",
                                 "prev": ids.head, "public_key": public, "seq": ids.seq + 1,
                                 "token_sha256": ""})
        store.append_identity(record, "person:alice", alice.sign(record.encode()), ids.seq + 1)
        with pytest.raises(IdentityError, match="not in the ledger as signed"):
            admin.replay(store, ledger)
    finally:
        store.close()
        ledger.close()


# The policy in force -----------------------------------------------------------------------

LAX = '''name = "lax"
version = "1"
[roles]
admin = ["alice"]
operator = ["alice"]
approver = ["alice", "bob"]
[kinds.config]
allowed = true
approval = "auto"
'''


def test_a_lax_policy_from_the_environment_is_refused_for_cycles(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: UPGATE_POLICY=lax.toml with approval = "auto"."""
    (workdir / "lax.toml").write_text(LAX)
    monkeypatch.setenv("UPGATE_POLICY", str(workdir / "lax.toml"))
    with pytest.raises(PolicyError, match=r"is not the adopted policy.*upgate policy adopt"):
        make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    # Deciding still works (under the adopted policy), and only an admin adopts.
    settings = load_settings(workdir / "upgate.toml")
    assert build_deps(settings, for_cycles=False,
                      models=dict.fromkeys(("proposer", "coder", "critic"))  # type: ignore[arg-type]
                      ).policy.name == "test"
    store, ledger = Store(workdir / "state" / "state.sqlite"), open_ledger(workdir / "state")
    try:
        with pytest.raises(IdentityError, match="person:bob, who is not an admin"):
            admin.adopt_policy(store, ledger, load_signer("person:bob", workdir / "keys"), LAX)
    finally:
        store.close()
        ledger.close()


def test_a_one_comment_policy_edit_needs_adoption_and_leaves_nothing_stuck(
    workdir: Path,
) -> None:
    runner, cycle = waiting(workdir)
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text() + "\n# one comment\n")
    with pytest.raises(PolicyError, match="not the adopted policy"):
        make_runner(workdir, {})
    adopt(workdir)
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    with pytest.raises(ApprovalError, match="policy changed"):
        decide(runner, cycle, "approve", "bob")
    assert cycle in runner.unfinished()
    state = runner.resume(cycle)  # a fresh critique and a request under the new policy
    assert state["outcome"] == "awaiting_approval"
    assert (runner.pending(cycle) or {})["policy_version"] == runner.deps.policy.version_id
    assert ("approve", "expired") in events(runner, cycle)
    assert decide(runner, cycle, "approve", "bob")["outcome"] == "deployed"


def test_every_decision_records_the_policy_hash_and_the_sandbox(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    decide(runner, cycle, "approve", "bob")
    entries = {(e.node, e.event): e.payload for e in runner.deps.ledger.entries(cycle)}
    for key in (("start", "started"), ("gate", "approval_requested"), ("approve", "approve")):
        assert entries[key]["policy_hash"] == runner.deps.policy.content_hash
        assert entries[key]["sandbox"] == "fake"
    assert entries[("approve", "approve")]["signer"] == "person:bob"


# The fake sandbox ---------------------------------------------------------------------------


def test_the_fake_sandbox_is_refused_without_the_test_switch(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "ALLOW_FAKE_SANDBOX", False)
    with pytest.raises(ConfigError, match="for upgate's own tests only"):
        make_runner(workdir, {})


def test_upgate_sandbox_type_fake_is_refused_in_a_real_process(workdir: Path) -> None:
    """Attack: `UPGATE_SANDBOX__TYPE=fake upgate run` outside the test suite."""
    config = workdir / "upgate.toml"
    config.write_text(config.read_text().replace('type = "fake"', 'type = "docker"'))
    adopt(workdir)
    env = {**os.environ, "UPGATE_SANDBOX__TYPE": "fake", "UPGATE_KEY_DIR": str(workdir / "keys"),
           "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "upgate.cli", "run", "--as", "alice",
                           "--config", str(config)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "for upgate's own tests only" in " ".join(proc.stderr.split())
    ledger = open_ledger(workdir / "state")
    try:
        assert [c for c in ledger.cycles() if c != "admin"] == []  # no cycle started
    finally:
        ledger.close()


# Expired and stuck requests ---------------------------------------------------------------


def test_an_expired_request_can_be_rejected(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    later(runner, 25)
    with pytest.raises(ApprovalError, match="request expired"):
        decide(runner, cycle, "approve", "bob")
    done = decide(runner, cycle, "reject", "carol", "too old")
    assert done["outcome"] == "rejected" and branches(workdir / "target") == ["main"]


def test_an_expired_request_goes_back_for_a_fresh_critique_on_resume(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    first = runner.pending(cycle) or {}
    later(runner, 25)
    assert cycle in runner.unfinished()
    state = runner.resume(cycle)
    again = runner.pending(cycle) or {}
    assert state["outcome"] == "awaiting_approval"
    assert again["requested_at"] > first["requested_at"]
    kinds = events(runner, cycle)
    assert ("approve", "expired") in kinds
    assert sum(k == ("gate", "approval_requested") for k in kinds) == 2
    assert decide(runner, cycle, "approve", "bob")["outcome"] == "deployed"


def test_batch_does_not_pause_for_good_on_an_expired_request(workdir: Path) -> None:
    runner, _ = waiting(workdir)
    later(runner, 25)
    report = runner.batch("alice", max_cycles=1)
    assert report.cycles and report.stopped_because.startswith(("done", "paused: 1"))


def test_a_waiting_cycle_can_be_cancelled(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    with pytest.raises(ApprovalError, match="say why"):
        runner.cancel(cycle, person="alice", reason=" ")
    state = runner.cancel(cycle, person="alice", reason="superseded")
    assert state["outcome"] == "cancelled"
    assert runner.pending(cycle) is None and cycle not in runner.unfinished()
    assert runner.resume(cycle)["outcome"] == "cancelled"
    with pytest.raises(ApprovalError, match="not waiting"):
        decide(runner, cycle, "approve", "bob", evidence_hash="e" * 64)
    assert events(runner, cycle)[-2:] == [("record", "cancelled"), ("approve", "late")]
    with pytest.raises(ApprovalError, match="already ended"):
        runner.cancel(cycle, person="alice", reason="again")
    assert branches(workdir / "target") == ["main"]


def test_a_decision_on_other_evidence_than_the_request_is_refused(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    with pytest.raises(ApprovalError, match="not the packet this request is bound to"):
        decide(runner, cycle, "approve", "bob", evidence_hash="f" * 64)
    assert runner.pending(cycle) is not None and branches(workdir / "target") == ["main"]


# Two approvers, and two approvals at the same moment ------------------------------------


def _require_two(workdir: Path) -> None:
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text().replace(
        "[kinds.config]\nallowed = true", "[kinds.config]\nallowed = true\napprovals_required = 2"))
    adopt(workdir)


def test_two_approvers_required_the_cycle_waits_after_the_first(workdir: Path) -> None:
    _require_two(workdir)
    runner, cycle = waiting(workdir)
    after_bob = decide(runner, cycle, "approve", "bob")
    assert after_bob["outcome"] == "awaiting_approval" and branches(workdir / "target") == ["main"]
    assert (runner.pending(cycle) or {})["approved_by"] == ["bob"]
    assert ("approve", "approval_recorded") in events(runner, cycle)
    with pytest.raises(ApprovalError, match="bob already approved"):
        decide(runner, cycle, "approve", "bob")
    with pytest.raises(ApprovalError, match="alice requested this change"):
        decide(runner, cycle, "approve", "alice")
    done = decide(runner, cycle, "approve", "carol")
    assert done["outcome"] == "deployed"
    final = [e for e in runner.deps.ledger.entries(cycle) if e.event == "approve"][-1]
    assert final.payload["approved_by"] == ["bob", "carol"]


def _race(workdir: Path) -> tuple[list[Any], str, Runner]:
    _, cycle = waiting(workdir)
    runners = [make_runner(workdir, {"proposal": draft(), "review": REVIEW})[0]
               for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def approve(i: int, person: str) -> None:
        barrier.wait()
        try:
            results[i] = decide(runners[i], cycle, "approve", person)["outcome"]
        except ApprovalError as exc:
            results[i] = exc

    threads = [threading.Thread(target=approve, args=(i, p))
               for i, p in enumerate(("bob", "carol"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, cycle, runners[0]


def test_two_approvals_at_the_same_moment_one_resumes_both_are_recorded(workdir: Path) -> None:
    results, cycle, runner = _race(workdir)
    assert sorted(isinstance(r, ApprovalError) for r in results) == [False, True], results
    won = next(r for r in results if not isinstance(r, ApprovalError))
    lost = next(r for r in results if isinstance(r, ApprovalError))
    assert won == "deployed" and "not waiting" in str(lost)
    kinds = events(runner, cycle)
    assert kinds.count(("approve", "approve")) == 1
    assert kinds.count(("approve", "late")) == 1
    assert kinds.count(("deploy", "deployed")) == 1
    assert runner.deps.ledger.verify().ok


def test_two_required_approvals_at_the_same_moment_both_count(workdir: Path) -> None:
    _require_two(workdir)
    results, cycle, runner = _race(workdir)
    assert sorted(results) == ["awaiting_approval", "deployed"], results
    kinds = events(runner, cycle)
    assert kinds.count(("approve", "approval_recorded")) == 1
    assert kinds.count(("approve", "approve")) == 1
    assert kinds.count(("deploy", "deployed")) == 1
    assert runner.deps.ledger.verify().ok
