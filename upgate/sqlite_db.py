"""Opening an upgate SQLite database the one way its stores do."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def open_db(
    path: Path, schema: str = "", *, timeout: float = 5.0,
    synchronous: Literal["NORMAL", "FULL"] | None = None,
) -> sqlite3.Connection:
    """A connection to `path` (its folder made): shared across threads (callers hold their
    own lock), autocommit (transactions are explicit BEGINs), WAL journal, the schema
    applied; `timeout` is how long a write waits for another process's lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
    db.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        db.execute(f"PRAGMA synchronous={synchronous}")
    if schema:
        db.executescript(schema)
    return db
