"""Blue/green on real processes: the launcher, the deployer, the reaper and the CLI, with
the package's fake vLLM server (a real HTTP server in its own process group) as blue and
green, a real route table, servers table and ledger. The real-vLLM version of the switch
is tests/real/test_bluegreen_real.py."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from upgate.artifacts import freeze_tree
from upgate.deploy.bluegreen import BlueGreenDeployer, BlueGreenParts, ledger_recorder
from upgate.deploy.bluegreen_reaper import ReaperSpec, reap_expired
from upgate.deploy.bluegreen_state import ServerRegistry, ServerRow
from upgate.deploy.registry import target_for
from upgate.deploy.vllm_servers import (
    SERVING_FILE,
    Launcher,
    LauncherConfig,
    answers,
    runs_server,
)
from upgate.errors import DeployError
from upgate.gateway.routes import Backend, RouteTable
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.records import Artifact, Candidate

ALIAS = "triage"
CYCLE = "c20261130-120000-abcdef"


def fake_config(**kw: object) -> LauncherConfig:
    """The launcher running the package's fake vLLM server instead of vLLM."""
    return LauncherConfig(command=(sys.executable, "-m", "upgate.deploy.fake_vllm_server"),
                          ports=(18431, 18470), startup_timeout_s=30, warm_requests=2,
                          **kw)  # type: ignore[arg-type]


def model_folder(path: Path, *, config: dict[str, object] | None = None,
                 serving: list[str] | None = None) -> tuple[Path, str]:
    """A frozen model folder and its content hash."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"hidden_size": 64}))
    (path / "model.safetensors").write_bytes(os.urandom(256))
    if serving is not None:
        (path / SERVING_FILE).write_text(json.dumps({"args": serving}))
    freeze_tree(path)
    return path, sha256_tree(path)


def chat(base_url: str, model: str) -> str:
    """One completion's text."""
    resp = httpx.post(f"{base_url}/chat/completions", timeout=10, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})
    resp.raise_for_status()
    return str(resp.json()["choices"][0]["message"]["content"])


class Rig:
    """Blue started by the launcher and routed in the gateway; a deployer over them."""

    def __init__(self, tmp: Path, window_s: float, reaper: bool = False) -> None:
        self.tmp = tmp
        self.launcher = Launcher(fake_config(), tmp / "servers")
        self.routes = RouteTable(tmp / "gateway.db")
        self.servers = ServerRegistry(tmp / "servers.db")
        self.ledger = Ledger(tmp / "ledger.sqlite")
        self.blue_dir, self.blue_sha = model_folder(tmp / "blue")
        self.blue = self.launcher.start("blue", self.blue_dir, served_name="triage@blue")
        self.servers.put(ServerRow(
            alias=ALIAS, version="triage@blue", model="triage@blue",
            base_url=self.blue.base_url, model_dir=str(self.blue_dir), sha256=self.blue_sha,
            port=self.blue.port, pid=self.blue.pid, log=self.blue.log, managed=True,
            status="running", started_at=time.time()))
        self.routes.set_routes(ALIAS, [Backend(version="triage@blue", base_url=self.blue.base_url,
                                               model="triage@blue", weight=100)], reason="start")
        spec = ReaperSpec(servers_db=tmp / "servers.db", routes_db=tmp / "gateway.db",
                          state_dir=tmp, poll_s=0.2) if reaper else None
        self.parts = BlueGreenParts(
            routes=self.routes, servers=self.servers, launcher=self.launcher, window_s=window_s,
            record=ledger_recorder(self.ledger), default_base_url=None, reaper=spec)
        self.deployer = BlueGreenDeployer(self.parts, ALIAS)

    def candidate(self, name: str, **kw: object) -> Candidate:
        """A model candidate carrying a new model folder."""
        folder, sha = model_folder(self.tmp / name, **kw)  # type: ignore[arg-type]
        return Candidate(proposal_id="p1", kind="model", diff="", changed_paths=(),
                         artifacts=(Artifact(name=name, kind="model", path=str(folder),
                                             sha256=sha),))

    def weights(self) -> dict[str, int]:
        """The alias's routes now, version -> weight."""
        return {b.version: b.weight for b in self.routes.routes(ALIAS)}

    def events(self) -> list[str]:
        """The blue/green ledger events, in order."""
        return [e.event for e in self.ledger.entries() if e.node == "bluegreen"]

    def close(self) -> None:
        """Stop every server the rig's launcher or deployer started."""
        for row in self.servers.all():
            if row.managed and row.pid and row.port:
                from upgate.deploy.vllm_servers import stop_server
                stop_server(row.pid, row.port, grace_s=5)
        self.routes.close()
        self.servers.close()
        self.ledger.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, window_s=600)
    yield r
    r.close()


def test_launcher_starts_warms_and_stops_a_server_with_its_process_group(
        tmp_path: Path) -> None:
    launcher = Launcher(fake_config(), tmp_path / "run")
    folder, _ = model_folder(tmp_path / "m", serving=["--max-model-len", "512"])
    handle = launcher.start("m", folder, served_name="m1")
    assert answers(handle.root)
    assert Path(handle.pid_file).read_text().strip() == str(handle.pid)
    assert runs_server(handle.pid, handle.port)
    # The serving file's arguments reach the server (the fake echoes them).
    assert "--max-model-len 512" in chat(handle.base_url, "m1")
    assert launcher.stop(handle)
    assert not answers(handle.root)
    assert not runs_server(handle.pid, handle.port)
    assert not Path(handle.pid_file).exists()
    assert not launcher.stop(handle)  # a second stop signals nothing


def test_a_server_that_fails_to_start_is_stopped_and_its_log_tail_is_in_the_error(
        tmp_path: Path) -> None:
    launcher = Launcher(fake_config(), tmp_path / "run")
    folder, _ = model_folder(tmp_path / "bad", config={"fail": "head_dim=16 unsupported"})
    with pytest.raises(DeployError, match="head_dim=16 unsupported") as info:
        launcher.start("bad", folder, served_name="bad")
    assert "nothing switched" in str(info.value)
    assert not list((tmp_path / "run").glob("*.pid"))


@pytest.mark.parametrize("args", [["--port", "1"], ["--model=/elsewhere"]])
def test_a_serving_file_may_not_set_what_the_launcher_sets(tmp_path: Path,
                                                          args: list[str]) -> None:
    folder, _ = model_folder(tmp_path / "m", serving=args)
    with pytest.raises(DeployError, match="launcher sets itself"):
        Launcher(fake_config(), tmp_path / "run").start("m", folder, served_name="m")


def test_deploy_starts_green_moves_all_traffic_and_keeps_blue_warm_and_pinnable(
        rig: Rig) -> None:
    candidate = rig.candidate("triage-green", serving=["--max-model-len", "512"])
    deployment = rig.deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    assert deployment.target == "bluegreen" and deployment.version_name == "triage-green"
    assert rig.weights() == {"triage-green": 100, "triage@blue": 0}
    green = rig.servers.get(ALIAS, "triage-green")
    assert green is not None and green.managed and green.args == ("--max-model-len", "512")
    assert "--max-model-len 512" in chat(green.base_url, "triage-green")
    assert answers(rig.blue.root), "blue stays warm for the rollback window"
    blue = rig.servers.get(ALIAS, "triage@blue")
    assert blue is not None and blue.stop_after is not None
    assert blue.stop_after - time.time() > 500
    assert rig.deployer.verify(deployment).healthy
    assert rig.events() == ["green_started", "switched"]
    switched = next(e for e in rig.ledger.entries() if e.event == "switched").payload
    assert switched["from_version"] == "triage@blue"
    assert switched["to_version"] == "triage-green"
    # Again with the same id: nothing starts, nothing moves, nothing is recorded twice.
    pid = green.pid
    again = rig.deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    assert again == deployment
    assert rig.servers.get(ALIAS, "triage-green").pid == pid  # type: ignore[union-attr]
    assert rig.events() == ["green_started", "switched"]


def test_a_tampered_green_folder_is_refused_before_any_process_or_traffic_moves(
        rig: Rig) -> None:
    candidate = rig.candidate("triage-green")
    folder = Path(candidate.artifacts[0].path)
    folder.chmod(0o755)
    (folder / "model.safetensors").chmod(0o644)
    (folder / "model.safetensors").write_bytes(os.urandom(256))
    with pytest.raises(DeployError, match="not the approved"):
        rig.deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    assert rig.weights() == {"triage@blue": 100}
    assert rig.servers.get(ALIAS, "triage-green") is None
    assert len(list((rig.tmp / "servers").glob("*.log"))) == 1  # blue's only
    assert rig.events() == []


def test_rollback_in_the_window_moves_traffic_back_to_warm_blue_and_is_idempotent(
        rig: Rig) -> None:
    deployment = rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE,
                                     message="m")
    blue_pid = rig.blue.pid
    result = rig.deployer.rollback(deployment)
    assert result.status == "restored"
    assert result.detail["blue_restarted"] is False
    assert result.detail["verified"] == {"models_ok": True, "smoke_ok": True,
                                         "detail": "HTTP 200"}
    assert result.detail["trigger"] == "bluegreen"
    assert rig.weights() == {"triage@blue": 100, "triage-green": 0}
    blue = rig.servers.get(ALIAS, "triage@blue")
    assert blue is not None and blue.pid == blue_pid and blue.stop_after is None
    green = rig.servers.get(ALIAS, "triage-green")
    assert green is not None and green.stop_after is not None, "green now waits for the reaper"
    assert not rig.deployer.verify(deployment).healthy
    assert rig.deployer.rollback(deployment).status == "already_restored"


def test_reap_stops_blue_after_the_window_drops_its_route_and_records_it(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, window_s=0)
    try:
        deployment = rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE,
                                         message="m")
        stopped = rig.deployer.reap()
        assert [s["version_name"] for s in stopped] == ["triage@blue"]
        assert not answers(rig.blue.root)
        assert rig.weights() == {"triage-green": 100}
        assert rig.servers.get(ALIAS, "triage@blue").status == "stopped"  # type: ignore[union-attr]
        assert rig.events()[-1] == "blue_stopped"
        assert rig.deployer.reap() == []
        # Rollback after the window: blue starts again from its folder, and says so.
        result = rig.deployer.rollback(deployment)
        assert result.status == "restored" and result.detail["blue_restarted"] is True
        blue = rig.servers.get(ALIAS, "triage@blue")
        assert blue is not None and blue.status == "running" and answers(
            blue.base_url.removesuffix("/v1"))
        assert rig.weights() == {"triage@blue": 100, "triage-green": 0}
        assert "blue_restarted" in rig.events()
    finally:
        rig.close()


def test_a_due_server_that_carries_traffic_again_is_never_stopped(tmp_path: Path) -> None:
    rig = Rig(tmp_path, window_s=0)
    try:
        rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE, message="m")
        # Traffic moved back by someone else before the reaper looked.
        rig.routes.set_routes(ALIAS, [b.model_copy(update={"weight": 100 - b.weight})
                                      for b in rig.routes.routes(ALIAS)], reason="manual")
        assert reap_expired(rig.servers, rig.routes, rig.parts.record) == []
        assert answers(rig.blue.root)
        assert rig.servers.get(ALIAS, "triage@blue").stop_after is None  # type: ignore[union-attr]
    finally:
        rig.close()


def test_the_detached_reaper_stops_blue_after_the_process_that_switched_has_moved_on(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, window_s=1.0, reaper=True)
    try:
        rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE, message="m")
        assert answers(rig.blue.root)
        for _ in range(300):  # the reaper runs in its own session; poll for its effect
            if not answers(rig.blue.root, timeout_s=1):
                break
            time.sleep(0.1)
        assert not answers(rig.blue.root)
        for _ in range(100):
            if "blue_stopped" in rig.events():
                break
            time.sleep(0.1)
        stopped = [e for e in rig.ledger.entries() if e.event == "blue_stopped"]
        assert stopped and stopped[0].cycle_id == CYCLE and stopped[0].payload["was_running"]
        assert rig.ledger.verify().ok
    finally:
        rig.close()


def test_an_unrouted_alias_without_a_serving_address_cannot_switch(tmp_path: Path) -> None:
    rig = Rig(tmp_path, window_s=600)
    try:
        rig.routes.remove_alias(ALIAS, reason="test")
        with pytest.raises(DeployError, match="nothing to switch from"):
            rig.deployer.deploy(rig.candidate("g"), "d1", cycle_id=CYCLE, message="m")
    finally:
        rig.close()


def test_rollback_to_a_blue_upgate_did_not_start_and_that_is_down_says_what_to_do(
        rig: Rig) -> None:
    rig.servers.update(ALIAS, "triage@blue", managed=False)
    deployment = rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE,
                                     message="m")
    rig.launcher.stop(rig.blue)
    with pytest.raises(DeployError, match="start that server, then roll back again"):
        rig.deployer.rollback(deployment)
    assert rig.weights() == {"triage-green": 100, "triage@blue": 0}


def test_a_model_folder_candidate_goes_blue_green_and_an_adapter_goes_in_place() -> None:
    def cand(kind: str) -> Candidate:
        return Candidate(proposal_id="p", kind="model", diff="", changed_paths=(),
                         artifacts=(Artifact(name="x", kind=kind, path="/x",  # type: ignore[arg-type]
                                             sha256="0" * 64),))
    assert target_for(cand("model")) == "bluegreen"
    assert target_for(cand("adapter")) == "vllm"


def test_cli_lists_servers_and_reaps_an_expired_blue(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tests.conftest import write_config
    from upgate import cli

    cfg = write_config(tmp_path)
    rig = Rig(tmp_path / "state", window_s=0)  # the config's state folder
    try:
        rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE, message="m")
        listed = CliRunner().invoke(cli.app, ["bluegreen", "list", "--config", str(cfg)])
        assert listed.exit_code == 0, listed.output
        assert "triage@blue" in listed.output and "triage-green" in listed.output
        reaped = CliRunner().invoke(cli.app, ["bluegreen", "reap", "--config", str(cfg)])
        assert reaped.exit_code == 0, reaped.output
        assert "stopped triage@blue of triage" in reaped.output
        assert not answers(rig.blue.root)
        assert "blue_stopped" in rig.events()
        again = CliRunner().invoke(cli.app, ["bluegreen", "reap", "--config", str(cfg)])
        assert "no blue is due to stop" in again.output
    finally:
        rig.close()


def test_the_cycles_deploy_node_switches_only_behind_an_approval_of_this_candidate(
        workdir: Path) -> None:
    from types import SimpleNamespace

    from upgate.graphs import nodes
    from upgate.records import ModelRef, Proposal

    from .test_cycle import REVIEW, draft, make_runner

    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    rig = Rig(workdir / "bg", window_s=600)
    try:
        runner.deps.__dict__["bluegreen"] = rig.parts  # the cached parts, on the rig's tables
        runtime = SimpleNamespace(context=runner.deps)
        candidate = rig.candidate("triage-green")
        proposal = Proposal(id="p1", kind="model", target="triage", recipe="new_weights",
                            rationale="r", expected_effect="e", risk="low", made_by=ModelRef(
                                agent="proposer", endpoint="e", model="m", prompt="p",
                                prompt_hash="h"))
        state: dict[str, object] = {
            "cycle_id": CYCLE, "requester": "carol", "proposal": proposal.model_dump(mode="json"),
            "candidate": {**candidate.model_dump(mode="json"),
                          "content_hash": candidate.content_hash}}
        other = rig.candidate("triage-other")
        for approval in ({}, {"action": "approve", "approver": "bob",
                              "candidate_hash": other.content_hash}):
            out = nodes.deploy({**state, "approval": approval}, runtime)  # type: ignore[arg-type]
            assert out["outcome"] == "failed" and "no approval" in out["reason"]
            assert rig.weights() == {"triage@blue": 100}
            assert rig.servers.get(ALIAS, "triage-green") is None
        approved = {"action": "approve", "approver": "bob",
                    "candidate_hash": candidate.content_hash}
        out = nodes.deploy({**state, "approval": approved}, runtime)  # type: ignore[arg-type]
        assert out["outcome"] == "failed", "a checkpoint's word is not an approval"
        assert rig.weights() == {"triage@blue": 100}
        from .signed import record_approval, signed_decision

        deps = runner.deps
        record_approval(deps.ledger, signed_decision(deps.store, deps.ledger, workdir / "keys",
                                                     CYCLE, candidate.content_hash))
        out = nodes.deploy({**state, "approval": approved}, runtime)  # type: ignore[arg-type]
        assert out["outcome"] == "deployed", out
        assert out["deployment"]["target"] == "bluegreen"
        assert rig.weights() == {"triage-green": 100, "triage@blue": 0}
    finally:
        rig.close()


def test_a_switch_whose_record_was_lost_is_recorded_by_the_next_run(rig: Rig) -> None:
    candidate = rig.candidate("triage-green")
    lost: list[str] = []
    parts = rig.parts
    record = parts.record

    def crash_on_switched(cycle: str, event: str, payload: dict[str, object], key: str) -> None:
        if event == "switched" and not lost:
            lost.append(key)
            raise RuntimeError("killed between the route change and its record")
        record(cycle, event, payload, key)

    crashing = BlueGreenDeployer(BlueGreenParts(**{**parts.__dict__,
                                                   "record": crash_on_switched}), ALIAS)
    with pytest.raises(RuntimeError, match="killed"):
        crashing.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    assert rig.weights() == {"triage-green": 100, "triage@blue": 0}
    assert rig.events() == ["green_started"]
    rig.deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    rig.deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    assert rig.events() == ["green_started", "switched"]
    switched = next(e for e in rig.ledger.entries() if e.event == "switched").payload
    assert switched["found_done"] and switched["from_version"] == "triage@blue"


def test_a_green_that_fails_to_start_moves_no_traffic_and_leaves_nothing_running(
        rig: Rig) -> None:
    candidate = rig.candidate("triage-broken", config={"fail": "out of memory"})
    with pytest.raises(DeployError, match="out of memory"):
        rig.deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
    assert rig.weights() == {"triage@blue": 100}
    assert rig.servers.get(ALIAS, "triage-broken") is None
    assert [p.name for p in (rig.tmp / "servers").glob("*.pid")] == [Path(rig.blue.pid_file).name]
    assert rig.events() == []
    assert answers(rig.blue.root)


def test_upgate_rollback_of_a_blue_green_cycle_moves_traffic_back_once(rig: Rig) -> None:
    """`upgate rollback CYCLE` on a blue/green deployment takes the switch back through the
    blue/green deployer, records it, and a second run finds it done."""
    from upgate.deploy.rollback import RollbackParts, rollback_cycle
    from upgate.store import Store

    deployment = rig.deployer.deploy(rig.candidate("triage-green"), "d1", cycle_id=CYCLE,
                                     message="m")
    rig.ledger.append(CYCLE, "deploy", "deployed",
                      {"deployment": deployment.model_dump(mode="json")})
    assert rig.weights() == {"triage-green": 100, "triage@blue": 0}
    store = Store(rig.tmp / "state.sqlite")

    def no_git() -> object:
        raise AssertionError("a blue/green rollback must not touch git")

    parts = RollbackParts(ledger=rig.ledger, store=store, admin=None, routes=rig.routes,
                          serving_url="http://127.0.0.1:9/v1", git_deployer=no_git,
                          outbox=lambda event, data: [],
                          deployer_of=lambda target: rig.deployer)
    try:
        first = rollback_cycle(parts, CYCLE, by="alice", reason="latency up")
        assert first.status == "rolled_back", first.message
        assert rig.weights()["triage@blue"] == 100 and not rig.weights().get("triage-green")
        again = rollback_cycle(parts, CYCLE, by="alice", reason="latency up")
        assert again.status == "already_restored", again.message
        records = [e.payload for e in rig.ledger.entries(CYCLE)
                   if (e.node, e.event) == ("rollback", "rolled_back")]
        assert len(records) == 1
        assert records[0]["trigger"] == "manual" and records[0]["by"] == "alice"
        assert records[0]["from_version"] == "triage-green"
    finally:
        store.close()
