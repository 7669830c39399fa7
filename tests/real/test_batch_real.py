"""Batch autonomy on the real Docker sandbox and real SQLite (models and the eval endpoint
scripted, so the pause mechanics are what is under test): a batch of three cycles on the
example target pauses on a threshold, and the stop button kills a cycle in flight."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.batches import Board
from upgate.config import load_settings
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.batch import BatchReport, resume_batch
from upgate.graphs.runner import Runner
from upgate.meter import MeteredSandbox
from upgate.notify.outbox import Outbox
from upgate.sandboxes.base import WORKSPACE, ExecResult, Mount, OnOutput, Sandbox

from ..conftest import (
    OracleClient,
    adopt,
    init_people,
    make_target_repo,
    suite_answers,
    write_config,
)
from ..unit.test_batch_autonomy import with_ops_channel
from ..unit.test_cycle import draft

pytestmark = pytest.mark.real

REVIEW = json.dumps({"summary": "ok", "concerns": [], "recommendation": "accept"})


def docker_runner(tmp_path: Path, proposals: list[str], policy_extra: str = "") -> Runner:
    make_target_repo(tmp_path / "target")
    write_config(tmp_path, sandbox="docker")
    with_ops_channel(tmp_path)
    init_people(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy.read_text() + "\n" + policy_extra)
    adopt(tmp_path)
    client = OracleClient(suite_answers())
    models = {a: scripted({"proposal": proposals, "review": REVIEW,
                           "probes": json.dumps({"probes": []})})
              for a in ("proposer", "coder", "critic")}
    deps = build_deps(load_settings(tmp_path / "upgate.toml"), models=models,
                      harness=ChatChoiceHarness(client_factory=lambda url, t: client))
    return Runner(deps)


def our_containers() -> list[Any]:
    import docker

    return docker.from_env().containers.list(
        all=True, filters={"label": ["upgate.sandbox=1", f"upgate.owner_pid={os.getpid()}"]})


def test_a_batch_of_three_cycles_pauses_on_approvals_waiting(
        tmp_path: Path, docker_engine: None) -> None:
    runner = docker_runner(tmp_path, [draft("prompt_variant"), draft("few_shot")],
                           "[autonomy]\nmax_pending = 2\n")
    report = runner.batch("alice", max_cycles=5)
    # The critic rejects the prompt variant; the few-shot change is accepted twice and waits.
    assert report.outcomes == ["rejected", "awaiting_approval", "awaiting_approval"]
    assert report.pause is not None and report.pause.threshold == "max_pending"
    assert (report.pause.observed, report.pause.limit) == (2, 2)
    # Every cycle ran in real containers and its sandbox seconds were counted.
    assert all(c["sandbox_s"] > 0 for c in report.curve)
    assert all(c["served_hidden_score"] is not None for c in report.curve)
    box = Outbox.of_state(tmp_path / "state")
    notes = [r.payload for r in box.rows() if r.type == "batch_paused"]
    box.close()
    assert notes[-1]["threshold"] == "max_pending"
    assert [b["status"] for b in Board(runner.deps.store).held()] == ["paused"]
    assert runner.deps.ledger.verify().ok
    assert our_containers() == []


class SlowFirstCommand(MeteredSandbox):
    """The real Docker sandbox, whose first command is a long one (a training run, say)."""

    started = threading.Event()
    result: ExecResult | None = None

    def exec(self, command: list[str] | str, *, timeout_s: float = 60.0, cwd: str = WORKSPACE,
             env: dict[str, str] | None = None,
             on_output: OnOutput | None = None) -> ExecResult:
        if not SlowFirstCommand.started.is_set():
            SlowFirstCommand.started.set()
            SlowFirstCommand.result = self.inner.exec(["sleep", "600"], timeout_s=900)
        return self.inner.exec(command, timeout_s=timeout_s, cwd=cwd, env=env,
                               on_output=on_output)


def test_stop_kills_the_sandbox_in_flight_and_a_person_resumes(
        tmp_path: Path, docker_engine: None) -> None:
    runner = docker_runner(tmp_path, [draft("few_shot")])
    real = runner.deps.sandbox

    def slow(mounts: list[Mount]) -> Sandbox:
        return SlowFirstCommand(real(mounts))

    runner.deps.sandbox = slow
    out: list[BatchReport] = []
    worker = threading.Thread(target=lambda: out.append(runner.batch("alice", max_cycles=3)))
    worker.start()
    assert SlowFirstCommand.started.wait(600)
    # The cycle is in flight, inside a container of ours.
    assert our_containers()
    # The stop button, pressed from another process: the command line.
    pressed = subprocess.run(
        [sys.executable, "-m", "upgate.cli", "stop", "--as", "carol", "--reason",
         "wrong target branch", "--config", str(tmp_path / "upgate.toml")],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "UPGATE_KEY_DIR": str(tmp_path / "keys"), "COLUMNS": "200"})
    assert pressed.returncode == 0, pressed.stdout + pressed.stderr
    assert re.search(r"stop pressed on batch b\S+ by carol: [1-9]\d* sandbox", pressed.stdout)
    worker.join(600)
    assert not worker.is_alive()
    (report,) = out
    # The long command did not run to its end: its container was removed under it.
    assert SlowFirstCommand.result is None or not SlowFirstCommand.result.ok
    assert report.pause is not None and report.pause.action == "stop"
    assert "stopped by carol: wrong target branch" in report.stopped_because
    assert len(report.cycles) == 1
    assert our_containers() == []
    # Every checkpoint is consistent: the stopped cycle can be read and resumed.
    (cycle,) = report.cycles
    assert runner.state(cycle)["cycle_id"] == cycle
    stop = [e for e in runner.deps.ledger.entries(report.batch_id) if e.node == "stop"]
    assert stop[0].payload["by"] == "carol"
    assert runner.deps.ledger.verify().ok
    after = resume_batch(runner, "bob", "branch fixed", max_cycles=0)
    # The stopped cycle is the one the resume continues, to an end (no longer held).
    assert after.cycles == [cycle] and after.outcomes[0] != "held"
    assert [e.payload["by"] for e in runner.deps.ledger.entries(report.batch_id)
            if e.event == "resumed"] == ["bob"]
    assert runner.deps.ledger.verify().ok
