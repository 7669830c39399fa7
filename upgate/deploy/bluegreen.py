"""Blue/green for full weights or serving configuration: a second vLLM server, then traffic.

Deploying a candidate whose artifact is a model folder (weights, tokenizer, and optionally
an `upgate-serving.json` with vLLM arguments; all of it content-hashed) goes:

1. re-hash the folder: anything but the approved content is refused before a process
   starts or a route changes;
2. start green (`Launcher.start`: its own server on a free loopback port), wait for
   `/health`, warm it, and re-hash once more;
3. move the alias's traffic in the gateway's route table from blue to green in one route
   change (green weight 100; blue weight 0, still routable by pin while it is warm);
4. leave blue warm for the policy's `rollout.rollback_window_s`: its row in the servers
   table says when it may stop, and a detached reaper (`bluegreen_reaper`) stops it then;
   every later deploy and `upgate bluegreen reap` reap too, so no blue runs forever.

Rollback moves traffic back to blue: one route change while blue is warm; a blue the
reaper already stopped is started again from its recorded folder (re-hashed), and the
result says so. A blue upgate did not start (the server `make vllm` runs) gets traffic
back but is never stopped by upgate.

A blue/green switch is a served-model swap: the graph's deploy node runs it only behind a
recorded human approval bound to the candidate; nothing else here starts one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from upgate.artifacts import tree_problem
from upgate.deploy.base import Deployer, Health, RollbackResult
from upgate.deploy.bluegreen_reaper import ReaperSpec, reap_expired, spawn_reaper
from upgate.deploy.bluegreen_state import ServerRegistry, ServerRow
from upgate.deploy.vllm_servers import Launcher, ServerHandle, answers
from upgate.errors import DeployError
from upgate.gateway.routes import Backend, RouteTable
from upgate.records import Artifact, Candidate, Deployment

if TYPE_CHECKING:
    from upgate.config import Settings
    from upgate.ledger import Ledger

log = logging.getLogger(__name__)

Recorder = Callable[[str, str, dict[str, Any], str], None]
"""Append one `bluegreen` ledger record: (cycle_id, event, payload, idempotency key)."""


@dataclass(frozen=True)
class BlueGreenParts:
    """What a blue/green deployer is built from (see `graphs.deps`)."""

    routes: RouteTable
    servers: ServerRegistry
    launcher: Launcher
    window_s: float
    record: Recorder
    default_base_url: str | None
    """OpenAI root of the server that serves an alias upgate never routed (its blue)."""
    reaper: ReaperSpec | None = None
    """How to start the detached reaper; None: only later commands reap."""


def ledger_recorder(ledger: Ledger) -> Recorder:
    """Record `bluegreen` events in the ledger, once per key."""
    def record(cycle_id: str, event: str, payload: dict[str, Any], key: str) -> None:
        ledger.append(cycle_id, "bluegreen", event, payload, key=key)
    return record


def bluegreen_parts(settings: Settings, window_s: float, ledger: Ledger) -> BlueGreenParts:
    """The parts of a state folder's blue/green deployer (route table, servers, launcher,
    ledger, and the detached reaper's spec)."""
    servers_db = settings.state_dir / "servers.db"
    witness = settings.witness.model_dump(mode="json") if settings.witness else None
    return BlueGreenParts(
        routes=RouteTable(settings.gateway_db), servers=ServerRegistry(servers_db),
        launcher=Launcher(settings.bluegreen, settings.state_dir / "servers"),
        window_s=window_s, record=ledger_recorder(ledger),
        default_base_url=settings.serving.openai_url,
        reaper=ReaperSpec(servers_db=servers_db, routes_db=settings.gateway_db,
                          state_dir=settings.state_dir, witness=witness))


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def _check(artifact_dir: Path, sha256: str, *, what: str) -> None:
    problem = tree_problem(artifact_dir, sha256)
    if problem is not None:
        raise DeployError(f"refusing to serve {what}: {problem}. No traffic moved; run a new "
                          "cycle to build, judge and approve it again")


class BlueGreenDeployer(Deployer):
    """Start green beside blue, move the alias's traffic, keep blue warm for a window."""

    target: Literal["git", "vllm", "bluegreen"] = "bluegreen"

    def __init__(self, parts: BlueGreenParts | None, alias: str | None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.parts = parts
        self.alias = alias
        self.clock = clock

    def _need(self) -> tuple[BlueGreenParts, str]:
        if self.parts is None:
            raise DeployError("blue/green needs the gateway's route table and a [bluegreen] "
                              "launcher; build the deployer through graphs.deps")
        if not self.alias:
            raise DeployError("the target manifest names no [model] alias to switch")
        return self.parts, self.alias

    # deploy -------------------------------------------------------------------------------

    def deploy(self, candidate: Candidate, deployment_id: str, *, cycle_id: str,
               message: str) -> Deployment:
        """Start green, switch the alias to it, schedule blue's stop (idempotent)."""
        parts, alias = self._need()
        artifact = next((a for a in candidate.artifacts if a.kind == "model"), None)
        if artifact is None:
            raise DeployError("the candidate carries no model folder artifact for blue/green")
        self.reap()
        green_dir = Path(artifact.path)
        _check(green_dir, artifact.sha256, what=f"{artifact.name} from {green_dir}")
        current = parts.routes.routes(alias)
        weighted = [b for b in current if b.weight > 0]
        if [b.version for b in weighted] == [artifact.name]:
            log.info("%s: %s already routes all traffic to %s", deployment_id, alias,
                     artifact.name)
            blue = next((b for b in current if b.version != artifact.name), None)
            # Same key as the switch's own record: a no-op when it was recorded, and the
            # record a crash between route change and ledger would otherwise lose.
            parts.record(cycle_id, "switched", {
                "alias": alias, "from_version": blue.version if blue else None,
                "to_version": artifact.name, "switch_s": None,
                "generation": parts.routes.generation(), "deployment_id": deployment_id,
                "found_done": True}, f"{cycle_id}/bluegreen/switched/{deployment_id}")
            return self._deployment(alias, artifact, deployment_id, cycle_id, blue)
        blue = weighted[0] if weighted else self._initial_backend(alias)
        self._remember_blue(alias, blue)
        green = self._start_green(alias, artifact, green_dir, cycle_id, deployment_id)
        with parts.servers.switching():
            began = time.monotonic()
            generation = parts.routes.set_routes(alias, [
                Backend(version=artifact.name, base_url=green.base_url,
                        model=artifact.name, weight=100),
                blue.model_copy(update={"weight": 0})],
                reason=f"bluegreen {deployment_id}: {blue.version} -> {artifact.name}")
            switch_s = time.monotonic() - began
            now = self.clock()
            parts.servers.update(alias, artifact.name, stop_after=None, switched_at=None)
            self._schedule_stop(alias, blue.version, now, cycle_id)
        parts.record(cycle_id, "switched", {
            "alias": alias, "from_version": blue.version, "to_version": artifact.name,
            "switch_s": round(switch_s, 6), "generation": generation,
            "deployment_id": deployment_id, "blue_stop_after": now + parts.window_s},
            f"{cycle_id}/bluegreen/switched/{deployment_id}")
        log.info("%s: %s moved from %s to %s (generation %d)", deployment_id, alias,
                 blue.version, artifact.name, generation)
        return self._deployment(alias, artifact, deployment_id, cycle_id, blue)

    def _initial_backend(self, alias: str) -> Backend:
        parts, _ = self._need()
        if parts.default_base_url is None:
            raise DeployError(f"{alias} is not routed in the gateway and no [serving] "
                              "base_url says where it is served now; nothing to switch from")
        return Backend(version=f"{alias}@initial", base_url=parts.default_base_url,
                       model=alias, weight=100)

    def _remember_blue(self, alias: str, blue: Backend) -> None:
        """Give blue a servers row (unmanaged when upgate did not start it)."""
        parts, _ = self._need()
        if parts.servers.get(alias, blue.version) is None:
            parts.servers.put(ServerRow(alias=alias, version=blue.version, model=blue.model,
                                        base_url=blue.base_url, managed=False,
                                        status="running", started_at=self.clock()))

    def _start_green(self, alias: str, artifact: Artifact, green_dir: Path, cycle_id: str,
                     deployment_id: str) -> ServerHandle | ServerRow:
        """A running green for the artifact: the one already up, or a new one."""
        parts, _ = self._need()
        row = parts.servers.get(alias, artifact.name)
        if (row is not None and row.status == "running" and row.sha256 == artifact.sha256
                and answers(_root(row.base_url))):
            return row
        handle = parts.launcher.start(f"{alias}-{artifact.name}", green_dir,
                                      served_name=artifact.name)
        try:
            # Again after the start: the folder may not change while vLLM reads it.
            _check(green_dir, artifact.sha256, what=f"{artifact.name} from {green_dir}")
        except DeployError:
            parts.launcher.stop(handle)
            raise
        parts.servers.put(self._row(alias, artifact.name, handle, artifact.sha256))
        parts.record(cycle_id, "green_started", {
            "alias": alias, "version_name": artifact.name, "base_url": handle.base_url,
            "model_dir": str(green_dir), "sha256": artifact.sha256, "args": list(handle.args),
            "pid": handle.pid, "startup_s": handle.startup_s, "deployment_id": deployment_id},
            f"{cycle_id}/bluegreen/green_started/{deployment_id}/{handle.pid}")
        return handle

    def _row(self, alias: str, version: str, handle: ServerHandle, sha256: str) -> ServerRow:
        return ServerRow(alias=alias, version=version, model=handle.served_name,
                         base_url=handle.base_url, model_dir=handle.model_dir, sha256=sha256,
                         args=handle.args, port=handle.port, pid=handle.pid, log=handle.log,
                         managed=True, status="running", started_at=self.clock())

    def _schedule_stop(self, alias: str, version: str, now: float, cycle_id: str) -> None:
        """Traffic left `version`: it may stop once the rollback window has passed."""
        parts, _ = self._need()
        parts.servers.update(alias, version, switched_at=now, stop_after=now + parts.window_s,
                             cycle_id=cycle_id)
        row = parts.servers.get(alias, version)
        if row is not None and row.managed and parts.reaper is not None:
            spawn_reaper(parts.reaper)

    def _deployment(self, alias: str, artifact: Artifact, deployment_id: str, cycle_id: str,
                    blue: Backend | None) -> Deployment:
        parts, _ = self._need()
        green = parts.servers.get(alias, artifact.name)
        blue_row = parts.servers.get(alias, blue.version) if blue is not None else None
        previous = None if blue is None else {
            "version_name": blue.version, "base_url": blue.base_url, "model": blue.model,
            "model_dir": blue_row.model_dir if blue_row else None,
            "sha256": blue_row.sha256 if blue_row else None,
            "managed": bool(blue_row and blue_row.managed),
            "stop_after": blue_row.stop_after if blue_row else None}
        return Deployment(
            target="bluegreen", deployment_id=deployment_id, alias=alias,
            version_name=artifact.name, previous=previous,
            served={"base_url": green.base_url if green else None,
                    "model_dir": artifact.path, "sha256": artifact.sha256,
                    "args": list(green.args) if green else [], "cycle_id": cycle_id})

    # verify -------------------------------------------------------------------------------

    def verify(self, deployment: Deployment) -> Health:
        """All of the alias's unpinned traffic goes to the deployed version, whose server
        answers and lists it."""
        parts, alias = self._need()
        weighted = [b for b in parts.routes.routes(alias) if b.weight > 0]
        backend = weighted[0] if len(weighted) == 1 else None
        routed = backend is not None and backend.version == deployment.version_name
        listed = False
        if backend is not None and routed:
            listed = backend.model in _models(_root(backend.base_url))
        return Health(healthy=routed and listed, detail={
            "alias": alias, "routed": [b.version for b in weighted],
            "expected": deployment.version_name, "server_lists_it": listed,
            "base_url": backend.base_url if backend else None})

    # rollback -----------------------------------------------------------------------------

    def rollback(self, deployment: Deployment) -> RollbackResult:
        """Move the alias's traffic back to blue (starting blue again if it was stopped)."""
        parts, alias = self._need()
        started_at, began = datetime.now(UTC).isoformat(), time.monotonic()
        previous = deployment.previous
        if not previous:
            return RollbackResult(status="nothing_to_restore", detail={
                "alias": alias, "why": "no blue was recorded for this deployment"})
        blue_version = str(previous["version_name"])
        cycle_id = str((deployment.served or {}).get("cycle_id") or "")
        weighted = [b.version for b in parts.routes.routes(alias) if b.weight > 0]
        blue = self._blue_backend(alias, previous)
        restarted = False
        if not answers(_root(blue.base_url)):
            blue, restarted = self._restart_blue(alias, previous, cycle_id), True
        already = weighted == [blue_version] and not restarted
        generation = None
        if not already:
            green = next((b for b in parts.routes.routes(alias)
                          if b.version == deployment.version_name), None)
            backends = [blue.model_copy(update={"weight": 100})]
            if green is not None:
                backends.append(green.model_copy(update={"weight": 0}))
            with parts.servers.switching():
                generation = parts.routes.set_routes(
                    alias, backends, reason=f"bluegreen rollback {deployment.deployment_id}: "
                    f"{deployment.version_name} -> {blue_version}")
                now = self.clock()
                parts.servers.update(alias, blue_version, stop_after=None, switched_at=None)
                if green is not None:
                    self._schedule_stop(alias, green.version, now, cycle_id)
        verified = _smoke(blue)
        return RollbackResult(status="already_restored" if already else "restored", detail={
            "alias": alias, "from_version": deployment.version_name,
            "to_version": blue_version, "restored": blue_version, "trigger": "bluegreen",
            "started_at": started_at, "duration_s": round(time.monotonic() - began, 3),
            "blue_restarted": restarted, "generation": generation, "verified": verified})

    def _blue_backend(self, alias: str, previous: dict[str, Any]) -> Backend:
        parts, _ = self._need()
        row = parts.servers.get(alias, str(previous["version_name"]))
        base_url = row.base_url if row is not None else str(previous["base_url"])
        return Backend(version=str(previous["version_name"]), base_url=base_url,
                       model=str(previous.get("model") or alias), weight=100)

    def _restart_blue(self, alias: str, previous: dict[str, Any], cycle_id: str) -> Backend:
        """Blue no longer answers: start it again from its recorded, re-hashed folder."""
        parts, _ = self._need()
        version = str(previous["version_name"])
        row = parts.servers.get(alias, version)
        if row is None or not row.managed or not row.model_dir or not row.sha256:
            raise DeployError(
                f"blue {version} of {alias} does not answer at {previous['base_url']} and "
                "upgate did not start it, so it cannot start it again; start that server, "
                "then roll back again. Traffic stays where it is")
        _check(Path(row.model_dir), row.sha256, what=f"blue {version} from {row.model_dir}")
        log.warning("blue %s of %s was stopped; starting it again for the rollback", version,
                    alias)
        handle = parts.launcher.start(f"{alias}-{version}", Path(row.model_dir),
                                      served_name=row.model, args=list(row.args))
        parts.servers.put(self._row(alias, version, handle, row.sha256))
        if cycle_id:
            parts.record(cycle_id, "blue_restarted", {
                "alias": alias, "version_name": version, "base_url": handle.base_url,
                "pid": handle.pid, "startup_s": handle.startup_s},
                f"{cycle_id}/bluegreen/blue_restarted/{version}/{handle.pid}")
        return Backend(version=version, base_url=handle.base_url, model=row.model, weight=100)

    # reap ---------------------------------------------------------------------------------

    def reap(self) -> list[dict[str, Any]]:
        """Stop every managed server whose window has passed and that carries no traffic."""
        parts, _ = self._need()
        return reap_expired(parts.servers, parts.routes, parts.record, now=self.clock())


def _models(root: str) -> list[str]:
    try:
        resp = httpx.get(f"{root}/v1/models", timeout=10)
        return [m["id"] for m in resp.json().get("data", [])] if resp.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return []


def _smoke(backend: Backend) -> dict[str, Any]:
    """What the restored server serves: it lists the model and answers one completion."""
    root = _root(backend.base_url)
    models_ok = backend.model in _models(root)
    try:
        resp = httpx.post(f"{backend.base_url}/chat/completions", timeout=60, json={
            "model": backend.model, "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hello"}]})
        smoke_ok, detail = resp.status_code == 200, f"HTTP {resp.status_code}"
    except httpx.HTTPError as exc:
        smoke_ok, detail = False, str(exc)
    return {"models_ok": models_ok, "smoke_ok": smoke_ok, "detail": detail}
