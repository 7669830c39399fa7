"""Land a change's commit on the target's deploy branch, and take it back with a revert.

The deploy branch is the one cycles take their baseline from (`[target] base_branch`), so a
change that lands there is what the next cycle builds on. Landing either fast-forwards the
branch to the change's commit (refused when the branch moved since the commit the change
was built on) or adds a merge commit carrying the deployment id. Taking a change back is a
`git revert` commit (`-m 1` for a merge) carrying `Upgate-Revert: <deployment id>`.

Never a force-push, never rewritten history: every move of the branch is a compare-and-swap
from the head it was read at to a descendant of it, and commits are built in a temporary
worktree, so a refusal or a conflict leaves the branch as it was. Each step finds its own
earlier run (the change's commit already reachable, a revert already carrying the trailer),
so running it again changes nothing.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from upgate.errors import DeployError

log = logging.getLogger(__name__)

DEPLOY_TRAILER = "Upgate-Deployment"
REVERT_TRAILER = "Upgate-Revert"
AUTHOR = "upgate <upgate@localhost>"


def run_git(repo: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    """Run git in `repo` and return its stdout; DeployError with git's words on failure."""
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, input=stdin,
        check=False,
    )
    if check and proc.returncode != 0:
        raise DeployError(
            f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout.strip()


def git_ok(repo: Path, *args: str) -> bool:
    """Whether a git command succeeds."""
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                          check=False).returncode == 0


def identity(author: str = AUTHOR) -> list[str]:
    """`-c user.name=... -c user.email=...` for commits upgate makes."""
    name, _, email = author.partition(" <")
    return ["-c", f"user.name={name}", "-c", f"user.email={email.rstrip('>')}"]


class Landed(BaseModel):
    """Where a change landed on the deploy branch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["fast-forward", "merge"]
    branch: str
    before: str
    """The deploy branch's head before the change landed."""
    commit: str
    """The commit that brought the change: the change itself, or the merge commit."""
    created: bool


class Reverted(BaseModel):
    """The revert commit that took a landed change back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    branch: str
    commit: str
    created: bool


def head(repo: Path, branch: str) -> str:
    """The commit `branch` points at; a clear error when there is no such branch."""
    sha = run_git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if not sha:
        raise DeployError(f"the deploy branch {branch!r} does not exist in {repo}; set "
                          "[target] base_branch to the branch cycles take their baseline from")
    return sha


def is_ancestor(repo: Path, commit: str, of: str) -> bool:
    """Whether `commit` is reachable from `of` (or is it)."""
    return git_ok(repo, "merge-base", "--is-ancestor", commit, of)


def find_trailer(repo: Path, branch: str, trailer: str, value: str, *,
                 merges: bool = False) -> str | None:
    """The newest first-parent commit of `branch` whose message has the trailer line
    `trailer: value` exactly (merges only, with `merges`)."""
    line = f"{trailer}: {value}"
    args = ["log", "--first-parent", "-F", f"--grep={line}", "--format=%H%x00%B%x1e",
            f"refs/heads/{branch}"]
    if merges:
        args.insert(1, "--merges")
    for record in run_git(repo, *args).split("\x1e"):
        sha, _, body = record.strip().partition("\x00")
        if sha and line in (b.strip() for b in body.splitlines()):
            return sha
    return None


def checked_out_at(repo: Path, branch: str) -> Path | None:
    """The worktree that has `branch` checked out, if one does."""
    where: Path | None = None
    for line in run_git(repo, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            where = Path(line.removeprefix("worktree "))
        elif line == f"branch refs/heads/{branch}":
            return where
    return None


def move_branch(repo: Path, branch: str, *, new: str, old: str) -> None:
    """Move `branch` from `old` to its descendant `new`; refused if it is no longer at `old`.

    A checkout of the branch (a non-bare target) moves with it by a fast-forward merge
    there, so its files follow; a checkout with uncommitted changes is refused first.
    """
    moved = DeployError(
        f"the deploy branch {branch} moved while upgate was changing it (it is no longer at "
        f"{old[:12]}); nothing was changed on it. Run the command again to start from its "
        "new head")
    where = checked_out_at(repo, branch)
    if where is None:
        if not git_ok(repo, "update-ref", f"refs/heads/{branch}", new, old):
            raise moved
        return
    if run_git(where, "status", "--porcelain", "--untracked-files=no"):
        raise DeployError(
            f"the deploy branch {branch} is checked out at {where} with uncommitted changes; "
            "nothing was changed on it. Commit or stash them there, then run this again")
    if run_git(where, "rev-parse", "HEAD") != old:
        raise moved
    # --ff-only: succeeds only while the branch is still an ancestor of `new`.
    if not git_ok(where, "merge", "--ff-only", "-q", new):
        raise moved


@contextmanager
def scratch(repo: Path, at: str) -> Iterator[Path]:
    """A temporary detached worktree of `repo` at `at`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="upgate-land-") as tmp:
        work = Path(tmp) / "wt"
        run_git(repo, "worktree", "add", "--detach", "-q", str(work), at)
        try:
            yield work
        finally:
            run_git(repo, "worktree", "remove", "--force", str(work), check=False)


def land(repo: Path, *, branch: str, commit: str, mode: Literal["fast-forward", "merge"],
         deployment_id: str, message: str) -> Landed:
    """Land `commit` (a change built on an earlier head of `branch`); idempotent."""
    current = head(repo, branch)
    if is_ancestor(repo, commit, current):
        landed = (find_trailer(repo, branch, DEPLOY_TRAILER, deployment_id, merges=True)
                  if mode == "merge" else None) or commit
        log.info("deployment %s is already on %s (%s)", deployment_id, branch, landed[:12])
        return Landed(mode=mode, branch=branch, before=run_git(repo, "rev-parse", f"{landed}^1"),
                      commit=landed, created=False)
    if mode == "fast-forward":
        built_on = run_git(repo, "rev-parse", f"{commit}^1")
        if built_on != current:
            raise DeployError(
                f"the deploy branch {branch} moved since this change was built on "
                f"{built_on[:12]} (it is at {current[:12]} now), so it cannot be "
                "fast-forwarded; nothing landed. The change stays on its own branch: run a "
                "new cycle on the new baseline, or have an admin adopt a policy with "
                "[landing] mode = \"merge\"")
        move_branch(repo, branch, new=commit, old=current)
        return Landed(mode=mode, branch=branch, before=current, commit=commit, created=True)
    with scratch(repo, current) as work:
        if not git_ok(work, *identity(), "merge", "--no-ff", "-q", "-m",
                      f"{message}\n\n{DEPLOY_TRAILER}: {deployment_id}", commit):
            raise DeployError(
                f"the change {commit[:12]} does not merge cleanly into {branch} at "
                f"{current[:12]}; nothing landed. Run a new cycle on the new baseline")
        merge = run_git(work, "rev-parse", "HEAD")
    move_branch(repo, branch, new=merge, old=current)
    return Landed(mode=mode, branch=branch, before=current, commit=merge, created=True)


def landed_and_live(repo: Path, branch: str, commit: str, deployment_id: str) -> bool:
    """Whether `commit` is on `branch` and no revert of the deployment follows it."""
    current = head(repo, branch)
    return is_ancestor(repo, commit, current) and find_trailer(
        repo, branch, REVERT_TRAILER, deployment_id) is None


def revert(repo: Path, *, branch: str, commit: str, deployment_id: str,
           note: str = "") -> Reverted | None:
    """Revert the landed `commit` (`-m 1` when it is a merge) on `branch`; idempotent by
    the `Upgate-Revert` trailer. None when `commit` never landed on `branch`."""
    done = find_trailer(repo, branch, REVERT_TRAILER, deployment_id)
    if done is not None:
        return Reverted(branch=branch, commit=done, created=False)
    current = head(repo, branch)
    if not is_ancestor(repo, commit, current):
        return None
    parents = run_git(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    subject = run_git(repo, "log", "-1", "--format=%s", commit)
    with scratch(repo, current) as work:
        mainline = ["-m", "1"] if len(parents) > 1 else []
        if not git_ok(work, "revert", "--no-commit", *mainline, commit):
            raise DeployError(
                f"reverting {commit[:12]} conflicts with later commits on {branch}; nothing "
                "was changed. Revert it by hand (git revert) or land a fix through a new cycle")
        body = f"Revert \"{subject}\"\n\nThis reverts commit {commit}.\n"
        if note:
            body += f"\n{note}\n"
        run_git(work, *identity(), "commit", "-q", "--allow-empty", "-m",
                f"{body}\n{REVERT_TRAILER}: {deployment_id}")
        new = run_git(work, "rev-parse", "HEAD")
    move_branch(repo, branch, new=new, old=current)
    return Reverted(branch=branch, commit=new, created=True)
