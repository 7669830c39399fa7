"""Real HTTP on loopback: messages arrive signed and parseable; a receiver that fails or
hangs gets retries, then the dead-letter state; a worker killed between send and
mark-delivered causes no duplicate the consumer acts on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_sdk.models.blocks import Block
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from upgate.ledger import Ledger
from upgate.notify.config import NotifySettings
from upgate.notify.outbox import Outbox, outbox_write
from upgate.notify.testing import LoopbackReceiver
from upgate.notify.worker import Backoff, channels_of, deliver_due

pytestmark = pytest.mark.real

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver() as r:
        yield r


@pytest.fixture
def env(receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch) -> NotifySettings:
    monkeypatch.setenv("T_SLACK_URL", receiver.url + "/slack")
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    return NotifySettings.model_validate({
        "max_attempts": 3, "lease_s": 30,
        "channels": [
            {"type": "slack", "name": "team", "webhook_url_env": "T_SLACK_URL",
             "timeout_s": 0.5},
            {"type": "webhook", "name": "audit", "url": receiver.url + "/hook",
             "secret_env": "T_HOOK_SECRET", "timeout_s": 0.5},
        ]})


class Clock:
    def __init__(self) -> None:
        self.t = time.time() + 1

    def __call__(self) -> float:
        return self.t


def queue(state: Path, channels: list[str]) -> Ledger:
    ledger = Ledger(state / "ledger.sqlite")
    ledger.append("c1", "deploy", "deployed",
                  {"deployment": {"branch": "upgate/c1", "deployment_id": "c1-abc"}},
                  key="c1/deploy", outbox=[outbox_write(
                      "deployed", channels,
                      {"deployment": {"branch": "upgate/c1", "deployment_id": "c1-abc"}})])
    return ledger


def test_both_channels_deliver_signed_parseable_messages_with_the_head(
    tmp_path: Path, env: NotifySettings, receiver: LoopbackReceiver,
) -> None:
    ledger = queue(tmp_path, ["team", "audit"])
    head = ledger.entries()[-1]
    report = deliver_due(Outbox.of_state(tmp_path), channels_of(env), env)
    assert len(report.delivered) == 2
    got = {r.path: r for r in receiver.wait_for(2)}
    slack = got["/slack"].json()
    blocks = Block.parse_all(slack["blocks"])
    assert [b.to_dict() for b in blocks] == slack["blocks"]
    assert f"ledger head #{head.seq} `{head.hash[:16]}`" in json.dumps(slack)
    assert got["/slack"].headers["x-upgate-idempotency-key"].startswith("msg_")

    hook = got["/hook"]
    data = Webhook(SECRET).verify(hook.body, hook.headers)
    assert data["type"] == "upgate.deployed"
    assert data["data"]["ledger_head"] == {"seq": head.seq, "hash": head.hash}
    assert hook.headers["webhook-id"] == data["data"]["id"]
    # The signature binds the body, the id and the secret: change any one and it fails.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(hook.body, hook.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(hook.body.replace(b"c1-abc", b"c1-xyz"), hook.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(hook.body, {**hook.headers, "webhook-id": "msg_other"})


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_failing_or_hanging_receiver_gets_retries_then_dead_letter(
    tmp_path: Path, env: NotifySettings, receiver: LoopbackReceiver, mode: str,
) -> None:
    receiver.mode = mode  # type: ignore[assignment]
    receiver.hang_s = 1.5
    ledger = queue(tmp_path, ["audit"])
    clock = Clock()
    box = Outbox.of_state(tmp_path, clock=clock)
    for _ in range(env.max_attempts):
        deliver_due(box, channels_of(env), env, backoff=Backoff(1, 10))
        row = box.rows()[0]
        clock.t = max(clock.t, row.next_at)  # skip the backoff wait instead of sleeping
    row = box.rows()[0]
    assert row.status == "dead" and row.attempts == env.max_attempts
    assert ("HTTP 500" if mode == "fail" else "timed out") in row.last_error
    got = receiver.wait_for(env.max_attempts)
    assert len(got) == env.max_attempts
    assert len({r.headers["webhook-id"] for r in got}) == 1  # one id for every attempt
    assert ledger.verify().ok and len(ledger.entries()) == 1  # the decision stands

    receiver.mode = "ok"
    box.retry_dead()
    assert len(deliver_due(box, channels_of(env), env).delivered) == 1


_WORKER = """
import sys
from pathlib import Path
from upgate.notify.config import NotifySettings
from upgate.notify.outbox import Outbox
from upgate.notify.worker import channels_of, deliver_due
settings = NotifySettings.model_validate_json(sys.argv[2])
deliver_due(Outbox.of_state(Path(sys.argv[1])), channels_of(settings), settings)
"""


def test_a_worker_killed_after_sending_causes_no_duplicate_delivery(
    tmp_path: Path, env: NotifySettings, receiver: LoopbackReceiver,
) -> None:
    queue(tmp_path, ["audit"])
    receiver.mode = "hang"  # the request arrives; the worker waits for the answer...
    receiver.hang_s = 2.0
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(tmp_path), env.model_dump_json()],
        env={**os.environ})
    assert len(receiver.wait_for(1, timeout_s=60)) == 1
    worker.send_signal(signal.SIGKILL)  # ...and is killed before it can mark it delivered
    worker.wait()
    row = Outbox.of_state(tmp_path).rows()[0]
    assert row.status == "sending" and row.attempts == 1 and row.lease_until > time.time()

    receiver.mode = "ok"
    clock = Clock()
    box = Outbox.of_state(tmp_path, clock=clock)
    assert deliver_due(box, channels_of(env), env).delivered == []  # still leased
    clock.t = row.lease_until + 1  # the dead worker's lease ends
    assert len(deliver_due(box, channels_of(env), env).delivered) == 1
    assert deliver_due(box, channels_of(env), env).delivered == []  # and only once
    got = receiver.wait_for(2)
    # At least once on the wire, exactly once for the consumer: both copies carry the same
    # id and a valid signature, and the consumer keeps the first.
    assert len(got) == 2
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    for r in got:
        Webhook(SECRET).verify(r.body, r.headers)
    assert list(receiver.unique) == [got[0].headers["webhook-id"]]
    assert [r.json()["data"]["possible_repeat"] for r in got] == [False, True]


# A worker that dies exactly between the receiver's 200 and marking the row delivered.
_DIES_BEFORE_MARKING = """
import os, signal, sys
from pathlib import Path
from upgate.notify.config import NotifySettings
from upgate.notify.outbox import Outbox
from upgate.notify.worker import channels_of, deliver_due
Outbox.mark_delivered = lambda self, mid: os.kill(os.getpid(), signal.SIGKILL)
settings = NotifySettings.model_validate_json(sys.argv[2])
deliver_due(Outbox.of_state(Path(sys.argv[1])), channels_of(settings), settings,
            only_channel=sys.argv[3])
"""


def _sent_then_killed(state: Path, env: NotifySettings, channel: str) -> None:
    worker = subprocess.run([sys.executable, "-c", _DIES_BEFORE_MARKING, str(state),
                             env.model_dump_json(), channel], env={**os.environ}, check=False)
    assert worker.returncode == -signal.SIGKILL


def test_killed_between_send_and_mark_each_consumer_sees_each_id_once(
    tmp_path: Path, env: NotifySettings, receiver: LoopbackReceiver,
) -> None:
    queue(tmp_path, ["team", "audit"])
    for channel in ("team", "audit"):  # each arrived; neither was marked
        _sent_then_killed(tmp_path, env, channel)
    got = receiver.wait_for(2)
    assert sorted(r.path for r in got) == ["/hook", "/slack"]
    box = Outbox.of_state(tmp_path)
    assert {r.status for r in box.rows()} == {"sending"}

    # A new worker once the dead one's lease ended. The webhook (on_doubt "resend") goes
    # again under the same webhook-id, flagged; Slack (on_doubt "hold") is not sent again.
    clock = Clock()
    clock.t = max(r.lease_until for r in box.rows()) + 1
    box = Outbox.of_state(tmp_path, clock=clock)
    report = deliver_due(box, channels_of(env), env)
    assert len(report.delivered) == 1
    assert deliver_due(box, channels_of(env), env).delivered == []  # and nothing more
    rows = {r.channel: r for r in box.rows()}
    assert rows["audit"].status == "delivered" and rows["audit"].interrupted == 1
    assert rows["team"].status == "doubt" and "may have arrived" in rows["team"].last_error
    hooks = [r for r in receiver.requests if r.path == "/hook"]
    slacks = [r for r in receiver.requests if r.path == "/slack"]
    assert len(hooks) == 2 and len(slacks) == 1
    assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"]
    for r in hooks:
        Webhook(SECRET).verify(r.body, r.headers)  # a consumer keeps the first valid copy
    assert [r.json()["data"]["possible_repeat"] for r in hooks] == [False, True]
    # What each consumer acts on: one message per id.
    assert sorted(receiver.unique) == sorted({hooks[0].headers["webhook-id"],
                                              slacks[0].headers["x-upgate-idempotency-key"]})

    # A person who checked Slack and found it missing sends it again: marked as a repeat.
    assert box.resend_doubt() == 1
    assert len(deliver_due(box, channels_of(env), env).delivered) == 1
    again = [r for r in receiver.wait_for(4) if r.path == "/slack"]
    assert len(again) == 2
    assert (again[1].headers["x-upgate-idempotency-key"]
            == again[0].headers["x-upgate-idempotency-key"])
    assert "(possible repeat)" in again[1].json()["text"]
    assert "possible repeat" not in again[0].json()["text"]
    Block.parse_all(again[1].json()["blocks"])
