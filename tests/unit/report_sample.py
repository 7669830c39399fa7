"""A real ledger (and gateway request log) holding known rollout records at chosen times,
for the report's tests: every metric's value is worked out by hand below."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import upgate.ledger as ledger_module
from upgate.gateway.routes import RouteTable
from upgate.ledger import Ledger

DAY1 = datetime(2026, 11, 1, tzinfo=UTC)
DAY2 = datetime(2026, 11, 2, tzinfo=UTC)
EVIL = '<script>alert("x")</script> "quoted"\nnew line'
MANUAL = "rollback-triage-20261102T135900Z"


class Clock:
    """What the ledger reads as now: set before each append."""

    now = DAY1


@contextmanager
def controlled_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Clock]]:
    """The ledger's `datetime.now` returns `Clock.now` within the block."""

    class Fixed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Fixed:  # type: ignore[override]
            return Clock.now  # type: ignore[return-value]

    with monkeypatch.context() as m:
        m.setattr(ledger_module, "datetime", Fixed)
        yield Clock


def at(day: datetime, hh: int, mm: int, ss: float = 0.0) -> datetime:
    """A time on a day."""
    return day + timedelta(hours=hh, minutes=mm, seconds=ss)


def put(ledger: Ledger, when: datetime, cycle: str, node: str, event: str,
        payload: dict[str, Any] | None = None) -> None:
    """Append one record at `when` through the ledger's API."""
    Clock.now = when
    ledger.append(cycle, node, event, {"lineage": {"cycle_id": cycle}, **(payload or {})},
                  key=f"{cycle}/{node}/{event}/{when.isoformat()}")


def window(requests: int, errors: int, p50: float | None, p95: float | None,
           version: str) -> dict[str, Any]:
    """A WindowStats record as the rollout writes it."""
    return {"version": version, "requests": requests, "errors": errors,
            "error_rate": errors / requests if requests else 0.0, "p50_ms": p50, "p95_ms": p95}


def vllm(cycle: str, version: str, previous: str | None) -> dict[str, Any]:
    """A served-model deployment record."""
    return {"deployment": {
        "target": "vllm", "deployment_id": f"{cycle}-0123456789ab", "alias": "triage",
        "version_name": version, "adapter_sha256": "ab" * 32,
        "previous": {"version_name": previous, "deployment_id": "d0", "sha256": "cd" * 32,
                     "path": "/x"} if previous else None}}


def write_sample(ledger: Ledger) -> None:
    """Five cycles over two days (see the expected values in test_report.py).

    Day 1: c1 approved, staged, rolled out in two checked steps and promoted; c2 rejected;
    c3 auto-approved, a git deployment with no rollout, a monitor regression and a rollback
    with no previous version. Day 2: c4 approved, its rollout aborted at step 1 and rolled
    back by the rollout; c5 approved and deployed with no rollout (monitor healthy), then a
    manual rollback that failed and one that worked.
    """
    d1, d2 = DAY1, DAY2
    put(ledger, at(d1, 10, 0), "c1", "propose", "proposal", {"proposal": {"kind": "model"}})
    put(ledger, at(d1, 10, 5), "c1", "gate", "approval_requested")
    put(ledger, at(d1, 10, 30), "c1", "approve", "approve", {"approver": "bob"})
    put(ledger, at(d1, 10, 40), "c1", "deploy", "staged", vllm("c1", "triage-aaa", None))
    put(ledger, at(d1, 10, 41), "c1", "rollout", "started", {
        "deployment_id": "c1-0123456789ab", "alias": "triage", "stable_version": "triage@initial",
        "new_version": "triage-aaa", "steps": [25, 100], "bake_s": 30})
    put(ledger, at(d1, 10, 41, 1), "c1", "rollout", "step", {"step": 1, "percent": 25})
    put(ledger, at(d1, 10, 42), "c1", "rollout", "step_checked", {
        "step": 1, "percent": 25, "new": window(10, 0, 100, 200, "triage-aaa"),
        "stable": window(90, 1, 80, 150, "triage@initial"), "breaches": [], "healthy": True})
    put(ledger, at(d1, 10, 44), "c1", "rollout", "step_checked", {
        "step": 2, "percent": 100, "new": window(30, 1, 110, 220, "triage-aaa"),
        "stable": window(8, 0, 100, 200, "triage@initial"), "breaches": [], "healthy": True})
    put(ledger, at(d1, 10, 45), "c1", "rollout", "promoted", {
        "alias": "triage", "version_name": "triage-aaa", "duration_s": 240.0})

    put(ledger, at(d1, 11, 0), "c2", "propose", "proposal", {"proposal": {"kind": "prompt"}})
    put(ledger, at(d1, 11, 20), "c2", "approve", "reject", {"reason": EVIL})

    put(ledger, at(d1, 12, 0), "c3", "propose", "proposal", {"proposal": {"kind": "prompt"}})
    put(ledger, at(d1, 12, 5), "c3", "gate", "auto_approved")
    put(ledger, at(d1, 12, 10), "c3", "deploy", "deployed", {"deployment": {
        "target": "git", "deployment_id": "c3-feedfacecafe", "branch": "upgate/c3",
        "commit": "abcdef1234567890abcdef", "previous": None}})
    put(ledger, at(d1, 12, 11), "c3", "monitor", "regression", {
        "checked": True, "cases": 8, "errors": 2, "regressed": True})
    put(ledger, at(d1, 12, 11, 30), "c3", "rollback", "not_restored",
        {"status": "nothing_to_restore"})

    put(ledger, at(d2, 9, 0), "c4", "propose", "proposal", {"proposal": {"kind": "model"}})
    put(ledger, at(d2, 9, 10), "c4", "approve", "approve", {"approver": "carol"})
    put(ledger, at(d2, 9, 20), "c4", "deploy", "staged", vllm("c4", "triage-bbb", "triage-aaa"))
    put(ledger, at(d2, 9, 21), "c4", "rollout", "started", {
        "deployment_id": "c4-0123456789ab", "alias": "triage", "stable_version": "triage-aaa",
        "new_version": "triage-bbb", "steps": [25, 100], "bake_s": 30})
    put(ledger, at(d2, 9, 22), "c4", "rollout", "step_checked", {
        "step": 1, "percent": 25, "new": window(10, 5, 300, 900, "triage-bbb"),
        "stable": window(30, 0, 100, 200, "triage-aaa"),
        "breaches": ["error rate 0.5 > 0.02"], "healthy": False})
    put(ledger, at(d2, 9, 23), "c4", "rollout", "aborted", {
        "alias": "triage", "version_name": "triage-bbb", "breaches": ["error rate"],
        "restored_version": "triage-aaa", "duration_s": 120.0})
    put(ledger, at(d2, 9, 23, 30), "c4", "rollback", "rolled_back", {
        "alias": "triage", "from_version": "triage-bbb", "to_version": "triage-aaa",
        "trigger": "rollout", "by": "upgate", "reason": "error rate",
        "started_at": at(d2, 9, 23).isoformat(), "duration_s": 12.5,
        "verified": {"models_ok": True, "smoke_ok": True, "detail": ""}})

    put(ledger, at(d2, 9, 30), "c5", "propose", "proposal", {"proposal": {"kind": "model"}})
    put(ledger, at(d2, 9, 40), "c5", "approve", "approve", {"approver": "bob"})
    put(ledger, at(d2, 10, 0), "c5", "deploy", "deployed", vllm("c5", "triage-ccc", "triage-aaa"))
    put(ledger, at(d2, 10, 1), "c5", "monitor", "healthy", {
        "checked": True, "cases": 8, "errors": 0, "regressed": False})
    put(ledger, at(d2, 14, 0), MANUAL, "rollback", "failed", {
        "alias": "triage", "from_version": "triage-ccc", "to_version": "triage-bbb",
        "trigger": "manual", "by": "carol", "reason": EVIL,
        "started_at": at(d2, 13, 59).isoformat()})
    put(ledger, at(d2, 14, 5), MANUAL, "rollback", "rolled_back", {
        "alias": "triage", "from_version": "triage-ccc", "to_version": "triage-aaa",
        "trigger": "manual", "by": "carol", "reason": "bad answers",
        "started_at": at(d2, 14, 4, 30).isoformat(),
        "verified": {"models_ok": True, "smoke_ok": True, "detail": ""}})


def sample_ledger(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The sample written into `state_dir`'s ledger (open; the caller closes it)."""
    ledger = Ledger(state_dir / "ledger.sqlite")
    with controlled_clock(monkeypatch):
        write_sample(ledger)
    return ledger


def write_gateway(path: Path) -> None:
    """c4's bake window [09:21, 09:23) on day 2 in the gateway's request log: triage-bbb
    answered 100, 200 and 300 ms and once 500; triage-aaa 50, 60, 70 ms. A later 503 of
    triage-bbb lies outside the window."""
    table = RouteTable(path)
    try:
        base = at(DAY2, 9, 21).timestamp()
        for i, (version, status, ms) in enumerate([
                ("triage-bbb", 200, 100.0), ("triage-bbb", 200, 300.0),
                ("triage-bbb", 200, 200.0), ("triage-bbb", 500, 5.0),
                ("triage-aaa", 200, 60.0), ("triage-aaa", 200, 50.0),
                ("triage-aaa", 200, 70.0)]):
            table.record("triage", version, status=status, latency_ms=ms, at=base + i)
        table.record("triage", "triage-bbb", status=503, latency_ms=9.0,
                     at=at(DAY2, 9, 30).timestamp())
    finally:
        table.close()
