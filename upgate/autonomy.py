"""When autonomy pauses: pure functions over the ledger and the policy's thresholds.

Each `check_*` looks at one threshold and returns a `Pause` (which threshold tripped, the
numbers, and what a person should do next) or None. `first_pause` runs them in order. A
`Pause` with action "stop" (a broken ledger) stops everything; the rest pause the batch.
Nothing here writes: the batch loop records and announces what these return.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from upgate.ledger import Entry, VerifyReport
from upgate.policy import Autonomy, Budget, RiskLevel

log = logging.getLogger(__name__)

SETBACKS = ("failed", "blocked", "rejected", "rolled_back")
RISK_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
COST_NODE, COST_EVENT = "autonomy", "cycle_cost"
RESET_EVENT = "reset"


class Pause(BaseModel):
    """A tripped threshold: what, the numbers, and what a person does next."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: str
    action: Literal["pause", "stop"] = "pause"
    observed: float
    limit: float
    detail: str
    next_step: str
    cycle_id: str = ""
    """The cycle held mid-way by this pause, if any (it resumes with the batch)."""

    def message(self) -> str:
        """One line for people: `paused: <detail> (threshold <name>: <observed> vs <limit>)`."""
        verb = "stopped" if self.action == "stop" else "paused"
        return (f"{verb}: {self.detail} (threshold {self.threshold}: {self.observed:g} "
                f"against {self.limit:g}). Next: {self.next_step}")


@dataclass(frozen=True)
class Spend:
    """What cycles cost within one scope."""

    tokens: int = 0
    sandbox_s: float = 0.0
    wall_s: float = 0.0
    sandbox_cpu_s: float = 0.0


RESUME_HINT = "then resume with `upgate batch resume --as NAME --reason '...'`"


def check_ledger(report: VerifyReport) -> Pause | None:
    """A ledger whose chain does not verify stops everything."""
    if report.ok:
        return None
    return Pause(threshold="ledger_verify", action="stop", observed=len(report.problems),
                 limit=0, detail="the ledger failed verification: " + "; ".join(report.problems),
                 next_step="run `upgate verify`, find who changed the ledger and restore it "
                           "from a backup; " + RESUME_HINT)


def check_pending(pending: int, limit: int) -> Pause | None:
    """Pause when `limit` or more approvals wait."""
    if pending < limit:
        return None
    return Pause(threshold="max_pending", observed=pending, limit=limit,
                 detail=f"{pending} approval(s) wait in the inbox",
                 next_step="answer them (`upgate inbox`, `upgate approve`/`reject`), "
                           + RESUME_HINT)


def setback_streak(outcomes: Sequence[str]) -> int:
    """How many of the last outcomes in a row were setbacks."""
    streak = 0
    for outcome in reversed(outcomes):
        if outcome not in SETBACKS:
            break
        streak += 1
    return streak


def check_setbacks(outcomes: Sequence[str], limit: int) -> Pause | None:
    """Pause after `limit` setbacks (failed, blocked, rejected, rolled back) in a row."""
    streak = setback_streak(outcomes)
    if streak < limit:
        return None
    return Pause(threshold="pause_after_failures", observed=streak, limit=limit,
                 detail=f"{streak} setbacks in a row ({', '.join(outcomes[-streak:])})",
                 next_step="read why with `upgate history CYCLE`, fix the cause (target, "
                           "policy, models), " + RESUME_HINT)


def spend_since(entries: Sequence[Entry], since: str) -> Spend:
    """Tokens (per agent call) and cycle costs recorded at or after `since` (ISO time)."""
    tokens, sandbox_s, wall_s, cpu_s = 0, 0.0, 0.0, 0.0
    for e in entries:
        if e.at < since:
            continue
        if e.node == "usage":
            tokens += int(e.payload.get("total_tokens", 0))
        elif e.node == COST_NODE and e.event == COST_EVENT:
            sandbox_s += float(e.payload.get("sandbox_s", 0.0))
            wall_s += float(e.payload.get("wall_s", 0.0))
            cpu_s += float(e.payload.get("sandbox_cpu_s", 0.0))  # absent from older entries
    return Spend(tokens=tokens, sandbox_s=sandbox_s, wall_s=wall_s, sandbox_cpu_s=cpu_s)


def check_budget(spend: Spend, budget: Budget, scope: str) -> Pause | None:
    """Pause when a budget of the scope ("per_batch", "per_day") is used up."""
    for name, used, limit, unit in (
        ("tokens", spend.tokens, budget.tokens, "model tokens"),
        ("sandbox_seconds", spend.sandbox_s, budget.sandbox_seconds,
         "sandbox seconds (wall time of sandbox commands)"),
        ("sandbox_cpu_seconds", spend.sandbox_cpu_s, budget.sandbox_cpu_seconds,
         "sandbox CPU seconds"),
        ("wall_seconds", spend.wall_s, budget.wall_seconds, "wall seconds of cycles"),
    ):
        if limit is not None and used >= limit:
            return Pause(threshold=f"{scope}.{name}", observed=round(float(used), 3),
                         limit=float(limit),
                         detail=f"the {scope.replace('_', ' ')} budget of {limit:g} {unit} is "
                                f"used up ({used:g})",
                         next_step="raise the budget in the policy or wait for the next day, "
                                   + RESUME_HINT)
    return None


def accumulated_regression(entries: Sequence[Entry]) -> dict[str, float]:
    """Per slice, the sum of deployed changes' deltas since the last human reset."""
    totals: dict[str, float] = {}
    for e in entries:
        if e.node == COST_NODE and e.event == RESET_EVENT:
            totals = {}
        elif (e.node == COST_NODE and e.event == COST_EVENT
              and e.payload.get("outcome") == "deployed"):
            for name, delta in (e.payload.get("slice_deltas") or {}).items():
                totals[name] = totals.get(name, 0.0) + float(delta)
    return totals


def check_accumulated(totals: dict[str, float], limit: float | None, *,
                      candidate: dict[str, float] | None = None,
                      cycle_id: str = "") -> Pause | None:
    """Pause when any slice's summed delta (plus a candidate's, if given) is below -limit."""
    if limit is None:
        return None
    summed = dict(totals)
    for name, delta in (candidate or {}).items():
        summed[name] = summed.get(name, 0.0) + delta
    if not summed:
        return None
    worst = min(summed, key=lambda k: summed[k])
    if summed[worst] >= -limit:
        return None
    what = "with this candidate, " if candidate else ""
    return Pause(threshold="max_accumulated_regression", observed=round(summed[worst], 4),
                 limit=-limit, cycle_id=cycle_id,
                 detail=f"{what}slice {worst!r} has dropped {summed[worst]:+.3f} in total over "
                        "deployed changes since the last reset, each within the per-change "
                        "tolerance",
                 next_step="review the slice's history (`upgate history`); resuming records a "
                           "reset of the sum; " + RESUME_HINT)


def check_risk(risk: str, level: RiskLevel | None, cycle_id: str = "") -> Pause | None:
    """Pause before building a proposal whose risk is at or above `level`."""
    if level is None or RISK_ORDER.get(risk, 2) < RISK_ORDER[level]:
        return None
    return Pause(threshold="pause_at_risk", observed=RISK_ORDER.get(risk, 2),
                 limit=RISK_ORDER[level], cycle_id=cycle_id,
                 detail=f"cycle {cycle_id} proposes a {risk}-risk change "
                        f"(pause at {level} or higher)",
                 next_step=f"read the proposal (`upgate history {cycle_id}`); to let it be "
                           "built, " + RESUME_HINT + "; to drop it, `upgate cancel " + cycle_id
                           + "`")


def _within(entries: Sequence[Entry], now: datetime, hours: float) -> list[Entry]:
    since = (now - timedelta(hours=hours)).isoformat()
    return [e for e in entries if e.at >= since]


def check_rollbacks(entries: Sequence[Entry], limit: int | None, window_hours: float,
                    now: datetime) -> Pause | None:
    """Pause when `limit` rollbacks happened within the window."""
    if limit is None:
        return None
    n = sum(1 for e in _within(entries, now, window_hours)
            if e.node == "rollback" and e.event == "rolled_back")
    if n < limit:
        return None
    return Pause(threshold="max_rollbacks", observed=n, limit=limit,
                 detail=f"{n} rollback(s) in the last {window_hours:g} h",
                 next_step="find why deployed changes fail live (`upgate history`), "
                           + RESUME_HINT)


def check_error_rate(entries: Sequence[Entry], limit: float | None, min_cases: int,
                     window_hours: float, now: datetime) -> Pause | None:
    """Pause when the endpoint's error rate in post-deploy checks exceeds `limit`."""
    if limit is None:
        return None
    cases = errors = 0
    for e in _within(entries, now, window_hours):
        if e.node == "monitor" and e.payload.get("checked"):
            cases += int(e.payload.get("cases", 0))
            errors += int(e.payload.get("errors", 0))
    if cases < min_cases or errors / cases <= limit:
        return None
    rate = errors / cases
    return Pause(threshold="max_error_rate", observed=round(rate, 4), limit=limit,
                 detail=f"the served endpoint failed {errors} of {cases} eval requests in "
                        f"post-deploy checks ({rate:.0%}) in the last {window_hours:g} h",
                 next_step="check the serving endpoint's health and logs, " + RESUME_HINT)


@dataclass(frozen=True)
class BatchView:
    """What the between-cycles checks read."""

    entries: Sequence[Entry]
    verify: VerifyReport
    pending: int
    outcomes: Sequence[str]
    """This leg's cycle outcomes (since the batch started or was last resumed)."""
    leg_started_at: str
    day_started_at: str
    now: datetime


def first_pause(view: BatchView, autonomy: Autonomy, pause_after_failures: int,
                max_pending: int | None = None) -> Pause | None:
    """Every between-cycles threshold in order; the first that trips."""
    checks: tuple[Callable[[], Pause | None], ...] = (
        lambda: check_ledger(view.verify),
        lambda: check_pending(view.pending, max_pending or autonomy.max_pending),
        lambda: check_setbacks(view.outcomes, pause_after_failures),
        lambda: check_budget(spend_since(view.entries, view.leg_started_at),
                             autonomy.per_batch, "per_batch"),
        lambda: check_budget(spend_since(view.entries, view.day_started_at),
                             autonomy.per_day, "per_day"),
        lambda: check_accumulated(accumulated_regression(view.entries),
                                  autonomy.max_accumulated_regression),
        lambda: check_rollbacks(view.entries, autonomy.max_rollbacks,
                                autonomy.rollback_window_hours, view.now),
        lambda: check_error_rate(view.entries, autonomy.max_error_rate,
                                 autonomy.error_rate_min_cases,
                                 autonomy.rollback_window_hours, view.now),
    )
    for check in checks:
        pause = check()
        if pause is not None:
            return pause
    return None


def verdict_numbers(verdict: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, float]]:
    """(per-slice deltas, hidden split means {baseline, candidate}) from a verdict's evidence."""
    if not verdict or not verdict.get("evidence_json"):
        return {}, {}
    comparison = json.loads(verdict["evidence_json"]).get("comparison") or {}
    deltas = {name: round(float(d["delta"]), 6)
              for name, d in (comparison.get("per_slice") or {}).items()}
    hidden = (comparison.get("by_split") or {}).get("hidden") or {}
    means = {k: float(hidden[f"{k}_mean"]) for k in ("baseline", "candidate")
             if f"{k}_mean" in hidden}
    return deltas, means


def served_hidden_score(outcome: str, hidden: dict[str, float],
                        previous: float | None) -> float | None:
    """The served version's hidden-split score after a cycle (the candidate's if deployed)."""
    if outcome == "deployed" and "candidate" in hidden:
        return round(hidden["candidate"], 4)
    if "baseline" in hidden:
        return round(hidden["baseline"], 4)
    return previous
