"""Bring a restarted vLLM server back to what the ledger says was approved and deployed.

Runtime-loaded adapters do not survive a server restart. The state table (`served`) says
where each version's files are, but it is mutable, so it is not what decides: only a
version the ledger shows deployed after a person's approval (or one such deployment's
previous version, its rollback target) is loaded, under the content hash the ledger
holds, re-checked before the load. The alias is pointed at the version the ledger's last
deploy, rollout promotion or rollback left active (invariant 5: a rollback stays one
in-place load away).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from upgate.deploy.vllm import VllmAdmin
from upgate.errors import DeployError
from upgate.ledger import Ledger
from upgate.store import Store

log = logging.getLogger(__name__)


def ledger_versions(ledger: Ledger, alias: str) -> tuple[dict[str, str], str | None]:
    """Versions of `alias` the ledger shows approved and deployed (name -> sha256), and
    the one its last deploy or rollback left active."""
    approved_cycles: set[str] = set()
    deployments: dict[str, dict[str, Any]] = {}
    versions: dict[str, str] = {}
    active: str | None = None
    for e in ledger.entries():
        if e.node == "approve" and e.event == "approve" and not str(
                e.payload.get("approver", "")).startswith("policy:"):
            approved_cycles.add(e.cycle_id)
        elif (e.node == "deploy" and e.event in ("deployed", "staged")
              and e.cycle_id in approved_cycles):
            d = e.payload.get("deployment") or {}
            if d.get("target") != "vllm" or d.get("alias") != alias:
                continue
            deployments[e.cycle_id] = d
            versions[str(d["version_name"])] = str(d["adapter_sha256"])
            previous = d.get("previous") or {}
            if previous.get("version_name") and previous.get("sha256"):
                versions.setdefault(str(previous["version_name"]), str(previous["sha256"]))
            if e.event == "deployed":  # a staged version is active once its rollout promotes
                active = str(d["version_name"])
        elif e.node == "rollout" and e.event == "promoted" and e.cycle_id in deployments:
            active = str(deployments[e.cycle_id]["version_name"])
        elif (e.node == "rollback" and e.event == "rolled_back"
              and e.payload.get("alias") == alias and e.payload.get("to_version")):
            active = str(e.payload["to_version"])  # `upgate rollback` names what it restored
        elif e.node == "rollback" and e.event == "rolled_back" and e.payload.get("restored"):
            previous = (deployments.get(e.cycle_id) or {}).get("previous") or {}
            if previous.get("version_name"):
                active = str(previous["version_name"])
    return versions, active


def reconcile(store: Store, admin: VllmAdmin, alias: str, ledger: Ledger) -> dict[str, Any]:
    """Load the ledger's approved versions of `alias` and point it at the active one."""
    approved, active = ledger_versions(ledger, alias)
    loaded: list[str] = []
    refused: list[str] = []
    rows = {}
    for version in store.served_versions(alias):
        name = str(version["version_name"])
        if approved.get(name) != version["sha256"]:
            refused.append(f"{name}: the ledger shows no approved deployment of it "
                           f"with content hash {str(version['sha256'])[:16]}")
            continue
        path = Path(version["path"])
        if not path.exists():
            log.warning("version %s of %s is gone from %s", name, alias, path)
            continue
        before = set(admin.models())
        try:
            admin.ensure_loaded(name, path, expected_sha256=approved[name])
        except DeployError as exc:
            refused.append(f"{name}: {exc}")
            continue
        rows[name] = version
        if name not in before:
            loaded.append(name)
    pointed = None
    if active is not None and active in rows:
        try:
            admin.point_alias(alias, Path(rows[active]["path"]), expected_sha256=approved[active])
            pointed = active
        except DeployError as exc:
            refused.append(f"{active} (as {alias}): {exc}")
    for line in refused:
        log.error("reconcile %s refused %s", alias, line)
    return {"alias": alias, "active": pointed, "loaded": loaded, "refused": refused}
