"""Slack's side of upgate's state: which Slack user is which person, and requests seen.

Both tables live in the state database (they change: a mapping is replaced, old request
signatures are pruned). Every mapping change is also recorded in the ledger by the command
that makes it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from upgate.errors import ApprovalError
from upgate.store import Store, now_iso

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS slack_people (slack_id TEXT PRIMARY KEY, person TEXT NOT NULL,"
    " set_by TEXT NOT NULL, set_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS slack_seen (signature TEXT PRIMARY KEY, ts INTEGER NOT NULL,"
    " seen_at REAL NOT NULL)",
)
_SLACK_ID = re.compile(r"[UW][A-Z0-9]{2,20}")
WINDOW_S = 300
"""Slack's signature window: older requests fail verification, so seen ones can be pruned."""


class SlackState:
    """The Slack user map and the replay table, in the state database."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        for stmt in _SCHEMA:
            store.execute(stmt)

    def map_user(self, slack_id: str, person: str, *, by: str) -> None:
        """Map a Slack user id to a registered person (an admin's act)."""
        if not _SLACK_ID.fullmatch(slack_id):
            raise ApprovalError(
                f"{slack_id!r} is not a Slack user id (it looks like U024BE7LH); copy it from "
                "the person's Slack profile (More > Copy member ID)"
            )
        if self.store.token_hash(person) is None:
            raise ApprovalError(
                f"{person!r} is not a registered person; add them first with "
                f"`upgate person add {person}`"
            )
        self.store.execute(
            "INSERT INTO slack_people (slack_id, person, set_by, set_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(slack_id) DO UPDATE SET person = excluded.person, "
            "set_by = excluded.set_by, set_at = excluded.set_at",
            (slack_id, person, by, now_iso()),
        )

    def person_for(self, slack_id: str) -> str | None:
        """The person a Slack user id maps to, if an admin mapped it."""
        rows = self.store.execute("SELECT person FROM slack_people WHERE slack_id = ?",
                                  (slack_id,))
        return str(rows[0][0]) if rows else None

    def mappings(self) -> list[tuple[str, str, str]]:
        """(slack id, person, set by) for every mapping."""
        rows = self.store.execute(
            "SELECT slack_id, person, set_by FROM slack_people ORDER BY slack_id")
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def first_sight(self, signature: str, ts: int) -> bool:
        """Record a verified request; False when the same signature was seen before."""
        now = self.clock()
        self.store.execute("DELETE FROM slack_seen WHERE seen_at < ?", (now - 2 * WINDOW_S,))
        rows = self.store.execute(
            "INSERT OR IGNORE INTO slack_seen (signature, ts, seen_at) VALUES (?, ?, ?) "
            "RETURNING signature", (signature, ts, now))
        return bool(rows)
