"""Where a step's time goes (named phases on the monotonic clock), and independent calls
run at once."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


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


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent calls in threads and return their results in order.

    Each runs in a copy of the caller's context, so what rides in context variables (the
    cycle's progress reporter, the token meter) follows it; the first exception raised is
    raised here, after every call has finished.
    """
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="upgate-at-once") as pool:
        futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
        return [future.result() for future in futures]
