"""Aggregate the report's facts into totals, per UTC day and over the whole period."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from upgate.gateway.routes import RouteTable
from upgate.ledger import Ledger
from upgate.report.collect import Facts, collect
from upgate.report.models import (
    DayMetrics,
    DeploymentMetrics,
    RollbackMetrics,
    RolloutReport,
    Totals,
)

log = logging.getLogger(__name__)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def totals_of(proposals: Sequence[datetime], decisions: Sequence[tuple[datetime, bool]],
              deployments: Sequence[DeploymentMetrics],
              rollbacks: Sequence[RollbackMetrics]) -> dict[str, Any]:
    """The fields of `Totals` over these facts (None where there is nothing to measure)."""
    deployed = len(deployments)
    approved = sum(1 for _, ok in decisions if ok)
    measured = [d.stability for d in deployments if d.stability.requests]
    requests = sum(s.requests or 0 for s in measured)
    errors = sum(s.errors or 0 for s in measured)
    regressions = sum(d.regressions for d in deployments)
    incidents = sum(1 for d in deployments if d.incident)
    succeeded = sum(1 for r in rollbacks if r.succeeded)
    return {
        "proposed": len(proposals), "decided": len(decisions), "approved": approved,
        "deployed": deployed,
        "acceptance_rate": _rate(approved, len(decisions)),
        "deploy_rate": _rate(deployed, len(proposals)),
        "lead_time_s_median": _median(d.lead_time_s for d in deployments),
        "lead_time_s_max": _max(d.lead_time_s for d in deployments),
        "bake_requests": requests,
        "bake_error_rate": _rate(errors, requests),
        "p50_ms_median": _median(d.stability.p50_ms for d in deployments),
        "p95_ms_median": _median(d.stability.p95_ms for d in deployments),
        "p50_ratio_median": _median(d.latency.p50_ratio for d in deployments),
        "p95_ratio_median": _median(d.latency.p95_ratio for d in deployments),
        "regressions": regressions, "incidents": incidents,
        "incident_rate": _rate(incidents, deployed),
        "regressions_per_deployment": regressions / deployed if deployed else None,
        "rollbacks_per_deployment": (sum(d.rollbacks for d in deployments) / deployed
                                     if deployed else None),
        "rollbacks": len(rollbacks), "rollbacks_succeeded": succeeded,
        "rollback_success_rate": _rate(succeeded, len(rollbacks)),
        "time_to_rollback_s_median": _median(r.duration_s for r in rollbacks if r.succeeded),
        "time_to_rollback_s_max": _max(r.duration_s for r in rollbacks if r.succeeded),
    }


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def summarise(facts: Facts, *, since: date | None = None,
              now: datetime | None = None, gateway: bool = False) -> RolloutReport:
    """The report over the facts made on or after `since` (a UTC day)."""
    def keep(at: datetime) -> bool:
        return since is None or _day(at) >= since

    proposals = [t for t in facts.proposals if keep(t)]
    decisions = [d for d in facts.decisions if keep(d[0])]
    deployments = [d for d in facts.deployments if keep(d.deployed_at)]
    rollbacks = [r for r in facts.rollbacks if keep(r.at)]
    days = sorted({_day(t) for t in proposals} | {_day(t) for t, _ in decisions}
                  | {_day(d.deployed_at) for d in deployments} | {_day(r.at) for r in rollbacks})
    per_day = [DayMetrics(day=day, **totals_of(
        [t for t in proposals if _day(t) == day],
        [d for d in decisions if _day(d[0]) == day],
        [d for d in deployments if _day(d.deployed_at) == day],
        [r for r in rollbacks if _day(r.at) == day])) for day in days]
    return RolloutReport(
        generated_at=now or datetime.now(UTC), since=since, ledger_entries=facts.entries,
        gateway=gateway, totals=Totals(**totals_of(proposals, decisions, deployments,
                                                   rollbacks)),
        days=per_day, deployments=deployments, rollbacks=rollbacks)


def build_report(ledger: Ledger, *, gateway_db: Path | None = None,
                 since: date | None = None, now: datetime | None = None) -> RolloutReport:
    """The rollout report of a ledger, with the gateway's request log where one exists."""
    table = RouteTable(gateway_db) if gateway_db is not None and gateway_db.is_file() else None
    try:
        facts = collect(ledger.entries(), table)
    finally:
        if table is not None:
            table.close()
    log.debug("report: %d entries, %d deployments, %d rollbacks", facts.entries,
              len(facts.deployments), len(facts.rollbacks))
    return summarise(facts, since=since, now=now, gateway=table is not None)
