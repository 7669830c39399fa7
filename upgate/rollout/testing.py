"""Test double shipped with the package: the gateway's routing and request log, in process.

`FakeGateway` does what the gateway does per request (read the alias's routes, pick a
backend by weight or by the `X-Upgate-Version` pin, answer, log a sample in the real
`RouteTable`), with each version's answer, status and latency given by the test. It serves
the rollout's pinned suite cases (`pinned_client`, the shape `ChatChoiceHarness` calls) and
steady unpinned clients (`traffic`), so the controller's real code judges real samples.
Like `upgate.evals.testing`, it never talks to a server.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from upgate.evals.harness import ChatClient
from upgate.evals.testing import ChatResponse, response
from upgate.gateway.routes import RouteTable

Answer = Callable[[str, list[dict[str, str]]], str | None]
"""(version, messages) -> the reply's text."""


class FakeGatewayError(RuntimeError):
    """What a client sees when the chosen version answered with an error status."""


@dataclass
class FakeGateway:
    """Routes by the real route table and logs to it (see the module docstring)."""

    routes: RouteTable
    answer: Answer
    status: Mapping[str, int] = field(default_factory=dict)
    """A version's HTTP status (200 when not given)."""
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    """A version's logged latency (10 ms when not given)."""
    seed: int = 0
    served: list[tuple[str, str, bool]] = field(default_factory=list)
    """(alias, version, pinned) of every request, in order."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def pick(self, alias: str, pin: str | None) -> str:
        """The version one request goes to: the pin if routed, else by weight."""
        backends = self.routes.routes(alias)
        if not backends:
            return alias  # not routed: the default upstream answers under the alias itself
        if pin is not None:
            if pin not in {b.version for b in backends}:
                raise FakeGatewayError(f"{alias} has no version {pin}")
            return pin
        with self._lock:
            return self._rng.choices([b.version for b in backends],
                                     weights=[b.weight for b in backends])[0]

    def request(self, alias: str, messages: list[dict[str, str]],
                pin: str | None = None) -> ChatResponse:
        """One request through the gateway; an error status raises like a client would."""
        version = self.pick(alias, pin)
        status = self.status.get(version, 200)
        with self._lock:
            self.served.append((alias, version, pin is not None))
        self.routes.record(alias, version, status=status,
                           latency_ms=self.latency_ms.get(version, 10.0), pinned=pin is not None,
                           error=None if status < 400 else f"HTTP {status}")
        if status >= 400:
            raise FakeGatewayError(f"HTTP {status} from {version}")
        return response(self.answer(version, messages))

    def traffic(self, alias: str, n: int) -> dict[str, int]:
        """`n` unpinned requests (steady clients); how many each version answered."""
        counts: dict[str, int] = {}
        for _ in range(n):
            with contextlib.suppress(FakeGatewayError):  # the sample is logged either way
                self.request(alias, [{"role": "user", "content": "hello"}])
            version = self.served[-1][1]
            counts[version] = counts.get(version, 0) + 1
        return counts

    def pinned_client(self, base_url: str, timeout_s: float, version: str) -> ChatClient:
        """A client whose requests carry the pin (the rollout's `PinnedClientFactory`)."""
        return _PinnedClient(self, version)


class _PinnedClient:
    def __init__(self, gateway: FakeGateway, version: str) -> None:
        self.gateway = gateway
        self.version = version
        self.chat = self
        self.completions = self

    def create(self, **kwargs: Any) -> ChatResponse:
        return self.gateway.request(str(kwargs["model"]), kwargs["messages"], pin=self.version)
