"""`upgate rollback`'s logic on a real SQLite store, ledger and route table, real git, and the
shipped vLLM double: a version is restored together (adapter, store, gateway routes) and
checked, once; a version never approved, or whose folder changed, is refused with nothing
changed; a cycle with nothing before it says so; a crash before the record is completed by
the next run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from upgate.deploy.git import GitDeployer
from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.reconcile import ledger_versions
from upgate.deploy.rollback import (
    RollbackParts,
    rollback_alias,
    rollback_cycle,
)
from upgate.deploy.testing import FakeVllmAdmin
from upgate.errors import DeployError
from upgate.gateway.routes import Backend, RouteTable
from upgate.graphs.runner import validate_cycle_id
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.records import Artifact, Candidate, Deployment
from upgate.store import Store

from ..conftest import make_target_repo
from .signed import ensure_people, record_approval, record_deploy, signed_decision
from .test_git_landing import edit_candidate, git

ALIAS = "triage"
VLLM = "http://127.0.0.1:9/v1"


def make_adapter(folder: Path, weights: bytes) -> tuple[Path, str]:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder, sha256_tree(folder)


def deploy_model(ledger: Ledger, deployer: LoraAliasDeployer, cycle: str, version: str,
                 folder: tuple[Path, str]) -> Deployment:
    """What the graph does for an approved model change: deploy, and record it."""
    art = Artifact(name=version, kind="adapter", path=str(folder[0]), sha256=folder[1])
    candidate = Candidate(proposal_id="p", kind="model", diff="", changed_paths=(),
                          artifacts=(art,))
    keys = Path(ledger.path).parent.parent / "keys"
    ensure_people(deployer.store, ledger, keys)
    record_approval(ledger, signed_decision(deployer.store, ledger, keys, cycle,
                                            candidate.content_hash))
    deployment = deployer.deploy(candidate, f"{cycle}-d", cycle_id=cycle, message="m")
    record_deploy(ledger, cycle, candidate, deployment)
    return deployment


@dataclass
class World:
    root: Path
    store: Store
    ledger: Ledger
    fake: FakeVllmAdmin
    routes: RouteTable
    adapters: dict[str, tuple[Path, str]]
    sent: list[tuple[str, dict[str, Any]]]

    def parts(self) -> RollbackParts:
        def outbox(event: str, data: dict[str, Any]) -> list[Any]:
            self.sent.append((event, data))
            return []

        return RollbackParts(
            ledger=self.ledger, store=self.store, admin=self.fake, routes=self.routes,
            serving_url=VLLM, outbox=outbox,
            git_deployer=lambda: GitDeployer(self.root / "target", base="main"))

    def rollback_events(self) -> list[tuple[str, str]]:
        return [(e.cycle_id, e.event) for e in self.ledger.entries() if e.node == "rollback"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """The server started with an initial adapter; c1 deployed triage-v1, c2 triage-v2;
    the gateway routes the alias to v2."""
    state = tmp_path / "state"
    store, ledger = Store(state / "state.sqlite"), Ledger(state / "ledger.sqlite")
    initial = make_adapter(tmp_path / "initial", b"initial")
    fake = FakeVllmAdmin({"smollm2": "/base", ALIAS: str(initial[0])})
    adapters = {"triage-v1": make_adapter(tmp_path / "v1", b"one"),
                "triage-v2": make_adapter(tmp_path / "v2", b"two")}
    deployer = LoraAliasDeployer(fake, store, ALIAS, ledger)
    for cycle, version in (("c1", "triage-v1"), ("c2", "triage-v2")):
        deploy_model(ledger, deployer, cycle, version, adapters[version])
    routes = RouteTable(state / "gateway.db")
    routes.set_routes(ALIAS, [Backend(version="triage-v2", base_url=VLLM, model="triage-v2",
                                      weight=95),
                              Backend(version="triage-v1", base_url=VLLM, model="triage-v1",
                                      weight=5)], reason="canary")
    yield World(tmp_path, store, ledger, fake, routes, adapters, [])
    routes.close()
    store.close()
    ledger.close()


def test_rollback_to_a_version_restores_adapter_store_and_routes_once(world: World) -> None:
    assert world.fake.served[ALIAS] == str(world.adapters["triage-v2"][0])
    out = rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice", reason="bad answers")

    assert out.status == "rolled_back", out.message
    v1 = str(world.adapters["triage-v1"][0])
    assert world.fake.served[ALIAS] == v1 and world.fake.served["triage-v1"] == v1
    assert (world.store.active_version(ALIAS) or {})["version_name"] == "triage-v1"
    assert [(b.version, b.weight) for b in world.routes.routes(ALIAS)] == [("triage-v1", 100)]
    assert validate_cycle_id(out.cycle_id).startswith("rollback-triage-")
    record = world.ledger.entries(out.cycle_id)[-1]
    assert (record.node, record.event) == ("rollback", "rolled_back")
    p = record.payload
    assert (p["alias"], p["from_version"], p["to_version"], p["trigger"], p["by"]) == (
        ALIAS, "triage-v2", "triage-v1", "manual", "alice")
    assert p["reason"] == "bad answers" and p["started_at"] and p["duration_s"] >= 0
    assert p["verified"]["models_ok"] is True and p["verified"]["smoke_ok"] is True
    assert p["verified"]["detail"]["serves"] == v1
    assert ("rolled_back", p) in world.sent  # its notification commits with it
    assert ledger_versions(world.ledger, ALIAS, world.store)[1] == "triage-v1"  # reconcile agrees

    entries, calls = len(world.ledger.entries()), len(world.fake.calls)
    again = rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice", reason="again")
    assert again.status == "already_restored" and "already serves triage-v1" in again.message
    assert len(world.ledger.entries()) == entries
    assert not [c for c in world.fake.calls[calls:] if c[0] == "load"]


@pytest.mark.parametrize("version", ["triage-v9", "smollm2", "triage-v1 "])
def test_a_version_never_served_for_the_alias_is_refused(world: World, version: str) -> None:
    before = (len(world.ledger.entries()), dict(world.fake.served), world.routes.generation())
    with pytest.raises(DeployError, match="never served for triage"):
        rollback_alias(world.parts(), ALIAS, version, by="alice", reason="r")
    assert (len(world.ledger.entries()), world.fake.served, world.routes.generation()) == before


def test_a_tampered_adapter_folder_is_refused_and_nothing_changes(world: World) -> None:
    (world.adapters["triage-v1"][0] / "adapter_model.safetensors").write_bytes(b"evil")
    before = (len(world.ledger.entries()), dict(world.fake.served), world.routes.generation())
    with pytest.raises(DeployError, match="not the approved"):
        rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice", reason="r")
    assert (len(world.ledger.entries()), world.fake.served, world.routes.generation()) == before
    assert (world.store.active_version(ALIAS) or {})["version_name"] == "triage-v2"


def test_rollback_of_a_cycle_restores_what_it_replaced(world: World) -> None:
    out = rollback_cycle(world.parts(), "c2", by="alice", reason="regressed")
    assert out.status == "rolled_back" and out.cycle_id == "c2"
    assert world.fake.served[ALIAS] == str(world.adapters["triage-v1"][0])
    assert world.rollback_events() == [("c2", "requested"), ("c2", "rolled_back")]
    assert rollback_cycle(world.parts(), "c2", by="alice", reason="r").status == (
        "already_restored")
    assert len(world.rollback_events()) == 2

    # c1 is live again, so it can be rolled back in turn: to what the server started with.
    assert rollback_cycle(world.parts(), "c1", by="alice", reason="r").status == "rolled_back"
    assert (world.store.active_version(ALIAS) or {})["version_name"] == "triage@initial"
    # c2 now would undo c1's rollback as well: refused, with the way to choose a version.
    with pytest.raises(DeployError, match="--alias triage --to VERSION"):
        rollback_cycle(world.parts(), "c2", by="alice", reason="r")


def test_cycles_never_deployed_or_unknown_are_refused_clearly(world: World) -> None:
    world.ledger.append("c7", "record", "rejected", {"outcome": "rejected"})
    with pytest.raises(DeployError, match=r"c7 was never deployed .*rejected"):
        rollback_cycle(world.parts(), "c7", by="alice", reason="r")
    with pytest.raises(DeployError, match="no cycle c8"):
        rollback_cycle(world.parts(), "c8", by="alice", reason="r")
    assert world.rollback_events() == []


def test_nothing_to_restore_is_said_and_never_recorded_as_rolled_back(tmp_path: Path) -> None:
    store, ledger = Store(tmp_path / "st" / "s.sqlite"), Ledger(tmp_path / "st" / "l.sqlite")
    fake = FakeVllmAdmin({"smollm2": "/base"})  # the server started with no alias
    deploy_model(ledger, LoraAliasDeployer(fake, store, ALIAS, ledger), "c1", "triage-v1",
                 make_adapter(tmp_path / "v1", b"one"))
    parts = RollbackParts(ledger=ledger, store=store, admin=fake, routes=None,
                          serving_url=VLLM, outbox=lambda e, d: [],
                          git_deployer=lambda: GitDeployer(tmp_path, base="main"))
    out = rollback_cycle(parts, "c1", by="alice", reason="r")
    assert out.status == "nothing_to_restore" and "nothing to restore" in out.message
    assert not [e for e in ledger.entries() if e.node == "rollback"]
    assert fake.served[ALIAS] == str(tmp_path / "v1")
    store.close()
    ledger.close()


def test_a_failed_smoke_check_is_recorded_as_failed(world: World) -> None:
    world.fake.mute.add(ALIAS)
    out = rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice", reason="r")
    assert out.status == "failed" and "run the same command again" in out.message
    assert world.rollback_events()[-1][1] == "failed"
    assert out.record and out.record["verified"]["smoke_ok"] is False
    assert ("rolled_back", out.record) not in world.sent


def test_a_crash_before_the_record_is_completed_by_the_next_run(world: World) -> None:
    parts = world.parts()

    def crash(event: str, data: dict[str, Any]) -> list[Any]:
        if event == "rolled_back":
            raise RuntimeError("killed before the record committed")
        return []

    parts.outbox = crash
    with pytest.raises(RuntimeError):
        rollback_alias(parts, ALIAS, "triage-v1", by="alice", reason="first try")
    assert world.rollback_events()[-1][1] == "requested"
    assert world.fake.served[ALIAS] == str(world.adapters["triage-v1"][0])  # restored

    out = rollback_alias(world.parts(), ALIAS, "triage-v1", by="carol", reason="again")
    assert out.status == "rolled_back"
    first = world.rollback_events()[0][0]
    assert world.rollback_events() == [(first, "requested"), (first, "rolled_back")]
    assert world.ledger.entries(first)[-1].payload["by"] == "alice"  # the request's own
    assert rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice",
                          reason="r").status == "already_restored"


def test_rollback_of_a_landed_change_is_a_recorded_revert(world: World) -> None:
    repo = make_target_repo(world.root / "target")
    before = git(repo, "rev-parse", "main")
    deployer = GitDeployer(repo, base="main", landing="merge")
    deployment = deployer.deploy(edit_candidate(repo), "c3-d", cycle_id="c3", message="m")
    world.ledger.append("c3", "deploy", "deployed",
                        {"deployment": deployment.model_dump(mode="json")})
    out = rollback_cycle(world.parts(), "c3", by="alice", reason="broke the parser")
    assert out.status == "rolled_back", out.message
    p = world.ledger.entries("c3")[-1].payload
    assert (p["branch"], p["trigger"], p["by"]) == ("main", "manual", "alice")
    assert p["to_version"] == git(repo, "rev-parse", "main") == p["revert_commit"]
    assert p["verified"]["detail"]["change_live"] is False
    assert git(repo, "diff", before, "main") == ""  # the tree is as before the change
    subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor",
                    deployment.commit or "", "main"], check=True)  # history kept
    again = rollback_cycle(world.parts(), "c3", by="alice", reason="r")
    assert again.status == "already_restored"
    assert len(world.ledger.entries("c3")) == 2


def test_a_revert_whose_record_was_lost_is_recorded_by_the_next_run(world: World) -> None:
    repo = make_target_repo(world.root / "target")
    deployer = GitDeployer(repo, base="main", landing="fast-forward")
    deployment = deployer.deploy(edit_candidate(repo), "c3-d", cycle_id="c3", message="m")
    world.ledger.append("c3", "deploy", "deployed",
                        {"deployment": deployment.model_dump(mode="json")})
    reverted = deployer.rollback(deployment)  # a run that crashed right after the revert
    assert reverted.status == "restored"
    out = rollback_cycle(world.parts(), "c3", by="alice", reason="r")
    assert out.status == "rolled_back"
    assert world.rollback_events() == [("c3", "rolled_back")]
    assert world.ledger.entries("c3")[-1].payload["revert_commit"] == git(
        repo, "rev-parse", "main") == reverted.detail["revert_commit"]
    assert rollback_cycle(world.parts(), "c3", by="alice", reason="r").status == (
        "already_restored")
    assert world.rollback_events() == [("c3", "rolled_back")]


def test_a_revert_that_conflicts_is_recorded_as_failed_and_changes_nothing(
        world: World) -> None:
    repo = make_target_repo(world.root / "target")
    deployer = GitDeployer(repo, base="main", landing="fast-forward")
    deployment = deployer.deploy(edit_candidate(repo), "c3-d", cycle_id="c3", message="m")
    world.ledger.append("c3", "deploy", "deployed",
                        {"deployment": deployment.model_dump(mode="json")})
    (repo / "triage" / "prompt.txt").write_text("rewritten later\n")
    git(repo, "-c", "user.name=o", "-c", "user.email=o@o", "commit", "-qam", "later")
    head = git(repo, "rev-parse", "main")
    out = rollback_cycle(world.parts(), "c3", by="alice", reason="r")
    assert out.status == "failed" and "conflicts with later commits" in out.message
    assert world.rollback_events() == [("c3", "failed")]
    assert git(repo, "rev-parse", "main") == head


def test_after_a_failed_check_the_same_command_again_records_the_success(
        world: World) -> None:
    world.fake.mute.add(ALIAS)
    assert rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice",
                          reason="r").status == "failed"
    world.fake.mute.clear()  # the server is fixed
    out = rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice", reason="r")
    assert out.status == "rolled_back"
    cycle = world.rollback_events()[0][0]
    assert world.rollback_events() == [(cycle, "requested"), (cycle, "failed"),
                                       (cycle, "rolled_back")]
    assert rollback_alias(world.parts(), ALIAS, "triage-v1", by="alice",
                          reason="r").status == "already_restored"
