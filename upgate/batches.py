"""Batches in the state database: their status, the stop flag, and telling people.

`upgate stop` sets a batch's stop flag here (and kills its sandboxes in flight); the batch
loop reads the flag between graph steps. A paused or stopped batch is "held" until a person
resumes it; held batches are listed in the inbox. The ledger records every transition; this
table only holds what a running process must look up quickly.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any, Literal

from upgate.store import Store, now_iso

log = logging.getLogger(__name__)

Status = Literal["running", "paused", "stopped", "done"]
HELD: tuple[Status, ...] = ("paused", "stopped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    status TEXT NOT NULL,
    stop_by TEXT,
    stop_reason TEXT,
    pause TEXT,
    updated_at TEXT NOT NULL
)
"""
_COLUMNS = ("batch_id", "requester", "pid", "host", "status", "stop_by", "stop_reason",
            "pause", "updated_at")


class Board:
    """The batches table of a state database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.execute(_SCHEMA)

    def _rows(self, where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        rows = self.store.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM batches {where} ORDER BY updated_at",  # noqa: S608
            params)
        out = []
        for r in rows:
            row = dict(zip(_COLUMNS, r, strict=True))
            row["pause"] = json.loads(row["pause"]) if row["pause"] else None
            out.append(row)
        return out

    def get(self, batch_id: str) -> dict[str, Any] | None:
        """One batch's row."""
        rows = self._rows("WHERE batch_id = ?", (batch_id,))
        return rows[0] if rows else None

    def begin(self, batch_id: str, requester: str) -> None:
        """Mark a batch running in this process (a new one, or one a person resumed)."""
        self.store.execute(
            "INSERT INTO batches (batch_id, requester, pid, host, status, updated_at) "
            "VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT(batch_id) DO UPDATE SET "
            "pid = excluded.pid, host = excluded.host, status = 'running', stop_by = NULL, "
            "stop_reason = NULL, pause = NULL, updated_at = excluded.updated_at",
            (batch_id, requester, os.getpid(), socket.gethostname(), now_iso()))

    def set_status(self, batch_id: str, status: Status,
                   pause: dict[str, Any] | None = None) -> None:
        """Record where a batch stands now (with the pause that holds it, if any)."""
        self.store.execute(
            "UPDATE batches SET status = ?, pause = ?, updated_at = ? WHERE batch_id = ?",
            (status, json.dumps(pause) if pause else None, now_iso(), batch_id))

    def request_stop(self, person: str, reason: str,
                     batch_id: str | None = None) -> list[dict[str, Any]]:
        """Set the stop flag of one running batch (or all); returns the batches flagged."""
        running = [b for b in self.running() if batch_id in (None, b["batch_id"])]
        for b in running:
            self.store.execute(
                "UPDATE batches SET stop_by = ?, stop_reason = ?, updated_at = ? "
                "WHERE batch_id = ?", (person, reason, now_iso(), b["batch_id"]))
        return running

    def stop_requested(self, batch_id: str) -> tuple[str, str] | None:
        """(who, why) when someone pressed stop on this batch."""
        row = self.get(batch_id)
        if row is None or not row["stop_by"]:
            return None
        return str(row["stop_by"]), str(row["stop_reason"] or "")

    def running(self) -> list[dict[str, Any]]:
        """Batches that say they are running."""
        return self._rows("WHERE status = 'running'")

    def held(self) -> list[dict[str, Any]]:
        """Paused or stopped batches, waiting for a person to resume them."""
        return self._rows("WHERE status IN ('paused', 'stopped')")


def process_alive(pid: int, host: str) -> bool:
    """Whether a batch's process still runs (one on another host is taken to)."""
    from upgate.sandboxes.docker import _pid_alive  # the sandboxes' orphan check, reused

    return host != socket.gethostname() or _pid_alive(str(pid))


def kill_sandboxes(pid: int, host: str | None = None) -> int:
    """Remove the Docker sandboxes a process owns (labels say which); returns how many.

    What runs in them dies at once; the command that waited on it returns a failed result.
    Without a Docker engine there is nothing to kill (the other backends die with the batch's
    own commands, which the stop flag ends between steps).
    """
    try:
        from upgate.sandboxes.docker import LABEL, _remove_volume, docker_client

        client = docker_client()
    except Exception as exc:  # no engine, no SDK: nothing of ours runs there
        log.info("no Docker sandboxes to stop: %s", exc)
        return 0
    host = host or socket.gethostname()
    removed = 0
    for container in client.containers.list(
            all=True, filters={"label": [f"{LABEL}=1", f"upgate.owner_pid={pid}"]}):
        if container.labels.get("upgate.owner_host") != host:
            continue
        try:
            container.remove(force=True)
            removed += 1
        except Exception as exc:
            if getattr(exc, "status_code", None) != 404:
                log.warning("could not remove sandbox %s: %s", container.name, exc)
    # Their workspace volumes go too (the sandbox's own stop also tries, once freed).
    for volume in client.volumes.list(
            filters={"label": [f"{LABEL}=1", f"upgate.owner_pid={pid}"]}):
        if (volume.attrs.get("Labels") or {}).get("upgate.owner_host") == host:
            _remove_volume(volume)
    return removed
