"""Crash mid-rollout: a process running a rollout is killed with SIGKILL (no cleanup, no
flush) between steps, during a bake, between recording a step and applying it, and in the
middle of an abort; a new process runs it again. Traffic then sits in one state, the one
the ledger recorded last, and the rollout ends once, promoted or aborted."""

from __future__ import annotations

import multiprocessing
import os
import signal
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
