"""Roll back at any time, by a person: put an earlier version back, everything it was served
with together, check what is served afterwards, and record it.

Two ways in. `rollback_alias` restores a named version of a served alias: only a version
the ledger shows deployed for that alias under verified signed approvals (or its
`@initial` version; `upgate.verified`), whose adapter folder still has the content
hash the ledger holds; anything else is refused before anything changes.
`rollback_cycle` takes back one cycle's deployment: a served model goes back to the
version that deployment replaced; a landed code, prompt or config change is reverted on
the deploy branch (a branch deployment loses its branch).

For an alias, restoring means: the adapter loaded under its version name and the vLLM
alias pointed at it (in place), the store's active version, and the gateway's routes for
the alias (all traffic to the restored version) when the alias is routed there. Then
`/v1/models` must show the alias on the restored folder and a smoke chat completion must
answer; both go in the `rollback/rolled_back` record (or `rollback/failed`, with what to do).

Idempotent: a second run finds the target restored and says so, recording nothing new.
A rollback that crashed after restoring but before its record is completed by the next run
from its `rollback/requested` entry, so the ledger never misses a restore.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from upgate.deploy.base import Deployer
from upgate.deploy.git import GitDeployer
from upgate.deploy.reconcile import ledger_versions
from upgate.deploy.vllm import VllmAdmin, check_adapter
from upgate.errors import DeployError
from upgate.gateway.routes import Backend, RouteTable
from upgate.ledger import Entry, Ledger, OutboxWrite
from upgate.records import Deployment
from upgate.store import Store

log = logging.getLogger(__name__)

NODE = "rollback"


class Verified(BaseModel):
    """What is served after a rollback: the alias on the restored folder, a smoke answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models_ok: bool | None
    """`/v1/models` shows the alias on the restored adapter folder (None: no served model)."""
    smoke_ok: bool | None
    """A chat completion to the alias answered (None: no served model)."""
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing checked failed."""
        return self.models_ok is not False and self.smoke_ok is not False


class RollbackOutcome(BaseModel):
    """What a rollback did; `status` decides the exit code, `message` is for the person."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["rolled_back", "already_restored", "nothing_to_restore", "failed"]
    cycle_id: str
    message: str
    record: dict[str, Any] | None = None
    """The ledger payload written, if one was."""


@dataclass
class RollbackParts:
    """What a rollback touches, built once by the caller (the CLI builds it from `Deps`)."""

    ledger: Ledger
    store: Store
    admin: VllmAdmin | None
    routes: RouteTable | None
    serving_url: str
    """The OpenAI root (…/v1) of the vLLM server: a restored version's route by default."""
    git_deployer: Callable[[], Deployer]
    outbox: Callable[[str, dict[str, Any]], list[OutboxWrite]]
    """The notifications for a `rollback` record of the given event."""
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    deployer_of: Callable[[str], Deployer] | None = None
    """The deployer of another target (blue/green) by its tag, where the caller has one."""


def manual_cycle_id(alias: str, at: datetime) -> str:
    """The ledger cycle id of a rollback not tied to a cycle: `rollback-<alias>-<utc>`."""
    slug = re.sub(r"[^a-z0-9-]+", "-", alias.lower()).strip("-")[:32] or "alias"
    return f"rollback-{slug}-{at.astimezone(UTC).strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class _Target:
    """A version to restore, checked against the ledger and the store."""

    alias: str
    version: str
    path: Path
    sha256: str
    deployment_id: str


def approved_target(parts: RollbackParts, alias: str, version: str) -> _Target:
    """The version to restore, or DeployError (nothing changed) when the ledger shows no
    approved deployment of it for `alias` or its folder is not what was approved."""
    approved, _ = ledger_versions(parts.ledger, alias, parts.store)
    digest = approved.get(version)
    if digest is None:
        known = ", ".join(sorted(approved)) or "none yet"
        raise DeployError(
            f"{version!r} was never served for {alias} after an approval recorded in the "
            f"ledger, so it cannot be restored; nothing changed. Versions of {alias} you can "
            f"restore: {known}")
    row = next((v for v in parts.store.served_versions(alias)
                if v["version_name"] == version and v["sha256"] == digest), None)
    if row is None:
        raise DeployError(
            f"the state has no record of where {version} of {alias} is stored with content "
            f"hash {digest[:16]}; nothing changed. Run `upgate reconcile`, or restore "
            "another version")
    check_adapter(Path(row["path"]), digest)  # a tampered folder is refused here
    return _Target(alias=alias, version=version, path=Path(row["path"]), sha256=digest,
                   deployment_id=str(row["deployment_id"]))


def _routed(parts: RollbackParts, alias: str) -> list[Backend] | None:
    if parts.routes is None or alias not in parts.routes.aliases():
        return None
    return parts.routes.routes(alias)


def _in_place(parts: RollbackParts, target: _Target) -> bool:
    """Whether the alias serves the target everywhere it is served: vLLM, store, gateway."""
    assert parts.admin is not None
    served = parts.admin.models().get(target.alias)
    active = parts.store.active_version(target.alias)
    routed = _routed(parts, target.alias)
    return (served is not None and served.root == str(target.path)
            and (active is None or active["version_name"] == target.version)
            and (routed is None or all(b.version == target.version or b.weight == 0
                                       for b in routed)))


def verify_served(admin: VllmAdmin, alias: str, path: Path) -> Verified:
    """`/v1/models` shows `alias` on `path`, and the alias answers a smoke completion."""
    served = admin.models().get(alias)
    root = served.root if served is not None else None
    smoke = admin.smoke(alias)
    return Verified(models_ok=root == str(path), smoke_ok=bool(smoke.get("ok")),
                    detail={"alias": alias, "serves": root, "expected": str(path),
                            "smoke": smoke})


def _restore_alias(parts: RollbackParts, target: _Target, reason: str) -> dict[str, Any]:
    """Load, point, activate and route the target version; each step idempotent."""
    assert parts.admin is not None
    parts.admin.ensure_loaded(target.version, target.path, expected_sha256=target.sha256)
    parts.admin.point_alias(target.alias, target.path, expected_sha256=target.sha256)
    parts.store.reactivate(target.alias, target.deployment_id)
    out: dict[str, Any] = {}
    routed = _routed(parts, target.alias)
    if routed is not None and parts.routes is not None:
        same = next((b for b in routed if b.version == target.version), None)
        backend = Backend(version=target.version, weight=100,
                          base_url=same.base_url if same else parts.serving_url,
                          model=same.model if same else target.version)
        out["generation"] = parts.routes.set_routes(target.alias, [backend], reason=reason)
        out["backends"] = [backend.model_dump()]
    return out


def _pending_request(parts: RollbackParts, alias: str, version: str) -> Entry | None:
    """The alias's newest rollback record, when it is an unfinished or failed restore of
    `version`: the next run of the same restore completes it under the same record."""
    last = None
    for e in parts.ledger.entries():
        if e.node == NODE and e.payload.get("alias") == alias:
            last = e
    if (last is not None and last.event in ("requested", "failed")
            and last.payload.get("to_version") == version
            and last.payload.get("trigger") == "manual"):
        return last
    return None


def _append(parts: RollbackParts, cycle_id: str, event: str, payload: dict[str, Any]) -> None:
    """Append one record, keyed by the rollback's start so a repeat of it records once."""
    key = f"{cycle_id}/{NODE}/{event}/{payload['started_at']}"
    parts.ledger.append(cycle_id, NODE, event, payload, key=key,
                        outbox=parts.outbox(event, payload))


def restore_version(parts: RollbackParts, cycle_id: str, target: _Target, *,
                    from_version: str, by: str, reason: str) -> RollbackOutcome:
    """Restore `target` (see the module docstring), verify and record it under `cycle_id`."""
    if parts.admin is None:
        raise DeployError("no vLLM server is configured ([serving] base_url), so no alias "
                          "can be rolled back")
    request = _pending_request(parts, target.alias, target.version)
    if _in_place(parts, target) and request is None:
        verified = verify_served(parts.admin, target.alias, target.path)
        state = "verified" if verified.ok else f"but its check failed: {verified.detail}"
        return RollbackOutcome(
            status="already_restored", cycle_id=cycle_id,
            message=f"{target.alias} already serves {target.version} ({state}); "
                    "nothing was changed or recorded")
    started = parts.now()
    base = {"alias": target.alias, "from_version": from_version,
            "to_version": target.version, "trigger": "manual", "by": by, "reason": reason,
            "started_at": started.isoformat()}
    if request is not None:  # a run that crashed or failed: finish it, same record
        cycle_id, base = request.cycle_id, {k: request.payload[k] for k in base}
        started = datetime.fromisoformat(str(base["started_at"]))
    else:
        _append(parts, cycle_id, "requested", base)
    t0 = time.monotonic()
    try:
        routed = _restore_alias(parts, target, f"rollback by {by}: {reason}")
        verified = verify_served(parts.admin, target.alias, target.path)
    except DeployError as exc:
        payload = {**base, "duration_s": round(time.monotonic() - t0, 3),
                   "reason_failed": str(exc)}
        _append(parts, cycle_id, "failed", payload)
        return RollbackOutcome(
            status="failed", cycle_id=cycle_id, record=payload,
            message=f"rolling {target.alias} back to {target.version} failed: {exc}. Every "
                    "step is safe to repeat: fix the cause (is vLLM up? `upgate reconcile` "
                    "after a restart) and run the same command again")
    duration = (parts.now() - started).total_seconds() if request else time.monotonic() - t0
    payload = {**base, "restored": target.version, "duration_s": round(duration, 3),
               "verified": verified.model_dump(), **({"routes": routed} if routed else {})}
    if not verified.ok:
        _append(parts, cycle_id, "failed", payload)
        return RollbackOutcome(
            status="failed", cycle_id=cycle_id, record=payload,
            message=f"{target.alias} was pointed back at {target.version}, but what is served "
                    f"does not check out: {verified.detail}. Check the vLLM server, then run "
                    "the same command again")
    _append(parts, cycle_id, "rolled_back", payload)
    return RollbackOutcome(
        status="rolled_back", cycle_id=cycle_id, record=payload,
        message=f"{target.alias}: {from_version} -> {target.version} in {duration:.2f} s; "
                f"/v1/models and a smoke completion check out (recorded as {cycle_id})")


def rollback_alias(parts: RollbackParts, alias: str, version: str, *, by: str,
                   reason: str) -> RollbackOutcome:
    """`upgate rollback --alias A --to VERSION`."""
    target = approved_target(parts, alias, version)
    active = parts.store.active_version(alias)
    from_version = str(active["version_name"]) if active else f"{alias}@initial"
    return restore_version(parts, manual_cycle_id(alias, parts.now()), target,
                           from_version=from_version, by=by, reason=reason)


def deployment_of(ledger: Ledger, cycle_id: str) -> Deployment:
    """The deployment a cycle recorded; DeployError saying why there is none."""
    entries = ledger.entries(cycle_id)
    if not entries:
        raise DeployError(f"the ledger has no cycle {cycle_id}; see `upgate history`")
    deployed = [e for e in entries if e.node == "deploy" and e.event == "deployed"]
    if not deployed:
        ends = [e.event for e in entries if e.node == "record"]
        raise DeployError(
            f"cycle {cycle_id} was never deployed (it ended {ends[-1] if ends else 'unfinished'})"
            "; there is nothing to roll back")
    return Deployment.model_validate(deployed[-1].payload["deployment"])


def rollback_cycle(parts: RollbackParts, cycle_id: str, *, by: str,
                   reason: str) -> RollbackOutcome:
    """`upgate rollback CYCLE`: take back that cycle's deployment."""
    deployment = deployment_of(parts.ledger, cycle_id)
    if deployment.target == "git":
        return _revert_change(parts, cycle_id, deployment, by=by, reason=reason)
    if deployment.target == "bluegreen":
        return _switch_back(parts, cycle_id, deployment, by=by, reason=reason)
    alias, version = str(deployment.alias), str(deployment.version_name)
    previous = deployment.previous or {}
    if not previous.get("version_name"):
        return RollbackOutcome(
            status="nothing_to_restore", cycle_id=cycle_id,
            message=f"nothing to restore: {version} was the first version served under "
                    f"{alias} and no earlier one was recorded, so it stays live. Deploy a "
                    "fixed version through a new cycle")
    target = approved_target(parts, alias, str(previous["version_name"]))
    active = parts.store.active_version(alias)
    now = str(active["version_name"]) if active else None
    if now not in (version, target.version):
        raise DeployError(
            f"{alias} serves {now} now, deployed after cycle {cycle_id}; rolling this cycle "
            f"back would also undo that. Roll back the later cycle, or choose the version: "
            f"`upgate rollback --alias {alias} --to VERSION`")
    return restore_version(parts, cycle_id, target, from_version=version, by=by,
                           reason=reason)


def later_landed(parts: RollbackParts, cycle_id: str, deployment: Deployment,
                 deployer: Deployer) -> list[str]:
    """The cycles, newest first, whose changes landed on the deploy branch after this
    cycle's and are still live there (not rolled back): each was judged on a tree that
    holds this change, so reverting it underneath them leaves a tree nobody judged."""
    if not isinstance(deployer, GitDeployer):
        return []
    deployed: dict[str, Deployment] = {}
    for e in parts.ledger.entries():
        if e.node == "deploy" and e.event == "deployed" and e.cycle_id != cycle_id:
            other = Deployment.model_validate(e.payload["deployment"])
            if other.target == "git":
                deployed.pop(e.cycle_id, None)
                deployed[e.cycle_id] = other  # by the order of their last deployment
    later = {id(d) for d in deployer.landed_after(deployment, list(deployed.values()))}
    return [c for c, d in reversed(deployed.items()) if id(d) in later]


def _revert_change(parts: RollbackParts, cycle_id: str, deployment: Deployment, *,
                   by: str, reason: str) -> RollbackOutcome:
    """A code, prompt or config change: the git deployer's rollback, recorded; refused
    while a later landed change is live on top of it (see `later_landed`)."""
    started, t0 = parts.now(), time.monotonic()
    deployer = parts.git_deployer()
    previous = deployment.previous or {}
    where = str(previous.get("deploy_branch") or deployment.branch)
    later = later_landed(parts, cycle_id, deployment, deployer)
    if later:
        raise DeployError(
            f"cycle {cycle_id}'s change on {where} has later landed changes on top of it: "
            f"{', '.join(later)} (newest first). Each was judged on a tree that holds this "
            "change, so reverting it underneath them would leave a tree nobody judged; "
            "nothing changed. Roll those back first, newest first (`upgate rollback "
            f"{later[0]}`), then this cycle")
    try:
        result = deployer.rollback(deployment)
    except DeployError as exc:
        payload: dict[str, Any] = {
            "branch": where, "from_version": deployment.commit, "trigger": "manual",
            "by": by, "reason": reason, "started_at": started.isoformat(),
            "duration_s": round(time.monotonic() - t0, 3), "reason_failed": str(exc)}
        _append(parts, cycle_id, "failed", payload)
        return RollbackOutcome(status="failed", cycle_id=cycle_id, record=payload,
                               message=f"taking back cycle {cycle_id}'s change failed: {exc}")
    recorded = any(e.node == NODE and e.event == "rolled_back"
                   for e in parts.ledger.entries(cycle_id))
    if result.status == "already_restored" and (recorded or "revert_commit" not in result.detail):
        return RollbackOutcome(status="already_restored", cycle_id=cycle_id,
                               message=f"cycle {cycle_id}'s change is already taken back "
                                       f"({result.detail}); nothing was changed or recorded")
    if result.status == "nothing_to_restore":
        return RollbackOutcome(status="nothing_to_restore", cycle_id=cycle_id,
                               message=f"nothing to restore on {where}: {result.detail}")
    # Restored with no record: a run that reverted, then crashed before recording. The
    # revert carries the deployment's trailer, so it is this rollback's own: record it now.
    health = deployer.verify(deployment)
    verified = Verified(models_ok=None, smoke_ok=None,
                        detail={"change_live": health.healthy, **health.detail})
    payload = {"branch": where, "from_version": deployment.commit,
               "to_version": result.detail.get("revert_commit") or previous.get("head"),
               "trigger": "manual", "by": by, "reason": reason,
               "started_at": started.isoformat(),
               "duration_s": round(time.monotonic() - t0, 3), "restored": True,
               "verified": verified.model_dump(), **result.detail}
    event = "failed" if health.healthy else "rolled_back"
    _append(parts, cycle_id, event, payload)
    return RollbackOutcome(
        status="failed" if health.healthy else "rolled_back", cycle_id=cycle_id,
        record=payload, message=f"cycle {cycle_id}'s change taken back on {where}: "
                                f"{result.detail}")


def _switch_back(parts: RollbackParts, cycle_id: str, deployment: Deployment, *,
                 by: str, reason: str) -> RollbackOutcome:
    """A blue/green deployment: traffic back to blue (restarted if it was already stopped),
    through the blue/green deployer's own rollback, recorded like any manual rollback."""
    if parts.deployer_of is None:
        raise DeployError("this command was built without the blue/green deployer; run it "
                          "through `upgate rollback` with the project's configuration")
    started, t0 = parts.now(), time.monotonic()
    alias = str(deployment.alias)
    previous = deployment.previous or {}
    base: dict[str, Any] = {
        "alias": alias, "from_version": deployment.version_name,
        "to_version": previous.get("version_name"), "trigger": "manual", "by": by,
        "reason": reason, "started_at": started.isoformat()}
    try:
        result = parts.deployer_of("bluegreen").rollback(deployment)
    except DeployError as exc:
        payload = {**base, "duration_s": round(time.monotonic() - t0, 3),
                   "reason_failed": str(exc)}
        _append(parts, cycle_id, "failed", payload)
        return RollbackOutcome(status="failed", cycle_id=cycle_id, record=payload,
                               message=f"taking back cycle {cycle_id}'s switch failed: {exc}")
    recorded = any(e.node == NODE and e.event == "rolled_back"
                   for e in parts.ledger.entries(cycle_id))
    if result.status == "nothing_to_restore":
        return RollbackOutcome(status="nothing_to_restore", cycle_id=cycle_id,
                               message=f"nothing to restore for {alias}: {result.detail}")
    if result.status == "already_restored" and recorded:
        return RollbackOutcome(status="already_restored", cycle_id=cycle_id,
                               message=f"{alias} is already back on the version before cycle "
                                       f"{cycle_id}; nothing was changed or recorded")
    payload = {**base, "duration_s": round(time.monotonic() - t0, 3), "restored": True,
               "verified": {"detail": result.detail}}
    _append(parts, cycle_id, "rolled_back", payload)
    return RollbackOutcome(status="rolled_back", cycle_id=cycle_id, record=payload,
                           message=f"{alias}: traffic back on the version before cycle "
                                   f"{cycle_id} ({result.detail})")
