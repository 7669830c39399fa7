"""The durable notification outbox: one row per (ledger entry, channel), in the ledger's file.

The rows live in the same SQLite file as the ledger so that `Ledger.append(..., outbox=...)`
writes an entry and its notifications in one transaction: a decision is never recorded
without its notification queued, and a notification never exists for a decision that was
rolled back. Delivery is at least once: a worker claims a row with a lease, sends it, and
marks it delivered; a worker that dies after sending leaves the lease to expire and the row
is sent again under the same idempotency id, which the receiver uses to drop the copy.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from upgate.hashing import canonical_json, sha256_text
from upgate.ledger import Entry, OutboxWrite

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
    delivered_at REAL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_at)"
_COLUMNS = ("id", "channel", "type", "cycle_id", "ledger_seq", "ledger_hash", "payload",
            "status", "attempts", "next_at", "lease_until", "last_error", "created_at",
            "delivered_at")

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
        ledger_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(ledger_path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_TABLE)
        self._db.execute(_INDEX)

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

    def claim(self, *, limit: int = 20, lease_s: float = 60.0,
              channel: str | None = None) -> list[OutboxRow]:
        """Take up to `limit` due rows under a lease; another worker skips them meanwhile.

        The claim counts an attempt before anything is sent, so a worker killed mid-send
        still uses up one of the message's attempts.
        """
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
                    "UPDATE outbox SET next_at = ?, lease_until = 0, last_error = ? WHERE id = ?",
                    (now + retry_in, error[:500], mid))

    def retry_dead(self, channel: str | None = None) -> int:
        """Put dead-lettered rows back in the queue (after fixing the channel)."""
        sql = ("UPDATE outbox SET status = 'pending', attempts = 0, next_at = ? "
               "WHERE status = 'dead'")
        params: tuple[Any, ...] = (self.clock(),)
        if channel is not None:
            sql += " AND channel = ?"
            params += (channel,)
        with self._lock:
            return self._db.execute(sql, params).rowcount

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
                "SELECT MIN(MAX(next_at, lease_until)) FROM outbox WHERE status = 'pending'"
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
