"""`make demo-notify`'s path, end to end on real parts: the demo folder's Slack channel points
at the Slack stand-in on loopback, the approval request arrives there as Block Kit that
slack_sdk parses, the stand-in presses Approve as bob's mapped Slack user against a real
`upgate serve` child process, the cycle deploys, and the "Deployed" message arrives.

What is scripted: the cycle's models (the demo's real-model run is `make demo-notify`
itself). What is real: the HTTP both ways, Slack's v0 signature, the service process, its
delivery worker, git and the state."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from upgate import guard
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import load_settings
from upgate.demo import NOTIFY_ENV, SLACK_SECRET_ENV, Demo, layout, people
from upgate.demo_notify import (
    APPROVER_SLACK_ID,
    approve_by_button,
    free_port,
    slack_setup,
    start_service,
    stop_service,
)
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.runner import Runner
from upgate.notify.events import queued_here
from upgate.notify.standin import SlackStandIn
from upgate.notify.worker import deliver_after_command

from ..conftest import OracleClient, suite_answers
from ..unit.test_cycle import draft

pytestmark = pytest.mark.real

REVIEW = json.dumps({"summary": "adds examples", "concerns": [], "recommendation": "accept"})


def test_the_demo_request_arrives_and_a_button_approval_deploys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)
    queued_here()
    monkeypatch.setattr(guard, "ALLOW_FAKE_SANDBOX", True)
    shown: list[str] = []
    with SlackStandIn(signing_secret="5ec7e7-demo", out=shown.append) as standin:
        monkeypatch.setenv(NOTIFY_ENV, standin.url + "/slack")
        monkeypatch.setenv(SLACK_SECRET_ENV, standin.signing_secret)
        root = tmp_path / "demo"
        root.mkdir()
        config = layout(root, port=9, sandbox="fake")
        settings = load_settings(config)
        people(settings, root / "keys", root / "tokens")
        models = {a: scripted({"proposal": draft("few_shot"), "review": REVIEW})
                  for a in ("proposer", "coder", "critic")}
        client = OracleClient(suite_answers())
        runner = Runner(build_deps(settings, models=models, harness=ChatChoiceHarness(
            client_factory=lambda u, t: client)))
        demo = Demo(root, config, settings, root / "keys", runner)
        slack_setup(demo)
        slack_setup(demo)  # idempotent: a second run of the demo maps nothing twice
        mapped = [e for e in runner.deps.ledger.entries("admin") if e.event == "slack_mapped"]
        assert [e.payload["slack_id"] for e in mapped] == [APPROVER_SLACK_ID]

        state = runner.start("alice")
        cycle = state["cycle_id"]
        assert state["outcome"] == "awaiting_approval"
        deliver_after_command()  # what the demo does once its batch ends

        port = free_port()
        # The service is a real `upgate serve`; a child process may not use the fake sandbox
        # (nothing in it runs candidate code: it decides and deploys to git).
        service = start_service(config, root / "keys", port, log=root / "serve.log",
                                env={"UPGATE_SANDBOX__TYPE": "docker"})
        try:
            update, deployed = approve_by_button(standin, f"http://127.0.0.1:{port}", cycle)
        finally:
            stop_service(service)

    request = next(s for s in standin.shown if s.text.startswith("upgate: Approval requested"))
    assert f"`{cycle}`" in request.text and "[Approve]  [Reject]" in request.text
    assert "*approved* by bob (Slack U0DEMOBOB)" in update.text and "*deployed*" in update.text
    assert "Deployed" in deployed.text and f"upgate/{cycle}" in deployed.text
    assert runner.state(cycle)["outcome"] == "deployed"
    approve = next(e for e in runner.deps.ledger.entries(cycle)
                   if (e.node, e.event) == ("approve", "approve"))
    assert approve.payload["approver"] == "bob" and approve.payload["channel"] == "slack"
    branches = subprocess.run(["git", "-C", str(root / "ticket-triage"), "branch"],
                              capture_output=True, text=True, check=True).stdout
    assert f"upgate/{cycle}" in branches
    # Every message the stand-in showed was Block Kit it could render, in order.
    titles = [s.text.splitlines()[0] for s in standin.shown if not s.is_update]
    assert titles[0] == "upgate: Approval requested" and "upgate: Deployed" in titles
    assert not any("not a Slack message" in s for s in shown)
    assert runner.deps.ledger.verify().ok
