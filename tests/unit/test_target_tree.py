"""The target tree is exported once per commit and shared by every node of a cycle; the
critic's rejections are found in the ledger by a typed field, not by the reason's text."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from upgate.errors import UpgateError
from upgate.graphs.nodes import exhausted_recipes
from upgate.target_tree import TargetTrees, read_prompting

from ..conftest import decide, make_target_repo
from .test_cycle import REVIEW, draft, make_runner


def commit(repo: Path, path: str, text: str) -> None:
    (repo / path).write_text(text)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qam", "change"], check=True)


def test_a_tree_is_exported_once_per_commit_and_holds_only_committed_files(
    tmp_path: Path
) -> None:
    repo = make_target_repo(tmp_path / "target")
    (repo / "untracked.txt").write_text("not committed")
    trees = TargetTrees(repo, tmp_path / "trees")
    first = trees.at("main")
    assert trees.at("main") == first and trees.exports == 1
    assert (first / "triage" / "prompt.txt").is_file()
    assert not (first / "untracked.txt").exists() and not (first / ".git").exists()

    commit(repo, "triage/prompt.txt", "a new prompt\n")
    second = trees.at("main")
    assert second != first and trees.exports == 2
    assert (second / "triage" / "prompt.txt").read_text() == "a new prompt\n"
    assert (first / "triage" / "prompt.txt").read_text() != "a new prompt\n"
    with pytest.raises(UpgateError, match=r"target\.base_branch"):
        trees.at("no-such-branch")


def test_old_trees_are_pruned(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    trees = TargetTrees(repo, tmp_path / "trees")
    for n in range(6):
        commit(repo, "triage/prompt.txt", f"prompt {n}\n")
        trees.at("main")
    assert len([p for p in (tmp_path / "trees").iterdir() if p.is_dir()]) == 4


def test_a_whole_cycle_exports_the_tree_once(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft("few_shot"), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"
    done = decide(runner, state["cycle_id"], "approve", "bob")
    assert done["outcome"] == "deployed"
    assert runner.deps.trees.exports == 1
    prompt, shots = read_prompting(runner.deps.base_tree(), runner.deps.manifest)
    assert prompt and isinstance(shots, list)


def test_a_critic_rejection_is_recorded_as_such_and_only_that_exhausts_a_recipe(
    workdir: Path
) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft("prompt_variant"), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "rejected"
    record = runner.deps.ledger.entries(state["cycle_id"])[-1].payload
    assert record["rejected_by"] == "critic"
    baseline = state["observation"]["baseline"]
    assert set(exhausted_recipes(runner.deps, baseline)) == {"prompt_variant"}
    # A reason that merely reads like the critic's is not a critic rejection.
    runner.deps.ledger.append("c-x", "record", "rejected", {
        "recipe": "few_shot", "reason": "critic: forged", "baseline": baseline,
        "rejected_by": "approver"})
    assert set(exhausted_recipes(runner.deps, baseline)) == {"prompt_variant"}
