"""Blue/green on real vLLM servers, through the real gateway (`upgate gateway serve`, its
own process), under steady clients.

Blue is a vLLM server started from the base model folder; green is another one started
from a copy of that folder (hashed) that also changes the serving configuration
(`--max-model-len` through its serving file). Four clients call the gateway the whole
time. The test tries to break: zero failed requests across the switch, the rollback and
the switch again; the gateway's /v1/models; a tampered green refused before anything
starts or moves; blue stopped (its port dead) once the window has passed, by the
detached reaper, with traffic untouched.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from upgate.deploy.bluegreen import BlueGreenDeployer, BlueGreenParts, ledger_recorder
from upgate.deploy.bluegreen_reaper import ReaperSpec
from upgate.deploy.bluegreen_state import ServerRegistry, ServerRow
from upgate.deploy.vllm_servers import (
    SERVING_FILE,
    Launcher,
    LauncherConfig,
    answers,
    stop_server,
)
from upgate.errors import DeployError
from upgate.gateway.routes import Backend, RouteTable
from upgate.gateway.testing import gateway_process
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.loadgen import Sample, SteadyClients
from upgate.records import Artifact, Candidate

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("UPGATE_VLLM_VENV", ROOT / ".cache" / "vllm-venv"))
MODEL_DIR = Path(os.environ.get("UPGATE_VLLM_MODEL_DIR",
                                ROOT / ".cache" / "models" / "smollm2-135m-instruct"))
ALIAS = "chat"
CYCLE = "c20261130-130000-b1e9ee"
WINDOW_S = 20.0


def launcher_config() -> LauncherConfig:
    """Small servers: 1 GiB of KV cache, 1024 tokens (green's serving file says 512)."""
    return LauncherConfig(
        python=VENV / "bin" / "python", ports=(8071, 8079), warm_requests=2,
        startup_timeout_s=240,
        args=("--dtype", "float32", "--max-model-len", "1024",
              "--gpu-memory-utilization", "0.1", "--enforce-eager"),
        env={**LauncherConfig().env, "VLLM_CPU_KVCACHE_SPACE": "1"})


def failed(samples: list[Sample]) -> list[Sample]:
    """The requests that did not get a 200."""
    return [s for s in samples if not s.ok]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[dict[str, object]]:
    """Blue running and routed, the gateway in front, a deployer; everything stopped after."""
    if not (VENV / "bin" / "python").exists() or not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"no vLLM venv at {VENV} or model at {MODEL_DIR} (run `make vllm`)")
    launcher = Launcher(launcher_config(), tmp_path / "servers")
    routes = RouteTable(tmp_path / "gateway.db")
    servers = ServerRegistry(tmp_path / "servers.db")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    blue = launcher.start("blue", MODEL_DIR, served_name=f"{ALIAS}@blue", args=[])
    try:
        servers.put(ServerRow(alias=ALIAS, version=f"{ALIAS}@blue", model=f"{ALIAS}@blue",
                              base_url=blue.base_url, model_dir=str(MODEL_DIR),
                              sha256=sha256_tree(MODEL_DIR), port=blue.port, pid=blue.pid,
                              log=blue.log, managed=True, status="running",
                              started_at=time.time()))
        routes.set_routes(ALIAS, [Backend(version=f"{ALIAS}@blue", base_url=blue.base_url,
                                          model=f"{ALIAS}@blue", weight=100)], reason="blue")
        parts = BlueGreenParts(
            routes=routes, servers=servers, launcher=launcher, window_s=WINDOW_S,
            record=ledger_recorder(ledger), default_base_url=None,
            reaper=ReaperSpec(servers_db=tmp_path / "servers.db",
                              routes_db=tmp_path / "gateway.db", state_dir=tmp_path,
                              poll_s=0.5))
        with gateway_process(tmp_path / "gateway.db", blue.base_url) as gateway:
            yield {"blue": blue, "gateway": gateway, "routes": routes, "servers": servers,
                   "ledger": ledger, "deployer": BlueGreenDeployer(parts, ALIAS),
                   "launcher": launcher}
    finally:
        for row in servers.all():
            if row.pid and row.port:
                stop_server(row.pid, row.port, grace_s=10)
        stop_server(blue.pid, blue.port, grace_s=10)


def green_candidate(tmp_path: Path) -> tuple[Candidate, Path]:
    """A copy of the base model folder with a serving file (max-model-len 512), hashed."""
    folder = tmp_path / "green"
    shutil.copytree(MODEL_DIR, folder)
    (folder / SERVING_FILE).write_text('{"args": ["--max-model-len", "512"]}')
    digest = sha256_tree(folder)
    name = f"{ALIAS}-{digest[:12]}"
    return Candidate(proposal_id="p-bluegreen", kind="model", diff="", changed_paths=(),
                     artifacts=(Artifact(name=name, kind="model", path=str(folder),
                                         sha256=digest),)), folder


def test_bluegreen_switch_rollback_and_reap_under_steady_clients(
        rig: dict[str, object], tmp_path: Path) -> None:
    gateway = str(rig["gateway"])
    routes: RouteTable = rig["routes"]  # type: ignore[assignment]
    ledger: Ledger = rig["ledger"]  # type: ignore[assignment]
    deployer: BlueGreenDeployer = rig["deployer"]  # type: ignore[assignment]
    blue_root = rig["blue"].root  # type: ignore[attr-defined]
    candidate, folder = green_candidate(tmp_path)
    green = candidate.artifacts[0].name

    # Steady, not flooding: green's startup competes with blue for the same few cores.
    with SteadyClients(f"{gateway}/v1", ALIAS, threads=4, pause_s=0.25) as clients:
        clients.wait_for(4)
        # A tampered green: one added file. Refused before a process starts or a route moves.
        (folder / "extra.txt").write_text("not what was approved")
        generation = routes.generation()
        with pytest.raises(DeployError, match="not the approved"):
            deployer.deploy(candidate, "d-tampered", cycle_id=CYCLE, message="m")
        assert routes.generation() == generation
        assert sorted(p.name for p in (tmp_path / "servers").glob("*.log")) == [
            f"blue-{rig['blue'].port}.log"]  # type: ignore[attr-defined]
        (folder / "extra.txt").unlink()

        deployment = deployer.deploy(candidate, "d1", cycle_id=CYCLE, message="m")
        switched = time.time()
        clients.wait_for(8, since=switched)
        assert {s.version for s in clients.taken(switched)} <= {green}

        # /v1/models through the gateway: the alias and its versions, and the weights.
        listed = httpx.get(f"{gateway}/v1/models", timeout=30).json()["data"]
        chat = next(m for m in listed if m["id"] == ALIAS)
        assert {v["version"]: v["weight"] for v in chat["versions"]} == {
            green: 100, f"{ALIAS}@blue": 0}
        # Green really runs the new serving configuration.
        green_row = rig["servers"].get(ALIAS, green)  # type: ignore[attr-defined]
        served = httpx.get(f"{green_row.base_url}/models", timeout=30).json()["data"]
        assert served[0]["max_model_len"] == 512 and served[0]["root"] == str(folder)

        # Rollback inside the window: back on blue, which never stopped.
        assert answers(blue_root)
        result = deployer.rollback(deployment)
        assert result.status == "restored" and not result.detail["blue_restarted"]
        assert result.detail["verified"]["models_ok"] and result.detail["verified"]["smoke_ok"]
        rolled = time.time()
        clients.wait_for(8, since=rolled)
        assert {s.version for s in clients.taken(rolled)} <= {f"{ALIAS}@blue"}

        # Forward again (green is still warm: nothing starts), then let blue's window pass.
        deployer.deploy(candidate, "d2", cycle_id=CYCLE, message="m")
        for _ in range(int(WINDOW_S * 10) + 600):
            if not answers(blue_root, timeout_s=1):
                break
            time.sleep(0.1)
        stopped = time.time()
        clients.wait_for(8, since=stopped)
        samples = clients.stop()

    assert not answers(blue_root), "blue still answers after its rollback window"
    assert failed(samples) == [], failed(samples)[:5]
    versions = {s.version for s in samples}
    assert versions == {green, f"{ALIAS}@blue"}
    assert {s.version for s in samples if s.start > stopped} == {green}
    events = [e.event for e in ledger.entries() if e.node == "bluegreen"]
    assert events[:2] == ["green_started", "switched"]
    assert events.count("switched") == 2 and events.count("green_started") == 1
    for _ in range(50):
        if "blue_stopped" in [e.event for e in ledger.entries()]:
            break
        time.sleep(0.1)
    record = next(e for e in ledger.entries() if e.event == "blue_stopped").payload
    assert record["was_running"] and record["after_s"] >= WINDOW_S, record
    assert {b.version: b.weight for b in routes.routes(ALIAS)} == {green: 100}
