"""How report values read: one place for the table, the HTML page and their labels.

Missing values read "-", never 0 or 100%.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from upgate.report.models import DeploymentMetrics, RollbackMetrics, Totals

MISSING = "-"


def rate(value: float | None) -> str:
    """A fraction as a percentage."""
    return MISSING if value is None else f"{value * 100:.1f}%"


def seconds(value: float | None) -> str:
    """A duration, in the unit that reads best."""
    if value is None:
        return MISSING
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def ms(value: float | None) -> str:
    """A latency in milliseconds."""
    return MISSING if value is None else f"{value:.0f} ms"


def ratio(value: float | None) -> str:
    """A new/previous ratio."""
    return MISSING if value is None else f"{value:.2f}x"


def number(value: float | None) -> str:
    """A count."""
    if value is None:
        return MISSING
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def average(value: float | None) -> str:
    """A mean per something."""
    return MISSING if value is None else f"{value:.2f}"


def text(value: object) -> str:
    """Any other value (None reads as missing), on one line: control characters (a
    terminal's escape sequences, line breaks) from the ledger become spaces."""
    if value is None or value == "":
        return MISSING
    return "".join(ch if ch.isprintable() else " " for ch in str(value))


def moment(value: datetime | None) -> str:
    """A time, to the second, in UTC."""
    return MISSING if value is None else value.isoformat(sep=" ", timespec="seconds")[:19]


def _count(a: int, b: int) -> str:
    return f"{a} / {b}"


SUMMARY: list[tuple[str, Callable[[Totals], str]]] = [
    ("proposals", lambda t: str(t.proposed)),
    ("acceptance rate (approved / decided)",
     lambda t: f"{rate(t.acceptance_rate)} ({_count(t.approved, t.decided)})"),
    ("deployed / proposed", lambda t: f"{rate(t.deploy_rate)} ({_count(t.deployed, t.proposed)})"),
    ("lead time, proposal to deploy (median, max)",
     lambda t: f"{seconds(t.lead_time_s_median)}, {seconds(t.lead_time_s_max)}"),
    ("stability: error rate while baking",
     lambda t: f"{rate(t.bake_error_rate)} of {t.bake_requests} requests"),
    ("stability: latency p50 / p95 (median of deployments)",
     lambda t: f"{ms(t.p50_ms_median)} / {ms(t.p95_ms_median)}"),
    ("latency impact p50 / p95, new vs previous (median)",
     lambda t: f"{ratio(t.p50_ratio_median)} / {ratio(t.p95_ratio_median)}"),
    ("incident rate (deployments with a regression or rollback)",
     lambda t: f"{rate(t.incident_rate)} ({_count(t.incidents, t.deployed)})"),
    ("regressions / rollbacks per deployment",
     lambda t: f"{average(t.regressions_per_deployment)} / "
               f"{average(t.rollbacks_per_deployment)}"),
    ("rollback success rate",
     lambda t: f"{rate(t.rollback_success_rate)} ({_count(t.rollbacks_succeeded, t.rollbacks)})"),
    ("time to roll back (median, max)",
     lambda t: f"{seconds(t.time_to_rollback_s_median)}, {seconds(t.time_to_rollback_s_max)}"),
]
"""The summary's rows: label, and how the value reads."""

DEPLOYMENT_COLUMNS: list[tuple[str, Callable[[DeploymentMetrics], str]]] = [
    ("deployed", lambda d: moment(d.deployed_at)[5:16]),
    ("cycle", lambda d: text(d.cycle_id)),
    ("version", lambda d: text(d.version)),
    ("lead time", lambda d: seconds(d.lead_time_s)),
    ("rollout", lambda d: text(d.rollout)),
    ("measured by", lambda d: text(d.stability.source) + (
        "" if d.stability.requests is None else f", {d.stability.requests} req")),
    ("errors", lambda d: rate(d.stability.error_rate)),
    ("p50 / p95", lambda d: f"{ms(d.stability.p50_ms)} / {ms(d.stability.p95_ms)}"),
    ("vs previous", lambda d: f"{ratio(d.latency.p50_ratio)} / {ratio(d.latency.p95_ratio)}"),
    ("incidents", lambda d: f"{d.regressions} regr., {d.rollbacks} rollb."),
]

ROLLBACK_COLUMNS: list[tuple[str, Callable[[RollbackMetrics], str]]] = [
    ("at", lambda r: moment(r.at)[5:]),
    ("cycle", lambda r: text(r.cycle_id)),
    ("trigger", lambda r: text(r.trigger)),
    ("from", lambda r: text(r.from_version)),
    ("to", lambda r: text(r.to_version)),
    ("outcome", lambda r: r.outcome + ("" if r.succeeded or r.outcome != "rolled_back"
                                       else " (not verified)")),
    ("took", lambda r: seconds(r.duration_s)),
    ("by", lambda r: text(r.by)),
    ("reason", lambda r: text(r.reason)),
]

DAY_COLUMNS: list[tuple[str, Callable[[Totals], str]]] = [
    ("proposed", lambda t: str(t.proposed)),
    ("accepted", lambda t: rate(t.acceptance_rate)),
    ("deployed", lambda t: str(t.deployed)),
    ("lead time", lambda t: seconds(t.lead_time_s_median)),
    ("errors", lambda t: rate(t.bake_error_rate)),
    ("p95 vs prev.", lambda t: ratio(t.p95_ratio_median)),
    ("incidents", lambda t: rate(t.incident_rate)),
    ("rollbacks ok", lambda t: f"{rate(t.rollback_success_rate)} "
                               f"({_count(t.rollbacks_succeeded, t.rollbacks)})"),
    ("to roll back", lambda t: seconds(t.time_to_rollback_s_median)),
]
