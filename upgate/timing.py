"""Where a step's time goes: named phases measured on the monotonic clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """Seconds per named phase; a phase entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under `name` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + spent

    def rounded(self, digits: int = 2) -> dict[str, float]:
        """The phases in the order first entered, rounded for a record."""
        return {name: round(value, digits) for name, value in self.seconds.items()}
