"""Bring a restarted vLLM server back to what the registry says it serves.

Runtime-loaded adapters do not survive a server restart. The registry (upgate's store) is
the record of truth: every alias is pointed at its active version again, and the versions
that alias served before are loaded under their versioned names, so a rollback stays one
in-place load away (invariant 5).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from upgate.deploy.vllm import VllmAdmin
from upgate.store import Store

log = logging.getLogger(__name__)


def reconcile(store: Store, admin: VllmAdmin, alias: str) -> dict[str, Any]:
    """Load every registered version of `alias` and point the alias at the active one."""
    versions = store.served_versions(alias)
    loaded: list[str] = []
    for version in versions:
        path = Path(version["path"])
        if not path.exists():
            log.warning("version %s of %s is gone from %s", version["version_name"], alias, path)
            continue
        before = set(admin.models())
        admin.ensure_loaded(version["version_name"], path)
        if version["version_name"] not in before:
            loaded.append(version["version_name"])
    active = store.active_version(alias)
    if active is not None:
        admin.point_alias(alias, Path(active["path"]))
    return {"alias": alias, "active": active["version_name"] if active else None,
            "loaded": loaded}
