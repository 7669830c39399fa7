"""The Slack "Stop batch" button: only a signed, fresh, first-seen press by a mapped person
who may stop (operator, approver or admin, as for `upgate stop`) stops a running batch, and
the ledger records who, why and channel "slack"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.batches import Board
from upgate.config import load_settings
from upgate.graphs.runner import Runner
from upgate.notify.config import NotifySettings
from upgate.notify.events import outbox_for
from upgate.notify.outbox import Outbox
from upgate.notify.render import STOP_SUBJECT, action_id, compose, slack_payload
from upgate.notify.slack_actions import PATH, SlackActions, runner_stopper, slack_router
from upgate.notify.slack_people import SlackState
from upgate.notify.standin import buttons_of, render_text
from upgate.notify.testing import slack_action_request

from ..conftest import adopt

SECRET = "5eb1f00d5eb1f00d5eb1f00d"
BATCH = "b20260101-000000-abcdef"
Replies = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def world(workdir: Path) -> tuple[Runner, TestClient, Replies]:
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text().replace(
        'approver = ["bob", "carol"]\n', 'approver = ["bob", "carol"]\nviewer = ["dave"]\n'))
    adopt(workdir)  # dave is a viewer now
    runner = Runner(build_deps(load_settings(workdir / "upgate.toml"),
                               models={a: scripted({}) for a in
                                       ("proposer", "coder", "critic")}))
    people = SlackState(runner.deps.store)
    for slack_id, person in (("U0ALICE", "alice"), ("U0BOB", "bob"), ("U0DAVE", "dave")):
        people.map_user(slack_id, person, by="alice")
    Board(runner.deps.store).begin(BATCH, "alice")  # a batch running in this process
    replies: Replies = []

    def no_decisions(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("a stop press must not decide anything")

    actions = SlackActions(
        signing_secret=SECRET, people=people, decide=no_decisions, pending=lambda c: None,
        head=lambda: (7, "h" * 64), respond=lambda url, body: replies.append((url, body)),
        stop=runner_stopper(runner))
    app = FastAPI()
    app.include_router(slack_router(actions))
    return runner, TestClient(app), replies


def press(client: TestClient, user: str, *, secret: str = SECRET, batch: str = BATCH,
          timestamp: int | None = None) -> tuple[int, tuple[bytes, dict[str, str]]]:
    req = slack_action_request(secret, action_id=action_id("stop", batch, STOP_SUBJECT),
                               user=user, response_url="http://127.0.0.1:9/respond",
                               timestamp=timestamp)
    return client.post(PATH, content=req[0], headers=req[1]).status_code, req


def stops(runner: Runner) -> list[dict[str, Any]]:
    return [e.payload for e in runner.deps.ledger.entries(BATCH)
            if (e.node, e.event) == ("stop", "pressed")]


@pytest.mark.parametrize("user", ["U0ALICE", "U0BOB"])  # an operator-admin, an approver
def test_a_signed_press_by_someone_who_may_stop_stops_the_batch(
    world: tuple[Runner, TestClient, Replies], user: str,
) -> None:
    runner, client, replies = world
    assert press(client, user)[0] == 200
    person = {"U0ALICE": "alice", "U0BOB": "bob"}[user]
    assert Board(runner.deps.store).stop_requested(BATCH) == (
        person, f"stop button in Slack, pressed by {user}")
    (record,) = stops(runner)
    assert record["by"] == person and record["channel"] == "slack"
    assert user in record["reason"]
    (_, reply), = replies
    assert reply["replace_original"] is True and f"*stop pressed* by {person}" in str(reply)


def test_a_viewer_or_an_unmapped_user_cannot_stop(
    world: tuple[Runner, TestClient, Replies],
) -> None:
    runner, client, replies = world
    assert press(client, "U0DAVE")[0] == 200  # authentic: refused by role, said in Slack
    assert press(client, "U0EVE")[0] == 200
    assert [r["replace_original"] for _, r in replies] == [False, False]
    assert "dave may not stop batches" in replies[0][1]["text"]
    assert "not mapped" in replies[1][1]["text"]
    assert Board(runner.deps.store).stop_requested(BATCH) is None
    assert stops(runner) == []


@pytest.mark.parametrize("how", ["forged", "stale"])
def test_forged_and_stale_presses_are_refused_before_anything(
    world: tuple[Runner, TestClient, Replies], how: str,
) -> None:
    runner, client, replies = world
    kw: dict[str, Any] = ({"secret": "not-the-secret"} if how == "forged"
                          else {"timestamp": int(time.time()) - 301})
    assert press(client, "U0ALICE", **kw)[0] == 401
    assert replies == [] and stops(runner) == []
    assert Board(runner.deps.store).stop_requested(BATCH) is None


def test_a_replayed_press_is_refused(world: tuple[Runner, TestClient, Replies]) -> None:
    runner, client, _ = world
    code, (body, headers) = press(client, "U0ALICE")
    assert code == 200
    again = client.post(PATH, content=body, headers=headers)
    assert again.status_code == 401 and "replay" in again.json()["error"]
    assert len(stops(runner)) == 1


def test_a_batch_that_is_not_running_is_not_stopped_again(
    world: tuple[Runner, TestClient, Replies],
) -> None:
    runner, client, replies = world
    assert press(client, "U0ALICE", batch="b-other")[0] == 200
    assert "is not running" in replies[0][1]["text"] and stops(runner) == []


def test_a_running_batch_is_announced_with_a_stop_button(tmp_path: Path) -> None:
    from upgate.ledger import Ledger

    notify = NotifySettings.model_validate({"channels": [
        {"type": "slack", "name": "team", "webhook_url_env": "X_URL"},
        {"type": "slack", "name": "quiet", "webhook_url_env": "X_URL", "buttons": False}]})
    ledger = Ledger(tmp_path / "ledger.sqlite")
    data = {"requester": "alice", "max_cycles": 3, "batch_id": BATCH, "target": "triage"}
    ledger.append(BATCH, "batch", "started", data,
                  outbox=outbox_for(notify, tmp_path, "batch", "started", data))
    box = Outbox(tmp_path / "ledger.sqlite")
    team, quiet = sorted(box.rows(), key=lambda r: r.channel != "team")
    msg = compose(team, box.head(), notify)
    body = slack_payload(msg)
    assert buttons_of(body) == {"stop batch": action_id("stop", BATCH, STOP_SUBJECT)}
    text = render_text(body)
    assert text.startswith("upgate: Batch running") and f"`{BATCH}`" in text
    assert "[Stop batch]" in text
    # A channel without buttons gets the same message without one.
    plain = compose(quiet, box.head(), notify).model_copy(update={"buttons": False})
    assert buttons_of(slack_payload(plain)) == {}
