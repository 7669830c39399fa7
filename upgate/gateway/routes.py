"""The gateway's route table and request log: which versions an alias serves, by weight,
and how each version answered.

One SQLite file (`gateway.db` in the state folder), shared by the gateway process (reads
routes, writes samples) and by whoever changes traffic (a rollout, a rollback). A route
change replaces an alias's whole backend list in one transaction and bumps a generation
number, so the gateway never sees half a change: each request reads the routes of one
generation. Weights are integers that need not sum to 100; a weight of 0 keeps a version
routable by pin (header `X-Upgate-Version`) but sends it no unpinned traffic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from upgate.errors import UpgateError
from upgate.sqlite_db import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS routes (
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    base_url TEXT NOT NULL,
    model TEXT NOT NULL,
    weight INTEGER NOT NULL,
    PRIMARY KEY (alias, version)
);
CREATE TABLE IF NOT EXISTS route_changes (
    generation INTEGER PRIMARY KEY AUTOINCREMENT,
    alias TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    pinned INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS samples_by_version ON samples (alias, version, at);
"""


class RouteError(UpgateError):
    """A route change that cannot be made as asked."""


class Backend(BaseModel):
    """One version behind an alias: where it is served, under which model name, how much
    unpinned traffic it gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    base_url: str = Field(min_length=1, description="OpenAI root of the server, ending in /v1")
    model: str = Field(min_length=1, description="the `model` field the server answers to")
    weight: int = Field(ge=0)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


class WindowStats(BaseModel):
    """How one version answered in a time window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (the value at rank ceil(q*n)); None for no values."""
    if not sorted_values:
        return None
    rank = max(1, -(-int(q * 1000) * len(sorted_values) // 1000))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _is_error(status: int) -> bool:
    """Whether a sample's status counts against the version that answered (see `window`)."""
    return status == 0 or status == 404 or status >= 500


class RouteTable:
    """The routes and samples of one gateway (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA, timeout=30, synchronous="NORMAL")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # routes -------------------------------------------------------------------------------

    def set_routes(self, alias: str, backends: Sequence[Backend], *, reason: str) -> int:
        """Replace `alias`'s backends in one transaction; return the new generation.

        At least one backend must carry weight, and versions must be distinct, so an alias
        that is routed at all always has somewhere to send traffic.
        """
        versions = [b.version for b in backends]
        if len(set(versions)) != len(versions):
            raise RouteError(f"{alias}: a version appears twice in {versions}; give each once")
        if not backends or not any(b.weight for b in backends):
            raise RouteError(f"{alias}: no backend carries weight; give at least one a "
                             "weight above 0 (use remove_alias to stop routing it)")
        return self._replace(alias, backends, reason)

    def remove_alias(self, alias: str, *, reason: str) -> int:
        """Stop routing `alias`; return the new generation."""
        return self._replace(alias, (), reason)

    def _replace(self, alias: str, backends: Sequence[Backend], reason: str) -> int:
        """Replace `alias`'s rows and record the change, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM routes WHERE alias = ?", (alias,))
                self._db.executemany(
                    "INSERT INTO routes VALUES (?, ?, ?, ?, ?)",
                    [(alias, b.version, b.base_url, b.model, b.weight) for b in backends])
                cur = self._db.execute(
                    "INSERT INTO route_changes (alias, at, reason) VALUES (?, ?, ?)",
                    (alias, time.time(), reason))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cur.lastrowid or 0)

    def routes(self, alias: str) -> list[Backend]:
        """`alias`'s backends, heaviest first ([] when the alias is not routed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, base_url, model, weight FROM routes WHERE alias = ? "
                "ORDER BY weight DESC, version", (alias,)).fetchall()
        return [Backend(version=v, base_url=u, model=m, weight=w) for v, u, m, w in rows]

    def aliases(self) -> list[str]:
        """Every routed alias."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT alias FROM routes ORDER BY alias").fetchall()
        return [r[0] for r in rows]

    def generation(self) -> int:
        """The number of the newest route change (0 before any)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(generation) FROM route_changes").fetchone()
        return int(row[0] or 0)

    def changes(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Every route change, oldest first."""
        sql = "SELECT generation, alias, at, reason FROM route_changes"
        params: tuple[Any, ...] = ()
        if alias is not None:
            sql, params = sql + " WHERE alias = ?", (alias,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY generation", params).fetchall()
        return [{"generation": g, "alias": a, "at": t, "reason": r} for g, a, t, r in rows]

    # samples ------------------------------------------------------------------------------

    def record(self, alias: str, version: str, *, status: int, latency_ms: float,
               pinned: bool = False, error: str | None = None, at: float | None = None) -> None:
        """Log one request the gateway answered (status 0: no answer from the backend)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO samples (at, alias, version, status, latency_ms, pinned, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time() if at is None else at, alias, version, status, latency_ms,
                 int(pinned), error))

    def samples(self, alias: str, *, since: float = 0.0, until: float | None = None,
                version: str | None = None) -> list[dict[str, Any]]:
        """The logged requests of `alias` in [since, until), oldest first."""
        sql = ("SELECT at, version, status, latency_ms, pinned, error FROM samples "
               "WHERE alias = ? AND at >= ? AND at < ?")
        params: list[Any] = [alias, since, float("inf") if until is None else until]
        if version is not None:
            sql += " AND version = ?"
            params.append(version)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY at", params).fetchall()
        return [{"at": a, "version": v, "status": s, "latency_ms": lat, "pinned": bool(p),
                 "error": e} for a, v, s, lat, p, e in rows]

    def window(self, alias: str, version: str, *, since: float,
               until: float | None = None) -> WindowStats:
        """Error rate and latency p50/p95 of one version in [since, until).

        An error is a request the backend did not answer (status 0), answered with 5xx, or
        answered 404: the gateway sent it to a version the route table names, so "no such
        model" means the version is not served, not that the client erred. Other 4xx are
        the client's mistake, not the version's.
        """
        rows = self.samples(alias, since=since, until=until, version=version)
        errors = sum(1 for r in rows if _is_error(r["status"]))
        latencies = sorted(r["latency_ms"] for r in rows if not _is_error(r["status"]))
        return WindowStats(
            version=version, requests=len(rows), errors=errors,
            error_rate=errors / len(rows) if rows else 0.0,
            p50_ms=_quantile(latencies, 0.5), p95_ms=_quantile(latencies, 0.95))
