"""Approvals are verified where they are used, not only where they are submitted.

Someone who can write the state folder but holds no private key tries to get an unapproved
change deployed or restored: a forged "approved" checkpoint resumed by the operator (C1),
forged approve and deploy entries in the ledger used by `upgate rollback --to` (C2), a
planted active `served` row that a real deploy would record as its rollback target (C3), a
decision copied from another cycle, a fake `approval_requested` naming another requester,
and an approver removed before the deploy. Each runs on real SQLite and git with scripted
models, the fake sandbox and the vLLM admin double (real hash checks)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from typer.testing import CliRunner

from upgate import admin, cli
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import Settings, load_settings
from upgate.deploy.git import GitDeployer
from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.rollback import RollbackParts, rollback_alias, rollback_cycle
from upgate.deploy.testing import FakeVllmAdmin
from upgate.errors import DeployError
from upgate.graphs import nodes
from upgate.graphs.builder import compile_graph, strict_serde
from upgate.graphs.runner import Runner
from upgate.identity import load_signer, person_key_id
from upgate.ledger import open_ledger
from upgate.records import Decision
from upgate.store import Store
from upgate.verified import Verifier, unbacked, verified_approvals

from ..conftest import adopt, decide
from .signed import record_approval, signed_decision
from .test_cycle import REVIEW, branches, draft, make_runner
from .test_rollback import deploy_model, make_adapter


def waiting(workdir: Path, requester: str = "alice") -> tuple[Runner, str]:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start(requester)
    assert state["outcome"] == "awaiting_approval"
    return runner, state["cycle_id"]


def forge_checkpoint(workdir: Path, cycle: str, approval: dict[str, Any]) -> None:
    """The attacker writes an "approved" checkpoint with stock LangGraph: no key needed."""
    conn = sqlite3.connect(workdir / "state" / "checkpoints.sqlite", check_same_thread=False)
    graph = compile_graph(SqliteSaver(conn, serde=strict_serde()))
    graph.update_state({"configurable": {"thread_id": cycle}},
                       {"approval": approval, "outcome": "approved", "approval_error": ""},
                       as_node="approve")
    conn.close()


def events(runner: Runner, cycle: str) -> list[tuple[str, str]]:
    return [(e.node, e.event) for e in runner.deps.ledger.entries(cycle)]


def verify_problems(workdir: Path) -> tuple[int, str]:
    os.environ.pop("UPGATE_POLICY", None)
    out = CliRunner().invoke(cli.app, ["verify", "--config", str(workdir / "upgate.toml")])
    return out.exit_code, " ".join(out.output.split())


# C1: a forged checkpoint ------------------------------------------------------------------


def test_c1_a_forged_approved_checkpoint_deploys_nothing_on_resume(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    request = runner.pending(cycle) or {}
    forge_checkpoint(workdir, cycle, {**request, "action": "approve", "approver": "bob",
                                      "approvals": [{"approver": "bob"}, {"approver": "carol"}]})

    done = make_runner(workdir, {"proposal": draft(), "review": REVIEW})[0].resume(cycle)

    assert done["outcome"] == "failed" and "deploy refused" in done["reason"]
    assert "0 verified approval" in done["reason"]
    assert branches(workdir / "target") == ["main"]  # nothing landed
    got = events(runner, cycle)
    assert ("deploy", "refused") in got and ("deploy", "deployed") not in got
    assert got[-1] == ("record", "failed")
    final = runner.deps.ledger.entries(cycle)[-1]
    assert final.payload["lineage"]["approver"] is None  # the forged "bob" is not recorded


def test_a_valid_approval_still_deploys_and_verify_finds_it_backed(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    assert decide(runner, cycle, "approve", "bob")["outcome"] == "deployed"
    deployed = next(e for e in runner.deps.ledger.entries(cycle) if e.event == "deployed")
    assert deployed.payload["approved_by"] == ["bob"]
    approve = next(e for e in runner.deps.ledger.entries(cycle) if e.event == "approve")
    decision = Decision.model_validate(approve.payload["decision"])  # re-verifiable
    assert decision.signer == "person:bob" and decision.cycle_id == cycle
    assert unbacked(runner.deps.ledger, runner.deps.store) == []
    assert verify_problems(workdir)[0] == 0


def require_two(workdir: Path) -> Path:
    """The adopted policy asks two approvers for a config change."""
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text().replace(
        "[kinds.config]\nallowed = true", "[kinds.config]\nallowed = true\napprovals_required = 2"))
    adopt(workdir)
    return workdir


def test_two_approvers_both_verified_from_the_ledger(workdir: Path) -> None:
    runner, cycle = waiting(require_two(workdir))
    assert decide(runner, cycle, "approve", "bob")["outcome"] == "awaiting_approval"
    # The attacker forges the second approval into the checkpoint: one real one is not two.
    request = runner.pending(cycle) or {}
    forge_checkpoint(workdir, cycle, {**request, "action": "approve", "approver": "carol",
                                      "approvals": [{"approver": "bob"}, {"approver": "carol"}]})
    forged = make_runner(workdir, {"proposal": draft(), "review": REVIEW})[0].resume(cycle)
    assert forged["outcome"] == "failed" and "1 verified approval" in forged["reason"]
    assert branches(workdir / "target") == ["main"]


def test_two_real_approvals_deploy(workdir: Path) -> None:
    runner, cycle = waiting(require_two(workdir))
    decide(runner, cycle, "approve", "bob")
    assert decide(runner, cycle, "approve", "carol")["outcome"] == "deployed"
    deployed = next(e for e in runner.deps.ledger.entries(cycle) if e.event == "deployed")
    assert sorted(deployed.payload["approved_by"]) == ["bob", "carol"]
    assert unbacked(runner.deps.ledger, runner.deps.store) == []


# Copied decisions, fake requests, removed approvers -----------------------------------------


def test_a_decision_copied_from_another_cycle_or_candidate_does_not_count(
        workdir: Path) -> None:
    runner, first = waiting(workdir)
    decide(runner, first, "approve", "bob")
    real = next(e for e in runner.deps.ledger.entries(first) if e.event == "approve")
    _, second = waiting(workdir)
    request = runner.pending(second) or {}
    # The attacker appends bob's real decision (for the first cycle) to the second one,
    # then one for the right cycle but another candidate, and forges the checkpoint.
    runner.deps.ledger.append(second, "approve", "approve", real.payload)
    keys = workdir / "keys"
    other = signed_decision(runner.deps.store, runner.deps.ledger, keys, second, "f" * 64)
    record_approval(runner.deps.ledger, other)
    forge_checkpoint(workdir, second, {**request, "action": "approve", "approver": "bob"})

    done = make_runner(workdir, {"proposal": draft(), "review": REVIEW})[0].resume(second)

    assert done["outcome"] == "failed" and "deploy refused" in done["reason"]
    assert verified_approvals(runner.deps.ledger, runner.deps.store, second,
                              str(request["candidate_hash"]), "config") == []
    assert [b for b in branches(workdir / "target") if second in b] == []


def test_a_fake_approval_request_naming_another_requester_changes_nothing(
        workdir: Path) -> None:
    """bob requests a change and signs his own approval (the approve node refuses it); the
    attacker records it as an approval and appends a request that names alice as requester."""
    runner, cycle = waiting(workdir, requester="bob")
    request = runner.pending(cycle) or {}
    keys, ledger, store = workdir / "keys", runner.deps.ledger, runner.deps.store
    own = signed_decision(store, ledger, keys, cycle, str(request["candidate_hash"]), "bob")
    own = own.model_copy(update={"evidence_hash": request["evidence_hash"]})
    from upgate import approvals

    own = approvals.sign(own, load_signer(person_key_id("bob"), keys))
    ledger.append(cycle, "gate", "approval_requested", {**request, "requester": "alice"})
    record_approval(ledger, own)
    forge_checkpoint(workdir, cycle, {**request, "requester": "alice", "action": "approve",
                                      "approver": "bob"})

    done = make_runner(workdir, {"proposal": draft(), "review": REVIEW})[0].resume(cycle)

    assert done["outcome"] == "failed" and "deploy refused" in done["reason"]
    assert branches(workdir / "target") == ["main"]
    assert Verifier(ledger, store).approvals(cycle, str(request["candidate_hash"])) == []


def test_an_approver_removed_before_the_deploy_no_longer_counts_but_history_stands(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided: an approval counts for a deploy only while its approver still holds the
    approver role; a deployment made under it stays backed in the record afterwards."""
    runner, cycle = waiting(workdir)
    real_verifier = nodes.Verifier

    def crash(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt("killed after the approval, before the deploy")

    monkeypatch.setattr(nodes, "Verifier", crash)
    with pytest.raises(KeyboardInterrupt):
        decide(runner, cycle, "approve", "bob")
    monkeypatch.setattr(nodes, "Verifier", real_verifier)
    store, ledger = runner.deps.store, runner.deps.ledger
    admin.remove_person(store, ledger, load_signer(person_key_id("alice"), workdir / "keys"),
                        "bob")

    done = make_runner(workdir, {"proposal": draft(), "review": REVIEW})[0].resume(cycle)
    assert done["outcome"] == "failed" and "deploy refused" in done["reason"]
    assert branches(workdir / "target") == ["main"]

    # Another cycle carol approved and deployed stays backed after carol is removed.
    runner2, later = waiting(workdir)
    assert decide(runner2, later, "approve", "carol")["outcome"] == "deployed"
    admin.remove_person(store, ledger, load_signer(person_key_id("alice"), workdir / "keys"),
                        "carol")
    assert [p for p in unbacked(ledger, store) if later in p] == []


# C2 and C3: served-model rollback targets -------------------------------------------------


class Served:
    def __init__(self, workdir: Path, monkeypatch: pytest.MonkeyPatch, *,
                 plant: Any = None) -> None:
        for name in list(os.environ):
            if name.startswith("UPGATE_"):
                monkeypatch.delenv(name)
        v0 = make_adapter(workdir / "adapters" / "v0", b"zero")
        self.fake = FakeVllmAdmin({"smollm2": "/base", "triage": str(v0[0])})
        fake = self.fake

        def runner(settings: Settings, for_cycles: bool = True) -> Runner:
            return Runner(build_deps(settings, admin=fake, for_cycles=for_cycles, models={
                a: scripted({}) for a in ("proposer", "coder", "critic")}))

        monkeypatch.setattr(cli, "_runner", runner)
        self.deps = runner(load_settings(workdir / "upgate.toml")).deps
        self.root = workdir
        self.deployer = LoraAliasDeployer(fake, self.deps.store, "triage", self.deps.ledger)
        self.v0 = v0
        self.v1 = make_adapter(workdir / "adapters" / "v1", b"v1")
        if plant is not None:
            plant()
        deploy_model(self.deps.ledger, self.deployer, "c1", "triage-v1", self.v1)

    def parts(self) -> RollbackParts:
        return RollbackParts(ledger=self.deps.ledger, store=self.deps.store, admin=self.fake,
                             routes=None, serving_url="http://127.0.0.1:9/v1",
                             outbox=lambda e, d: [],
                             git_deployer=lambda: GitDeployer(self.root / "target", base="main"))


def plant_served(workdir: Path, version: str, folder: Path, digest: str,
                 deployment_id: str = "") -> None:
    conn = sqlite3.connect(workdir / "state" / "state.sqlite", isolation_level=None)
    conn.execute("UPDATE served SET active = 0 WHERE alias = 'triage'")
    conn.execute("INSERT INTO served VALUES ('triage', ?, ?, ?, ?, 'c1', "
                 "'2026-11-30T12:00:00+00:00', 1)",
                 (version, str(folder), digest, deployment_id or f"{version}-d"))
    conn.close()


def test_c2_forged_ledger_approval_and_deploy_cannot_be_rolled_back_to(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = Served(workdir, monkeypatch)
    ledger = world.deps.ledger
    evil, evil_sha = make_adapter(workdir / "adapters" / "evil", b"EVIL")
    # Appended through upgate's own API: a valid chain, no key, no signed decision.
    ledger.append("c9", "approve", "approve", {"approver": "bob", "signature": "00" * 64})
    ledger.append("c9", "deploy", "deployed", {"deployment": {
        "target": "vllm", "deployment_id": "c9-d", "alias": "triage",
        "version_name": "triage-evil", "adapter_sha256": evil_sha}, "binding": {
        "kind": "model", "diff": "", "artifacts": [["triage-evil", "adapter", evil_sha]]}})
    plant_served(workdir, "triage-evil", evil, evil_sha)
    before = list(world.fake.calls)

    with pytest.raises(DeployError, match="never served for triage after an approval"):
        rollback_alias(world.parts(), "triage", "triage-evil", by="alice", reason="go back")

    assert world.fake.served["triage"] == str(world.v1[0])
    assert "triage-evil" not in world.fake.served and world.fake.calls == before
    assert not [e for e in ledger.entries() if e.node == "rollback"]
    problems = unbacked(ledger, world.deps.store)
    assert any("c9 deployed triage-evil without a verified approval" in p for p in problems)
    world.deps.store.close()
    ledger.close()
    code, said = verify_problems(workdir)
    assert code == 1 and "triage-evil without a verified approval" in said


def test_c3_a_planted_active_row_never_becomes_a_rollback_target(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = Served(workdir, monkeypatch)
    evil, evil_sha = make_adapter(workdir / "adapters" / "evil", b"EVIL")
    plant_served(workdir, "triage-hotfix", evil, evil_sha)

    # A real approved model change is deployed afterwards.
    v2 = make_adapter(workdir / "adapters" / "v2", b"v2")
    d2 = deploy_model(world.deps.ledger, world.deployer, "c2", "triage-v2", v2)
    assert (d2.previous or {})["version_name"] == "triage-v1"  # not the planted row

    out = rollback_cycle(world.parts(), "c2", by="alice", reason="v2 mislabels")
    assert out.status == "rolled_back", out.message
    assert world.fake.served["triage"] == str(world.v1[0])
    assert str(evil) not in {c[2] for c in world.fake.calls}
    assert unbacked(world.deps.ledger, world.deps.store) == []


def test_c3_a_forged_previous_in_the_checkpoint_is_refused_by_the_rollback_node(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's rollback restores only a version the ledger shows approved."""
    from upgate.records import Deployment
    from upgate.verified import unapproved_previous

    world = Served(workdir, monkeypatch)
    evil, evil_sha = make_adapter(workdir / "adapters" / "evil", b"EVIL")
    forged = Deployment(target="vllm", deployment_id="c1-d", alias="triage",
                        version_name="triage-v1", adapter_sha256=world.v1[1],
                        previous={"version_name": "triage-hotfix", "path": str(evil),
                                  "sha256": evil_sha, "deployment_id": "x"})
    assert "never deployed for triage under a verified approval" in unapproved_previous(
        world.deps.ledger, world.deps.store, forged)
    honest = forged.model_copy(update={"previous": None})
    assert unapproved_previous(world.deps.ledger, world.deps.store, honest) == ""


def test_a_forged_identity_log_backs_nothing(workdir: Path) -> None:
    runner, cycle = waiting(workdir)
    decide(runner, cycle, "approve", "bob")
    assert unbacked(runner.deps.ledger, runner.deps.store) == []
    runner.deps.store.close()
    conn = sqlite3.connect(workdir / "state" / "state.sqlite", isolation_level=None)
    conn.execute("UPDATE identity_log SET signature = ? WHERE seq = 2", ("00" * 64,))
    conn.close()
    store = Store(workdir / "state" / "state.sqlite")
    ledger = open_ledger(workdir / "state")
    assert any(cycle in p for p in unbacked(ledger, store))


def test_auto_approval_only_where_the_adopted_policy_allows_it_never_for_a_model(
        workdir: Path) -> None:
    """The test policy says `approval = "auto"` for models (ignored) and requires a person
    for config; then alice adopts auto for config."""
    store, ledger = Store(workdir / "state" / "state.sqlite"), open_ledger(workdir / "state")
    verifier = Verifier(ledger, store)
    assert not verifier.backing("cX", "a" * 64, "model").ok
    assert not verifier.backing("cX", "a" * 64, "config").ok
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text().replace(
        "[kinds.config]\nallowed = true", '[kinds.config]\nallowed = true\napproval = "auto"'))
    adopt(workdir)
    verifier = Verifier(ledger, store)
    assert verifier.backing("cX", "a" * 64, "config").approvers == ("policy:auto",)
    assert not verifier.backing("cX", "a" * 64, "model").ok
    assert not verifier.backing("cX", "a" * 64, "code").ok
    store.close()
    ledger.close()


def test_a_planted_initial_row_before_the_first_swap_is_not_what_gets_restored(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil, evil_sha = make_adapter(workdir / "adapters" / "evil", b"EVIL")
    world = Served(workdir, monkeypatch, plant=lambda: plant_served(
        workdir, "triage@initial", evil, evil_sha, "initial"))
    d1 = next(e for e in world.deps.ledger.entries("c1") if e.event == "deployed")
    previous = d1.payload["deployment"]["previous"]
    assert (previous["path"], previous["sha256"]) == (str(world.v0[0]), world.v0[1])

    out = rollback_cycle(world.parts(), "c1", by="alice", reason="v1 mislabels")
    assert out.status == "rolled_back", out.message
    assert world.fake.served["triage"] == str(world.v0[0])
    assert str(evil) not in {c[2] for c in world.fake.calls}
