"""Facts for the rollout report, read from ledger entries (and the gateway's request log).

The records are those of the rollout contract (nodes deploy, monitor, rollout, rollback,
bluegreen) and of the cycle graph (propose, gate, approve). Other engineers write them, so a
record that lacks a field is read from what it does hold, or from the entries' timestamps,
and a value nothing supports stays None.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from upgate.gateway.routes import RouteTable
from upgate.ledger import Entry
from upgate.report.models import (
    DeploymentMetrics,
    DurationFrom,
    LatencyImpact,
    RollbackMetrics,
    RollbackOutcome,
    RolloutOutcome,
    Stability,
)

log = logging.getLogger(__name__)

_ROLLBACK_EVENTS = ("rolled_back", "not_restored", "failed")
_DEPLOY_EVENTS = ("deployed", "staged")


@dataclass
class Facts:
    """Everything the report counts, each fact with its own time."""

    entries: int = 0
    proposals: list[datetime] = field(default_factory=list)
    decisions: list[tuple[datetime, bool]] = field(default_factory=list)
    """(when, approved) per decided cycle."""
    deployments: list[DeploymentMetrics] = field(default_factory=list)
    rollbacks: list[RollbackMetrics] = field(default_factory=list)


def when(entry: Entry) -> datetime:
    """An entry's time (the ledger writes ISO 8601 in UTC)."""
    return datetime.fromisoformat(entry.at)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value else None  # NaN is no number


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ratio(new: float | None, old: float | None) -> float | None:
    return new / old if new is not None and old else None


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _first(entries: Sequence[Entry], node: str, *events: str) -> Entry | None:
    return next((e for e in entries if e.node == node and e.event in events), None)


def _last(entries: Sequence[Entry], node: str, *events: str) -> Entry | None:
    return next((e for e in reversed(entries) if e.node == node and e.event in events), None)


def collect(entries: Sequence[Entry], gateway: RouteTable | None = None) -> Facts:
    """Read every cycle's facts; rollbacks not tied to a deployment's cycle (manual ones)
    count against the deployment whose version they took down."""
    facts = Facts(entries=len(entries))
    by_cycle: dict[str, list[Entry]] = {}
    for entry in entries:
        by_cycle.setdefault(entry.cycle_id, []).append(entry)
    for cycle_id, cycle in by_cycle.items():
        proposal = _first(cycle, "propose", "proposal")
        if proposal is not None:
            facts.proposals.append(when(proposal))
        decision = _last(cycle, "approve", "approve", "reject") or _first(
            cycle, "gate", "auto_approved")
        if decision is not None:
            facts.decisions.append((when(decision), decision.event != "reject"))
        deployment = _deployment(cycle_id, cycle, proposal, gateway)
        if deployment is not None:
            facts.deployments.append(deployment)
        facts.rollbacks.extend(_rollback(cycle_id, cycle, e) for e in cycle
                               if e.node == "rollback" and e.event in _ROLLBACK_EVENTS)
    taken_down = {d.cycle_id: d.version for d in facts.deployments}
    facts.rollbacks = [r if r.from_version else r.model_copy(
        update={"from_version": taken_down.get(r.cycle_id)}) for r in facts.rollbacks]
    facts.deployments = _attribute(facts.deployments, facts.rollbacks)
    return facts


# deployments ------------------------------------------------------------------------------


def _deployment(cycle_id: str, cycle: Sequence[Entry], proposal: Entry | None,
                gateway: RouteTable | None) -> DeploymentMetrics | None:
    deploy = _first(cycle, "deploy", *_DEPLOY_EVENTS)
    started = _first(cycle, "rollout", "started")
    switched = _last(cycle, "bluegreen", "switched")
    anchor = deploy or started or switched
    if anchor is None:
        return None
    placed = _dict(deploy.payload.get("deployment")) if deploy else {}
    plan = started.payload if started else {}
    moved = switched.payload if switched else {}
    previous_version = (_text(plan.get("stable_version"))
                        or _text(_dict(placed.get("previous")).get("version_name"))
                        or _text(moved.get("from_version")))
    kind = _dict(proposal.payload.get("proposal")).get("kind") if proposal else None
    deployed_at = when(anchor)
    stability, latency = _measure(cycle, gateway)
    regressions = sum(1 for e in cycle if (e.node, e.event) in (
        ("monitor", "regression"), ("rollout", "aborted")) and not _repeat_abort(cycle, e))
    outcome, duration = _rollout_outcome(cycle, started)
    return DeploymentMetrics(
        cycle_id=cycle_id,
        deployment_id=_text(placed.get("deployment_id")) or _text(plan.get("deployment_id"))
        or cycle_id,
        kind=_text(kind), target=_text(placed.get("target")),
        alias=(_text(plan.get("alias")) or _text(placed.get("alias"))
               or _text(moved.get("alias"))),
        version=(_text(plan.get("new_version")) or _text(placed.get("version_name"))
                 or _text(moved.get("to_version"))
                 or (_text(placed.get("commit")) or "")[:12] or _text(placed.get("branch"))),
        previous_version=previous_version,
        proposed_at=when(proposal) if proposal else None, deployed_at=deployed_at,
        lead_time_s=(deployed_at - when(proposal)).total_seconds() if proposal else None,
        rollout=outcome, rollout_duration_s=duration,
        rollout_steps_checked=sum(1 for e in cycle if (e.node, e.event) == (
            "rollout", "step_checked")),
        switch_s=_number(switched.payload.get("switch_s")) if switched else None,
        stability=stability,
        latency=latency.model_copy(update={"previous_version": previous_version}),
        regressions=regressions,
    )


def _repeat_abort(cycle: Sequence[Entry], entry: Entry) -> bool:
    """A second `aborted` record of the same rollout (after a resume) is not a new regression."""
    if (entry.node, entry.event) != ("rollout", "aborted"):
        return False
    return _first(cycle, "rollout", "aborted") is not entry


def _rollout_outcome(cycle: Sequence[Entry], started: Entry | None
                     ) -> tuple[RolloutOutcome | None, float | None]:
    if started is None:
        return None, None
    end = _last(cycle, "rollout", "promoted", "aborted", "failed")
    if end is None:
        return "in_progress", None
    outcome: RolloutOutcome = ("promoted" if end.event == "promoted" else
                               "aborted" if end.event == "aborted" else "failed")
    duration = _number(end.payload.get("duration_s"))
    if duration is None:
        duration = (when(end) - when(started)).total_seconds()
    return outcome, duration


def _measure(cycle: Sequence[Entry], gateway: RouteTable | None
             ) -> tuple[Stability, LatencyImpact]:
    """Stability and latency impact: the gateway's log over the bake window if it has the
    new version's requests, else the rollout's step checks, else the post-deploy monitor."""
    started = _first(cycle, "rollout", "started")
    if started is not None:
        measured = _from_gateway(cycle, started, gateway) or _from_steps(cycle)
        if measured is not None:
            return measured
    monitor = _last(cycle, "monitor", "healthy", "regression")
    if monitor is None:
        return Stability(), LatencyImpact()
    cases = _number(monitor.payload.get("cases"))
    errors = _number(monitor.payload.get("errors"))
    checked = bool(monitor.payload.get("checked")) and cases is not None and errors is not None
    return Stability(
        source="monitor", healthy=monitor.event == "healthy",
        requests=int(cases) if checked and cases is not None else None,
        errors=int(errors) if checked and errors is not None else None,
        error_rate=errors / cases if checked and cases and errors is not None else None,
    ), LatencyImpact()


def _from_gateway(cycle: Sequence[Entry], started: Entry, gateway: RouteTable | None
                  ) -> tuple[Stability, LatencyImpact] | None:
    alias = _text(started.payload.get("alias"))
    new_version = _text(started.payload.get("new_version"))
    if gateway is None or alias is None or new_version is None:
        return None
    end = _last(cycle, "rollout", "promoted", "aborted", "failed")
    since, until = when(started).timestamp(), when(end).timestamp() if end else None
    new = gateway.window(alias, new_version, since=since, until=until)
    if not new.requests:
        return None
    stable_version = _text(started.payload.get("stable_version"))
    old = gateway.window(alias, stable_version, since=since, until=until) \
        if stable_version else None
    healthy = _healthy(cycle)
    return (Stability(source="gateway", requests=new.requests, errors=new.errors,
                      error_rate=new.error_rate, p50_ms=new.p50_ms, p95_ms=new.p95_ms,
                      healthy=healthy),
            _impact(new.p50_ms, new.p95_ms, old.p50_ms if old else None,
                    old.p95_ms if old else None))


def _healthy(cycle: Sequence[Entry]) -> bool | None:
    checks = [e for e in cycle if (e.node, e.event) == ("rollout", "step_checked")]
    if _first(cycle, "rollout", "aborted") is not None:
        return False
    if not checks:
        return None
    return all(e.payload.get("healthy") is True for e in checks)


def _from_steps(cycle: Sequence[Entry]) -> tuple[Stability, LatencyImpact] | None:
    """Requests and errors summed over the steps; latency from the last (widest) step,
    since quantiles of separate windows do not add up."""
    checks = [e for e in cycle if (e.node, e.event) == ("rollout", "step_checked")]
    if not checks:
        return None
    news = [_dict(e.payload.get("new")) for e in checks]
    counted = [(_number(n.get("requests")), _number(n.get("errors"))) for n in news]
    requests = sum(int(r) for r, _ in counted if r is not None)
    errors = sum(int(x) for r, x in counted if r is not None and x is not None)
    last = checks[-1].payload
    new, old = news[-1], _dict(last.get("stable"))
    return (Stability(source="rollout", requests=requests, errors=errors,
                      error_rate=errors / requests if requests else None,
                      p50_ms=_number(new.get("p50_ms")), p95_ms=_number(new.get("p95_ms")),
                      healthy=_healthy(cycle)),
            _impact(_number(new.get("p50_ms")), _number(new.get("p95_ms")),
                    _number(old.get("p50_ms")), _number(old.get("p95_ms"))))


def _impact(p50: float | None, p95: float | None, old50: float | None,
            old95: float | None) -> LatencyImpact:
    return LatencyImpact(new_p50_ms=p50, new_p95_ms=p95, previous_p50_ms=old50,
                         previous_p95_ms=old95, p50_ratio=_ratio(p50, old50),
                         p95_ratio=_ratio(p95, old95))


# rollbacks --------------------------------------------------------------------------------


def _rollback(cycle_id: str, cycle: Sequence[Entry], entry: Entry) -> RollbackMetrics:
    data = entry.payload
    outcome: RollbackOutcome = "failed" if entry.event == "failed" else "not_restored" \
        if entry.event == "not_restored" or data.get("restored") is False \
        or data.get("status") == "nothing_to_restore" else "rolled_back"
    verified = _verified(data.get("verified"))
    duration, source = _rollback_duration(cycle, entry)
    restored = data.get("restored")
    return RollbackMetrics(
        cycle_id=cycle_id, at=when(entry),
        trigger=_text(data.get("trigger")) or (
            None if cycle_id.startswith("rollback-") else "monitor"),
        alias=_text(data.get("alias")) or _text(data.get("branch")),
        from_version=_text(data.get("from_version")),
        to_version=_text(data.get("to_version")) or _text(restored),
        outcome=outcome, succeeded=outcome == "rolled_back" and verified is not False,
        duration_s=duration, duration_from=source, verified=verified,
        by=_text(data.get("by")), reason=_reason(data),
    )


def _reason(data: dict[str, Any]) -> str | None:
    """Why it was rolled back, and why the rollback failed where it did."""
    why, failed = _text(data.get("reason")), _text(data.get("reason_failed"))
    if failed is None:
        return why
    return f"{why or '-'} (failed: {failed})"


def _verified(value: Any) -> bool | None:
    if not isinstance(value, dict):
        return None
    checks = [value.get(k) for k in ("models_ok", "smoke_ok") if k in value]
    if any(c is False for c in checks):
        return False
    return True if checks and all(c is True for c in checks) else None


def _rollback_duration(cycle: Sequence[Entry], entry: Entry
                       ) -> tuple[float | None, DurationFrom | None]:
    """Recorded duration_s; else from its started_at; else from the regression before it."""
    recorded = _number(entry.payload.get("duration_s"))
    if recorded is not None:
        return recorded, "recorded"
    began = _time(entry.payload.get("started_at"))
    if began is None:
        before = [e for e in cycle if e.seq < entry.seq and (
            (e.node, e.event) in (("monitor", "regression"), ("rollout", "aborted"))
            or ((e.node, e.event) == ("rollout", "step_checked")
                and e.payload.get("healthy") is False))]
        began = when(before[-1]) if before else None
    if began is None or began.tzinfo is None:
        return None, None
    return max(0.0, (when(entry) - began).total_seconds()), "timestamps"


def _same_version(deployed: str | None, taken_down: str) -> bool:
    """Versions match, a short commit matching its full hash too."""
    if not deployed:
        return False
    return deployed == taken_down or (len(deployed) >= 12 and taken_down.startswith(deployed))


def _attribute(deployments: list[DeploymentMetrics], rollbacks: Sequence[RollbackMetrics]
               ) -> list[DeploymentMetrics]:
    """Count each rollback against its deployment: the one of its own cycle, else the latest
    deployment before it of the version it took down."""
    counts = [0] * len(deployments)
    for rb in rollbacks:
        same = [i for i, d in enumerate(deployments) if d.cycle_id == rb.cycle_id]
        if not same and rb.from_version is not None:
            same = [i for i, d in enumerate(deployments)
                    if _same_version(d.version, rb.from_version) and d.deployed_at <= rb.at
                    and (rb.alias is None or d.alias is None or rb.alias == d.alias)][-1:]
        for i in same[:1]:
            counts[i] += 1
    return [d.model_copy(update={"rollbacks": n, "incident": bool(n or d.regressions)})
            for d, n in zip(deployments, counts, strict=True)]
