"""Crash mid-rollout: a process running a rollout is killed with SIGKILL (no cleanup, no
flush) between steps, during a bake, between recording a step and applying it, and in the
middle of an abort; a new process runs it again. Traffic then sits in one state, the one
the ledger recorded last, and the rollout ends once, promoted or aborted."""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .rollout_setup import CYCLE, NEW, STABLE, Rig, limits

KILLS: dict[str, tuple[str, int | None]] = {
    "after_step_recorded": ("step", 2),
    "between_steps": ("step_checked", 1),
    "during_bake": ("bake", 2),
    "mid_abort": ("aborted", None),
}


def _rig(tmp: Path, where: str) -> Rig:
    return Rig(tmp, limits(), status={NEW: 500} if where == "mid_abort" else {})


def _child(tmp: str, where: str) -> None:
    event, step = KILLS[where]
    rig = _rig(Path(tmp), where)
    bakes = [0]

    def on_event(e: str, data: dict[str, Any]) -> None:
        if e == event and data.get("step") == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_sleep(seconds: float) -> None:
        bakes[0] += 1
        if event == "bake" and bakes[0] == step:
            rig.gateway.traffic("triage", 5)  # some live traffic, then the kill
            os.kill(os.getpid(), signal.SIGKILL)

    rig.on_event, rig.on_sleep = on_event, on_sleep
    rig.run()


def _recorded_state(rig: Rig) -> dict[str, int]:
    """The traffic state the ledger says is live: the last step's, or stable after abort."""
    entries = rig.ledger.entries(CYCLE)
    if any(e.event == "aborted" for e in entries):
        return {STABLE: 100}
    step = [e for e in entries if e.event == "step"][-1]
    return {b["version"]: b["weight"] for b in step.payload["routes"]}


@pytest.mark.parametrize("where", list(KILLS))
def test_sigkill_mid_rollout_then_run_again_leaves_one_recorded_state(
        tmp_path: Path, where: str) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child, args=(str(tmp_path), where))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL

    rig = _rig(tmp_path, where)
    recorded = _recorded_state(rig)
    if where == "after_step_recorded":
        # Killed between the record and the change: the ledger is ahead of traffic, never
        # behind it.
        assert rig.weights() == {NEW: 50, STABLE: 50} and recorded == {NEW: 100, STABLE: 0}
    elif where == "mid_abort":
        assert rig.weights() == {NEW: 50, STABLE: 50} and recorded == {STABLE: 100}
    else:
        assert rig.weights() == recorded

    result = rig.run()
    assert result.resumed
    events = [(e.node, e.event, e.payload.get("step")) for e in rig.ledger.entries(CYCLE)]
    assert len(events) == len(set(events)), events  # nothing recorded twice
    assert rig.ledger.verify().ok
    if where == "mid_abort":
        assert result.status == "aborted" and rig.weights() == {STABLE: 100}
        assert ("rollback", "rolled_back", None) in events
        return
    assert result.status == "promoted" and rig.promoted == [NEW]
    assert rig.weights() == {NEW: 100, STABLE: 0}
    resumed = next(e.payload for e in rig.ledger.entries(CYCLE) if e.event == "resumed")
    # The resume re-applied the last recorded step before anything else.
    assert resumed["from_step"] == (1 if where == "between_steps" else 2)
    assert events[-1] == ("rollout", "promoted", None)


# The same crash through the real gateway (its ASGI app on loopback) in front of a real
# loopback upstream, with steady clients calling the alias the whole time: the rollout's
# process dies during a bake; the gateway keeps serving the recorded step; the resume
# carries on. No client request fails at any point.

@dataclass
class _KillingProbe:
    """Scores like the real probe; dies on the given call (the suite cases run within the
    bake, so the third call is step 2's bake, after its routes changed)."""

    inner: Any
    kill_on: int
    calls: int = 0

    def score(self, version: str) -> Any:
        self.calls += 1
        if self.calls == self.kill_on:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.score(version)


def _gateway_child(tmp: str, gateway_url: str, upstream_url: str) -> None:
    controller = _real_gateway_controller(Path(tmp), gateway_url, upstream_url)
    controller.parts.probe = _KillingProbe(controller.parts.probe, kill_on=3)
    controller.run()


def _real_gateway_controller(tmp: Path, gateway_url: str, upstream_url: str) -> Any:
    from dataclasses import replace

    from upgate.gateway.routes import RouteTable
    from upgate.ledger import open_ledger
    from upgate.rollout.controller import RolloutController, RolloutParts
    from upgate.rollout.probe import openai_pinned_client

    from .rollout_setup import plan

    # Latency in milliseconds from a loopback fake is noise; the latency checks have their
    # own tests.
    rollout = limits(bake_s=1.0, suite_cases=2, min_requests=5, max_p50_ratio=100.0,
                     max_p95_ratio=100.0)
    ledger = open_ledger(tmp / "state")
    rig_plan = plan(rollout)
    rig_plan = rig_plan.model_copy(update={
        "new": rig_plan.new.model_copy(update={"base_url": upstream_url}),
        "stable": rig_plan.stable.model_copy(update={"base_url": upstream_url})})
    probe = Rig(tmp / "probe", rollout).probe
    probe = replace(probe, gateway_url=f"{gateway_url}/v1", client_factory=openai_pinned_client)

    def record(node: str, event: str, data: dict[str, Any], key: str) -> None:
        ledger.append(CYCLE, node, event, data, key=key)

    parts = RolloutParts(routes=RouteTable(tmp / "gateway.db"), ledger=ledger, record=record,
                         probe=probe, promote=lambda: None,
                         verify_stable=lambda: {"models_ok": True, "smoke_ok": True})
    return RolloutController(rig_plan, parts)


def test_sigkill_during_a_bake_behind_the_real_gateway_drops_no_client_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import httpx

    from upgate import guard
    from upgate.gateway.app import GatewaySettings, create_app
    from upgate.gateway.routes import RouteTable
    from upgate.gateway.testing import FakeUpstream, serve_in_thread

    # The pinned suite cases go to a loopback fake upstream, not to a model.
    monkeypatch.setattr(guard, "ALLOW_MODEL_REQUESTS", True)
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()
    with FakeUpstream("vllm", models=(STABLE, NEW, "triage")) as upstream, serve_in_thread(
            create_app(RouteTable(tmp_path / "gateway.db"),
                       GatewaySettings(upstream=upstream.url))) as url:

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        r = http.post(f"{url}/v1/chat/completions", json={
                            "model": "triage", "messages": [{"role": "user", "content": "hi"}]})
                        statuses.append((r.status_code, r.headers.get("x-upgate-version", "")))
                    except httpx.HTTPError as exc:
                        statuses.append((0, repr(exc)))

        clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
        for t in clients:
            t.start()
        child = multiprocessing.get_context("spawn").Process(
            target=_gateway_child, args=(str(tmp_path), url, upstream.url))
        child.start()
        child.join(120)
        assert child.exitcode == -signal.SIGKILL
        controller = _real_gateway_controller(tmp_path, url, upstream.url)
        table = controller.parts.routes
        last = [e for e in controller.parts.ledger.entries(CYCLE) if e.event == "step"][-1]
        assert last.payload["step"] == 2
        assert {b.version: b.weight for b in table.routes("triage")} == {
            b["version"]: b["weight"] for b in last.payload["routes"]}
        killed_at = len(statuses)
        try:
            result = controller.run()
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=30)
    assert result.status == "promoted" and result.resumed
    assert killed_at > 0 and len(statuses) > killed_at
    assert [s for s in statuses if s[0] != 200] == []
    assert {v for _, v in statuses} >= {STABLE, NEW}
    assert statuses[-1][1] == NEW
