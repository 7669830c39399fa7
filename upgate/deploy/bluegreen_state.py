"""The blue/green servers upgate knows of: which version each serves, where, until when.

One SQLite file (`servers.db` in the state folder), written by the deployer (a green that
starts, a blue whose traffic moved away) and by the reaper (a blue whose rollback window
ended). A row outlives the process that wrote it, so a blue left warm after a switch is
stopped by whichever upgate process looks next, or by the reaper the switch left behind.

`managed` says whether upgate started the server: only those are ever stopped. A server
someone else started (the one `make vllm` runs, say) may be blue, and gets its traffic
back on rollback, but it is never stopped by upgate.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from upgate.sqlite_db import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    model TEXT NOT NULL,
    base_url TEXT NOT NULL,
    model_dir TEXT,
    sha256 TEXT,
    args TEXT NOT NULL DEFAULT '[]',
    port INTEGER,
    pid INTEGER,
    log TEXT,
    managed INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    switched_at REAL,
    stop_after REAL,
    cycle_id TEXT,
    PRIMARY KEY (alias, version)
);
"""

Status = Literal["running", "stopped"]


class ServerRow(BaseModel):
    """One version's server, as last recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str
    version: str
    model: str
    """The `model` field the server answers to."""
    base_url: str
    """OpenAI root (…/v1)."""
    model_dir: str | None = None
    sha256: str | None = None
    args: tuple[str, ...] = ()
    port: int | None = None
    pid: int | None = None
    log: str | None = None
    managed: bool
    status: Status
    started_at: float
    switched_at: float | None = None
    """When traffic last moved away from this version (the window's start)."""
    stop_after: float | None = None
    """When the reaper may stop it (None: not scheduled)."""
    cycle_id: str | None = None
    """The cycle whose switch scheduled the stop (its ledger records `blue_stopped`)."""


_COLUMNS = tuple(ServerRow.model_fields)
# Built from ServerRow's own field names, never from input; values are always parameters.
_INSERT = ("INSERT OR REPLACE INTO servers (" + ", ".join(_COLUMNS)  # noqa: S608
           + ") VALUES (" + ", ".join("?" for _ in _COLUMNS) + ")")
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM servers "  # noqa: S608


class ServerRegistry:
    """The `servers` table (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA, timeout=30)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def switching(self) -> Iterator[None]:
        """Hold the switch lock (across processes): a route change and the reaper's check
        that a server carries no traffic before stopping it never interleave."""
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def put(self, row: ServerRow) -> None:
        """Insert or replace the row of (alias, version)."""
        values = [json.dumps(list(row.args)) if c == "args" else getattr(row, c)
                  for c in _COLUMNS]
        with self._lock:
            self._db.execute(_INSERT, values)

    def update(self, alias: str, version: str, **fields: Any) -> None:
        """Change some fields of one row."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"servers has no column(s) {sorted(unknown)}")
        # Column names come from ServerRow's fields (checked above), values are parameters.
        sql = "UPDATE servers SET " + ", ".join(f"{k} = ?" for k in fields)  # noqa: S608
        with self._lock:
            self._db.execute(sql + " WHERE alias = ? AND version = ?",
                             (*fields.values(), alias, version))

    def _rows(self, where: str, params: tuple[Any, ...]) -> list[ServerRow]:
        with self._lock:
            rows = self._db.execute(_SELECT + where + " ORDER BY started_at",
                                    params).fetchall()
        out = []
        for r in rows:
            data = dict(zip(_COLUMNS, r, strict=True))
            data["args"] = tuple(json.loads(data["args"] or "[]"))
            data["managed"] = bool(data["managed"])
            out.append(ServerRow.model_validate(data))
        return out

    def get(self, alias: str, version: str) -> ServerRow | None:
        """The row of one version, if any."""
        rows = self._rows("WHERE alias = ? AND version = ?", (alias, version))
        return rows[0] if rows else None

    def all(self, alias: str | None = None) -> list[ServerRow]:
        """Every row (of one alias), oldest first."""
        if alias is None:
            return self._rows("", ())
        return self._rows("WHERE alias = ?", (alias,))

    def due(self, now: float | None = None) -> list[ServerRow]:
        """Running managed servers whose stop time has come."""
        return self._rows("WHERE status = 'running' AND managed = 1 AND stop_after IS NOT NULL"
                          " AND stop_after <= ?", (time.time() if now is None else now,))

    def next_stop(self) -> float | None:
        """The earliest scheduled stop of a running managed server."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(stop_after) FROM servers WHERE status = 'running' AND managed = 1"
                " AND stop_after IS NOT NULL").fetchone()
        return float(row[0]) if row and row[0] is not None else None
