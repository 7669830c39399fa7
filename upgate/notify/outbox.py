"""The durable notification outbox: one row per (ledger entry, channel), in the ledger's file.

The rows live in the same SQLite file as the ledger so that `Ledger.append(..., outbox=...)`
writes an entry and its notifications in one transaction: a decision is never recorded
without its notification queued, and a notification never exists for a decision that was
rolled back.

A row moves pending -> sending -> delivered (or back to pending for a retry, or dead).
A worker claims rows under a lease, sets each `sending` right before its request goes out,
and marks the outcome right after the receiver answers. A row still `sending` once its lease
ended is one whose worker died between sending and marking: nobody knows whether the
receiver got it. Each channel says what happens then (`on_doubt`):

- "resend": it is sent again under the same idempotency id, flagged as a possible repeat.
  At least once on the wire; exactly once for a consumer that keeps the first copy of each
  id (Standard Webhooks consumers dedupe on `webhook-id`). The webhook channels' default.
- "hold": it is not sent again; it waits in the `doubt` state, listed by `upgate notify
  status`, until a person resends it (`upgate notify deliver --resend-in-doubt`). At most
  once without a person: a Slack incoming webhook cannot drop a copy by id, so the Slack
  channels' default never shows the same message twice by itself.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from upgate.hashing import canonical_json, sha256_text
from upgate.ledger import Entry, OutboxWrite
from upgate.sqlite_db import open_db

log = logging.getLogger(__name__)

_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    type TEXT NOT NULL,
    cycle_id TEXT NOT NULL,
    ledger_seq INTEGER NOT NULL,
    ledger_hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    delivered_at REAL,
    interrupted INTEGER NOT NULL DEFAULT 0
)
"""
# Added after the first release: tables made before it get the column on open.
_MIGRATE = ("interrupted", "ALTER TABLE outbox ADD COLUMN interrupted INTEGER NOT NULL "
            "DEFAULT 0")
_INDEX = "CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_at)"
_COLUMNS = ("id", "channel", "type", "cycle_id", "ledger_seq", "ledger_hash", "payload",
            "status", "attempts", "next_at", "lease_until", "last_error", "created_at",
            "delivered_at", "interrupted")

Clock = Callable[[], float]


class OutboxRow(BaseModel):
    """One queued notification for one channel."""

    model_config = ConfigDict(frozen=True)

    id: str
    """The idempotency id: the same for every attempt, sent as a header."""
    channel: str
    type: str
    cycle_id: str
    ledger_seq: int
    ledger_hash: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_at: float
    lease_until: float
    last_error: str
    created_at: float
    delivered_at: float | None
    interrupted: int = 0
    """How many times a worker died between sending this and marking the outcome."""


def message_id(ledger_hash: str, channel: str) -> str:
    """The idempotency id of a ledger entry's notification to one channel."""
    return "msg_" + sha256_text(f"{ledger_hash}/{channel}")[:32]


def outbox_write(kind: str, channels: list[str], facts: dict[str, Any],
                 *, clock: Clock = time.time) -> OutboxWrite:
    """A ledger hook that queues `kind` for each channel inside the entry's transaction."""

    def write(db: sqlite3.Connection, entry: Entry) -> None:
        db.execute(_TABLE)
        now = clock()
        payload = canonical_json({"type": kind, **facts})
        for channel in channels:
            db.execute(
                "INSERT OR IGNORE INTO outbox (id, channel, type, cycle_id, ledger_seq, "
                "ledger_hash, payload, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id(entry.hash, channel), channel, kind, entry.cycle_id, entry.seq,
                 entry.hash, payload, now, now),
            )

    return write


class Outbox:
    """Claim, deliver and dead-letter queued notifications (a connection of its own)."""

    def __init__(self, ledger_path: Path, *, clock: Clock = time.time) -> None:
        self.path = ledger_path
        self.clock = clock
        self._lock = threading.Lock()
        self._db = open_db(ledger_path, timeout=30)
        self._db.execute(_TABLE)
        self._db.execute(_INDEX)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)").fetchall()}
        if _MIGRATE[0] not in columns:
            self._db.execute(_MIGRATE[1])

    @classmethod
    def of_state(cls, state_dir: Path, *, clock: Clock = time.time) -> Outbox:
        """The outbox of a state folder (beside its ledger)."""
        return cls(state_dir / "ledger.sqlite", clock=clock)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[OutboxRow]:
        with self._lock:
            raw = self._db.execute(sql, params).fetchall()
        return [_to_row(r) for r in raw]

    def enqueue_direct(self, kind: str, channels: list[str], facts: dict[str, Any],
                       *, key: str, cycle_id: str = "notify") -> list[str]:
        """Queue a notification that has no ledger entry of its own (a test message)."""
        head_seq, head_hash = self.head()
        ids = []
        now = self.clock()
        with self._lock:
            for channel in channels:
                mid = message_id(sha256_text(key), channel)
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (id, channel, type, cycle_id, ledger_seq, "
                    "ledger_hash, payload, next_at, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (mid, channel, kind, cycle_id, head_seq, head_hash,
                     canonical_json({"type": kind, **facts}), now, now),
                )
                ids.append(mid)
        return ids

    def recover_interrupted(self, hold: Collection[str] = ()) -> list[str]:
        """Rows whose worker died between sending and marking (still `sending`, lease over):
        those of the channels in `hold` wait in `doubt` for a person; the others are due
        again, flagged as possible repeats. Returns their ids."""
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, channel FROM outbox WHERE status = 'sending' AND lease_until <= ?",
                    (now,)).fetchall()
                for mid, channel in rows:
                    self._db.execute(
                        "UPDATE outbox SET status = ?, interrupted = interrupted + 1, "
                        "lease_until = 0, next_at = ?, last_error = ? WHERE id = ?",
                        ("doubt" if channel in hold else "pending", now,
                         "the worker stopped between sending and recording the answer; it "
                         "may have arrived", mid))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if rows:
            log.warning("%d notification(s) were interrupted mid-send: %s", len(rows),
                        ", ".join(f"{m} ({'held' if c in hold else 'resent'})" for m, c in rows))
        return [str(m) for m, _ in rows]

    def resend_doubt(self, channel: str | None = None) -> int:
        """A person sends the rows held in doubt again (each flagged as a possible repeat)."""
        return self._requeue("doubt", "", channel)

    def _requeue(self, status: str, reset: str, channel: str | None) -> int:
        sql = f"UPDATE outbox SET status = 'pending', {reset}next_at = ? WHERE status = ?"  # noqa: S608
        params: tuple[Any, ...] = (self.clock(), status)
        if channel is not None:
            sql += " AND channel = ?"
            params += (channel,)
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def claim(self, *, limit: int = 20, lease_s: float = 60.0, channel: str | None = None,
              hold: Collection[str] = ()) -> list[OutboxRow]:
        """Take up to `limit` due rows under a lease, so another worker skips them; the claim
        counts an attempt. Rows a dead worker left mid-send are recovered first
        (`recover_interrupted`, with the channels that `hold`)."""
        self.recover_interrupted(hold)
        now = self.clock()
        where = "status = 'pending' AND next_at <= ? AND lease_until <= ?"
        params: tuple[Any, ...] = (now, now)
        if channel is not None:
            where += " AND channel = ?"
            params += (channel,)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in self._db.execute(
                    f"SELECT id FROM outbox WHERE {where} ORDER BY ledger_seq, id LIMIT ?",  # noqa: S608
                    (*params, limit)).fetchall()]
                for mid in ids:
                    self._db.execute(
                        "UPDATE outbox SET lease_until = ?, attempts = attempts + 1 WHERE id = ?",
                        (now + lease_s, mid))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [r for mid in ids for r in [self.get(mid)] if r is not None]

    def get(self, mid: str) -> OutboxRow | None:
        """One row by its id."""
        rows = self._rows(f"SELECT {', '.join(_COLUMNS)} FROM outbox WHERE id = ?",  # noqa: S608
                          (mid,))
        return rows[0] if rows else None

    def mark_sending(self, mid: str) -> None:
        """Right before this row's request goes out: from here until its outcome is marked,
        a crash leaves it in doubt (a claimed row not yet sent is merely due again)."""
        with self._lock:
            self._db.execute("UPDATE outbox SET status = 'sending' WHERE id = ?", (mid,))

    def mark_delivered(self, mid: str) -> None:
        """The receiver accepted the message."""
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?, lease_until = 0,"
                " last_error = '' WHERE id = ?", (self.clock(), mid))

    def mark_failed(self, mid: str, error: str, *, retry_in: float | None) -> None:
        """An attempt failed: retry after `retry_in` seconds, or dead-letter it (None)."""
        now = self.clock()
        with self._lock:
            if retry_in is None:
                self._db.execute(
                    "UPDATE outbox SET status = 'dead', lease_until = 0, last_error = ?"
                    " WHERE id = ?", (error[:500], mid))
            else:
                self._db.execute(
                    "UPDATE outbox SET status = 'pending', next_at = ?, lease_until = 0, "
                    "last_error = ? WHERE id = ?", (now + retry_in, error[:500], mid))

    def retry_dead(self, channel: str | None = None) -> int:
        """Put dead-lettered rows back in the queue (after fixing the channel)."""
        return self._requeue("dead", "attempts = 0, ", channel)

    def rows(self, status: str | None = None) -> list[OutboxRow]:
        """Every row (or those with one status), oldest first."""
        cols = ", ".join(_COLUMNS)
        if status is None:
            return self._rows(f"SELECT {cols} FROM outbox ORDER BY ledger_seq, channel")  # noqa: S608
        return self._rows(f"SELECT {cols} FROM outbox WHERE status = ?"  # noqa: S608
                          " ORDER BY ledger_seq, channel", (status,))

    def counts(self) -> dict[str, dict[str, int]]:
        """channel -> status -> count, for `upgate notify status`."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            raw = self._db.execute(
                "SELECT channel, status, COUNT(*) FROM outbox GROUP BY channel, status"
            ).fetchall()
        for channel, status, n in raw:
            out.setdefault(channel, {})[status] = n
        return out

    def next_due(self) -> float | None:
        """When the earliest pending row becomes due (or its lease ends)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(MAX(next_at, lease_until)) FROM outbox "
                "WHERE status IN ('pending', 'sending')"
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def head(self) -> tuple[int, str]:
        """The ledger's current head (seq, hash): what every message carries."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
            except sqlite3.OperationalError:  # no ledger table yet: an empty state folder
                row = None
        return (int(row[0]), str(row[1])) if row else (0, "0" * 64)


def _to_row(r: tuple[Any, ...]) -> OutboxRow:
    data = dict(zip(_COLUMNS, r, strict=True))
    data["payload"] = json.loads(data["payload"])
    return OutboxRow.model_validate(data)
