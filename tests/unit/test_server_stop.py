"""The stop button on the chat page: a logged-in operator, approver or admin stops a running
batch with a reason (recorded: who, why, channel "chat"); a viewer, a request without the
session's CSRF token, or one without a reason stops nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from upgate.batches import Board
from upgate.graphs.runner import Runner

from ..conftest import make_target_repo, write_config
from .test_cycle import make_runner
from .test_server_api import client_for, login, people

BATCH = "b20260101-000000-abcdef"


@pytest.fixture
def served(tmp_path: Path) -> tuple[Runner, TestClient, dict[str, str]]:
    make_target_repo(tmp_path / "target")
    write_config(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy.read_text().replace(
        'approver = ["bob", "carol"]\n', 'approver = ["bob", "carol"]\nviewer = ["dave"]\n'))
    _, tokens = people(tmp_path)
    runner, _ = make_runner(tmp_path, {})
    Board(runner.deps.store).begin(BATCH, "alice")  # a batch running in this process
    return runner, client_for(runner), tokens


def stops(runner: Runner) -> list[dict[str, Any]]:
    return [e.payload for e in runner.deps.ledger.entries(BATCH)
            if (e.node, e.event) == ("stop", "pressed")]


def test_an_approver_stops_a_running_batch_from_the_page(
    served: tuple[Runner, TestClient, dict[str, str]],
) -> None:
    runner, client, tokens = served
    csrf = login(client, "bob", tokens["bob"])
    listed = client.get("/api/batches").json()
    assert [(b["batch_id"], b["status"]) for b in listed] == [(BATCH, "running")]
    res = client.post(f"/api/batches/{BATCH}/stop", json={"reason": "scores drift"},
                      headers=csrf)
    assert res.status_code == 200, res.text
    assert res.json()["stopped_by"] == "bob"
    assert Board(runner.deps.store).stop_requested(BATCH) == ("bob", "scores drift")
    (record,) = stops(runner)
    assert (record["by"], record["reason"], record["channel"]) == ("bob", "scores drift", "chat")
    # Pressed again: the batch is flagged already but still running until its next step;
    # a batch that is not running at all is refused.
    other = client.post("/api/batches/b-none/stop", json={"reason": "x"}, headers=csrf)
    assert other.status_code == 409


@pytest.mark.parametrize("case", ["viewer", "no csrf", "no reason", "blank reason",
                                  "not logged in"])
def test_a_stop_that_must_not_count_changes_nothing(
    served: tuple[Runner, TestClient, dict[str, str]], case: str,
) -> None:
    runner, client, tokens = served
    who = "dave" if case == "viewer" else "alice"
    csrf = {} if case == "not logged in" else login(client, who, tokens[who])
    if case == "no csrf":
        csrf = {}
    reason = {"no reason": "", "blank reason": "   "}.get(case, "because")
    res = client.post(f"/api/batches/{BATCH}/stop", json={"reason": reason}, headers=csrf)
    expected = {"viewer": 403, "no csrf": 403, "not logged in": 401}.get(case, 422)
    assert res.status_code == expected, res.text
    assert Board(runner.deps.store).stop_requested(BATCH) is None
    assert stops(runner) == []
