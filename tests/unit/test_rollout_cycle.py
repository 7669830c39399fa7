"""A served-model cycle under `[rollout] enabled = true`: the approval stays mandatory, the
deploy only stages the new version beside the stable one, the rollout node moves traffic
through the gateway step by step, and then promotes (the monitor follows) or aborts (the
cycle ends rolled back, the alias never moved). A cycle killed with SIGKILL mid-rollout
resumes through the runner to one recorded end."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from upgate.rollout.testing import FakeGateway

from ..conftest import adopt, decide, suite_answers
from .test_model_deploy import _runner as model_runner

ROLLOUT = """
[rollout]
enabled = true
steps = [50, 100]
bake_s = 1.0
min_requests = 10
suite_cases = 4
"""
NEW = "triage@goodgoodgood"
STABLE = "triage@initial"


def _runner(workdir: Path, monkeypatch: pytest.MonkeyPatch, *, new_answers_badly: bool = False,
            kill_in_bake: int = 0, live_good: bool = True) -> tuple[Any, Any, FakeGateway]:
    policy = workdir / "policy.toml"
    if "[rollout]" not in policy.read_text():
        policy.write_text(policy.read_text() + ROLLOUT)
        adopt(workdir)
    runner, fake = model_runner(workdir, monkeypatch, live_good=live_good)
    answers = suite_answers()

    def answer(version: str, messages: list[dict[str, str]]) -> str:
        right = answers.get(messages[-1]["content"], "billing")
        if version == NEW and new_answers_badly:
            return "bug" if right == "billing" else "billing"
        return right

    gateway = FakeGateway(runner.deps.routes, answer)
    bakes = [0]

    def bake(seconds: float) -> None:
        bakes[0] += 1
        gateway.traffic("triage", 30)  # steady clients during the bake
        if bakes[0] == kill_in_bake:
            os.kill(os.getpid(), signal.SIGKILL)

    runner.deps.pinned_client = gateway.pinned_client
    runner.deps.rollout_sleep = bake
    return runner, fake, gateway


def _approved(workdir: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any
              ) -> tuple[Any, Any, FakeGateway, str, Any]:
    """A cycle run to its approval and approved: runner, fake vLLM, gateway, the alias's
    folder before, the final state."""
    runner, fake, gateway = _runner(workdir, monkeypatch, **kw)
    initial = fake.served["triage"]
    state = runner.start("alice")
    return runner, fake, gateway, initial, decide(runner, state["cycle_id"], "approve", "bob")


def _events(runner: Any, cycle_id: str) -> list[tuple[str, str]]:
    return [(e.node, e.event) for e in runner.deps.ledger.entries(cycle_id)]


def test_approval_stays_mandatory_and_nothing_moves_before_it(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, fake, gateway = _runner(workdir, monkeypatch)
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"
    assert runner.deps.routes.aliases() == [] and gateway.served == []
    # The critic judged the candidate under its own name; no version of the alias moved.
    assert not [c for c in fake.calls if c[1].startswith("triage")]


def test_a_good_version_rolls_out_then_is_promoted_and_monitored(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, fake, _, _, done = _approved(workdir, monkeypatch)
    assert done["outcome"] == "deployed", done.get("reason")
    assert done["rollout"]["status"] == "promoted"
    events = _events(runner, done["cycle_id"])
    order = [e for e in events if e[0] in ("deploy", "rollout", "monitor", "record")]
    assert order == [("deploy", "staged"), ("rollout", "started"), ("rollout", "step"),
                     ("rollout", "step_checked"), ("rollout", "step"),
                     ("rollout", "step_checked"), ("rollout", "promoted"),
                     ("monitor", "healthy"), ("record", "deployed")]
    assert fake.served["triage"].endswith("adapter-good")
    assert runner.deps.store.active_version("triage")["version_name"] == NEW
    weights = {b.version: b.weight for b in runner.deps.routes.routes("triage")}
    assert weights == {NEW: 100, STABLE: 0}
    # The promotion is what notifies "deployed" (the staging does not).
    promoted = next(e for e in runner.deps.ledger.entries(done["cycle_id"])
                    if e.event == "promoted")
    assert promoted.payload["version_name"] == NEW


def test_a_worse_version_aborts_and_the_alias_never_moves(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, fake, _, initial, done = _approved(workdir, monkeypatch, new_answers_badly=True)
    assert done["outcome"] == "rolled_back"
    assert "max_suite_drop" in done["reason"]
    assert fake.served["triage"] == initial  # direct clients never saw the new version
    assert fake.served[NEW].endswith("adapter-good")  # loaded, judged, not promoted
    assert {b.version: b.weight for b in runner.deps.routes.routes("triage")} == {STABLE: 100}
    events = _events(runner, done["cycle_id"])
    assert events[-3:] == [("rollout", "aborted"), ("rollback", "rolled_back"),
                           ("record", "rolled_back")]
    assert ("monitor", "healthy") not in events
    rolled = runner.deps.ledger.entries(done["cycle_id"])[-2].payload
    assert rolled["trigger"] == "rollout" and rolled["verified"]["models_ok"] is True
    assert rolled["verified"]["smoke_ok"] is True


def test_a_regression_after_promotion_rolls_back_the_alias_and_the_gateway_routes(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rollout's pinned cases look fine, but the promoted alias answers worse live.
    runner, fake, gateway, initial, done = _approved(workdir, monkeypatch, live_good=False)
    assert done["rollout"]["status"] == "promoted"
    assert done["outcome"] == "rolled_back" and done["monitor"]["regressed"]
    assert fake.served["triage"] == initial
    assert {b.version: b.weight for b in runner.deps.routes.routes("triage")} == {STABLE: 100}
    assert gateway.traffic("triage", 20) == {STABLE: 20}


def _child(workdir: str, monkeypatch_unused: None) -> None:
    from upgate import guard

    guard.ALLOW_MODEL_REQUESTS = False
    mp = pytest.MonkeyPatch()
    runner, _, _ = _runner(Path(workdir), mp, kill_in_bake=2)
    state = runner.start("alice", cycle_id="c-rollout-killed")
    decide(runner, state["cycle_id"], "approve", "bob")


def test_sigkill_during_a_bake_then_the_runner_resumes_to_promotion(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    child = multiprocessing.get_context("fork").Process(target=_child, args=(str(workdir), None))
    child.start()
    child.join(180)
    assert child.exitcode == -signal.SIGKILL

    runner, fake, _ = _runner(workdir, monkeypatch)
    last_step = [e for e in runner.deps.ledger.entries("c-rollout-killed") if e.event == "step"][-1]
    weights = {b.version: b.weight for b in runner.deps.routes.routes("triage")}
    assert weights == {b["version"]: b["weight"] for b in last_step.payload["routes"]}
    assert last_step.payload["step"] == 2
    assert runner.unfinished() == ["c-rollout-killed"]

    # A person looks, then resumes it from the command line.
    from typer.testing import CliRunner

    from upgate import cli

    monkeypatch.setattr(cli, "_runner", lambda settings, for_cycles=True: runner)
    cfg = str(workdir / "upgate.toml")
    shown = CliRunner().invoke(cli.app, ["rollout", "status", "c-rollout-killed", "-c", cfg],
                                env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "step 2: 100% to triage@goodgoodgood" in shown.output
    assert "in progress" in shown.output
    resumed = CliRunner().invoke(cli.app, ["rollout", "resume", "c-rollout-killed", "-c", cfg])
    assert resumed.exit_code == 0, resumed.output
    done = runner.state("c-rollout-killed")
    assert done["outcome"] == "deployed" and done["rollout"]["status"] == "promoted"
    again = CliRunner().invoke(cli.app, ["rollout", "resume", "c-rollout-killed", "-c", cfg])
    assert "already ended (promoted)" in again.output
    events = _events(runner, "c-rollout-killed")
    assert events.count(("rollout", "resumed")) == 1
    assert events.count(("rollout", "step")) == 2
    assert events.count(("rollout", "promoted")) == 1
    assert fake.served["triage"].endswith("adapter-good")
    assert runner.deps.ledger.verify().ok


@pytest.mark.parametrize("promoted", [True, False])
def test_reconcile_after_a_server_restart_follows_the_rollouts_ending(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, promoted: bool) -> None:
    from upgate.deploy.reconcile import reconcile

    runner, fake, _, initial, done = _approved(workdir, monkeypatch,
                                               new_answers_badly=not promoted)
    assert done["rollout"]["status"] == ("promoted" if promoted else "aborted")
    live = fake.served["triage"]
    fake.served = {"smollm2": "/base", "triage": initial}  # the server restarts
    result = reconcile(runner.deps.store, fake, "triage", runner.deps.ledger)
    assert result["active"] == (NEW if promoted else STABLE)
    assert fake.served["triage"] == live
