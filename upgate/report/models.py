"""The typed rollout report: per deployment, per rollback, per day and in total.

Every measured value is `None` where the ledger (or the gateway's request log) holds no data
for it, so a reader sees "-" for missing, never a made-up 0 or 100%.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

StabilitySource = Literal["gateway", "rollout", "monitor"]
RollbackOutcome = Literal["rolled_back", "not_restored", "failed"]
RolloutOutcome = Literal["promoted", "aborted", "in_progress", "failed"]
DurationFrom = Literal["recorded", "timestamps"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stability(_Frozen):
    """How the new version answered while it baked (rollout) or right after deploy (monitor)."""

    source: StabilitySource | None = None
    """gateway: the request log over the bake window; rollout: the step checks' windows;
    monitor: the post-deploy check's cases (no latency); None: nothing was measured."""
    requests: int | None = None
    errors: int | None = None
    error_rate: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    healthy: bool | None = None


class LatencyImpact(_Frozen):
    """The new version's latency against the version it replaced, over the same window."""

    previous_version: str | None = None
    new_p50_ms: float | None = None
    new_p95_ms: float | None = None
    previous_p50_ms: float | None = None
    previous_p95_ms: float | None = None
    p50_ratio: float | None = None
    p95_ratio: float | None = None


class DeploymentMetrics(_Frozen):
    """One deployment (a cycle that reached deploy), from proposal to its last rollback."""

    cycle_id: str
    deployment_id: str
    kind: str | None = None
    target: str | None = None
    alias: str | None = None
    version: str | None = None
    previous_version: str | None = None
    proposed_at: datetime | None = None
    deployed_at: datetime
    lead_time_s: float | None = None
    """From the cycle's proposal to its deploy entry."""
    rollout: RolloutOutcome | None = None
    """None: the deployment took all traffic at once (no staged rollout)."""
    rollout_steps_checked: int = 0
    rollout_duration_s: float | None = None
    switch_s: float | None = None
    """Blue/green: how long the traffic switch took."""
    stability: Stability = Stability()
    latency: LatencyImpact = LatencyImpact()
    regressions: int = 0
    """Post-deploy monitor regressions and aborted rollouts."""
    rollbacks: int = 0
    """Rollback attempts (any outcome) that took this deployment down."""
    incident: bool = False


class RollbackMetrics(_Frozen):
    """One rollback attempt, by the monitor, a rollout, blue/green or a person."""

    cycle_id: str
    at: datetime
    trigger: str | None = None
    alias: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    outcome: RollbackOutcome
    succeeded: bool
    duration_s: float | None = None
    duration_from: DurationFrom | None = None
    verified: bool | None = None
    by: str | None = None
    reason: str | None = None


class Totals(_Frozen):
    """The metrics over one period (all time, or one UTC day).

    Each fact counts on its own day: a proposal on the day it was made, a decision on the day
    it was taken, a deployment (with its lead time, stability, latency and incidents) on the
    day it was deployed, a rollback on the day it ran.
    """

    proposed: int = 0
    decided: int = 0
    """Human approvals and rejections, plus approvals the policy granted on its own."""
    approved: int = 0
    deployed: int = 0
    acceptance_rate: float | None = None
    """approved / decided."""
    deploy_rate: float | None = None
    """deployed / proposed."""
    lead_time_s_median: float | None = None
    lead_time_s_max: float | None = None
    bake_requests: int = 0
    bake_error_rate: float | None = None
    """Errors / requests over every measured bake window of the period's deployments."""
    p50_ms_median: float | None = None
    p95_ms_median: float | None = None
    p50_ratio_median: float | None = None
    p95_ratio_median: float | None = None
    regressions: int = 0
    incidents: int = 0
    """Deployments with at least one regression or rollback."""
    incident_rate: float | None = None
    """incidents / deployed."""
    regressions_per_deployment: float | None = None
    rollbacks_per_deployment: float | None = None
    rollbacks: int = 0
    rollbacks_succeeded: int = 0
    rollback_success_rate: float | None = None
    time_to_rollback_s_median: float | None = None
    time_to_rollback_s_max: float | None = None


class DayMetrics(Totals):
    """The metrics of one UTC day."""

    day: date


class RolloutReport(_Frozen):
    """What `upgate report` prints, writes as HTML and `/metrics` exposes."""

    generated_at: datetime
    since: date | None = None
    ledger_entries: int
    gateway: bool
    """Whether a gateway request log was read."""
    totals: Totals
    days: list[DayMetrics]
    deployments: list[DeploymentMetrics]
    rollbacks: list[RollbackMetrics]
