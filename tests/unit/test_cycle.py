"""The whole graph on scripted models, the fake sandbox and a scripted eval endpoint:
every path (approve, reject, revise, policy block, malformed output, crash and resume) and
the approval invariants."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langgraph.types import Command

from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import load_settings
from upgate.errors import ApprovalError
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs import nodes
from upgate.graphs.runner import Runner

from ..conftest import OracleClient, adopt, decide, suite_answers

REVIEW = json.dumps({"summary": "adds examples", "concerns": [], "recommendation": "accept"})


def draft(recipe: str = "few_shot", **over: Any) -> str:
    base = {"recipe": recipe, "rationale": "visible score is low", "expected_effect": "more",
            "risk": "low", "epochs": 2, "rank": 16, "learning_rate": "1e-3",
            "examples_per_label": 2, "prompt_variant": "definitions"}
    return json.dumps({**base, **over})


def make_runner(workdir: Path, replies: dict[str, Any], *, good_models: tuple[str, ...] = ()
                ) -> tuple[Runner, OracleClient]:
    settings = load_settings(workdir / "upgate.toml")
    client = OracleClient(suite_answers(), good_models=good_models)
    models = {a: scripted(replies) for a in ("proposer", "coder", "critic")}
    deps = build_deps(settings, models=models,
                      harness=ChatChoiceHarness(client_factory=lambda url, t: client))
    return Runner(deps), client


def branches(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "branch", "--format=%(refname:short)"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def test_few_shot_cycle_waits_for_approval_then_deploys_a_branch(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"
    assert state["verdict"]["decision"] == "accept"
    request = runner.pending(state["cycle_id"])
    assert request is not None and request["candidate_hash"] == state["candidate"]["content_hash"]
    assert branches(workdir / "target") == ["main"]

    done = decide(runner, state["cycle_id"], "approve", "bob")
    assert done["outcome"] == "deployed"
    branch = f"upgate/{state['cycle_id']}"
    assert branch in branches(workdir / "target")
    shown = subprocess.run(
        ["git", "-C", str(workdir / "target"), "show", f"{branch}:triage/config.json"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert len(json.loads(shown)["few_shot"]) == 8
    events = [(e.node, e.event) for e in runner.deps.ledger.entries(state["cycle_id"])]
    assert ("approve", "approve") in events and ("deploy", "deployed") in events
    assert events[-1] == ("record", "deployed")
    assert runner.deps.ledger.verify().ok
    # Every decision carries its lineage.
    crit = next(e for e in runner.deps.ledger.entries(state["cycle_id"]) if e.node == "critique")
    assert crit.payload["lineage"]["policy_version"].startswith("test@1+")
    assert crit.payload["critic"]["prompt_hash"]


def test_reject_records_and_deploys_nothing(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    done = decide(runner, state["cycle_id"], "reject", "carol", "not now")
    assert done["outcome"] == "rejected"
    assert branches(workdir / "target") == ["main"]
    assert runner.deps.ledger.entries(state["cycle_id"])[-1].event == "rejected"


@pytest.mark.parametrize(("person", "why"), [("alice", "requested"), ("dave", "not an approver")])
def test_requester_and_outsiders_cannot_approve(workdir: Path, person: str, why: str) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    with pytest.raises(ApprovalError, match=why):
        decide(runner, state["cycle_id"], "approve", person)
    assert runner.pending(state["cycle_id"]) is not None
    assert branches(workdir / "target") == ["main"]


def test_forged_or_replayed_decisions_are_refused(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    req = runner.pending(state["cycle_id"])
    assert req is not None
    forged = {"cycle_id": state["cycle_id"], "action": "approve", "approver": "bob",
              "candidate_hash": req["candidate_hash"], "evidence_hash": req["evidence_hash"],
              "policy_version": req["policy_version"], "issued_at": req["requested_at"],
              "signature": "0" * 64}
    cfg = {"configurable": {"thread_id": state["cycle_id"]}}
    for _ in runner.graph.stream(Command(resume=forged), cfg, context=runner.deps):
        pass
    assert runner.state(state["cycle_id"])["outcome"] == "awaiting_approval"
    assert "signature" in runner.state(state["cycle_id"])["approval_error"]
    assert branches(workdir / "target") == ["main"]


def test_a_changed_candidate_voids_the_approval(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    cfg = {"configurable": {"thread_id": state["cycle_id"]}}
    tampered = dict(state["candidate"])
    tampered["diff"] += "\n"
    runner.graph.update_state(cfg, {"candidate": tampered}, as_node="gate")
    runner.resume(state["cycle_id"])
    assert runner.pending(state["cycle_id"]) is not None
    with pytest.raises(ApprovalError, match="candidate changed"):
        decide(runner, state["cycle_id"], "approve", "bob")
    assert branches(workdir / "target") == ["main"]


def test_malformed_output_fails_the_cycle_cleanly(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": ["not json", '{"recipe": "nope"}']})
    state = runner.start("alice")
    assert state["outcome"] == "failed"
    assert "proposer" in state["reason"] and "2 attempts" in state["reason"]
    last = runner.deps.ledger.entries(state["cycle_id"])[-1]
    assert (last.node, last.event) == ("record", "failed")


def test_policy_blocks_a_kind_it_does_not_allow(workdir: Path) -> None:
    policy = workdir / "policy.toml"
    policy.write_text(policy.read_text().replace("[kinds.config]\nallowed = true",
                                                 "[kinds.config]\nallowed = false"))
    adopt(workdir)  # an edited file counts only once an admin adopted it
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "blocked"
    assert "does not allow config" in state["reason"]
    assert state.get("candidate") is None


def _allow_edit(workdir: Path) -> None:
    target = workdir / "target"
    manifest = target / "upgate-target.toml"
    manifest.write_text(manifest.read_text().replace(
        'allowed = ["lora_finetune", "few_shot", "prompt_variant"]',
        'allowed = ["lora_finetune", "few_shot", "prompt_variant", "edit"]'))
    subprocess.run(["git", "-C", str(target), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qam", "allow edit"], check=True)


def test_edit_touching_tests_is_rejected_before_anything_runs(workdir: Path) -> None:
    _allow_edit(workdir)
    calls = [json.dumps({"action": "write", "path": "tests/test_classify.py",
                         "content": "def test_ok():\n    assert True\n"}),
             json.dumps({"action": "done", "content": "made the tests pass"})]
    runner, client = make_runner(workdir, {"proposal": draft("edit"), "tool_call": calls,
                                           "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "rejected"
    assert "protected" in state["reason"]
    # Only observe's baseline run reached the eval endpoint; the critic ran nothing.
    assert all(len(r["messages"]) == 2 for r in client.requests)


def test_revise_loop_is_bounded(workdir: Path) -> None:
    _allow_edit(workdir)
    breaking = json.dumps({"action": "write", "path": "triage/classify.py",
                           "content": "raise SystemExit('broken')\n"})
    done = json.dumps({"action": "done", "content": "x"})
    runner, _ = make_runner(workdir, {"proposal": draft("edit"),
                                      "tool_call": [breaking, done, breaking, done],
                                      "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "rejected"
    assert state["revisions"] == 1
    events = [(e.node, e.event) for e in runner.deps.ledger.entries(state["cycle_id"])]
    assert events.count(("critique", "revise")) == 2
    assert ("revise", "requested") in events


def test_crash_in_deploy_resumes_without_repeating_the_side_effect(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    real_record = nodes._record
    crashed = {"done": False}

    def crash_after_branch(deps: Any, st: Any, node: str, event: str, data: Any,
                           **kw: Any) -> None:
        if node == "deploy" and event == "deployed" and not crashed["done"]:
            crashed["done"] = True
            raise KeyboardInterrupt("killed mid-deploy")
        real_record(deps, st, node, event, data, **kw)

    monkeypatch.setattr(nodes, "_record", crash_after_branch)
    with pytest.raises(KeyboardInterrupt):
        decide(runner, state["cycle_id"], "approve", "bob")
    branch = f"upgate/{state['cycle_id']}"
    assert branch in branches(workdir / "target")

    # A new process: fresh dependencies and graph over the same state folder.
    runner2, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    assert state["cycle_id"] in runner2.unfinished()
    done = runner2.resume(state["cycle_id"])
    assert done["outcome"] == "deployed"
    commits = subprocess.run(["git", "-C", str(workdir / "target"), "rev-list", "--count",
                              f"main..{branch}"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert commits == "1"
    events = [(e.node, e.event) for e in runner2.deps.ledger.entries(state["cycle_id"])]
    assert events.count(("deploy", "deployed")) == 1
    assert runner2.deps.ledger.verify().ok
