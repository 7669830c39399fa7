"""Rollout metrics from the ledger and the gateway's request log: `upgate report`, the
`/report` page and the Prometheus `/metrics` endpoint of `upgate serve`."""

from upgate.report.metrics import build_report
from upgate.report.models import RolloutReport

__all__ = ["RolloutReport", "build_report"]
