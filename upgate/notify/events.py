"""Which ledger records become notifications, and what each notification says.

One mapping, `EVENTS`, from a ledger record's (node, event) to a notification type; the
graph's `_record` (and anything else that appends to the ledger) asks `outbox_for` for the
outbox writes to pass to `Ledger.append`, so the nodes themselves stay unaware of channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from upgate.ledger import OutboxWrite
from upgate.notify.config import NotifySettings
from upgate.notify.outbox import outbox_write

EVENTS: dict[tuple[str, str], str] = {
    ("gate", "approval_requested"): "approval_requested",
    ("approve", "approve"): "approval_decided",
    ("approve", "reject"): "approval_decided",
    ("approve", "approval_recorded"): "approval_decided",  # one of several approvals needed
    ("approve", "expired"): "approval_expired",
    ("batch", "paused"): "batch_paused",
    ("batch", "stopped"): "batch_paused",  # a stop is a pause only a person lifts
    ("deploy", "deployed"): "deployed",
    ("rollout", "step"): "rollout_step",
    ("rollout", "aborted"): "rolled_back",
    ("rollout", "promoted"): "deployed",
    ("rollback", "rolled_back"): "rolled_back",
    ("ledger", "verify_failed"): "verify_failed",
    ("record", "failed"): "cycle_failed",
}

# The fields of a record's data each notification shows (the lineage stays in the ledger).
_FIELDS: dict[str, tuple[str, ...]] = {
    "approval_requested": ("candidate_hash", "evidence_hash", "policy_version", "requester",
                           "requested_at", "kind"),
    "approval_decided": ("approver", "channel", "reason", "approvals", "required"),
    "approval_expired": ("requested_at", "expired_at", "evidence_hash", "reason"),
    "batch_paused": ("reason", "threshold", "action", "observed", "limit", "detail",
                     "next_step", "batch_id", "cycle_id", "target", "cycles", "outcomes"),
    "deployed": ("deployment", "alias", "version_name", "duration_s"),
    "rollout_step": ("step", "percent", "alias", "version_name", "healthy"),
    "rolled_back": ("restored", "branch_deleted", "reason", "alias", "version_name",
                    "breaches", "restored_version", "trigger"),
    "verify_failed": ("problems", "entries"),
    "cycle_failed": ("reason", "recipe", "kind"),
}

# State folders that queued notifications in this process, with their settings: the CLI
# delivers them when its command ends.
_QUEUED: dict[Path, NotifySettings] = {}


def facts(kind: str, data: Mapping[str, Any], state: Mapping[str, Any] | None = None,
          *, ttl_hours: float | None = None) -> dict[str, Any]:
    """What a notification of `kind` carries, from the record's data and the cycle state."""
    out: dict[str, Any] = {k: data[k] for k in _FIELDS.get(kind, ()) if k in data}
    state = state or {}
    proposal = state.get("proposal") or {}
    if proposal:
        out.setdefault("recipe", proposal.get("recipe"))
        out.setdefault("kind", proposal.get("kind"))
    if kind == "approval_requested":
        verdict = state.get("verdict") or {}
        out["summary"] = list(verdict.get("reasons", []))[:6]
        out["baseline_score"] = verdict.get("baseline_score")
        out["candidate_score"] = verdict.get("candidate_score")
        if ttl_hours is not None and out.get("requested_at"):
            at = datetime.fromisoformat(str(out["requested_at"]))
            out["expires_at"] = (at + timedelta(hours=ttl_hours)).isoformat()
    if kind == "approval_decided":
        out["action"] = data.get("action") or (state.get("approval") or {}).get("action")
    if kind == "batch_paused" and not out:
        out = {k: v for k, v in data.items() if k != "lineage"}
    return out


def outbox_for(notify: NotifySettings, state_dir: Path, node: str, event: str,
               data: Mapping[str, Any], state: Mapping[str, Any] | None = None,
               *, ttl_hours: float | None = None) -> list[OutboxWrite]:
    """The outbox writes for one ledger record: none when it is not a notification or no
    channel wants it."""
    kind = EVENTS.get((node, event))
    if kind is None:
        return []
    channels = [c.name for c in notify.channels if c.wants(kind)]
    if not channels:
        return []
    body = facts(kind, data, state, ttl_hours=ttl_hours)
    if kind == "approval_decided":
        body["action"] = "reject" if event == "reject" else "approve"
    _QUEUED[state_dir] = notify
    return [outbox_write(kind, channels, body)]


def queued_here() -> dict[Path, NotifySettings]:
    """The state folders this process queued notifications for (and forget them)."""
    out = dict(_QUEUED)
    _QUEUED.clear()
    return out
