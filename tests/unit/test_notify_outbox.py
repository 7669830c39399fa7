"""The outbox commits with its ledger entry, is claimed under leases, retries with backoff
and dead-letters; delivery never touches the ledger."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from upgate.ledger import Entry, Ledger
from upgate.notify.channels import SendResult
from upgate.notify.config import NotifySettings, WebhookChannelConfig
from upgate.notify.outbox import Outbox, message_id, outbox_write
from upgate.notify.render import Message
from upgate.notify.worker import Backoff, deliver_due


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = time.time() + 1  # rows are queued on the real clock, just before

    def __call__(self) -> float:
        return self.t


class ScriptedChannel:
    """A channel double: answers from a script of results, records what it was given."""

    def __init__(self, name: str, results: list[bool]) -> None:
        self.name = name
        self.results = results
        self.sent: list[Message] = []

    def send(self, msg: Message) -> SendResult:
        self.sent.append(msg)
        ok = self.results.pop(0) if self.results else True
        return SendResult(ok=ok, status=200 if ok else 500, error="" if ok else "HTTP 500")


def notify(n: int = 3) -> NotifySettings:
    chans = [WebhookChannelConfig(name=f"w{i}", url="http://127.0.0.1:9/", secret_env="S")
             for i in range(2)]
    return NotifySettings(channels=tuple(chans), max_attempts=n, backoff_base_s=10,
                          backoff_max_s=100)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def test_entry_and_its_notifications_commit_together(ledger: Ledger, tmp_path: Path) -> None:
    entry = ledger.append("c1", "gate", "approval_requested", {"x": 1}, key="c1/gate",
                          outbox=[outbox_write("approval_requested", ["w0", "w1"], {"x": 1})])
    box = Outbox(tmp_path / "ledger.sqlite")
    rows = box.rows()
    assert [r.channel for r in rows] == ["w0", "w1"]
    assert {r.id for r in rows} == {message_id(entry.hash, "w0"), message_id(entry.hash, "w1")}
    assert all(r.ledger_seq == entry.seq and r.ledger_hash == entry.hash for r in rows)
    # The node runs again after a crash: same key, no second entry, no second message.
    ledger.append("c1", "gate", "approval_requested", {"x": 1}, key="c1/gate",
                  outbox=[outbox_write("approval_requested", ["w0", "w1"], {"x": 1})])
    assert len(box.rows()) == 2 and len(ledger.entries()) == 1
    assert ledger.verify().ok


def test_a_failing_outbox_write_rolls_the_entry_back(ledger: Ledger, tmp_path: Path) -> None:
    def broken(db: sqlite3.Connection, entry: Entry) -> None:
        outbox_write("deployed", ["w0"], {})(db, entry)
        raise sqlite3.OperationalError("disk full")

    with pytest.raises(sqlite3.OperationalError):
        ledger.append("c1", "deploy", "deployed", {}, key="k", outbox=[broken])
    assert ledger.entries() == []
    assert Outbox(tmp_path / "ledger.sqlite").rows() == []
    assert ledger.verify().ok


def test_a_refused_ledger_insert_queues_nothing(ledger: Ledger, tmp_path: Path) -> None:
    entry = ledger.append("c1", "deploy", "deployed", {}, key="k")

    def append_over_entry_one() -> None:
        # The outbox rows go in first; the ledger's append-only trigger then refuses the row.
        with ledger._tx() as db:
            outbox_write("deployed", ["w0"], {})(db, entry)
            db.execute("INSERT INTO ledger SELECT * FROM ledger WHERE seq = 1")

    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        append_over_entry_one()
    assert Outbox(tmp_path / "ledger.sqlite").rows() == []


def _queue(ledger: Ledger, n: int = 1, channels: tuple[str, ...] = ("w0",)) -> None:
    for i in range(n):
        ledger.append(f"c{i}", "deploy", "deployed", {}, key=f"k{i}",
                      outbox=[outbox_write("deployed", list(channels), {"deployment": {}})])


def test_a_claim_is_leased_and_taken_over_when_the_lease_ends(ledger: Ledger,
                                                              tmp_path: Path) -> None:
    clock = Clock()
    _queue(ledger)
    a = Outbox(tmp_path / "ledger.sqlite", clock=clock)
    b = Outbox(tmp_path / "ledger.sqlite", clock=clock)
    first = a.claim(lease_s=60)
    assert len(first) == 1 and first[0].attempts == 1
    assert b.claim(lease_s=60) == []  # held by a
    clock.t += 61  # a died without marking it
    again = b.claim(lease_s=60)
    assert [r.id for r in again] == [first[0].id] and again[0].attempts == 2


def test_failures_back_off_then_dead_letter(ledger: Ledger, tmp_path: Path) -> None:
    clock = Clock()
    _queue(ledger)
    box = Outbox(tmp_path / "ledger.sqlite", clock=clock)
    chan = ScriptedChannel("w0", [False, False, False, False])
    settings = notify(n=3)
    backoff = Backoff(10, 100, rng=lambda: 0.0)  # the shortest wait of each window
    delays = []
    for _ in range(3):
        report = deliver_due(box, {"w0": chan}, settings, backoff=backoff)
        row = box.rows()[0]
        if row.status == "pending":
            assert report.retried == [row.id]
            delays.append(row.next_at - clock.t)
            # Not due yet: nothing is sent before the backoff ends.
            assert deliver_due(box, {"w0": chan}, settings).retried == []
            clock.t = row.next_at
    assert delays == [5.0, 10.0]  # half of 10, then half of 20
    row = box.rows()[0]
    assert row.status == "dead" and row.attempts == 3 and row.last_error == "HTTP 500"
    assert len(chan.sent) == 3
    clock.t += 10_000
    assert deliver_due(box, {"w0": chan}, settings).dead == []  # dead stays dead
    assert box.retry_dead() == 1 and box.rows()[0].status == "pending"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    lo, hi = Backoff(2, 60, rng=lambda: 0.0), Backoff(2, 60, rng=lambda: 0.999)
    assert [lo.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert all(hi.delay(n) > lo.delay(n) for n in (1, 2, 3))
    assert lo.delay(20) == 30.0 and hi.delay(20) < 60.0


def test_each_channel_retries_on_its_own(ledger: Ledger, tmp_path: Path) -> None:
    _queue(ledger, channels=("w0", "w1"))
    box = Outbox(tmp_path / "ledger.sqlite")
    good, bad = ScriptedChannel("w0", [True]), ScriptedChannel("w1", [False])
    report = deliver_due(box, {"w0": good, "w1": bad}, notify())
    assert len(report.delivered) == 1 and len(report.retried) == 1
    status = {r.channel: r.status for r in box.rows()}
    assert status == {"w0": "delivered", "w1": "pending"}


def test_a_crashing_channel_does_not_stop_the_others(ledger: Ledger, tmp_path: Path) -> None:
    class Crashing(ScriptedChannel):
        def send(self, msg: Message) -> SendResult:
            raise RuntimeError("bug in a channel")

    _queue(ledger, channels=("w0", "w1"))
    box = Outbox(tmp_path / "ledger.sqlite")
    report = deliver_due(box, {"w0": Crashing("w0", []), "w1": ScriptedChannel("w1", [])},
                         notify())
    assert len(report.delivered) == 1
    assert "bug in a channel" in next(r for r in box.rows() if r.channel == "w0").last_error


def test_every_message_carries_the_head_at_send_time(ledger: Ledger, tmp_path: Path) -> None:
    _queue(ledger)
    later = ledger.append("c9", "record", "deployed", {})
    chan = ScriptedChannel("w0", [])
    deliver_due(Outbox(tmp_path / "ledger.sqlite"), {"w0": chan}, notify())
    msg = chan.sent[0]
    assert (msg.head_seq, msg.head_hash) == (later.seq, later.hash)
    assert msg.ledger_seq == 1 and msg.head_seq == 2


def test_delivery_never_writes_the_ledger(ledger: Ledger, tmp_path: Path) -> None:
    _queue(ledger, 3)
    before = [e.hash for e in ledger.entries()]
    box = Outbox(tmp_path / "ledger.sqlite")
    deliver_due(box, {"w0": ScriptedChannel("w0", [False, True, False])}, notify())
    assert [e.hash for e in ledger.entries()] == before and ledger.verify().ok


def test_an_unconfigured_channel_fails_with_a_reason(ledger: Ledger, tmp_path: Path) -> None:
    _queue(ledger, channels=("gone",))
    box = Outbox(tmp_path / "ledger.sqlite")
    deliver_due(box, {}, notify())
    assert "no longer configured" in box.rows()[0].last_error


def _facts(box: Outbox) -> list[dict[str, Any]]:
    return [r.payload for r in box.rows()]


def test_a_ledger_that_fails_verification_is_notified_once(ledger: Ledger,
                                                          tmp_path: Path) -> None:
    from upgate.notify.worker import check_ledger

    _queue(ledger, 2)
    settings = notify()
    box = Outbox(tmp_path / "ledger.sqlite")
    assert check_ledger(tmp_path, box, settings) is True
    before = len(box.rows())
    ledger.head_path.write_text("9 " + "f" * 64 + "\n")  # entries dropped from the end
    assert check_ledger(tmp_path, box, settings) is False
    assert check_ledger(tmp_path, box, settings) is False
    alerts = [r for r in box.rows() if r.type == "verify_failed"]
    assert len(box.rows()) == before + 2 and {r.channel for r in alerts} == {"w0", "w1"}
    assert any("dropped" in p for p in alerts[0].payload["problems"])


def test_only_a_row_whose_send_began_is_in_doubt_after_a_crash(ledger: Ledger,
                                                               tmp_path: Path) -> None:
    clock = Clock()
    _queue(ledger, n=2)
    box = Outbox(tmp_path / "ledger.sqlite", clock=clock)
    sent, unsent = box.claim(lease_s=60)  # a worker claims both...
    box.mark_sending(sent.id)  # ...its request for the first goes out, then it dies
    assert box.claim(lease_s=60) == []  # both still leased
    clock.t += 61
    again = box.claim(lease_s=60, hold={"w0"})
    # The one that never went out is simply due again; the one that did waits for a person.
    assert [r.id for r in again] == [unsent.id] and again[0].interrupted == 0
    held = box.get(sent.id)
    assert held is not None and held.status == "doubt" and held.interrupted == 1
    box.mark_delivered(unsent.id)
    clock.t += 61
    assert box.claim(lease_s=60, hold={"w0"}) == []  # a held row is never taken by itself
    assert box.resend_doubt() == 1
    (resent,) = box.claim(lease_s=60, hold={"w0"})
    assert resent.id == sent.id and resent.interrupted == 1 and resent.attempts == 2


def test_a_resent_row_is_flagged_as_a_possible_repeat(ledger: Ledger, tmp_path: Path) -> None:
    clock = Clock()
    _queue(ledger)
    box = Outbox(tmp_path / "ledger.sqlite", clock=clock)
    (row,) = box.claim(lease_s=60)
    box.mark_sending(row.id)
    clock.t += 61  # the worker died after sending; w0 is a webhook channel: resend
    channel = ScriptedChannel("w0", [True])
    assert deliver_due(box, {"w0": channel}, notify()).delivered == [row.id]
    assert [m.possible_repeat for m in channel.sent] == [True]
    assert [m.id for m in channel.sent] == [row.id]  # the same idempotency id


def test_an_outbox_made_before_the_doubt_state_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (id TEXT PRIMARY KEY, channel TEXT NOT NULL, type TEXT "
               "NOT NULL, cycle_id TEXT NOT NULL, ledger_seq INTEGER NOT NULL, ledger_hash "
               "TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', "
               "attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, lease_until REAL "
               "NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', created_at REAL NOT "
               "NULL, delivered_at REAL)")
    db.execute("INSERT INTO outbox (id, channel, type, cycle_id, ledger_seq, ledger_hash, "
               "payload, next_at, created_at) VALUES ('m1', 'w0', 'test', 'c', 1, 'h', '{}', "
               "0, 0)")
    db.commit()
    db.close()
    (row,) = Outbox(path).claim()
    assert row.id == "m1" and row.interrupted == 0
