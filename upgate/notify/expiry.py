"""Approval requests that outlived the policy's window: recorded once, and notified.

Nothing else notices a request nobody answered; the approve node refuses a late decision
only when one arrives. The approval service's worker sweeps the inbox and records each
expiry in the ledger (with its notification, in the same transaction).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from upgate.notify.events import outbox_for

if TYPE_CHECKING:
    from upgate.graphs.runner import Runner

log = logging.getLogger(__name__)


def sweep_expired(runner: Runner) -> list[str]:
    """Record `approve/expired` for every waiting request past its window; returns cycles.

    Idempotent: the ledger key names the request, so a request expires once.
    """
    deps = runner.deps
    ttl = timedelta(hours=deps.policy.thresholds.approval_ttl_hours)
    now = deps.now()
    expired = []
    for request in runner.inbox():
        try:
            requested = datetime.fromisoformat(str(request["requested_at"]))
        except (KeyError, ValueError):
            continue
        if now - requested <= ttl:
            continue
        cycle = str(request["cycle_id"])
        data = {"requested_at": request["requested_at"],
                "expired_at": (requested + ttl).isoformat(),
                "evidence_hash": request.get("evidence_hash")}
        key = f"{cycle}/approve/expired/{request['requested_at']}"
        if deps.ledger.find(key) is None:
            deps.ledger.append(cycle, "approve", "expired", data, key=key,
                               outbox=outbox_for(deps.settings.notify, deps.state_dir,
                                                 "approve", "expired", data))
            log.info("approval request of %s expired", cycle)
            expired.append(cycle)
    return expired
