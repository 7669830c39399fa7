"""A rollout of `triage` from `triage@initial` to `triage@new` over the real route table and
ledger, with the gateway's routing done in process (`FakeGateway`) and steady clients that
send unpinned traffic whenever a step bakes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upgate.evals.suite import load_suite
from upgate.gateway.routes import Backend, RouteTable
from upgate.ledger import Ledger, open_ledger
from upgate.policy import Rollout
from upgate.rollout.controller import RolloutController, RolloutParts
from upgate.rollout.plan import RolloutPlan, RolloutResult
from upgate.rollout.probe import SuiteProbe
from upgate.rollout.testing import FakeGateway

from ..conftest import EXAMPLE_SUITE, suite_answers

ALIAS, STABLE, NEW = "triage", "triage@initial", "triage@new"
URL = "http://127.0.0.1:9/v1"
CYCLE = "c-rollout-1"


def limits(**kw: Any) -> Rollout:
    """Two steps, judged on at least 10 requests, 4 suite cases."""
    base: dict[str, Any] = {"enabled": True, "steps": (50, 100), "bake_s": 1.0,
                            "min_requests": 10, "suite_cases": 4}
    return Rollout.model_validate({**base, **kw})


def plan(rollout: Rollout) -> RolloutPlan:
    return RolloutPlan(
        cycle_id=CYCLE, deployment_id=f"{CYCLE}-abc", alias=ALIAS,
        new=Backend(version=NEW, base_url=URL, model=NEW, weight=0),
        stable=Backend(version=STABLE, base_url=URL, model=STABLE, weight=100),
        limits=rollout)


@dataclass
class Rig:
    """Everything one rollout test needs; `controller()` makes a fresh process's view."""

    tmp: Path
    rollout: Rollout
    bad_answers: set[str] = field(default_factory=set)
    status: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    clients_per_bake: int = 40
    promoted: list[str] = field(default_factory=list)
    on_event: Callable[[str, dict[str, Any]], None] = lambda e, d: None
    on_sleep: Callable[[float], None] = lambda s: None

    def __post_init__(self) -> None:
        self.routes = RouteTable(self.tmp / "gateway.db")
        self.ledger: Ledger = open_ledger(self.tmp / "state")
        answers = suite_answers()

        def answer(version: str, messages: list[dict[str, str]]) -> str:
            if version in self.bad_answers:
                return "billing" if answers.get(messages[-1]["content"]) != "billing" else "bug"
            return answers.get(messages[-1]["content"], "billing")

        self.gateway = FakeGateway(self.routes, answer, status=self.status,
                                   latency_ms=self.latency_ms)
        suite = load_suite(EXAMPLE_SUITE)
        self.probe = SuiteProbe(
            gateway_url=URL, alias=ALIAS, cases=suite.split("visible")[:self.rollout.suite_cases],
            system_prompt="Classify the ticket.", few_shot=[], labels=suite.labels,
            scorer=suite.scorer, scorer_options=suite.scorer_options,
            client_factory=self.gateway.pinned_client)
        self.plan = plan(self.rollout)

    def record(self, node: str, event: str, data: dict[str, Any], key: str) -> None:
        self.ledger.append(CYCLE, node, event, data, key=key)

    def bake(self, seconds: float) -> None:
        self.on_sleep(seconds)
        self.gateway.traffic(ALIAS, self.clients_per_bake)

    def controller(self) -> RolloutController:
        parts = RolloutParts(
            routes=self.routes, ledger=self.ledger, record=self.record, probe=self.probe,
            promote=lambda: self.promoted.append(NEW),
            verify_stable=lambda: {"models_ok": True, "smoke_ok": True, "detail": {}},
            sleep=self.bake, on_event=self.on_event)
        return RolloutController(self.plan, parts)

    def run(self) -> RolloutResult:
        return self.controller().run()

    def events(self) -> list[tuple[str, str, Any]]:
        """(node, event, step or None) of every record, in order."""
        return [(e.node, e.event, e.payload.get("step")) for e in self.ledger.entries(CYCLE)]

    def weights(self) -> dict[str, int]:
        return {b.version: b.weight for b in self.routes.routes(ALIAS)}
