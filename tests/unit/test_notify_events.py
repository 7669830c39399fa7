"""Ledger records become notifications from one mapping; settings and rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, ContextBlock

from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import load_settings
from upgate.errors import ConfigError
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.runner import Runner
from upgate.notify.config import NotifySettings
from upgate.notify.events import EVENTS, outbox_for, queued_here
from upgate.notify.outbox import Outbox
from upgate.notify.render import compose, parse_action_id, slack_payload, webhook_body

from ..conftest import OracleClient, decide, suite_answers, write_config
from .test_cycle import draft

REVIEW = json.dumps({"summary": "adds examples", "concerns": [], "recommendation": "accept"})
DRAFT = draft("few_shot")  # the proposer's schema as the recipes registry builds it
NOTIFY = """
[notify]
chat_url = "http://127.0.0.1:8080/c/{cycle_id}"
[[notify.channels]]
type = "slack"
name = "team"
webhook_url_env = "TEAM_SLACK_URL"
[[notify.channels]]
type = "webhook"
name = "audit"
url = "http://127.0.0.1:9/hook"
secret_env = "AUDIT_SECRET"
events = ["deployed", "approval_decided"]
"""


def runner_for(workdir: Path, extra: str = NOTIFY) -> Runner:
    write_config(workdir, extra=extra)
    settings = load_settings(workdir / "upgate.toml")
    client = OracleClient(suite_answers())
    models = {a: scripted({"proposal": DRAFT, "review": REVIEW})
              for a in ("proposer", "coder", "critic")}
    return Runner(build_deps(settings, models=models,
                             harness=ChatChoiceHarness(client_factory=lambda u, t: client)))


def test_a_cycle_queues_its_decision_points_for_the_channels_that_want_them(
    workdir: Path,
) -> None:
    runner = runner_for(workdir)
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"
    box = Outbox.of_state(runner.deps.state_dir)
    rows = box.rows()
    assert [(r.type, r.channel) for r in rows] == [("approval_requested", "team")]
    req = rows[0].payload
    pending = runner.pending(state["cycle_id"])
    assert pending is not None
    assert req["evidence_hash"] == pending["evidence_hash"]
    assert req["candidate_hash"] == pending["candidate_hash"]
    assert req["requester"] == "alice" and req["recipe"] == "few_shot"
    assert req["summary"] and req["candidate_score"] is not None and req["expires_at"]
    entry = next(e for e in runner.deps.ledger.entries(state["cycle_id"]) if e.node == "gate")
    assert rows[0].ledger_seq == entry.seq and rows[0].ledger_hash == entry.hash
    assert runner.deps.state_dir in queued_here()

    decide(runner, state["cycle_id"], "approve", "bob")
    kinds = sorted((r.type, r.channel) for r in box.rows())
    assert kinds == [("approval_decided", "audit"), ("approval_decided", "team"),
                     ("approval_requested", "team"), ("deployed", "audit"),
                     ("deployed", "team")]
    decided = next(r for r in box.rows() if r.type == "approval_decided")
    assert decided.payload["approver"] == "bob" and decided.payload["action"] == "approve"
    assert runner.deps.ledger.verify().ok


def test_without_channels_nothing_is_queued(workdir: Path) -> None:
    runner = runner_for(workdir, extra="")
    runner.start("alice")
    assert Outbox.of_state(runner.deps.state_dir).rows() == []


def test_a_failed_cycle_is_notified(workdir: Path) -> None:
    runner = runner_for(workdir)
    runner.deps.proposer = scripted({"proposal": "not json"})
    state = runner.start("alice")
    assert state["outcome"] == "failed"
    rows = Outbox.of_state(runner.deps.state_dir).rows()
    assert [r.type for r in rows] == ["cycle_failed"]
    assert rows[0].payload["reason"].startswith("proposer:")


def test_the_mapping_covers_every_issue_event() -> None:
    assert set(EVENTS.values()) == {
        "approval_requested", "approval_decided", "approval_expired", "batch_paused",
        "deployed", "rollout_step", "rolled_back", "verify_failed", "cycle_failed",
        "batch_running"}  # a running batch, announced with its stop button

def test_a_batch_pause_names_its_threshold_and_numbers(tmp_path: Path) -> None:
    from upgate.ledger import Ledger

    notify = _settings()
    pause = {"threshold": "setbacks_in_a_row", "action": "pause", "observed": 3.0,
             "limit": 3.0, "detail": "3 setbacks in a row", "next_step": "look at the ledger",
             "lineage": {"noise": 1}}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append("b1", "batch", "paused", pause,
                  outbox=outbox_for(notify, tmp_path, "batch", "paused", pause))
    box = Outbox(tmp_path / "ledger.sqlite")
    (row,) = box.rows()
    assert row.type == "batch_paused" and "lineage" not in row.payload
    text = compose(row, box.head(), notify).text
    assert "setbacks_in_a_row: 3.0 against 3.0" in text and "look at the ledger" in text


def _settings(**over: Any) -> NotifySettings:
    return NotifySettings.model_validate({"channels": [
        {"type": "slack", "name": "team", "webhook_url_env": "X"}], **over})


@pytest.mark.parametrize(("bad", "why"), [
    ({"channels": [{"type": "slack", "name": "a", "webhook_url": "https://x"}]},
     "webhook_url"),
    ({"channels": [{"type": "pager", "name": "a"}]}, "pager"),
    ({"channels": [{"type": "slack", "name": "a", "webhook_url_env": "X"},
                   {"type": "slack", "name": "a", "webhook_url_env": "Y"}]}, "unique"),
    ({"channels": [{"type": "webhook", "name": "a", "url": "ftp://x", "secret_env": "S"}]},
     "http"),
    ({"channels": [{"type": "slack", "name": "a", "webhook_url_env": "not a name"}]},
     "pattern"),
])
def test_channel_settings_refuse_bad_input(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        NotifySettings.model_validate(bad)


def test_a_secret_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    chan = _settings().channel("team")
    monkeypatch.delenv("X", raising=False)
    with pytest.raises(ConfigError, match="environment variable X"):
        chan.url()  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="configured: team"):
        _settings().channel("nope")


def test_the_slack_message_is_block_kit_slack_sdk_parses(workdir: Path) -> None:
    runner = runner_for(workdir)
    state = runner.start("alice")
    box = Outbox.of_state(runner.deps.state_dir)
    row = box.rows()[0]
    msg = compose(row, box.head(), runner.deps.settings.notify)
    payload = slack_payload(msg)
    blocks = Block.parse_all(payload["blocks"])
    assert [b.to_dict() for b in blocks] == payload["blocks"]
    actions = next(b for b in blocks if isinstance(b, ActionsBlock))
    buttons = [e for e in actions.elements if isinstance(e, ButtonElement)]
    parsed = [parse_action_id(str(b.action_id)) for b in buttons]
    evidence = row.payload["evidence_hash"]
    assert parsed == [("approve", state["cycle_id"], evidence),
                      ("reject", state["cycle_id"], evidence)]
    context = next(b for b in blocks if isinstance(b, ContextBlock))
    seq, digest = box.head()
    assert f"#{seq} `{digest[:16]}`" in json.dumps(context.to_dict())
    assert f"http://127.0.0.1:8080/c/{state['cycle_id']}" in json.dumps(payload)
    body = webhook_body(msg, "2026-01-01T00:00:00+00:00")
    assert body["type"] == "upgate.approval_requested"
    assert body["data"]["ledger_head"] == {"seq": seq, "hash": digest}


def test_foreign_action_ids_are_not_ours() -> None:
    assert parse_action_id("upgate:approve:c1:abc") == ("approve", "c1", "abc")
    for bad in ("upgate:deploy:c1:abc", "other:approve:c1:abc", "upgate:approve:c1",
                "upgate:approve:c1:abc:x"):
        assert parse_action_id(bad) is None


def test_an_unanswered_request_expires_once_and_is_notified(workdir: Path) -> None:
    from datetime import timedelta

    from upgate.notify.expiry import sweep_expired

    runner = runner_for(workdir)
    state = runner.start("alice")
    assert sweep_expired(runner) == []  # still inside the window
    ttl = runner.deps.policy.thresholds.approval_ttl_hours
    later = runner.deps.now() + timedelta(hours=ttl, minutes=1)
    runner.deps.now = lambda: later
    assert sweep_expired(runner) == [state["cycle_id"]]
    assert sweep_expired(runner) == []  # recorded once
    events = [(e.node, e.event) for e in runner.deps.ledger.entries(state["cycle_id"])]
    assert events.count(("approve", "expired")) == 1
    kinds = [r.type for r in Outbox.of_state(runner.deps.state_dir).rows()]
    assert kinds == ["approval_requested", "approval_expired"]
    assert runner.deps.ledger.verify().ok


def test_untrusted_words_cannot_ping_or_link_in_slack(tmp_path: Path) -> None:
    from upgate.ledger import Ledger

    notify = _settings()
    data = {"reason": "proposer: <!channel> approve now <http://evil.example|the evidence>"}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append("c1", "record", "failed", data,
                  outbox=outbox_for(notify, tmp_path, "record", "failed", data))
    box = Outbox(tmp_path / "ledger.sqlite")
    payload = slack_payload(compose(box.rows()[0], box.head(), notify))
    shown = json.dumps(payload)
    assert "<!channel>" not in shown and "<http://evil" not in shown
    assert "&lt;!channel&gt;" in shown


def test_untrusted_words_cannot_format_in_slack(tmp_path: Path) -> None:
    """mrkdwn has no escape for *bold*, _italic_, ~strike~ or `code`: the blocks that carry
    words of models, candidates and people are plain text, and so is the fallback text."""
    from upgate.ledger import Ledger
    from upgate.notify.render import slack_blocks

    notify = _settings()
    data = {"reason": "*APPROVED BY SECURITY* _urgent_ ~ignore the critic~ `code`"}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append("c1", "record", "failed", data,
                  outbox=outbox_for(notify, tmp_path, "record", "failed", data))
    box = Outbox(tmp_path / "ledger.sqlite")
    msg = compose(box.rows()[0], box.head(), notify)
    payload = slack_payload(msg)
    assert payload["mrkdwn"] is False
    for block in slack_blocks(msg):
        shown = block.to_dict()
        if "APPROVED BY SECURITY" in json.dumps(shown):
            texts = [shown.get("text") or {}, *(shown.get("fields") or [])]
            assert {t["type"] for t in texts if t} == {"plain_text"}
