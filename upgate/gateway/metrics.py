"""The gateway's Prometheus metrics, in a registry of its own (not the process-global one),
so two gateways in one process (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LABELS = ("alias", "version", "status")

# Seconds; completions on a CPU take from tens of milliseconds to minutes.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    """Requests and latency per alias, version and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "upgate_gateway_requests", "Requests the gateway answered.", _LABELS,
            registry=self.registry)
        self.latency = Histogram(
            "upgate_gateway_request_seconds", "Time from request to the end of the answer.",
            _LABELS, buckets=_BUCKETS, registry=self.registry)

    def observe(self, alias: str, version: str, status: int, seconds: float) -> None:
        """Count one request (status 0: the backend did not answer)."""
        labels = (alias, version, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
