"""Where a rollout stands, read back from the ledger alone.

The ledger is the rollout's memory: every change of traffic is recorded before it is made,
so after a crash (SIGKILL at any point) the last record says which traffic state is the
one to restore, and which step comes next. Nothing is kept in the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from upgate.ledger import Entry, Ledger
from upgate.rollout.plan import RolloutPlan


def key(plan: RolloutPlan, node: str, event: str, part: object) -> str:
    """The idempotency key of one rollout record (one rollout per cycle)."""
    return f"{plan.cycle_id}/{node}/{event}/{part}"


@dataclass
class Progress:
    """The rollout's records so far."""

    started: Entry | None = None
    last_step: dict[str, Any] | None = None
    checked: dict[int, dict[str, Any]] = field(default_factory=dict)
    aborted: dict[str, Any] | None = None
    promoted: dict[str, Any] | None = None
    rolled_back: bool = False
    resumes: int = 0
    rolled_back_elsewhere: dict[str, Any] | None = None
    """A rollback of this cycle or alias recorded by someone else (a person, the monitor)
    after the rollout started: the rollout must not move traffic again."""


def _elsewhere(plan: RolloutPlan, entry: Entry, ours: str) -> bool:
    """A rollback of this cycle, or of this alias (whatever version it left), that this
    rollout did not make: a person or the monitor acted, and the rollout must not undo it."""
    p = entry.payload
    if entry.key == ours or p.get("trigger") == "rollout":
        return False
    return entry.cycle_id == plan.cycle_id or p.get("alias") == plan.alias


def read_progress(ledger: Ledger, plan: RolloutPlan) -> Progress:
    """Every rollout record of `plan`'s cycle, and any rollback that overtook it."""
    progress = Progress()
    ours = key(plan, "rollback", "rolled_back", "rollout")
    for entry in ledger.entries(plan.cycle_id):
        p = entry.payload
        if entry.node == "rollout" and p.get("deployment_id") == plan.deployment_id:
            if entry.event == "started":
                progress.started = entry
            elif entry.event == "step":
                progress.last_step = p
            elif entry.event == "step_checked":
                progress.checked[int(p["step"])] = p
            elif entry.event == "aborted":
                progress.aborted = p
            elif entry.event == "promoted":
                progress.promoted = p
            elif entry.event == "resumed":
                progress.resumes += 1
        elif entry.node == "rollback" and entry.event == "rolled_back" and entry.key == ours:
            progress.rolled_back = True
    if progress.started is not None and progress.aborted is None:
        later = (e for e in ledger.entries()
                 if e.seq > progress.started.seq and e.node == "rollback"
                 and e.event == "rolled_back" and _elsewhere(plan, e, ours))
        found = next(later, None)
        progress.rolled_back_elsewhere = found.payload if found else None
    return progress
