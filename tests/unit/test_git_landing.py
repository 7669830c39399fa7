"""Code changes that land: on real git repositories, a change fast-forwards or merges into
the deploy branch by policy, is refused (nothing half-done) when the branch moved under a
fast-forward, is taken back by a revert commit, and every step is idempotent by deployment
id. History is never rewritten: every commit the branch ever held stays reachable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from upgate.deploy.git import GitDeployer
from upgate.deploy.landing import REVERT_TRAILER
from upgate.errors import DeployError
from upgate.policy import LandingMode
from upgate.records import Candidate

from ..conftest import make_target_repo

PROMPT = "triage/prompt.txt"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def edit_candidate(repo: Path, path: str = PROMPT, line: str = "Be brief.\n") -> Candidate:
    """A candidate whose diff appends `line` to `path` (the working tree is left as it was)."""
    file = repo / path
    original = file.read_text()
    file.write_text(original + line)
    diff = git(repo, "diff") + "\n"
    file.write_text(original)
    return Candidate(proposal_id="p", kind="prompt", diff=diff, changed_paths=(path,))


def commit_on_main(repo: Path, path: str, text: str) -> str:
    """Someone else's commit on main (in its checkout)."""
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "-c", "user.name=o", "-c", "user.email=o@o", "commit", "-qm", f"edit {path}")
    return git(repo, "rev-parse", "main")


def history(repo: Path) -> set[str]:
    return set(git(repo, "rev-list", "main").split())


def all_reachable(repo: Path, commits: set[str]) -> bool:
    return commits <= history(repo)


def deployer(repo: Path, mode: LandingMode, baseline: str | None = None) -> GitDeployer:
    return GitDeployer(repo, base="main", landing=mode,
                       baseline_of=(lambda _cycle: baseline) if baseline else None)


def test_fast_forward_lands_once_and_a_revert_takes_it_back_once(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    before = git(repo, "rev-parse", "main")
    seen = history(repo)
    d = deployer(repo, "fast-forward", baseline=before)
    candidate = edit_candidate(repo)

    first = d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == first.commit  # fast-forward: the change itself
    assert first.previous == {"landing": "fast-forward", "deploy_branch": "main",
                              "head": before, "landed_commit": first.commit}
    assert git(repo, "rev-parse", f"{first.commit}^") == before
    assert "Be brief." in (repo / PROMPT).read_text()  # the checkout moved with the branch
    assert git(repo, "status", "--porcelain") == ""
    again = d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    assert (again.commit, again.previous) == (first.commit, first.previous)
    assert git(repo, "rev-list", "--count", "main") == "2"
    assert d.verify(first).healthy
    seen |= history(repo)

    undo = d.rollback(first)
    assert undo.status == "restored"
    revert = undo.detail["revert_commit"]
    assert git(repo, "rev-parse", "main") == revert
    assert f"{REVERT_TRAILER}: c1-abc" in git(repo, "log", "-1", "--format=%B", revert)
    assert "Be brief." not in git(repo, "show", f"main:{PROMPT}")
    assert all_reachable(repo, seen)  # the change is still in history, reverted on top
    assert not d.verify(first).healthy

    assert d.rollback(first).status == "already_restored"
    assert git(repo, "rev-parse", "main") == revert
    # Deploying the same deployment again after its revert does not land it twice.
    d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == revert


def test_fast_forward_is_refused_when_the_deploy_branch_moved(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged_on = git(repo, "rev-parse", "main")
    moved = commit_on_main(repo, "README.md", "someone else's change\n")
    d = deployer(repo, "fast-forward", baseline=judged_on)

    with pytest.raises(DeployError, match="moved since this change was built"):
        d.deploy(edit_candidate(repo), "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == moved  # nothing half-done
    assert git(repo, "status", "--porcelain") == ""
    # A resume meets the same refusal: the change is still built on what it was judged on.
    with pytest.raises(DeployError, match="moved since"):
        d.deploy(edit_candidate(repo), "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == moved
    assert git(repo, "rev-parse", "upgate/c1^") == judged_on


def test_merge_lands_on_a_moved_branch_and_reverts_with_mainline_one(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged_on = git(repo, "rev-parse", "main")
    other = commit_on_main(repo, "README.md", "someone else's change\n")
    seen = history(repo)
    d = deployer(repo, "merge", baseline=judged_on)
    candidate = edit_candidate(repo)

    first = d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    merge = str((first.previous or {})["landed_commit"])
    assert git(repo, "rev-parse", "main") == merge
    parents = git(repo, "rev-list", "--parents", "-n", "1", merge).split()[1:]
    assert parents == [other, first.commit]
    assert "Upgate-Deployment: c1-abc" in git(repo, "log", "-1", "--format=%B", merge)
    assert "Be brief." in git(repo, "show", f"main:{PROMPT}")
    assert git(repo, "show", "main:README.md") == "someone else's change"
    again = d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    assert (again.previous or {})["landed_commit"] == merge
    assert git(repo, "rev-parse", "main") == merge
    assert d.verify(first).healthy
    seen |= history(repo)

    undo = d.rollback(first)
    assert undo.status == "restored" and undo.detail["reverted"] == merge
    assert "Be brief." not in git(repo, "show", f"main:{PROMPT}")
    assert git(repo, "show", "main:README.md") == "someone else's change"  # only the change
    assert all_reachable(repo, seen)
    assert d.rollback(first).status == "already_restored"
    assert git(repo, "rev-list", "--count", f"{merge}..main") == "1"


def test_a_merge_that_conflicts_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged_on = git(repo, "rev-parse", "main")
    candidate = edit_candidate(repo)
    moved = commit_on_main(repo, PROMPT, "an entirely different prompt\n")
    d = deployer(repo, "merge", baseline=judged_on)
    with pytest.raises(DeployError, match="does not merge cleanly"):
        d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == moved
    assert git(repo, "status", "--porcelain") == ""
    assert len(git(repo, "worktree", "list").splitlines()) == 1  # scratch worktree removed


def test_a_checkout_of_the_deploy_branch_with_local_edits_is_refused(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    before = git(repo, "rev-parse", "main")
    candidate = edit_candidate(repo)
    (repo / "README.md").write_text("uncommitted work\n")
    d = deployer(repo, "fast-forward", baseline=before)
    with pytest.raises(DeployError, match="uncommitted changes"):
        d.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "README.md").read_text() == "uncommitted work\n"


def test_a_bare_deploy_repository_moves_by_compare_and_swap(tmp_path: Path) -> None:
    work = make_target_repo(tmp_path / "work")
    repo = tmp_path / "deploy.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True)
    before = git(repo, "rev-parse", "main")
    d = deployer(repo, "merge", baseline=before)
    first = d.deploy(edit_candidate(work), "c1-abc", cycle_id="c1", message="upgate: brief")
    assert git(repo, "rev-parse", "main") == (first.previous or {})["landed_commit"]
    assert git(repo, "merge-base", "--is-ancestor", before, "main") == ""
    assert d.rollback(first).status == "restored"
    assert "Be brief." not in git(repo, "show", f"main:{PROMPT}")


def test_a_revert_that_conflicts_with_later_work_changes_nothing(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    d = deployer(repo, "fast-forward", baseline=git(repo, "rev-parse", "main"))
    first = d.deploy(edit_candidate(repo), "c1-abc", cycle_id="c1", message="upgate: brief")
    later = commit_on_main(repo, PROMPT, "rewritten after the change\n")
    with pytest.raises(DeployError, match="conflicts with later commits"):
        d.rollback(first)
    assert git(repo, "rev-parse", "main") == later
    assert git(repo, "status", "--porcelain") == ""


def test_branch_mode_keeps_todays_behaviour(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    before = git(repo, "rev-parse", "main")
    d = deployer(repo, "branch", baseline=before)
    first = d.deploy(edit_candidate(repo), "c1-abc", cycle_id="c1", message="upgate: brief")
    assert first.previous is None and git(repo, "rev-parse", "main") == before
    assert d.rollback(first).detail == {"branch_deleted": "upgate/c1"}
    assert git(repo, "rev-parse", "main") == before


def test_the_next_cycle_builds_on_a_landed_change(workdir: Path) -> None:
    from upgate.graphs.runner import Runner

    from ..conftest import adopt, decide
    from .test_cycle import REVIEW, draft, make_runner

    with (workdir / "policy.toml").open("a") as f:
        f.write('\n[landing]\nmode = "fast-forward"\n')
    adopt(workdir)
    runner: Runner
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    repo = workdir / "target"
    judged_on = git(repo, "rev-parse", "main")
    first = runner.start("alice")
    done = decide(runner, first["cycle_id"], "approve", "bob")
    assert done["outcome"] == "deployed", done.get("reason")
    landed = git(repo, "rev-parse", "main")
    assert landed != judged_on and git(repo, "rev-parse", f"{landed}^") == judged_on
    assert done["deployment"]["previous"]["landing"] == "fast-forward"

    second = runner.start("alice")
    evidence = next(e for e in runner.deps.ledger.entries(second["cycle_id"])
                    if e.node == "observe").payload["evidence"]
    assert evidence["baseline"]["commit"] == landed
    # The changed file is in the next cycle's baseline tree, as the approved cycle left it.
    shots = json.loads((runner.deps.base_tree() / "triage" / "config.json").read_text())
    before = json.loads(git(repo, "show", f"{judged_on}:triage/config.json"))
    assert len(shots["few_shot"]) == 8 != len(before["few_shot"])
