"""Bring a restarted vLLM server back to what the ledger says was approved and deployed.

Runtime-loaded adapters do not survive a server restart. The state table (`served`) says
where each version's files are, but it is mutable, so it is not what decides: only a
version the ledger shows deployed under verified signed approvals (or the alias's
`@initial` version the first such deployment recorded; see `upgate.verified`) is loaded,
under the content hash the ledger holds, re-checked before the load. The alias is pointed
at the version the ledger's last deploy, rollout promotion or rollback left active
(invariant 5: a rollback stays one in-place load away).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from upgate.deploy.vllm import VllmAdmin
from upgate.errors import DeployError
from upgate.ledger import Ledger
from upgate.store import Store
from upgate.verified import Verifier, approved_versions

log = logging.getLogger(__name__)


def ledger_versions(ledger: Ledger, alias: str,
                    store: Store) -> tuple[dict[str, str], str | None]:
    """Versions of `alias` the ledger shows deployed under a verified approval (name ->
    sha256), and the one its last deploy or rollback left active (`upgate.verified`)."""
    return approved_versions(Verifier(ledger, store), alias)


def reconcile(store: Store, admin: VllmAdmin, alias: str, ledger: Ledger) -> dict[str, Any]:
    """Load the ledger's approved versions of `alias` and point it at the active one."""
    approved, active = ledger_versions(ledger, alias, store)
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
