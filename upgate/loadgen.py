"""Steady clients: a few threads sending short chat completions in a loop, recording each.

What a switch of served versions is judged by, in the real-tier tests and the rollout
benchmark: every request's start and end, status, and the version that answered (the
gateway's `X-Upgate-Version` header), so failures and latency can be counted in any window
(before, during, after a switch) and the version on either side of it checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

VERSION_HEADER = "X-Upgate-Version"


@dataclass(frozen=True)
class Sample:
    """One request: when it started and ended (time.time()), how it ended, who answered."""

    start: float
    end: float
    status: int
    """HTTP status; 0 when no answer came (connection refused, reset, timeout)."""
    version: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the request got a 200."""
        return self.status == 200

    @property
    def latency_ms(self) -> float:
        """How long it took."""
        return (self.end - self.start) * 1000.0


def quantile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


class SteadyClients:
    """`threads` clients calling `base_url`'s chat completions for `model` until stopped."""

    def __init__(self, base_url: str, model: str, *, threads: int = 4, max_tokens: int = 8,
                 timeout_s: float = 120.0, pause_s: float = 0.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.threads = threads
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        """Think time between one client's requests (0: back to back)."""
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _loop(self, n: int) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Count to three ({n}.{i})."}]}
                start = time.time()
                try:
                    resp = client.post(self.url, json=body)
                    sample = Sample(start, time.time(), resp.status_code,
                                    resp.headers.get(VERSION_HEADER),
                                    None if resp.status_code == 200 else resp.text[:200])
                except httpx.HTTPError as exc:
                    sample = Sample(start, time.time(), 0, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.samples.append(sample)
                self._stop.wait(self.pause_s)

    def start(self) -> SteadyClients:
        """Start the client threads."""
        self._stop.clear()
        self._workers = [threading.Thread(target=self._loop, args=(n,), daemon=True)
                         for n in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop after each client's request in flight ends; every sample, by start time."""
        self._stop.set()
        for w in self._workers:
            w.join(timeout=self.timeout_s + 5)
        return self.taken()

    def taken(self, since: float = 0.0, until: float = float("inf")) -> list[Sample]:
        """The samples started in [since, until), by start time."""
        with self._lock:
            return sorted((s for s in self.samples if since <= s.start < until),
                          key=lambda s: s.start)

    def wait_for(self, count: int, *, since: float = 0.0, timeout_s: float = 120.0) -> None:
        """Block until `count` requests started at or after `since` have ended."""
        deadline = time.monotonic() + timeout_s
        while len(self.taken(since)) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> SteadyClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
