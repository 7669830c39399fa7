"""What lands is what was judged and approved, proven by content, not by a trailer.

On real git repositories, someone who can create a branch (or write a commit) in the target
repo plants what upgate would take for its own earlier run: `upgate/<cycle>` carrying the
deployment's trailer, a merge or a revert carrying it. Each is refused, and the deploy
branch does not move. A diff writing a submodule entry or a symbolic link is refused before
any commit. An honest earlier run (same parent, same tree) is still found again."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate.deploy.git import deploy_branch
from upgate.deploy.landing import DEPLOY_TRAILER, REVERT_TRAILER
from upgate.errors import DeployError
from upgate.policy import LandingMode
from upgate.records import Candidate

from ..conftest import make_target_repo
from .test_git_landing import PROMPT, deployer, edit_candidate, git

BACKDOOR = "triage/backdoor.py"


def plant(repo: Path, at: str, message: str, *, branch: str | None = None,
          files: dict[str, str] | None = None, merge: str | None = None) -> str:
    """An attacker's commit on `at` (in a scratch worktree), optionally as a branch."""
    work = repo.parent / f"evil-{abs(hash((at, message, branch)))}"
    git(repo, "worktree", "add", "-q", "--detach", str(work), at)
    ident = ["-c", "user.name=upgate", "-c", "user.email=upgate@localhost"]
    if merge is not None:
        git(work, *ident, "merge", "--no-ff", "--no-commit", "-q", merge)
    for path, text in (files or {BACKDOOR: "import os  # backdoor\n"}).items():
        (work / path).write_text(text)
        git(work, "add", path)
    git(work, *ident, "commit", "-q", "--allow-empty", "-m", message)
    sha = git(work, "rev-parse", "HEAD")
    git(repo, "worktree", "remove", "--force", str(work))
    if branch is not None:
        git(repo, "branch", branch, sha)
    return sha


def refused(repo: Path, mode: LandingMode, judged: str, candidate: Candidate,
            match: str) -> None:
    """Deploying `candidate` (judged on `judged`) as deployment c1-abc is refused."""
    with pytest.raises(DeployError, match=match):
        deployer(repo, mode, baseline=judged).deploy(candidate, "c1-abc", cycle_id="c1",
                                                     message="m")


@pytest.mark.parametrize("mode", ["branch", "fast-forward", "merge"])
def test_a_preplanted_branch_with_the_trailer_is_refused_and_nothing_lands(
        tmp_path: Path, mode: LandingMode) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged = git(repo, "rev-parse", "main")
    candidate = edit_candidate(repo)
    planted = plant(repo, judged, f"upgate: brief\n\n{DEPLOY_TRAILER}: c1-abc",
                    branch="upgate/c1")
    refused(repo, mode, judged, candidate, r"is not deployment c1-abc.*nothing landed")
    assert git(repo, "rev-parse", "main") == judged
    assert git(repo, "rev-parse", "upgate/c1") == planted  # left for a person to inspect
    assert BACKDOOR not in git(repo, "ls-tree", "-r", "--name-only", "main")


def test_the_approved_tree_on_another_parent_is_refused(tmp_path: Path) -> None:
    """The approved diff on a commit it was not judged on is a tree nobody judged."""
    repo = make_target_repo(tmp_path / "target")
    older = git(repo, "rev-parse", "main")
    candidate = edit_candidate(repo)
    (repo / "README.md").write_text("a later change\n")
    git(repo, "-c", "user.name=o", "-c", "user.email=o@o", "commit", "-qam", "later")
    judged = git(repo, "rev-parse", "main")
    honest_elsewhere = deploy_branch(repo, base=older, branch="upgate/c9", diff=candidate.diff,
                                     message="m", deployment_id="c1-abc").commit
    git(repo, "branch", "upgate/c1", honest_elsewhere)
    refused(repo, "merge", judged, candidate, "is not deployment")
    assert git(repo, "rev-parse", "main") == judged


def test_an_honest_earlier_run_is_found_again_by_its_content(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged = git(repo, "rev-parse", "main")
    candidate = edit_candidate(repo)
    first = deploy_branch(repo, base=judged, branch="upgate/c1", diff=candidate.diff,
                          message="m", deployment_id="c1-abc")
    again = deploy_branch(repo, base=judged, branch="upgate/c1", diff=candidate.diff,
                          message="m", deployment_id="c1-abc")
    assert (again.commit, again.created) == (first.commit, False)
    # Another diff under the same deployment id is not this change.
    with pytest.raises(DeployError, match="is not deployment"):
        deploy_branch(repo, base=judged, branch="upgate/c1", diff=edit_candidate(
            repo, line="Be rude.\n").diff, message="m", deployment_id="c1-abc")


def test_a_planted_merge_with_the_trailer_is_refused(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged = git(repo, "rev-parse", "main")
    candidate = edit_candidate(repo)
    change = deployer(repo, "branch", baseline=judged).deploy(
        candidate, "c1-abc", cycle_id="c1", message="m")
    # Someone merges the approved change into main with a backdoor in the merge itself.
    evil = plant(repo, "main", f"upgate: m\n\n{DEPLOY_TRAILER}: c1-abc",
                 merge=str(change.commit))
    git(repo, "merge", "--ff-only", "-q", evil)
    refused(repo, "merge", judged, candidate, r"is not upgate's merge.*nothing landed")
    assert git(repo, "rev-parse", "main") == evil


def test_a_planted_revert_with_the_trailer_is_refused(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    d = deployer(repo, "fast-forward", baseline=git(repo, "rev-parse", "main"))
    first = d.deploy(edit_candidate(repo), "c1-abc", cycle_id="c1", message="m")
    evil = plant(repo, "main", f"Revert \"m\"\n\n{REVERT_TRAILER}: c1-abc")
    git(repo, "merge", "--ff-only", "-q", evil)
    assert d.verify(first).healthy  # a claimed revert does not take the change back
    with pytest.raises(DeployError, match=r"is not a revert of.*nothing was changed"):
        d.rollback(first)
    assert git(repo, "rev-parse", "main") == evil
    assert "Be brief." in git(repo, "show", f"main:{PROMPT}")


GITLINK = """diff --git a/vendor/payload b/vendor/payload
new file mode 160000
index 0000000..1234567
--- /dev/null
+++ b/vendor/payload
@@ -0,0 +1 @@
+Subproject commit 1234567890123456789012345678901234567890
"""

SYMLINK = """diff --git a/triage/link b/triage/link
new file mode 120000
index 0000000..ab8a2d9
--- /dev/null
+++ b/triage/link
@@ -0,0 +1 @@
+../../etc/passwd
\\ No newline at end of file
"""


@pytest.mark.parametrize("extra", [GITLINK, SYMLINK], ids=["gitlink", "symlink"])
@pytest.mark.parametrize("mode", ["branch", "merge"])
def test_a_diff_that_writes_anything_but_regular_files_is_refused(
        tmp_path: Path, extra: str, mode: LandingMode) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged = git(repo, "rev-parse", "main")
    ok = edit_candidate(repo)
    candidate = Candidate(proposal_id="p", kind="config", diff=ok.diff + extra,
                          changed_paths=(PROMPT,))
    refused(repo, mode, judged, candidate, r"not regular files.*nothing landed")
    assert git(repo, "rev-parse", "main") == judged
    assert git(repo, "branch", "--list", "upgate/*") == ""
    assert len(git(repo, "worktree", "list").splitlines()) == 1


def test_a_regular_file_turned_into_a_symlink_is_refused(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    judged = git(repo, "rev-parse", "main")
    (repo / PROMPT).unlink()
    (repo / PROMPT).symlink_to("/etc/passwd")
    diff = git(repo, "diff") + "\n"  # git writes a type change as a deletion and an addition
    git(repo, "checkout", "--", PROMPT)
    assert "new file mode 120000" in diff
    with pytest.raises(DeployError, match=r"not regular files: triage/prompt.txt \(mode"):
        deploy_branch(repo, base=judged, branch="upgate/c1", diff=diff, message="m",
                      deployment_id="c1-abc")
    assert git(repo, "branch", "--list", "upgate/*") == ""


def test_a_branch_planted_while_the_cycle_waits_is_not_what_the_approval_lands(
        workdir: Path) -> None:
    """The attack end to end: the deployment id is predictable from `upgate inbox`."""
    from ..conftest import adopt, decide
    from .test_cycle import REVIEW, draft, make_runner

    with (workdir / "policy.toml").open("a") as f:
        f.write('\n[landing]\nmode = "fast-forward"\n')
    adopt(workdir)
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    repo = workdir / "target"
    judged = git(repo, "rev-parse", "main")
    cycle = runner.start("alice")["cycle_id"]
    request = runner.pending(cycle)
    plant(repo, judged, f"upgate: few_shot\n\n{DEPLOY_TRAILER}: "
                        f"{cycle}-{request['candidate_hash'][:12]}", branch=f"upgate/{cycle}")
    done = decide(runner, cycle, "approve", "bob")
    assert done["outcome"] == "failed" and "is not deployment" in done["reason"]
    assert git(repo, "rev-parse", "main") == judged
    assert BACKDOOR not in git(repo, "ls-tree", "-r", "--name-only", "main")
    assert not any(e.node == "deploy" and e.event == "deployed"
                   for e in runner.deps.ledger.entries(cycle))
