"""The batch loop under the policy's thresholds: it pauses mid-cycle or between cycles, tells
someone, stops when a person presses stop, and continues only when a person resumes it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from upgate.agents.testing import ScriptedChatModel
from upgate.app import build_deps
from upgate.autonomy import COST_EVENT, COST_NODE
from upgate.batches import Board
from upgate.config import load_settings
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.batch import BatchHeldError, press_stop, resume_batch
from upgate.graphs.runner import Runner

from ..conftest import OracleClient, adopt, suite_answers
from .test_cycle import REVIEW, draft, make_runner


def add_policy(workdir: Path, text: str) -> None:
    """Add to the policy file, and have the admin adopt it (cycles run only under that)."""
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text() + "\n" + text + "\n")
    adopt(workdir)


OPS_CHANNEL = """
[[notify.channels]]
type = "webhook"
name = "ops"
url = "http://127.0.0.1:9/hook"
secret_env = "UPGATE_TEST_OPS_SECRET"
"""


def with_ops_channel(workdir: Path) -> None:
    """A notification channel that wants every event (delivery is not under test here)."""
    config = workdir / "upgate.toml"
    config.write_text(config.read_text() + OPS_CHANNEL)


def notifications(workdir: Path) -> list[dict[str, Any]]:
    """The batch pause and stop notifications queued in the outbox, oldest first."""
    from upgate.notify.outbox import Outbox

    box = Outbox.of_state(workdir / "state")
    try:
        return [r.payload for r in box.rows() if r.type == "batch_paused"]
    finally:
        box.close()


def batch_events(runner: Runner) -> list[str]:
    return [e.event for e in runner.deps.ledger.entries() if e.node == "batch"]


def test_a_high_risk_proposal_holds_its_cycle_until_a_person_resumes(workdir: Path) -> None:
    with_ops_channel(workdir)
    runner, _ = make_runner(workdir, {"proposal": draft(risk="high"), "review": REVIEW})
    report = runner.batch("alice", max_cycles=3)
    assert report.pause is not None and report.pause.threshold == "pause_at_risk"
    (cycle,) = report.cycles
    assert report.outcomes == ["held"]
    # Nothing was built: the cycle waits at its last checkpoint, right after the proposal.
    assert runner.graph.get_state(runner._config(cycle)).next == ("policy_check",)
    assert not [e for e in runner.deps.ledger.entries(cycle) if e.node == "implement"]
    assert cycle in runner.unfinished()
    # Someone is told, with the numbers and what to do.
    (note,) = notifications(workdir)
    assert note["action"] == "pause" and note["threshold"] == "pause_at_risk"
    assert note["cycle_id"] == cycle and "upgate batch resume" in note["next_step"]
    assert [b["batch_id"] for b in Board(runner.deps.store).held()] == [report.batch_id]
    # Only a person's resume continues it, with a reason.
    with pytest.raises(BatchHeldError, match="reason"):
        resume_batch(runner, "bob", " ", max_cycles=1)
    after = resume_batch(runner, "bob", "read the proposal; fine", max_cycles=1)
    # The held cycle is built now, and reaches the approval it needs.
    assert after.cycles[0] == cycle and after.outcomes[0] == "awaiting_approval"
    assert after.pause is not None and after.pause.threshold == "max_pending"
    resumed = [e for e in runner.deps.ledger.entries(report.batch_id) if e.event == "resumed"]
    assert resumed[0].payload["by"] == "bob"
    assert resumed[0].payload["reason"] == "read the proposal; fine"
    assert batch_events(runner) == ["started", "paused", "resumed", "paused"]
    assert runner.deps.ledger.verify().ok


def test_stop_between_steps_leaves_a_consistent_checkpoint(workdir: Path) -> None:
    with_ops_channel(workdir)
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    pressed: list[Any] = []

    def press_during_the_cycle(node: str, data: dict[str, Any]) -> None:
        if node == "policy_check" and not pressed:
            pressed.extend(press_stop(runner, "carol", "the target is being migrated"))

    report = runner.batch("alice", max_cycles=5, progress=press_during_the_cycle)
    assert [b["batch_id"] for b in pressed] == [report.batch_id]
    assert report.pause is not None and report.pause.action == "stop"
    assert report.stopped_because.startswith(
        "stopped: stopped by carol: the target is being migrated")
    (cycle,) = report.cycles
    # The graph was left after policy_check: implement never ran, the state is intact.
    snap = runner.graph.get_state(runner._config(cycle))
    assert snap.next == ("implement",)
    assert snap.values["policy"]["allowed"] is True
    stop = [e for e in runner.deps.ledger.entries(report.batch_id) if e.node == "stop"]
    assert stop[0].payload["by"] == "carol"
    assert Board(runner.deps.store).get(report.batch_id)["status"] == "stopped"  # type: ignore[index]
    assert notifications(workdir)[-1]["action"] == "stop"
    # A stopped batch is not bypassed by starting another.
    with pytest.raises(BatchHeldError, match="is stopped"):
        runner.batch("alice", max_cycles=1)
    # A person resumes it; the stopped cycle finishes from its checkpoint.
    after = resume_batch(runner, "bob", "migration done", max_cycles=0)
    assert after.outcomes == ["awaiting_approval"]
    assert runner.deps.ledger.verify().ok


def test_a_stop_pressed_before_the_next_cycle_starts_none(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": "not json"})

    def press(state: Any) -> None:
        press_stop(runner, "carol", "enough")

    report = runner.batch("alice", max_cycles=5, pause_after_failures=5, on_cycle=press)
    assert report.outcomes == ["failed"]
    assert report.pause is not None and report.pause.threshold == "stop"


class MeteredModel(ScriptedChatModel):
    """A scripted model whose replies carry usage metadata, as real chat responses do."""

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        result = super()._generate(messages, stop, run_manager, **kwargs)
        text = str(result.generations[0].message.content)
        message = AIMessage(content=text, usage_metadata={
            "input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            response_metadata={"model_name": "scripted"})
        return ChatResult(generations=[ChatGeneration(message=message)])


def metered_runner(workdir: Path, replies: dict[str, Sequence[str] | str]) -> Runner:
    queues = {k: [v] if isinstance(v, str) else list(v) for k, v in replies.items()}

    def reply(messages: Sequence[BaseMessage], name: str) -> str:
        queue = queues[name]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    models = {a: MeteredModel(reply=reply, calls=[]) for a in ("proposer", "coder", "critic")}
    client = OracleClient(suite_answers())
    deps = build_deps(load_settings(workdir / "upgate.toml"), models=models,
                      harness=ChatChoiceHarness(client_factory=lambda url, t: client))
    return Runner(deps)


def test_a_token_budget_pauses_the_batch_and_each_call_is_recorded(workdir: Path) -> None:
    add_policy(workdir, "[autonomy.per_batch]\ntokens = 40")
    runner = metered_runner(workdir, {
        "proposal": [draft("prompt_variant"), draft("few_shot")], "review": REVIEW,
        "probes": json.dumps({"probes": []})})
    report = runner.batch("alice", max_cycles=5, pause_after_failures=5)
    assert report.pause is not None and report.pause.threshold == "per_batch.tokens"
    usage = [e for e in runner.deps.ledger.entries() if e.node == "usage"]
    assert usage and {e.cycle_id for e in usage} <= set(report.cycles)
    # One record per typed call: 15 tokens a reply, its retries (if any) included.
    totals = [e.payload["total_tokens"] for e in usage]
    assert all(t > 0 and t % 15 == 0 for t in totals)
    assert report.pause.observed == sum(totals) >= 40
    assert sum(c["tokens"] for c in report.curve) == sum(totals)


def test_a_sandbox_seconds_budget_counts_sandbox_commands(workdir: Path) -> None:
    add_policy(workdir, "[autonomy.per_day]\nsandbox_seconds = 0.000001")
    runner, _ = make_runner(workdir, {"proposal": draft("prompt_variant"), "review": REVIEW})
    report = runner.batch("alice", max_cycles=5)
    assert report.outcomes == ["rejected"]
    assert report.curve[0]["sandbox_s"] > 0 and report.curve[0]["sandbox_time"] == "wall"
    assert report.pause is not None and report.pause.threshold == "per_day.sandbox_seconds"


def test_a_sandbox_cpu_seconds_budget_counts_the_cpu_the_commands_used(workdir: Path) -> None:
    add_policy(workdir, "[autonomy.per_day]\nsandbox_cpu_seconds = 0.000001")
    runner, _ = make_runner(workdir, {"proposal": draft("prompt_variant"), "review": REVIEW})
    report = runner.batch("alice", max_cycles=5)
    assert report.outcomes == ["rejected"]
    # The fake sandbox's commands (git, the target's tests) used CPU: their rusage counted.
    assert report.curve[0]["sandbox_cpu_s"] > 0
    assert report.pause is not None and report.pause.threshold == "per_day.sandbox_cpu_seconds"
    assert report.pause.observed == report.curve[0]["sandbox_cpu_s"]


def test_accumulated_regression_pauses_and_a_resume_resets_it(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": "not json"})
    for i in range(3):  # earlier deployed changes, each within the 0.05 tolerance
        runner.deps.ledger.append(f"c-old{i}", COST_NODE, COST_EVENT, {
            "outcome": "deployed", "slice_deltas": {"billing": -0.03}})
    report = runner.batch("alice", max_cycles=2)
    assert report.cycles == []
    assert report.pause is not None and report.pause.threshold == "max_accumulated_regression"
    assert report.pause.observed == pytest.approx(-0.09)
    after = resume_batch(runner, "bob", "billing drop reviewed, acceptable", max_cycles=1)
    assert after.outcomes == ["failed"]  # it ran a cycle: the sum starts again
    resets = [e for e in runner.deps.ledger.entries() if e.event == "reset"]
    assert resets[0].payload["by"] == "bob"


def test_a_ledger_that_fails_verification_stops_everything(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": "not json"})
    runner.deps.ledger.append("admin", "note", "x", {"amount": 1})
    with sqlite3.connect(runner.deps.ledger.path) as db:  # someone edits an entry by hand
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("UPDATE ledger SET payload = '{\"amount\": 2}' WHERE seq = 1")
    report = runner.batch("alice", max_cycles=3)
    assert report.cycles == []
    assert report.pause is not None and report.pause.action == "stop"
    assert report.pause.threshold == "ledger_verify"


def test_each_cycle_records_its_cost_and_the_served_score(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {
        "proposal": [draft("prompt_variant"), draft("few_shot")], "review": REVIEW})
    report = runner.batch("alice", max_cycles=5)
    first, second = report.curve
    assert first["outcome"] == "rejected" and second["outcome"] == "awaiting_approval"
    # Nothing was deployed: the served version (the baseline) keeps its hidden-split score.
    assert first["served_hidden_score"] == second["served_hidden_score"] is not None
    assert first["hidden"]["baseline"] == first["served_hidden_score"]
    assert all(c["wall_s"] > 0 and c["batch_id"] == report.batch_id for c in report.curve)
    stopped = runner.deps.ledger.entries(report.batch_id)[-1]
    assert [c["cycle_id"] for c in stopped.payload["curve"]] == report.cycles


AUTO_CONFIG = "[kinds.config]\nallowed = true\napproval = \"auto\"\n"


def auto_config(workdir: Path) -> None:
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text().replace("[kinds.config]\nallowed = true\n", "")
                      + AUTO_CONFIG)
    adopt(workdir)


def test_auto_approved_kinds_deploy_without_a_person_within_the_thresholds(
        workdir: Path) -> None:
    auto_config(workdir)
    runner, _ = make_runner(workdir, {"proposal": draft("few_shot"), "review": REVIEW})
    report = runner.batch("alice", max_cycles=2)
    assert report.outcomes == ["deployed", "deployed"]
    assert report.stopped_because == "done: 2 cycle(s) run"
    gates = [e for e in runner.deps.ledger.entries() if e.node == "gate"]
    assert [e.event for e in gates] == ["auto_approved", "auto_approved"]


def test_an_auto_approval_that_would_add_up_to_a_regression_waits_for_a_person(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from upgate.graphs import batch

    auto_config(workdir)
    real = batch.verdict_numbers

    def worse(verdict: Any) -> tuple[dict[str, float], dict[str, float]]:
        # The critic measured a drop of 0.03 on every slice: within the per-change tolerance.
        deltas, hidden = real(verdict)
        return {k: v - 0.03 for k, v in deltas.items()} or {"billing": -0.03}, hidden

    monkeypatch.setattr(batch, "verdict_numbers", worse)
    runner, _ = make_runner(workdir, {"proposal": draft("few_shot"), "review": REVIEW})
    report = runner.batch("alice", max_cycles=3)
    # The first drop passes (0.03 < 0.05); the second would make it 0.06: held before the gate.
    assert report.outcomes[0] == "deployed" and report.outcomes[1] == "held"
    assert report.pause is not None and report.pause.threshold == "max_accumulated_regression"
    held = report.cycles[1]
    assert runner.graph.get_state(runner._config(held)).next == ("gate",)
    assert not [e for e in runner.deps.ledger.entries(held) if e.node == "deploy"]
    # A person looks, resumes (which resets the sum), and the held cycle goes through.
    after = resume_batch(runner, "bob", "the drop is noise on a tiny slice", max_cycles=0)
    assert after.cycles == [held] and after.outcomes == ["deployed"]


def test_stop_on_a_batch_whose_process_died_holds_it_for_a_person(workdir: Path) -> None:
    import subprocess

    runner, _ = make_runner(workdir, {"proposal": "not json"})
    board = Board(runner.deps.store)
    board.begin("b-crashed", "alice")
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    runner.deps.store.execute("UPDATE batches SET pid = ? WHERE batch_id = 'b-crashed'",
                              (int(gone.stdout),))
    (flagged,) = press_stop(runner, "carol", "it hung")
    assert flagged["batch_id"] == "b-crashed"
    assert board.get("b-crashed")["status"] == "stopped"  # type: ignore[index]
    with pytest.raises(BatchHeldError, match="b-crashed is stopped"):
        runner.batch("alice", max_cycles=1)


def test_a_new_batch_supersedes_a_paused_one_on_the_record(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": "not json"})
    first = runner.batch("alice", max_cycles=5, pause_after_failures=1)
    assert first.pause is not None
    second = runner.batch("carol", max_cycles=1, pause_after_failures=5)
    assert second.stopped_because == "done: 1 cycle(s) run"
    (entry,) = [e for e in runner.deps.ledger.entries(first.batch_id) if e.event == "superseded"]
    assert entry.payload == {"by": "carol", "new_batch": second.batch_id}
    assert Board(runner.deps.store).held() == []
