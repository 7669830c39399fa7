"""Approve by button, end to end on real HTTP: a waiting cycle's request reaches a loopback
"Slack", its approve button (signed the way Slack signs) goes to the interactivity endpoint
served by uvicorn, the cycle deploys, and the original message is replaced with the outcome.
Forged, replayed and self-approving presses change nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement

from upgate import guard
from upgate.admin import add_service
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import load_settings
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.runner import Runner
from upgate.identity import generate_key, load_signer, person_key_id
from upgate.notify.events import queued_here
from upgate.notify.slack_actions import PATH, slack_actions_router
from upgate.notify.slack_people import SlackState
from upgate.notify.testing import LoopbackReceiver, Received, slack_action_request
from upgate.notify.worker import deliver_after_command

from ..conftest import (
    OracleClient,
    init_people,
    make_target_repo,
    suite_answers,
    write_config,
)
from ..unit.test_cycle import draft

pytestmark = pytest.mark.real

SIGNING = "d3f1c0ffee5ec4e7"
DRAFT = draft("few_shot")  # the proposer's schema as the recipes registry builds it
REVIEW = json.dumps({"summary": "adds examples", "concerns": [], "recommendation": "accept"})


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver() as r:
        yield r


@pytest.fixture
def runner(tmp_path: Path, receiver: LoopbackReceiver,
           monkeypatch: pytest.MonkeyPatch) -> Runner:
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)
    queued_here()  # only this test's state folder is delivered after "commands"
    # The cycle itself runs on scripted models in the fake sandbox: what is real here is the
    # HTTP (Slack's side, the endpoint under uvicorn), the signatures and the state.
    monkeypatch.setattr(guard, "ALLOW_FAKE_SANDBOX", True)
    monkeypatch.setenv("TEAM_SLACK_URL", receiver.url + "/slack")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING)
    make_target_repo(tmp_path / "target")
    write_config(tmp_path, extra=(
        '[notify]\nslack_signing_secret_env = "SLACK_SIGNING_SECRET"\n'
        'chat_url = "http://127.0.0.1:8080/c/{cycle_id}"\n'
        '[[notify.channels]]\ntype = "slack"\nname = "team"\n'
        'webhook_url_env = "TEAM_SLACK_URL"\n'))
    keys = init_people(tmp_path)
    settings = load_settings(tmp_path / "upgate.toml")
    client = OracleClient(suite_answers())
    models = {a: scripted({"proposal": DRAFT, "review": REVIEW})
              for a in ("proposer", "coder", "critic")}
    deps = build_deps(settings, models=models,
                      harness=ChatChoiceHarness(client_factory=lambda u, t: client))
    # The approval service's key, registered by the admin (alice).
    add_service(deps.store, deps.ledger, load_signer(person_key_id("alice"), keys), "approvals",
                public_key=generate_key("service:approvals", keys))
    people = SlackState(deps.store)
    people.map_user("U0ALICE", "alice", by="admin")
    people.map_user("U0BOB", "bob", by="admin")
    return Runner(deps)


@pytest.fixture
def service(runner: Runner) -> Iterator[str]:
    """The interactivity endpoint served by uvicorn on a free loopback port."""
    app = FastAPI()
    signer = load_signer("service:approvals", runner.deps.state_dir.parent / "keys")
    app.include_router(slack_actions_router(runner.deps.settings, runner, signer=signer))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def buttons(msg: Received) -> dict[str, str]:
    """action -> action id, read back from the message's Block Kit."""
    blocks = Block.parse_all(msg.json()["blocks"])
    actions = next(b for b in blocks if isinstance(b, ActionsBlock))
    return {str(e.action_id).split(":")[1]: str(e.action_id) for e in actions.elements
            if isinstance(e, ButtonElement)}


def press(service: str, receiver: LoopbackReceiver, action_id: str, user: str,
          **kw: Any) -> tuple[httpx.Response, tuple[bytes, dict[str, str]]]:
    req = slack_action_request(kw.pop("secret", SIGNING), action_id=action_id, user=user,
                               response_url=receiver.url + "/respond", **kw)
    return httpx.post(service + PATH, content=req[0], headers=req[1], timeout=60), req


def responses(receiver: LoopbackReceiver, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120  # a bound on waiting, not a speed assertion
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = [r.json() for r in receiver.requests if r.path == "/respond"]
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise AssertionError(f"expected {n} responses, got {len(got)}")


def test_approve_by_button_end_to_end(runner: Runner, service: str,
                                      receiver: LoopbackReceiver, tmp_path: Path) -> None:
    state = runner.start("alice")
    cycle = state["cycle_id"]
    assert state["outcome"] == "awaiting_approval"
    deliver_after_command()  # what the CLI does when a command ends
    request_msg = receiver.wait_for(1)[0]
    assert request_msg.path == "/slack"
    ids = buttons(request_msg)
    pending = runner.pending(cycle)
    assert pending is not None and ids["approve"].endswith(pending["evidence_hash"])
    entries_before = len(runner.deps.ledger.entries())

    # Forged (another secret), then stale: refused before anything is looked at.
    assert press(service, receiver, ids["approve"], "U0BOB", secret="guess")[0].status_code == 401
    stale = int(time.time()) - 600
    assert press(service, receiver, ids["approve"], "U0BOB",
                 timestamp=stale)[0].status_code == 401
    # The requester presses approve: authentic, but refused by the same check as the CLI.
    resp, _ = press(service, receiver, ids["approve"], "U0ALICE")
    assert resp.status_code == 200
    refusal = responses(receiver, 1)[0]
    assert refusal["replace_original"] is False and "cannot approve" in refusal["text"]
    assert runner.pending(cycle) is not None

    # bob approves: the cycle deploys, the message is replaced with the outcome.
    resp, sent = press(service, receiver, ids["approve"], "U0BOB")
    assert resp.status_code == 200
    outcome = responses(receiver, 2)[1]
    assert outcome["replace_original"] is True, outcome
    assert "approved by bob" in outcome["text"] and "deployed" in outcome["text"]
    final = runner.state(cycle)
    assert final["outcome"] == "deployed"
    approve = next(e for e in runner.deps.ledger.entries(cycle)
                   if (e.node, e.event) == ("approve", "approve"))
    assert approve.payload["approver"] == "bob" and approve.payload["channel"] == "slack"
    assert approve.payload["signer"] == "service:approvals"
    branches = subprocess.run(["git", "-C", str(tmp_path / "target"), "branch"],
                              capture_output=True, text=True, check=True).stdout
    assert f"upgate/{cycle}" in branches

    # The same request again (a replay) is refused and changes nothing.
    entries_after = len(runner.deps.ledger.entries())
    replay = httpx.post(service + PATH, content=sent[0], headers=sent[1], timeout=30)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    assert len(runner.deps.ledger.entries()) == entries_after > entries_before
    assert runner.deps.ledger.verify().ok

    # The decision and the deploy are notified too, each with the head it was sent under.
    deliver_after_command()
    kinds = [r.json()["text"].split(":")[1].strip() for r in receiver.requests
             if r.path == "/slack"]
    assert kinds == ["Approval requested", "Decision recorded", "Deployed"]
