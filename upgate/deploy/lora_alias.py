"""A LoRA candidate goes live by pointing the served alias at its adapter on vLLM.

The adapter is loaded under its versioned name first; the version the alias served before
stays loaded under its own name (`ALIAS@initial` for what the server was started with), so
a rollback is one more in-place load. The store records which version is active.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from upgate.deploy.base import Deployer, Health, RollbackResult
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import DeployError
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.records import Artifact, Candidate, Deployment
from upgate.store import Store
from upgate.verified import Verifier, approved_versions

log = logging.getLogger(__name__)


def _adapter(candidate: Candidate) -> Artifact:
    """The candidate's adapter; DeployError when it carries none."""
    adapter = next((a for a in candidate.artifacts if a.kind == "adapter"), None)
    if adapter is None:
        raise DeployError("the model candidate carries no adapter artifact to serve")
    return adapter


class LoraAliasDeployer(Deployer):
    """Swap the adapter a vLLM alias serves; keep the version before loaded for rollback."""

    target: Literal["git", "vllm"] = "vllm"

    def __init__(self, admin: VllmAdmin | None, store: Store, alias: str | None,
                 ledger: Ledger | None = None) -> None:
        self.admin = admin
        self.store = store
        self.alias = alias
        self.ledger = ledger
        """Where approved versions are found; without it no stored row is trusted."""

    def _parts(self) -> tuple[VllmAdmin, str]:
        if self.admin is None:
            raise DeployError("no vLLM server configured ([serving] base_url)")
        if not self.alias:
            raise DeployError("the target manifest names no [model] alias to swap")
        return self.admin, self.alias

    def _previous(self, deployment_id: str) -> dict[str, Any] | None:
        """The version live before `deployment_id` (also when that one is active already).

        The store's row is accepted only for a version the ledger shows deployed under a
        verified approval (`upgate.verified`); a planted row is not: then the row of the
        approved version on the folder the server serves now, else None (a first swap).
        """
        assert self.alias
        rows = [v for v in self.store.served_versions(self.alias)
                if v["deployment_id"] != deployment_id]
        active = self.store.active_version(self.alias)
        rerun = active is not None and active["deployment_id"] == deployment_id
        if rerun:
            # A run again after the swap: the version before is the newest other one
            # (the `@initial` one this deployment recorded, when it was a first swap).
            active = rows[0] if rows else None
        approved: dict[str, str] = {}
        if self.ledger is not None:
            approved, _ = approved_versions(Verifier(self.ledger, self.store), self.alias)
        trusted = active is not None and (
            approved.get(active["version_name"]) == active["sha256"]
            or (rerun and active["version_name"] == f"{self.alias}@initial"))
        if not trusted:
            served = self.admin.models().get(self.alias) if self.admin else None
            root = served.root if served is not None else None
            active = next((v for v in rows if v["path"] == root
                           and approved.get(v["version_name"]) == v["sha256"]), None)
        # "active" is the store's state now, not part of which version it was.
        return {k: v for k, v in active.items() if k != "active"} if active else None

    def deploy(self, candidate: Candidate, deployment_id: str, *, cycle_id: str,
               message: str) -> Deployment:
        """Load the candidate's adapter and point the alias at it (idempotent)."""
        deployment = self.stage(candidate, deployment_id)
        self.promote(candidate, deployment_id, cycle_id=cycle_id)
        return deployment

    def stage(self, candidate: Candidate, deployment_id: str) -> Deployment:
        """Load the candidate's adapter under its version name, and keep the version the
        alias serves now loaded under its own, without moving the alias (idempotent).

        A staged rollout sends traffic to the two version names through the gateway, and
        promotes (points the alias) only after its last step.
        """
        admin, alias = self._parts()
        adapter = _adapter(candidate)
        previous = self._previous(deployment_id)
        served = admin.models().get(alias)
        path = Path(adapter.path)
        admin.ensure_loaded(adapter.name, path, expected_sha256=adapter.sha256)
        if previous is None and served is not None and served.root:
            # Keep what the alias serves now (before upgate's first swap, or a version no
            # approval backs) loadable for rollback, under the content hash it has now,
            # which every later load re-checks. Hashed from what the server serves, never
            # taken from a stored row (a planted `@initial` row changes nothing).
            root = Path(served.root)
            initial = sha256_tree(root)
            row = self._initial()
            same = row is None or (row["path"], row["sha256"]) == (str(root), initial)
            previous = {"version_name": f"{alias}@initial", "path": str(root),
                        "sha256": initial, "cycle_id": "initial",
                        "deployment_id": "initial" if same else f"initial-{initial[:12]}"}
            self.store.record_served(alias, f"{alias}@initial", root, initial,
                                     previous["deployment_id"], "initial")
            stored = next(v for v in self.store.served_versions(alias)
                          if v["deployment_id"] == previous["deployment_id"])
            if (stored["path"], stored["sha256"]) == (str(root), initial):
                previous = {k: v for k, v in stored.items() if k != "active"}
            admin.ensure_loaded(f"{alias}@initial", root, expected_sha256=initial)
        return Deployment(target="vllm", deployment_id=deployment_id, alias=alias,
                          version_name=adapter.name, adapter_sha256=adapter.sha256,
                          previous=previous)

    def promote(self, candidate: Candidate, deployment_id: str, *, cycle_id: str) -> None:
        """Point the alias at the candidate's (staged) adapter and mark that version the
        active one (idempotent)."""
        admin, alias = self._parts()
        adapter = _adapter(candidate)
        path = Path(adapter.path)
        admin.point_alias(alias, path, expected_sha256=adapter.sha256)
        self.store.record_served(alias, adapter.name, path, adapter.sha256, deployment_id,
                                 cycle_id)
        log.info("%s: %s now serves %s", deployment_id, alias, adapter.name)

    def _initial(self) -> dict[str, Any] | None:
        """The `@initial` row, recorded once, on upgate's first swap of the alias."""
        assert self.alias
        row = next((v for v in self.store.served_versions(self.alias)
                    if v["deployment_id"] == "initial"), None)
        return {k: v for k, v in row.items() if k != "active"} if row else None

    def _path_of(self, deployment_id: str) -> str | None:
        assert self.alias
        return next((v["path"] for v in self.store.served_versions(self.alias)
                     if v["deployment_id"] == deployment_id), None)

    def verify(self, deployment: Deployment) -> Health:
        """The alias serves the deployed adapter's folder."""
        admin, alias = self._parts()
        expected = self._path_of(deployment.deployment_id)
        served = admin.models().get(alias)
        root = served.root if served is not None else None
        return Health(healthy=expected is not None and root == expected,
                      detail={"alias": alias, "serves": root, "expected": expected})

    def rollback(self, deployment: Deployment) -> RollbackResult:
        """Point the alias back at the version before; say so when there is none."""
        admin, alias = self._parts()
        previous = deployment.previous
        if not previous:
            served = admin.models().get(alias)
            return RollbackResult(status="nothing_to_restore", detail={
                "alias": alias, "still_serving": served.root if served else None,
                "why": "no earlier version was recorded for this alias"})
        served = admin.models().get(alias)
        already = served is not None and served.root == str(previous["path"])
        admin.point_alias(alias, Path(previous["path"]), expected_sha256=previous["sha256"])
        self.store.reactivate(alias, previous["deployment_id"])
        return RollbackResult(status="already_restored" if already else "restored",
                              detail={"restored": previous["version_name"]})
