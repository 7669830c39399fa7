"""The rollout controller on the real route table and ledger: promotion, abort with traffic
restored to the stable version, each traffic change recorded before it is made, and a run
again after an interruption continuing from the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgate.gateway.routes import RouteTable

from .rollout_setup import ALIAS, CYCLE, NEW, STABLE, Rig, limits


class Interrupted(Exception):
    pass


def test_a_healthy_version_is_promoted_step_by_step(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limits())
    result = rig.run()
    assert result.status == "promoted" and result.steps_done == 2 and not result.breaches
    assert rig.promoted == [NEW]
    assert rig.events() == [
        ("rollout", "started", None), ("rollout", "step", 1), ("rollout", "step_checked", 1),
        ("rollout", "step", 2), ("rollout", "step_checked", 2), ("rollout", "promoted", None)]
    # 100% on the new version; the stable one stays routable by pin, with no live traffic.
    assert rig.weights() == {NEW: 100, STABLE: 0}
    checked = [e.payload for e in rig.ledger.entries(CYCLE) if e.event == "step_checked"]
    assert all(c["healthy"] and c["breaches"] == [] for c in checked)
    assert checked[0]["new"]["requests"] >= 10 and checked[0]["stable"]["requests"] >= 10
    assert checked[0]["suite"] == {"new": 1.0, "stable": 1.0, "cases": 4,
                                   "errors": {"new": 0, "stable": 0}}
    # The first step really split live traffic; the second sent it all to the new version.
    unpinned = [v for _, v, pinned in rig.gateway.served if not pinned]
    assert set(unpinned[:40]) == {NEW, STABLE} and set(unpinned[-40:]) == {NEW}
    assert rig.ledger.verify().ok


def test_a_failing_version_aborts_and_all_traffic_returns_to_stable(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limits(), status={NEW: 500})
    result = rig.run()
    assert result.status == "aborted" and result.restored_version == STABLE
    assert any(b.startswith("max_error_rate:") for b in result.breaches)
    assert rig.promoted == []
    assert rig.weights() == {STABLE: 100}
    assert rig.events() == [
        ("rollout", "started", None), ("rollout", "step", 1), ("rollout", "step_checked", 1),
        ("rollout", "aborted", None), ("rollback", "rolled_back", None)]
    rolled = rig.ledger.entries(CYCLE)[-1].payload
    assert rolled["trigger"] == "rollout" and rolled["from_version"] == NEW
    assert rolled["to_version"] == STABLE and rolled["verified"]["models_ok"]
    # Clients after the abort reach only the stable version.
    assert rig.gateway.traffic(ALIAS, 30) == {STABLE: 30}


def test_a_version_that_answers_worse_aborts_on_the_suite(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limits(), bad_answers={NEW})
    result = rig.run()
    assert result.status == "aborted"
    assert [b.split(":")[0] for b in result.breaches] == ["max_suite_drop"]
    assert rig.weights() == {STABLE: 100}


def test_a_slower_version_aborts_on_latency(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limits(), latency_ms={NEW: 40.0, STABLE: 10.0})
    result = rig.run()
    assert result.status == "aborted"
    assert [b.split(":")[0] for b in result.breaches] == ["max_p50_ratio", "max_p95_ratio"]


def test_too_few_requests_is_a_breach_not_a_pass(tmp_path: Path) -> None:
    # No live clients and no suite cases: the step has nothing to be judged on.
    rig = Rig(tmp_path, limits(suite_cases=0), clients_per_bake=0)
    result = rig.run()
    assert result.status == "aborted"
    assert [b.split(":")[0] for b in result.breaches] == ["min_requests"]
    assert rig.weights() == {STABLE: 100}


def test_each_traffic_change_is_recorded_before_it_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(tmp_path, limits(), status={NEW: 500})
    seen: list[tuple[str, dict[str, int]]] = []
    original = RouteTable.set_routes

    def set_routes(self: RouteTable, alias: str, backends: Any, *, reason: str) -> int:
        last = rig.ledger.entries(CYCLE)[-1]
        seen.append((last.event, {b.version: b.weight for b in backends}))
        return original(self, alias, backends, reason=reason)

    monkeypatch.setattr(RouteTable, "set_routes", set_routes)
    rig.run()
    assert seen == [("step", {NEW: 50, STABLE: 50}), ("aborted", {STABLE: 100})]
    step = next(e for e in rig.ledger.entries(CYCLE) if e.event == "step")
    assert {b["version"]: b["weight"] for b in step.payload["routes"]} == {NEW: 50, STABLE: 50}


@pytest.mark.parametrize(("event", "step", "from_step", "weights_before"), [
    ("started", None, 0, {}),
    ("step", 2, 2, {NEW: 50, STABLE: 50}),       # recorded, not yet applied
    ("step_checked", 1, 1, {NEW: 50, STABLE: 50}),  # between steps
])
def test_a_rollout_run_again_continues_from_the_ledger(
        tmp_path: Path, event: str, step: int | None, from_step: int,
        weights_before: dict[str, int]) -> None:
    def stop(e: str, data: dict[str, Any]) -> None:
        if e == event and data.get("step") == step:
            raise Interrupted

    rig = Rig(tmp_path, limits(), on_event=stop)
    with pytest.raises(Interrupted):
        rig.run()
    assert rig.weights() == weights_before
    rig.on_event = lambda e, d: None
    result = rig.controller().run()
    assert result.status == "promoted" and result.resumed
    resumed = [e.payload for e in rig.ledger.entries(CYCLE) if e.event == "resumed"]
    assert [r["from_step"] for r in resumed] == [from_step]
    assert rig.weights() == {NEW: 100, STABLE: 0}
    events = [x for x in rig.events() if x[1] != "resumed"]
    assert len(events) == len(set(events)), events  # no step recorded twice
    assert rig.promoted == [NEW]


def test_an_abort_interrupted_before_restoring_finishes_on_the_next_run(tmp_path: Path) -> None:
    def stop(e: str, data: dict[str, Any]) -> None:
        if e == "aborted":
            raise Interrupted

    rig = Rig(tmp_path, limits(), status={NEW: 500}, on_event=stop)
    with pytest.raises(Interrupted):
        rig.run()
    assert rig.weights() == {NEW: 50, STABLE: 50}  # the ledger already says: abort
    rig.on_event = lambda e, d: None
    result = rig.controller().run()
    assert result.status == "aborted" and rig.weights() == {STABLE: 100}
    assert [x[1] for x in rig.events()].count("rolled_back") == 1
    # Once more: nothing changes, nothing is recorded again.
    generation, count = rig.routes.generation(), len(rig.events())
    assert rig.controller().run().status == "aborted"
    assert (rig.routes.generation(), len(rig.events())) == (generation, count)


@pytest.mark.parametrize(("cycle", "from_version"), [
    (CYCLE, NEW),                           # `upgate rollback CYCLE`
    ("c-rollback-triage-1", STABLE),        # `upgate rollback --alias triage --to ...`
])
def test_a_rollback_recorded_meanwhile_ends_the_rollout_without_moving_traffic(
        tmp_path: Path, cycle: str, from_version: str) -> None:
    def stop(e: str, data: dict[str, Any]) -> None:
        if e == "step_checked":
            raise Interrupted

    rig = Rig(tmp_path, limits(), on_event=stop)
    with pytest.raises(Interrupted):
        rig.run()
    # A person rolls the alias back while the rollout is dead (as `upgate rollback` would).
    rig.routes.set_routes(ALIAS, [rig.plan.stable.model_copy(update={"weight": 100})],
                          reason="manual rollback")
    rig.ledger.append(cycle, "rollback", "rolled_back", {
        "alias": ALIAS, "from_version": from_version, "to_version": STABLE,
        "trigger": "manual", "by": "bob"}, key="manual-1")
    generation = rig.routes.generation()
    rig.on_event = lambda e, d: None
    result = rig.controller().run()
    assert result.status == "aborted" and result.restored_version == STABLE
    assert "by bob" in result.breaches[0]
    assert rig.routes.generation() == generation and rig.weights() == {STABLE: 100}
    assert rig.promoted == []
