"""The ledger: an append-only, hash-chained record of every decision, in SQLite.

Each entry's hash covers its own fields and the previous entry's hash, so editing,
dropping or reordering any entry breaks the chain. The chain head is also written to a
file beside the database, so dropping the newest entries is caught too. With a witness
configured, each head is signed and published outside the state folder after its commit
(`upgate.witness`), so a rewritten and re-chained ledger, a truncated one and a deleted
database are caught as well.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from upgate.errors import ConfigError, LedgerError
from upgate.hashing import canonical_json, sha256_text
from upgate.sqlite_db import open_db
from upgate.witness import (
    FileWitnessConfig,
    GitWitnessConfig,
    HeadSigner,
    Witness,
    WitnessError,
    build_witness,
    compare,
    default_key_dir,
    load_ledger_key,
)

log = logging.getLogger(__name__)

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    cycle_id TEXT NOT NULL,
    node TEXT NOT NULL,
    event TEXT NOT NULL,
    key TEXT UNIQUE,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_cycle ON ledger(cycle_id);
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_replace BEFORE INSERT ON ledger
WHEN EXISTS (SELECT 1 FROM ledger WHERE seq = NEW.seq OR key = NEW.key)
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


class Entry(BaseModel):
    """One ledger record."""

    model_config = ConfigDict(frozen=True)

    seq: int
    at: str
    cycle_id: str
    node: str
    event: str
    key: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyReport(BaseModel):
    """What `Ledger.verify` found."""

    ok: bool
    entries: int
    problems: list[str]
    witness: str | None = None
    """The witness the chain was checked against (None: none is configured)."""


def entry_hash(
    seq: int, at: str, cycle_id: str, node: str, event: str, key: str | None,
    payload_json: str, prev_hash: str,
) -> str:
    """The hash of one entry, chained to the previous one."""
    body = canonical_json([seq, at, cycle_id, node, event, key, payload_json, prev_hash])
    return sha256_text(body)


OutboxWrite = Callable[[sqlite3.Connection, "Entry"], None]
"""Writes rows beside an entry inside the entry's own transaction (the notification outbox)."""


class Ledger:
    """Append-only, hash-chained decision log in a SQLite file."""

    def __init__(self, path: Path, *, witness: Witness | None = None,
                 key_dir: Path | None = None) -> None:
        self.path = path
        self.head_path = path.with_suffix(path.suffix + ".head")
        self.seen_path = path.with_suffix(path.suffix + ".witnessed")
        self.witness = witness
        self.key_dir = key_dir or default_key_dir()
        self._signer: HeadSigner | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One writer at a time across processes, from the commit to the witness: heads
        # reach the witness in the order they were committed.
        self._flock = os.open(path.with_suffix(path.suffix + ".lock"),
                              os.O_RDWR | os.O_CREAT, 0o600)
        self._db = open_db(path, _SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
        os.close(self._flock)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._flock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._flock, fcntl.LOCK_UN)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def append(
        self,
        cycle_id: str,
        node: str,
        event: str,
        payload: dict[str, Any],
        *,
        key: str | None = None,
        outbox: Sequence[OutboxWrite] = (),
    ) -> Entry:
        """Append one entry; with a `key`, a second append of the same key returns the first.

        Keys make node records idempotent: a node that runs again after a crash records once.
        Each `outbox` write runs in the same transaction, so the entry and its notifications
        commit together or not at all (and a repeated key writes them once).
        """
        payload_json = canonical_json(payload)
        with self._writer():
            with self._tx() as db:
                if key is not None:
                    row = db.execute("SELECT * FROM ledger WHERE key = ?", (key,)).fetchone()
                    if row is not None:
                        return _row_to_entry(row)
                last = db.execute(
                    "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
                at = datetime.now(UTC).isoformat()
                digest = entry_hash(seq, at, cycle_id, node, event, key, payload_json, prev)
                db.execute(
                    "INSERT INTO ledger (seq, at, cycle_id, node, event, key, payload,"
                    " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, at, cycle_id, node, event, key, payload_json, prev, digest),
                )
                entry = Entry(
                    seq=seq, at=at, cycle_id=cycle_id, node=node, event=event, key=key,
                    payload=json.loads(payload_json), prev_hash=prev, hash=digest,
                )
                for write in outbox:
                    write(db, entry)
                self._write_head(seq, digest)
            self._publish(seq, digest, at)  # after the commit
        log.debug("ledger %s %s/%s seq=%d", cycle_id, node, event, seq)
        return entry

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        tmp.write_text(f"{seq} {digest}\n")
        tmp.replace(self.head_path)

    def _check_head(self, rows: list[tuple[Any, ...]]) -> list[str]:
        return _check_head_rows(self.head_path, rows)

    # witness ------------------------------------------------------------------------------

    def _seen(self) -> int:
        try:
            return int(self.seen_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def _publish(self, seq: int, digest: str, at: str) -> bool:
        """Sign and publish one head (after its commit); a failure is logged, not raised.

        The entry is already committed; the next append publishes a newer head, which
        covers this one through the chain, and `verify` reports heads not yet witnessed.
        """
        if self.witness is None:
            return False
        try:
            if self._signer is None:
                self._signer = load_ledger_key(self.key_dir, create=True)
            assert self._signer is not None
            self.witness.publish(self._signer.sign(seq, digest, at))
        except (WitnessError, ConfigError, OSError) as exc:
            log.error("ledger head %d was not witnessed: %s", seq, exc)
            return False
        if seq > self._seen():
            self.seen_path.write_text(f"{seq} {digest}\n")
        return True

    def publish_head(self) -> bool:
        """Publish the current head to the witness (after an outage); False if it failed."""
        with self._writer():
            row = self._db.execute(
                "SELECT seq, hash, at FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
            return row is not None and self._publish(row[0], row[1], row[2])

    def _check_witness(self, rows: list[tuple[Any, ...]]) -> list[str]:
        if self.witness is None:
            return []
        try:
            heads = self.witness.heads()
        except WitnessError as exc:
            return [str(exc)]
        signer = load_ledger_key(self.key_dir, create=False)
        return compare({r[0]: r[8] for r in rows}, heads, where=self.witness.describe(),
                       local_key=signer.public_key if signer else None, seen=self._seen())

    def entries(self, cycle_id: str | None = None) -> list[Entry]:
        """All entries in order, or those of one cycle."""
        if cycle_id is None:
            rows = self._db.execute("SELECT * FROM ledger ORDER BY seq").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM ledger WHERE cycle_id = ? ORDER BY seq", (cycle_id,)
            ).fetchall()
        return [_row_to_entry(r) for r in rows]

    def find(self, key: str) -> Entry | None:
        """The entry recorded under an idempotency key, if any."""
        row = self._db.execute("SELECT * FROM ledger WHERE key = ?", (key,)).fetchone()
        return _row_to_entry(row) if row else None

    def cycles(self) -> list[str]:
        """Cycle ids in the order they first appear."""
        rows = self._db.execute(
            "SELECT cycle_id, MIN(seq) AS first FROM ledger GROUP BY cycle_id ORDER BY first"
        ).fetchall()
        return [r[0] for r in rows]

    def verify(self) -> VerifyReport:
        """Walk the chain; report every edited, dropped or reordered entry."""
        problems: list[str] = []
        rows = self._db.execute(
            "SELECT seq, at, cycle_id, node, event, key, payload, prev_hash, hash"
            " FROM ledger ORDER BY seq"
        ).fetchall()
        prev = GENESIS
        expected_seq = 1
        for seq, at, cycle_id, node, event, key, payload, prev_hash, digest in rows:
            if seq != expected_seq:
                problems.append(f"entry {expected_seq} is missing (next is {seq})")
            if prev_hash != prev:
                problems.append(f"entry {seq} does not follow the entry before it (chain broken)")
            recomputed = entry_hash(seq, at, cycle_id, node, event, key, payload, prev_hash)
            if recomputed != digest:
                problems.append(f"entry {seq} was edited (its hash does not match its content)")
            prev = digest
            expected_seq = seq + 1
        problems.extend(self._check_head(rows))
        problems.extend(self._check_witness(rows))
        return VerifyReport(ok=not problems, entries=len(rows), problems=problems,
                            witness=self.witness.describe() if self.witness else None)


def _check_head_rows(head_path: Path, rows: list[tuple[Any, ...]]) -> list[str]:
    """Compare the chain with the head file written at every append."""
    if not head_path.exists():
        return [f"the head file {head_path.name} is missing"] if rows else []
    parts = head_path.read_text().split()
    if len(parts) != 2 or not parts[0].isdigit():
        return [f"the head file {head_path.name} is unreadable"]
    head_seq, head_hash = int(parts[0]), parts[1]
    last_seq = rows[-1][0] if rows else 0
    problems: list[str] = []
    if head_seq > last_seq:
        problems.append(
            f"entries {last_seq + 1}..{head_seq} were dropped from the end "
            "(the head file records more)"
        )
    elif head_seq < last_seq:
        problems.append(f"entries {head_seq + 1}..{last_seq} were added outside upgate")
    by_seq = {r[0]: r[8] for r in rows}
    if head_seq in by_seq and by_seq[head_seq] != head_hash:
        problems.append(f"the newest entry {head_seq} differs from the recorded head")
    return problems


def _row_to_entry(row: tuple[Any, ...]) -> Entry:
    seq, at, cycle_id, node, event, key, payload, prev_hash, digest = row
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:  # an edited row; verify() reports it
        data = {"unreadable_payload": str(exc)}
    return Entry(
        seq=seq, at=at, cycle_id=cycle_id, node=node, event=event, key=key,
        payload=data, prev_hash=prev_hash, hash=digest,
    )


def open_ledger(state_dir: Path,
                witness: GitWitnessConfig | FileWitnessConfig | None = None) -> Ledger:
    """The ledger of a state folder, publishing its heads to the configured witness."""
    backend = build_witness(witness, state_dir) if witness is not None else None
    try:
        return Ledger(state_dir / "ledger.sqlite", witness=backend,
                      key_dir=witness.key_dir if witness is not None else None)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(
            f"cannot open the ledger in {state_dir}: {exc}. Check the folder is writable."
        ) from exc
