"""The Slack stand-in shows only Block Kit that slack_sdk parses, presses only buttons a
message has, and signs presses only with a secret; `notify status` names messages held in
doubt and `notify deliver --resend-in-doubt` sends them again, marked as possible repeats."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from upgate import cli
from upgate.notify.outbox import Outbox
from upgate.notify.standin import SlackStandIn, StandInError, render_text
from upgate.notify.testing import LoopbackReceiver


def test_blocks_slack_would_refuse_are_not_shown_as_a_message() -> None:
    with pytest.raises(StandInError, match="does not parse"):
        render_text({"blocks": [{"type": "no-such-block"}]})
    text = render_text({"text": "a <https://x.example|link> &amp; more", "blocks": []})
    assert text == "a link (https://x.example) & more"


def test_a_press_needs_a_secret_an_endpoint_and_the_button() -> None:
    shown: list[str] = []
    with SlackStandIn(out=shown.append) as standin:
        with pytest.raises(StandInError, match="signing secret"):
            standin.press("approve", user="U0BOB")
        standin.signing_secret, standin.interactivity_url = "s3cret", "http://127.0.0.1:9/"
        with pytest.raises(StandInError, match="no message shown here has a 'approve'"):
            standin.press("approve", user="U0BOB")
        httpx.post(standin.url + "/slack", content=b"not json", timeout=10)
        got = standin.wait_for(lambda s: True, timeout_s=10)
    assert "not a Slack message" in got.text and "not a Slack message" in shown[0]


def test_a_message_in_doubt_is_listed_and_resent_only_on_request(
    workdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = workdir / "upgate.toml"
    cfg.write_text(cfg.read_text() + '\n[[notify.channels]]\ntype = "slack"\nname = "team"\n'
                   'webhook_url_env = "UPGATE_TEST_TEAM_URL"\n')
    with LoopbackReceiver() as receiver:
        monkeypatch.setenv("UPGATE_TEST_TEAM_URL", receiver.url + "/slack")
        box = Outbox.of_state(workdir / "state")
        (mid,) = box.enqueue_direct("test", ["team"], {"text": "hello"}, key="k")
        (row,) = box.claim(lease_s=0.01)
        box.mark_sending(row.id)  # the request went out; the worker died before the answer
        time.sleep(0.05)  # let the 10 ms lease end (a bound on waiting, not on speed)

        def run(*args: str) -> str:
            result = CliRunner().invoke(cli.app, [*args, "--config", str(cfg)])
            assert result.exit_code == 0, result.output
            return " ".join(result.output.split())

        assert "delivered 0" in run("notify", "deliver")  # held: not sent by itself
        status = run("notify", "status")
        assert mid in status and "doubt" in status and "--resend-in-doubt" in status
        assert receiver.requests == []
        assert "1 message(s) in doubt queued again" in run("notify", "deliver",
                                                           "--resend-in-doubt")
        (got,) = receiver.wait_for(1)
        assert "(possible repeat)" in got.json()["text"]
        assert got.headers["x-upgate-idempotency-key"] == mid
