"""A cycle's time and cost on the page: wall time per node from the ledger, the wait for a
person apart, tokens and sandbox wall and CPU seconds from the meter's records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from upgate.autonomy import COST_EVENT, COST_NODE
from upgate.ledger import Entry
from upgate.server.costs import WAITING, cycle_cost
from upgate.server.views import cycle_view

from .test_cycle import REVIEW, draft, make_runner
from .test_server_api import client_for, login, template, waiting  # noqa: F401


def entry(seq: int, minute: int, second: int, node: str, event: str = "done",
          **payload: Any) -> Entry:
    return Entry(seq=seq, at=f"2026-03-01T12:{minute:02d}:{second:02d}+00:00", cycle_id="c1",
                 node=node, event=event, key=None, payload=payload, prev_hash="", hash="")


def test_wall_time_per_node_with_the_wait_for_a_person_apart() -> None:
    entries = [
        entry(1, 0, 0, "start", "started"),
        entry(2, 0, 10, "observe"),
        entry(3, 0, 12, "usage", "proposal", total_tokens=30),
        entry(4, 0, 15, "propose"),
        entry(5, 2, 15, "implement"),
        entry(6, 3, 0, "critique"),
        entry(7, 3, 1, "gate", "approval_requested"),
        entry(8, 20, 0, "chat", "question"),  # a person asks: not a node, no time of its own
        entry(9, 33, 1, "approve", "approve"),
        entry(10, 33, 6, "deploy"),
        entry(11, 33, 7, "record", "deployed"),
    ]
    cost = cycle_cost(entries)
    assert cost["per_node_s"] == {"observe": 10.0, "propose": 5.0, "implement": 120.0,
                                  "critique": 45.0, "gate": 1.0, WAITING: 1800.0,
                                  "deploy": 5.0, "record": 1.0}
    assert cost["wall_s"] == 33 * 60 + 7
    assert cost["tokens"] == 30 and cost["tokens_by_call"] == {"proposal": 30}
    assert cost["sandbox_s"] is None and cost["sandbox_cpu_s"] is None
    assert cost["metered"] is False


def test_a_batch_cycles_sandbox_wall_and_cpu_seconds_come_from_its_cost_record() -> None:
    entries = [entry(1, 0, 0, "start", "started"), entry(2, 0, 4, "record", "failed"),
               entry(3, 0, 4, COST_NODE, COST_EVENT, sandbox_s=3.25, sandbox_cpu_s=1.5,
                     tokens=0)]
    cost = cycle_cost(entries)
    assert (cost["sandbox_s"], cost["sandbox_cpu_s"], cost["tokens"]) == (3.25, 1.5, 0)
    assert cost["metered"] is True
    # An older cost record, from before CPU seconds were counted, says nothing of CPU.
    old = [entries[0], entry(3, 0, 4, COST_NODE, COST_EVENT, sandbox_s=2.0)]
    assert cycle_cost(old)["sandbox_cpu_s"] is None


def test_the_page_gets_the_cost_of_a_batch_cycle(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft("prompt_variant"), "review": REVIEW})
    report = runner.batch("alice", max_cycles=1)
    [cycle] = report.cycles
    view = cycle_view(runner, cycle)
    assert view is not None
    cost = view["cost"]
    assert cost["metered"] is True
    assert cost["sandbox_cpu_s"] == report.curve[0]["sandbox_cpu_s"] > 0
    assert cost["sandbox_s"] == report.curve[0]["sandbox_s"] > 0
    assert list(cost["per_node_s"])[:3] == ["observe", "propose", "policy_check"]
    # Each figure is rounded to the millisecond: the parts may exceed the whole by half a
    # millisecond each, and the whole by half of one more.
    slack = 0.0005 * (len(cost["per_node_s"]) + 1)
    assert sum(cost["per_node_s"].values()) <= cost["wall_s"] + slack + 1e-9


def test_the_api_serves_the_cost_of_a_waiting_cycle(waiting: Any) -> None:  # noqa: F811
    runner, cycle, tokens = waiting
    client = client_for(runner)
    login(client, "bob", tokens["bob"])
    cost = client.get(f"/api/cycles/{cycle}").json()["cost"]
    assert "critique" in cost["per_node_s"] and WAITING not in cost["per_node_s"]
    assert cost["metered"] is False and cost["tokens"] is None
