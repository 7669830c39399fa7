"""The route table: a change is all or nothing, and the window statistics are honest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from upgate.gateway.routes import Backend, RouteError, RouteTable

URL = "http://127.0.0.1:9/v1"


def _b(version: str, weight: int) -> Backend:
    return Backend(version=version, base_url=URL, model=f"triage@{version}", weight=weight)


def test_a_route_change_replaces_the_whole_list(tmp_path: Path) -> None:
    table = RouteTable(tmp_path / "gateway.db")
    g1 = table.set_routes("triage", [_b("v1", 100)], reason="first")
    g2 = table.set_routes("triage", [_b("v1", 95), _b("v2", 5)], reason="canary 5%")
    assert g2 > g1 == 1
    assert [(b.version, b.weight) for b in table.routes("triage")] == [("v1", 95), ("v2", 5)]
    table.set_routes("triage", [_b("v2", 100)], reason="promote")
    assert [b.version for b in table.routes("triage")] == ["v2"]
    assert [c["reason"] for c in table.changes("triage")] == ["first", "canary 5%", "promote"]


@pytest.mark.parametrize("backends", [[], [_b("v1", 0)], [_b("v1", 50), _b("v1", 50)]])
def test_a_change_that_leaves_nowhere_to_go_is_refused_and_changes_nothing(
        tmp_path: Path, backends: list[Backend]) -> None:
    table = RouteTable(tmp_path / "gateway.db")
    table.set_routes("triage", [_b("v1", 100)], reason="first")
    with pytest.raises(RouteError):
        table.set_routes("triage", backends, reason="bad")
    assert [(b.version, b.weight) for b in table.routes("triage")] == [("v1", 100)]
    assert table.generation() == 1


def test_a_reader_never_sees_half_a_change(tmp_path: Path) -> None:
    """Concurrent readers on another connection see either the old or the new list."""
    path = tmp_path / "gateway.db"
    writer = RouteTable(path)
    reader = RouteTable(path)
    old = [_b("v1", 100)]
    new = [_b("v1", 50), _b("v2", 25), _b("v3", 25)]
    writer.set_routes("triage", old, reason="start")
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(tuple(sorted(b.version for b in reader.routes("triage"))))

    thread = threading.Thread(target=read)
    thread.start()
    for i in range(200):
        writer.set_routes("triage", new if i % 2 == 0 else old, reason=str(i))
    stop.set()
    thread.join()
    assert seen <= {("v1",), ("v1", "v2", "v3")}


def test_backend_urls_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        Backend(version="v1", base_url="file:///etc", model="m", weight=1)


def test_window_counts_errors_and_only_answered_latencies(tmp_path: Path) -> None:
    table = RouteTable(tmp_path / "gateway.db")
    for i, ms in enumerate([10.0, 20.0, 30.0, 40.0]):
        table.record("triage", "v2", status=200, latency_ms=ms, at=100.0 + i)
    table.record("triage", "v2", status=502, latency_ms=5000.0, at=105.0)
    table.record("triage", "v2", status=0, latency_ms=9000.0, at=106.0, error="refused")
    table.record("triage", "v2", status=400, latency_ms=1.0, at=107.0)
    table.record("triage", "v2", status=404, latency_ms=2.0, at=108.0)  # model not served
    table.record("triage", "v1", status=200, latency_ms=1.0, at=101.0)
    table.record("triage", "v2", status=200, latency_ms=99.0, at=50.0)  # before the window
    stats = table.window("triage", "v2", since=100.0)
    assert (stats.requests, stats.errors) == (8, 3)
    assert stats.error_rate == pytest.approx(3 / 8)
    assert stats.p50_ms == 20.0  # nearest rank over the answered: 1 (the 400), 10, 20, 30, 40
    assert stats.p95_ms == 40.0
    empty = table.window("triage", "v3", since=0.0)
    assert (empty.requests, empty.error_rate, empty.p50_ms) == (0, 0.0, None)


@pytest.mark.parametrize("steps", [[], [5, 25], [25, 5, 100], [0, 100], [50, 50, 100], [5, 110]])
def test_rollout_steps_must_rise_to_100(steps: list[int]) -> None:
    from pydantic import ValidationError

    from upgate.policy import Rollout

    with pytest.raises(ValidationError, match="steps must rise"):
        Rollout(steps=tuple(steps))
    assert Rollout(steps=(100,)).steps == (100,)
