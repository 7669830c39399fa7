"""Each autonomy threshold on its own: it trips at its limit, not before, and says what to do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from upgate.autonomy import (
    COST_EVENT,
    COST_NODE,
    RESET_EVENT,
    BatchView,
    Spend,
    accumulated_regression,
    check_accumulated,
    check_budget,
    check_error_rate,
    check_ledger,
    check_pending,
    check_risk,
    check_rollbacks,
    check_setbacks,
    first_pause,
    served_hidden_score,
    spend_since,
)
from upgate.errors import PolicyError
from upgate.ledger import Entry, Ledger, VerifyReport
from upgate.policy import Autonomy, Budget, load_policy


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def cost(ledger: Ledger, cycle: str, outcome: str = "deployed", **data: object) -> Entry:
    return ledger.append(cycle, COST_NODE, COST_EVENT, {"outcome": outcome, **data})


def test_pending_trips_at_the_limit() -> None:
    assert check_pending(1, 2) is None
    pause = check_pending(2, 2)
    assert pause is not None and pause.threshold == "max_pending"
    assert (pause.observed, pause.limit) == (2, 2)
    assert "upgate batch resume" in pause.next_step


def test_setbacks_count_only_the_streak_at_the_end() -> None:
    assert check_setbacks(["failed", "deployed", "rejected"], 2) is None
    pause = check_setbacks(["deployed", "rejected", "blocked"], 2)
    assert pause is not None and pause.observed == 2
    assert "2 setbacks in a row (rejected, blocked)" in pause.message()
    assert check_setbacks(["awaiting_approval", "failed"], 2) is None


def test_tokens_come_from_usage_entries_and_costs_from_cycle_costs(ledger: Ledger) -> None:
    ledger.append("c1", "usage", "proposal", {"total_tokens": 100})
    cost(ledger, "c1", sandbox_s=3.5, wall_s=10.0)  # an entry from before CPU was counted
    since = ledger.append("b1", "batch", "resumed", {}).at
    ledger.append("c2", "usage", "review", {"total_tokens": 40})
    ledger.append("c2", "usage", "review", {"total_tokens": 2})
    cost(ledger, "c2", sandbox_s=1.0, wall_s=2.0, sandbox_cpu_s=0.75)
    entries = ledger.entries()
    assert spend_since(entries, "") == Spend(tokens=142, sandbox_s=4.5, wall_s=12.0,
                                             sandbox_cpu_s=0.75)
    assert spend_since(entries, since) == Spend(tokens=42, sandbox_s=1.0, wall_s=2.0,
                                                sandbox_cpu_s=0.75)


@pytest.mark.parametrize(("field", "spend", "limit"), [
    ("tokens", Spend(tokens=500), 500),
    ("sandbox_seconds", Spend(sandbox_s=60.0), 60.0),
    ("sandbox_cpu_seconds", Spend(sandbox_cpu_s=30.0), 30.0),
    ("wall_seconds", Spend(wall_s=3600.0), 3600.0),
])
def test_each_budget_trips_when_used_up(field: str, spend: Spend, limit: float) -> None:
    budget = Budget.model_validate({field: limit})
    pause = check_budget(spend, budget, "per_day")
    assert pause is not None and pause.threshold == f"per_day.{field}"
    assert pause.limit == limit
    under = Budget.model_validate({field: limit * 1.01 + 1})
    assert check_budget(spend, under, "per_day") is None
    assert check_budget(spend, Budget(), "per_day") is None


def test_small_drops_that_each_pass_add_up(ledger: Ledger) -> None:
    # Each deployed change drops the slice by 0.02, within a 0.05 per-change tolerance.
    for i in range(3):
        cost(ledger, f"c{i}", slice_deltas={"billing": -0.02, "outage": 0.01})
    cost(ledger, "c9", outcome="rejected", slice_deltas={"billing": -0.5})  # not deployed
    totals = accumulated_regression(ledger.entries())
    assert totals["billing"] == pytest.approx(-0.06)
    pause = check_accumulated(totals, 0.05)
    assert pause is not None and "'billing'" in pause.detail
    assert pause.observed == pytest.approx(-0.06)
    assert check_accumulated(totals, 0.07) is None
    # A candidate that would cross the limit is caught before it is approved.
    assert check_accumulated(totals, 0.07, candidate={"billing": -0.02}) is not None


def test_a_human_reset_starts_the_sum_again(ledger: Ledger) -> None:
    cost(ledger, "c1", slice_deltas={"billing": -0.04})
    ledger.append("b1", COST_NODE, RESET_EVENT, {"by": "bob"})
    cost(ledger, "c2", slice_deltas={"billing": -0.02})
    assert accumulated_regression(ledger.entries()) == {"billing": pytest.approx(-0.02)}


@pytest.mark.parametrize(("risk", "level", "trips"), [
    ("low", "high", False), ("medium", "high", False), ("high", "high", True),
    ("medium", "medium", True), ("low", "medium", False), ("low", "low", True),
    ("high", None, False),
])
def test_risk_at_or_above_the_level(risk: str, level: str | None, trips: bool) -> None:
    pause = check_risk(risk, level, "c1")  # type: ignore[arg-type]
    assert (pause is not None) is trips
    if pause is not None:
        assert pause.cycle_id == "c1" and "upgate cancel c1" in pause.next_step


def test_rollbacks_count_within_the_window(ledger: Ledger) -> None:
    ledger.append("c1", "rollback", "rolled_back", {})
    ledger.append("c2", "rollback", "rolled_back", {})
    now = datetime.now(UTC)
    pause = check_rollbacks(ledger.entries(), 2, 24, now)
    assert pause is not None and pause.observed == 2
    assert check_rollbacks(ledger.entries(), 3, 24, now) is None
    # A day later both are outside the window.
    assert check_rollbacks(ledger.entries(), 2, 24, now + timedelta(hours=25)) is None


def test_error_rate_needs_enough_cases_and_a_rate_above_the_limit(ledger: Ledger) -> None:
    ledger.append("c1", "monitor", "regression", {"checked": True, "cases": 8, "errors": 4})
    now = datetime.now(UTC)
    assert check_error_rate(ledger.entries(), 0.2, 10, 24, now) is None  # 8 cases < 10
    ledger.append("c2", "monitor", "healthy", {"checked": True, "cases": 8, "errors": 0})
    pause = check_error_rate(ledger.entries(), 0.2, 10, 24, now)
    assert pause is not None and pause.observed == 0.25
    assert check_error_rate(ledger.entries(), 0.25, 10, 24, now) is None


def test_a_failed_verify_stops_rather_than_pauses() -> None:
    assert check_ledger(VerifyReport(ok=True, entries=3, problems=[])) is None
    pause = check_ledger(VerifyReport(ok=False, entries=3, problems=["entry 2 was edited"]))
    assert pause is not None and pause.action == "stop"
    assert pause.message().startswith("stopped: the ledger failed verification")


def test_first_pause_puts_a_broken_ledger_first(ledger: Ledger) -> None:
    view = BatchView(entries=ledger.entries(),
                     verify=VerifyReport(ok=False, entries=0, problems=["x"]), pending=5,
                     outcomes=["failed"] * 5, leg_started_at="", day_started_at="",
                     now=datetime.now(UTC))
    pause = first_pause(view, Autonomy(), 2)
    assert pause is not None and pause.threshold == "ledger_verify"
    ok = VerifyReport(ok=True, entries=0, problems=[])
    calm = BatchView(entries=[], verify=ok, pending=0, outcomes=["deployed"],
                     leg_started_at="", day_started_at="", now=datetime.now(UTC))
    assert first_pause(calm, Autonomy(), 2) is None


def test_served_score_follows_deployments() -> None:
    hidden = {"baseline": 0.5, "candidate": 0.7}
    assert served_hidden_score("deployed", hidden, None) == 0.7
    assert served_hidden_score("rejected", hidden, None) == 0.5
    assert served_hidden_score("failed", {}, 0.7) == 0.7


def test_the_policy_file_carries_the_thresholds_and_refuses_unknown_keys(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "policy.toml"
    policy = load_policy(example)
    assert policy.autonomy.pause_at_risk == "high"
    assert policy.autonomy.per_batch.sandbox_seconds == 7200
    assert policy.autonomy.per_batch.sandbox_cpu_seconds == 7200
    # A policy written before CPU seconds were counted still loads: no CPU budget then.
    old = tmp_path / "old.toml"
    old.write_text(example.read_text().replace("sandbox_cpu_seconds", "# sandbox_cpu_seconds"))
    assert load_policy(old).autonomy.per_day.sandbox_cpu_seconds is None
    bad = tmp_path / "policy.toml"
    bad.write_text(example.read_text() + "\n[autonomy.per_week]\ntokens = 1\n")
    with pytest.raises(PolicyError, match="autonomy"):
        load_policy(bad)
    worse = tmp_path / "p2.toml"
    worse.write_text(example.read_text().replace("max_rollbacks = 2", "max_rollbacks = 0"))
    with pytest.raises(PolicyError, match="max_rollbacks"):
        load_policy(worse)
