"""Invariant 6: the ledger is append-only and hash-chained, and `verify` finds any edited,
dropped, reordered or forged entry. Each test plays an attacker with its own SQLite
connection to the ledger file."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from upgate.cli import app
from upgate.errors import LedgerError
from upgate.hashing import canonical_json
from upgate.ledger import GENESIS, Ledger, entry_hash, open_ledger

from ..conftest import write_config

COLUMNS = ("seq", "at", "cycle_id", "node", "event", "key", "payload", "prev_hash", "hash")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A ledger with five honest entries."""
    led = Ledger(tmp_path / "ledger.sqlite")
    for i in range(1, 6):
        led.append("c1", "approve" if i == 3 else "node", f"event{i}",
                   {"i": i, "approver": "bob"}, key=f"c1/{i}")
    yield led
    led.close()


@pytest.fixture
def raw(ledger: Ledger) -> Iterator[sqlite3.Connection]:
    """The attacker's own connection to the ledger file."""
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    yield conn
    conn.close()


def drop_triggers(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER ledger_no_update")
    conn.execute("DROP TRIGGER ledger_no_delete")


def read_row(conn: sqlite3.Connection, seq: int) -> dict[str, Any]:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger WHERE seq = ?",  # noqa: S608
                       (seq,)).fetchone()
    assert row is not None, f"no entry {seq}"
    return dict(zip(COLUMNS, row, strict=True))


def honest_hash(r: dict[str, Any]) -> str:
    return entry_hash(r["seq"], r["at"], r["cycle_id"], r["node"], r["event"], r["key"],
                      r["payload"], r["prev_hash"])


def rehash(conn: sqlite3.Connection, seq: int, **changes: Any) -> str:
    """Edit an entry's fields and give it the hash its new content deserves."""
    r = {**read_row(conn, seq), **changes}
    r["hash"] = honest_hash(r)
    conn.execute("UPDATE ledger SET at=?, cycle_id=?, node=?, event=?, key=?, payload=?, "
                 "prev_hash=?, hash=? WHERE seq=?",
                 (r["at"], r["cycle_id"], r["node"], r["event"], r["key"], r["payload"],
                  r["prev_hash"], r["hash"], seq))
    return str(r["hash"])


def rechain(conn: sqlite3.Connection, start: int) -> None:
    """Recompute every link from `start` to the end, as a careful attacker would."""
    prev = read_row(conn, start - 1)["hash"] if start > 1 else GENESIS
    last = conn.execute("SELECT MAX(seq) FROM ledger").fetchone()[0]
    for seq in range(start, last + 1):
        prev = rehash(conn, seq, prev_hash=prev)


def forge(conn: sqlite3.Connection, seq: int, prev_hash: str, payload: dict[str, Any]) -> None:
    """Insert an entry the ledger never wrote, with a correct hash."""
    r = {"seq": seq, "at": "2026-01-01T00:00:00+00:00", "cycle_id": "c1", "node": "approve",
         "event": "approve", "key": None, "payload": canonical_json(payload),
         "prev_hash": prev_hash}
    r["hash"] = honest_hash(r)
    conn.execute(f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 9)})",  # noqa: S608
                 tuple(r[c] for c in COLUMNS))


def test_an_honest_ledger_verifies_and_is_chained(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok and report.entries == 5 and report.problems == []
    entries = ledger.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert ledger.head_path.read_text().split() == ["5", entries[-1].hash]


@pytest.mark.parametrize("sql", [
    "UPDATE ledger SET payload = '{\"approver\":\"mallory\"}' WHERE seq = 3",
    "UPDATE ledger SET seq = 99 WHERE seq = 5",
    "UPDATE ledger SET hash = prev_hash",
    "DELETE FROM ledger WHERE seq = 3",
    "DELETE FROM ledger",
    "INSERT INTO ledger (seq, at, cycle_id, node, event, key, payload, prev_hash, hash) "
    "VALUES (3, 'x', 'c1', 'n', 'e', NULL, '{}', 'p', 'h') "
    "ON CONFLICT(seq) DO UPDATE SET payload = excluded.payload",
])
def test_updates_and_deletes_are_refused(ledger: Ledger, raw: sqlite3.Connection,
                                         sql: str) -> None:
    before = ledger.entries()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute(sql)
    assert ledger.entries() == before
    assert ledger.verify().ok


def test_insert_or_replace_is_refused(ledger: Ledger, raw: sqlite3.Connection) -> None:
    r = read_row(raw, 3)
    r["payload"] = canonical_json({"i": 3, "approver": "mallory"})
    r["hash"] = honest_hash(r)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute(f"INSERT OR REPLACE INTO ledger ({', '.join(COLUMNS)}) "  # noqa: S608
                    f"VALUES ({', '.join('?' * 9)})", tuple(r[c] for c in COLUMNS))


def test_reopening_restores_dropped_triggers(ledger: Ledger, raw: sqlite3.Connection) -> None:
    drop_triggers(raw)
    again = Ledger(ledger.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM ledger WHERE seq = 1")
    finally:
        again.close()


@pytest.mark.parametrize(("column", "value"), [
    ("payload", '{"approver":"mallory","i":3}'),
    ("payload", "{not json"),
    ("node", "deploy"),
    ("event", "reject"),
    ("cycle_id", "c2"),
    ("at", "2020-01-01T00:00:00+00:00"),
    ("key", "other"),
    ("key", None),
])
def test_an_edited_field_names_exactly_that_entry(
    ledger: Ledger, raw: sqlite3.Connection, column: str, value: str | None
) -> None:
    drop_triggers(raw)
    raw.execute(f"UPDATE ledger SET {column} = ? WHERE seq = 3", (value,))  # noqa: S608
    ledger.entries()  # an unreadable payload must not crash reading
    report = ledger.verify()
    assert not report.ok
    assert report.problems == [
        "entry 3 was edited (its hash does not match its content)"
    ]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    drop_triggers(raw)
    rehash(raw, 3, payload=canonical_json({"i": 3, "approver": "mallory"}))
    assert ledger.verify().problems == [
        "entry 4 does not follow the entry before it (chain broken)"
    ]


def test_an_edit_of_the_newest_entry_is_caught_by_the_head(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    drop_triggers(raw)
    rehash(raw, 5, payload=canonical_json({"i": 5, "approver": "mallory"}))
    assert ledger.verify().problems == ["the newest entry 5 differs from the recorded head"]


def test_a_fully_rechained_history_is_caught_by_the_head(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    drop_triggers(raw)
    rehash(raw, 2, payload=canonical_json({"i": 2, "approver": "mallory"}))
    rechain(raw, 3)
    assert ledger.verify().problems == ["the newest entry 5 differs from the recorded head"]


def test_deleting_a_middle_entry_is_found(ledger: Ledger, raw: sqlite3.Connection) -> None:
    drop_triggers(raw)
    raw.execute("DELETE FROM ledger WHERE seq = 3")
    report = ledger.verify()
    assert not report.ok and report.entries == 4
    assert "entry 3 is missing (next is 4)" in report.problems
    assert "entry 4 does not follow the entry before it (chain broken)" in report.problems


def test_deleting_the_newest_entries_is_found(ledger: Ledger, raw: sqlite3.Connection) -> None:
    drop_triggers(raw)
    raw.execute("DELETE FROM ledger WHERE seq >= 4")
    assert ledger.verify().problems == [
        "entries 4..5 were dropped from the end (the head file records more)"
    ]


def test_deleting_the_newest_entries_and_the_head_file_is_found(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    drop_triggers(raw)
    raw.execute("DELETE FROM ledger WHERE seq >= 4")
    ledger.head_path.unlink()
    assert ledger.verify().problems == ["the head file ledger.sqlite.head is missing"]


def test_swapping_two_entries_is_found(ledger: Ledger, raw: sqlite3.Connection) -> None:
    drop_triggers(raw)
    raw.execute("UPDATE ledger SET seq = -1 WHERE seq = 2")
    raw.execute("UPDATE ledger SET seq = 2 WHERE seq = 3")
    raw.execute("UPDATE ledger SET seq = 3 WHERE seq = -1")
    assert [e.event for e in ledger.entries()][:3] == ["event1", "event3", "event2"]
    report = ledger.verify()
    assert not report.ok
    for seq in (2, 3):
        assert f"entry {seq} was edited (its hash does not match its content)" in report.problems
    assert "entry 4 does not follow the entry before it (chain broken)" in report.problems


def test_a_forged_entry_inserted_in_the_middle_breaks_the_next_link(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    drop_triggers(raw)
    for seq in (5, 4, 3):  # make room at 3, from the top so the primary key stays unique
        raw.execute("UPDATE ledger SET seq = seq + 1 WHERE seq = ?", (seq,))
    forge(raw, 3, read_row(raw, 2)["hash"], {"approver": "mallory"})
    report = ledger.verify()
    assert not report.ok
    assert "entry 4 does not follow the entry before it (chain broken)" in report.problems


def test_a_forged_entry_appended_at_the_end_is_found(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    forge(raw, 6, read_row(raw, 5)["hash"], {"approver": "mallory"})
    assert not ledger.verify().ok


def test_a_rewritten_history_plus_one_appended_entry_is_found(
    ledger: Ledger, raw: sqlite3.Connection
) -> None:
    drop_triggers(raw)
    rehash(raw, 3, payload=canonical_json({"i": 3, "approver": "mallory"}))
    rechain(raw, 4)
    forge(raw, 6, read_row(raw, 5)["hash"], {"note": "cover"})
    assert not ledger.verify().ok


@pytest.mark.parametrize("content", ["garbage", "", "five abc"])
def test_a_garbled_head_file_is_reported_not_raised(ledger: Ledger, content: str) -> None:
    ledger.head_path.write_text(content)
    report = ledger.verify()
    assert not report.ok
    assert any("head" in p for p in report.problems)


def test_an_idempotency_key_appended_twice_returns_the_first_entry(ledger: Ledger) -> None:
    first = ledger.append("c2", "deploy", "deployed", {"branch": "a"}, key="c2/deploy")
    second = ledger.append("c2", "deploy", "deployed", {"branch": "b"}, key="c2/deploy")
    assert second == first
    assert second.payload == {"branch": "a"}
    assert ledger.find("c2/deploy") == first
    # A fresh process over the same file agrees.
    again = Ledger(ledger.path)
    try:
        third = again.append("c9", "other", "other", {"branch": "c"}, key="c2/deploy")
    finally:
        again.close()
    assert third == first
    assert len(ledger.entries()) == 6
    assert ledger.verify().ok


def test_concurrent_appends_keep_a_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    one, two = Ledger(path), Ledger(path)  # two handles, like two processes
    errors: list[BaseException] = []

    def work(led: Ledger, worker: int) -> None:
        try:
            for i in range(15):
                led.append(f"c{worker}", "node", "event", {"w": worker, "i": i})
                led.append("shared", "node", "once", {"w": worker}, key="shared/once")
        except BaseException as exc:  # surfaced below; a thread's exception is lost otherwise
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(one if w % 2 else two, w)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        entries = one.entries()
        assert [e.seq for e in entries] == list(range(1, 8 * 15 + 2))
        assert sorted((e.payload["w"], e.payload["i"]) for e in entries if e.event == "event") \
            == sorted((w, i) for w in range(8) for i in range(15))
        assert sum(e.event == "once" for e in entries) == 1
        for led in (one, two):
            assert led.verify().ok, led.verify().problems
    finally:
        one.close()
        two.close()


def test_open_ledger_on_an_unusable_folder_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.mkdir()
    (blocker / "ledger.sqlite").mkdir()  # a folder where the database file should be
    with pytest.raises(LedgerError, match="writable"):
        open_ledger(blocker)


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path)
    led = open_ledger(tmp_path / "state")
    for i in range(3):
        led.append("c1", "node", f"event{i}", {"i": i})
    led.close()
    return cfg


def verify_cli(cfg: Path, how: str) -> Result:
    if how == "option":
        return CliRunner().invoke(app, ["verify", "--config", str(cfg)])
    return CliRunner().invoke(app, ["verify"], env={"UPGATE_CONFIG": str(cfg)})


HOW = [pytest.param("env", id="UPGATE_CONFIG"),
       pytest.param("option", id="--config")]


@pytest.mark.parametrize("how", HOW)
def test_cli_verify_exits_0_on_a_good_ledger(cli_config: Path, how: str) -> None:
    result = verify_cli(cli_config, how)
    assert result.exit_code == 0, result.output
    assert "ledger OK" in result.output and "3 entries" in result.output


@pytest.mark.parametrize("how", HOW)
def test_cli_verify_exits_1_and_names_the_entry_on_a_tampered_ledger(
    cli_config: Path, how: str
) -> None:
    conn = sqlite3.connect(cli_config.parent / "state" / "ledger.sqlite", isolation_level=None)
    try:
        drop_triggers(conn)
        conn.execute("UPDATE ledger SET payload = '{\"i\":9}' WHERE seq = 2")
    finally:
        conn.close()
    result = verify_cli(cli_config, how)
    assert result.exit_code == 1, result.output
    assert "entry 2 was edited" in " ".join(result.output.split())
