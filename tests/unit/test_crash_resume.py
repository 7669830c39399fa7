"""Invariant 4: a crash anywhere loses nothing and repeats no side effect.

The cycle runs in a child process that is killed with SIGKILL (no cleanup, no flush) in the
middle of a node; a new process resumes it from the SQLite checkpoint.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from upgate.agents.testing import ScriptedChatModel
from upgate.app import build_deps
from upgate.config import load_settings
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.runner import Runner

from ..conftest import OracleClient, decide, suite_answers
from .test_cycle import REVIEW, draft


def _models(kill_on: str | None) -> dict[str, ScriptedChatModel]:
    def reply(messages: Sequence[BaseMessage], name: str) -> str:
        if name == kill_on:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"proposal": draft(), "review": REVIEW, "probes": "{}"}[name]

    return {a: ScriptedChatModel(reply=reply, calls=[]) for a in ("proposer", "coder", "critic")}


def _runner(workdir: Path, kill_on: str | None) -> Runner:
    settings = load_settings(workdir / "upgate.toml")
    client = OracleClient(suite_answers())
    deps = build_deps(settings, models=dict(_models(kill_on)),
                      harness=ChatChoiceHarness(client_factory=lambda url, t: client))
    return Runner(deps)


def _child(workdir: str, kill_on: str) -> None:
    from upgate import guard

    guard.ALLOW_MODEL_REQUESTS = False
    _runner(Path(workdir), kill_on).start("alice", cycle_id="c-killed")


@pytest.mark.parametrize("kill_on", ["review", "proposal"])
def test_sigkill_mid_node_then_resume_in_a_new_process(workdir: Path, kill_on: str) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child, args=(str(workdir), kill_on))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL

    runner = _runner(workdir, kill_on=None)
    assert runner.unfinished() == ["c-killed"]
    state = runner.resume("c-killed")
    assert state["outcome"] == "awaiting_approval"
    entries = runner.deps.ledger.entries("c-killed")
    events = [(e.node, e.event) for e in entries]
    # Each node's decision is recorded once, even the ones that ran again after the kill.
    assert len(events) == len(set(events)), events
    assert ("critique", "accept") in events
    assert runner.deps.ledger.verify().ok
    done = decide(runner, "c-killed", "approve", "bob")
    assert done["outcome"] == "deployed"
    assert json.loads(json.dumps(done["deployment"]))["branch"] == "upgate/c-killed"
