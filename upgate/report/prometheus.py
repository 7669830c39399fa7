"""Rollout metrics in the Prometheus text format, computed from the ledger at scrape time.

A custom collector in its own registry (no process or platform metrics, no global state):
each scrape builds the report afresh. Label values (aliases, versions, triggers) come from
the ledger; prometheus-client escapes them in the exposition. A metric with no data is
left out of the scrape rather than exposed as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from upgate.report.models import DeploymentMetrics, RolloutReport

log = logging.getLogger(__name__)
PREFIX = "upgate_rollout"


class ReportCollector(Collector):
    """Builds the report at each scrape and yields its metrics."""

    def __init__(self, build: Callable[[], RolloutReport]) -> None:
        self.build = build

    def collect(self) -> Iterator[Metric]:
        """The metrics of a freshly built report."""
        report = self.build()
        t = report.totals
        for name, doc, value in (
            ("proposals", "Proposals made.", t.proposed),
            ("decisions", "Approval decisions (human, or granted by policy).", t.decided),
            ("approvals", "Decisions that approved.", t.approved),
            ("deployments", "Deployments that reached traffic.", t.deployed),
            ("regressions", "Post-deploy regressions and aborted rollouts.", t.regressions),
            ("incidents", "Deployments with a regression or a rollback.", t.incidents),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        rollbacks = CounterMetricFamily(f"{PREFIX}_rollbacks", "Rollback attempts.",
                                        labels=["trigger", "outcome"])
        counts: dict[tuple[str, str], int] = {}
        for rb in report.rollbacks:
            label = (rb.trigger or "unknown", "succeeded" if rb.succeeded else rb.outcome)
            counts[label] = counts.get(label, 0) + 1
        for (trigger, outcome), n in sorted(counts.items()):
            rollbacks.add_metric([trigger, outcome], n)
        yield rollbacks
        for name, doc, maybe in (
            ("acceptance_ratio", "Approved / decided.", t.acceptance_rate),
            ("deploy_ratio", "Deployed / proposed.", t.deploy_rate),
            ("incident_ratio", "Deployments with an incident / deployments.", t.incident_rate),
            ("rollback_success_ratio", "Rollbacks that restored and verified / attempted.",
             t.rollback_success_rate),
            ("bake_error_ratio", "Errors / requests over the deployments' bake windows.",
             t.bake_error_rate),
        ):
            if maybe is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=maybe)
        lead = [d.lead_time_s for d in report.deployments if d.lead_time_s is not None]
        yield SummaryMetricFamily(f"{PREFIX}_lead_time_seconds",
                                  "Lead time from proposal to deploy.",
                                  count_value=len(lead), sum_value=sum(lead))
        took = [r.duration_s for r in report.rollbacks
                if r.succeeded and r.duration_s is not None]
        yield SummaryMetricFamily(f"{PREFIX}_rollback_duration_seconds",
                                  "Time to roll back (successful rollbacks).",
                                  count_value=len(took), sum_value=sum(took))
        yield from _latest(report.deployments)


def _latest(deployments: list[DeploymentMetrics]) -> Iterator[Metric]:
    """The newest deployment of each alias (bounded label sets: one series per alias)."""
    newest: dict[str, DeploymentMetrics] = {}
    for d in deployments:
        newest[d.alias or d.target or "unknown"] = d
    families = {
        "error_ratio": GaugeMetricFamily(
            f"{PREFIX}_latest_error_ratio", "The newest deployment's error rate while baking.",
            labels=["alias", "version"]),
        "latency": GaugeMetricFamily(
            f"{PREFIX}_latest_latency_ms", "The newest deployment's latency while baking.",
            labels=["alias", "version", "quantile"]),
        "ratio": GaugeMetricFamily(
            f"{PREFIX}_latest_latency_ratio",
            "The newest deployment's latency against the version before it.",
            labels=["alias", "version", "quantile"]),
    }
    for alias, d in sorted(newest.items()):
        version = d.version or ""
        if d.stability.error_rate is not None:
            families["error_ratio"].add_metric([alias, version], d.stability.error_rate)
        for q, ms, ratio in (("0.5", d.stability.p50_ms, d.latency.p50_ratio),
                             ("0.95", d.stability.p95_ms, d.latency.p95_ratio)):
            if ms is not None:
                families["latency"].add_metric([alias, version, q], ms)
            if ratio is not None:
                families["ratio"].add_metric([alias, version, q], ratio)
    yield from families.values()


def exposition(build: Callable[[], RolloutReport]) -> bytes:
    """One scrape's text (Prometheus exposition format 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(build))
    return generate_latest(registry)
