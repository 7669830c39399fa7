"""upgate's own state database: people, the artifact registry, served versions.

Separate from the ledger (which is append-only) because these tables change: a served
version is retired, a person's token is rotated. Every such change is also recorded in the
ledger by the code that makes it. Who may do what is not read from the people table: it is
replayed from the admin-signed records of `identity_log` (see `upgate.admin`); the table
only keeps their current public key and login-token hash at hand.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upgate.sqlite_db import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_log (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL,
    signer TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS served (
    alias TEXT NOT NULL,
    version_name TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    cycle_id TEXT NOT NULL,
    since TEXT NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (alias, deployment_id)
);
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat()


class Store:
    """Small SQLite store for mutable state."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(people)").fetchall()}
        if "public_key" not in columns:  # a state made before people had keys
            self._db.execute("ALTER TABLE people ADD COLUMN public_key TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # people -----------------------------------------------------------------------------

    def set_person(self, name: str, token_sha256: str, public_key: str = "") -> None:
        """Add a person or replace their token hash and public key."""
        self.execute(
            "INSERT INTO people (name, token_sha256, public_key, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "token_sha256 = excluded.token_sha256, public_key = excluded.public_key",
            (name, token_sha256, public_key, now_iso()),
        )

    def remove_person(self, name: str) -> None:
        """Forget a person (their records stay in the ledger)."""
        self.execute("DELETE FROM people WHERE name = ?", (name,))

    def append_identity(self, record: str, signer: str, signature: str,
                        expected_seq: int) -> int:
        """Append one signed admin record at `expected_seq`; refused if another got there."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT MAX(seq) FROM identity_log").fetchone()[0] or 0
                if last + 1 != expected_seq:
                    raise ValueError(f"identity log moved on (now at {last})")
                self._db.execute(
                    "INSERT INTO identity_log (seq, record, signer, signature) "
                    "VALUES (?, ?, ?, ?)", (expected_seq, record, signer, signature))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return expected_seq

    def identity_records(self) -> list[tuple[int, str, str, str]]:
        """The signed admin records, in order: (seq, record JSON, signer, signature)."""
        rows = self.execute(
            "SELECT seq, record, signer, signature FROM identity_log ORDER BY seq")
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def token_hash(self, name: str) -> str | None:
        """The stored token hash of a person, if registered."""
        rows = self.execute("SELECT token_sha256 FROM people WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def people(self) -> list[str]:
        """Registered people."""
        return [r[0] for r in self.execute("SELECT name FROM people ORDER BY name")]

    # artifacts --------------------------------------------------------------------------

    def register_artifact(self, sha256: str, kind: str, name: str, path: Path) -> None:
        """Record a content-addressed artifact (idempotent)."""
        self.execute(
            "INSERT OR IGNORE INTO artifacts (sha256, kind, name, path, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (sha256, kind, name, str(path), now_iso()),
        )

    # served versions --------------------------------------------------------------------

    def served_versions(self, alias: str) -> list[dict[str, Any]]:
        """Every version ever served under an alias, newest first."""
        rows = self.execute(
            "SELECT version_name, path, sha256, deployment_id, cycle_id, since, active "
            "FROM served WHERE alias = ? ORDER BY since DESC",
            (alias,),
        )
        keys = ("version_name", "path", "sha256", "deployment_id", "cycle_id", "since", "active")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def active_version(self, alias: str) -> dict[str, Any] | None:
        """The version the alias serves now, if upgate deployed one."""
        for v in self.served_versions(alias):
            if v["active"]:
                return v
        return None

    def record_served(
        self, alias: str, version_name: str, path: Path, sha256: str, deployment_id: str,
        cycle_id: str,
    ) -> None:
        """Mark a version as the active one for its alias (idempotent by deployment id)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE served SET active = 0 WHERE alias = ?", (alias,))
            self._db.execute(
                "INSERT INTO served (alias, version_name, path, sha256, deployment_id, cycle_id,"
                " since, active) VALUES (?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT(alias, deployment_id) DO UPDATE SET active = 1",
                (alias, version_name, str(path), sha256, deployment_id, cycle_id, now_iso()),
            )
            self._db.execute("COMMIT")

    def reactivate(self, alias: str, deployment_id: str) -> None:
        """Make an earlier version the active one again (a rollback)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE served SET active = 0 WHERE alias = ?", (alias,))
            self._db.execute(
                "UPDATE served SET active = 1 WHERE alias = ? AND deployment_id = ?",
                (alias, deployment_id),
            )
            self._db.execute("COMMIT")
