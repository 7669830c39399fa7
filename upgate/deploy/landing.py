"""Land a change's commit on the target's deploy branch, and take it back with a revert.

The deploy branch is the one cycles take their baseline from (`[target] base_branch`), so a
change that lands there is what the next cycle builds on. Landing either fast-forwards the
branch to the change's commit (refused when the branch moved since the commit the change
was built on) or adds a merge commit carrying the deployment id. Taking a change back is a
`git revert` commit (`-m 1` for a merge) carrying `Upgate-Revert: <deployment id>`.

Never a force-push, never rewritten history: every move of the branch is a compare-and-swap
from the head it was read at to a descendant of it, and commits are built in a temporary
index or worktree, so a refusal or a conflict leaves the branch as it was. Each step finds
its own earlier run (the change's commit already reachable, a merge or a revert carrying
the trailer), so running it again changes nothing; but a trailer is text anyone can type,
so an earlier run counts only when its content is proven: its parents are the ones upgate
would have used and its tree is the one upgate computes again from them. Anything else is
refused and nothing moves.

Only regular files land (modes 100644 and 100755): a diff that would write a submodule
entry (gitlink), a symbolic link, or change a path to one, is refused before any commit
(`upgate.deploy.gittree.applied_tree`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from upgate.deploy.gittree import (
    commit_tree,
    git_ok,
    merged_tree,
    parents_of,
    reverted_tree,
    run_git,
    tree_of,
)
from upgate.errors import DeployError

log = logging.getLogger(__name__)

DEPLOY_TRAILER = "Upgate-Deployment"
REVERT_TRAILER = "Upgate-Revert"


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


def trailer_commits(repo: Path, branch: str, trailer: str, value: str, *,
                    merges: bool = False) -> list[str]:
    """The first-parent commits of `branch`, newest first, whose message has the trailer
    line `trailer: value` exactly (merges only, with `merges`). A claim, not a proof."""
    line = f"{trailer}: {value}"
    args = ["log", "--first-parent", "-F", f"--grep={line}", "--format=%H%x00%B%x1e",
            f"refs/heads/{branch}"]
    if merges:
        args.insert(1, "--merges")
    found: list[str] = []
    for record in run_git(repo, *args).split("\x1e"):
        sha, _, body = record.strip().partition("\x00")
        if sha and line in (b.strip() for b in body.splitlines()):
            found.append(sha)
    return found


def proven_merge(repo: Path, branch: str, commit: str, deployment_id: str) -> str | None:
    """The merge on `branch` that landed `commit` for this deployment: one carrying its
    trailer whose parents are (a head of `branch`, `commit`) and whose tree is the merge of
    the two computed again. None when no merge claims it; DeployError when one claims it
    without being it."""
    claimed = trailer_commits(repo, branch, DEPLOY_TRAILER, deployment_id, merges=True)
    for sha in claimed:
        parents = parents_of(repo, sha)
        if (len(parents) == 2 and parents[1] == commit
                and merged_tree(repo, parents[0], commit) == tree_of(repo, sha)):
            return sha
    if claimed:
        raise DeployError(
            f"{branch} holds {claimed[0][:12]}, which carries '{DEPLOY_TRAILER}: "
            f"{deployment_id}' but is not upgate's merge of the approved change {commit[:12]}"
            " (its parents or its tree differ); nothing landed. Someone else wrote that "
            "commit: inspect it before anything lands")
    return None


def proven_revert(repo: Path, branch: str, commit: str,
                  deployment_id: str) -> tuple[str | None, list[str]]:
    """The revert of `commit` on `branch` for this deployment, and every commit claiming to
    be it. A claim (the `Upgate-Revert` trailer) counts only when the commit has one parent,
    which holds `commit`, and its tree is that parent with `commit` reverted, computed
    again."""
    claimed = trailer_commits(repo, branch, REVERT_TRAILER, deployment_id)
    for sha in claimed:
        parents = parents_of(repo, sha)
        if (len(parents) == 1 and is_ancestor(repo, commit, parents[0])
                and reverted_tree(repo, parents[0], commit) == tree_of(repo, sha)):
            return sha, claimed
    return None, claimed


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


def land(repo: Path, *, branch: str, commit: str, mode: Literal["fast-forward", "merge"],
         deployment_id: str, message: str) -> Landed:
    """Land `commit` (a change built on an earlier head of `branch`, its content already
    proven by the caller); idempotent, an earlier merge counting only when proven."""
    current = head(repo, branch)
    if is_ancestor(repo, commit, current):
        landed = (proven_merge(repo, branch, commit, deployment_id)
                  if mode == "merge" else None) or commit
        log.info("deployment %s is already on %s (%s)", deployment_id, branch, landed[:12])
        return Landed(mode=mode, branch=branch, before=parents_of(repo, landed)[0],
                      commit=landed, created=False)
    if mode == "fast-forward":
        built_on = parents_of(repo, commit)[0]
        if built_on != current:
            raise DeployError(
                f"the deploy branch {branch} moved since this change was built on "
                f"{built_on[:12]} (it is at {current[:12]} now), so it cannot be "
                "fast-forwarded; nothing landed. The change stays on its own branch: run a "
                "new cycle on the new baseline, or have an admin adopt a policy with "
                "[landing] mode = \"merge\"")
        move_branch(repo, branch, new=commit, old=current)
        return Landed(mode=mode, branch=branch, before=current, commit=commit, created=True)
    tree = merged_tree(repo, current, commit)
    if tree is None:
        raise DeployError(
            f"the change {commit[:12]} does not merge cleanly into {branch} at "
            f"{current[:12]}; nothing landed. Run a new cycle on the new baseline")
    merge = commit_tree(repo, tree, [current, commit],
                        f"{message}\n\n{DEPLOY_TRAILER}: {deployment_id}")
    move_branch(repo, branch, new=merge, old=current)
    return Landed(mode=mode, branch=branch, before=current, commit=merge, created=True)


def landed_and_live(repo: Path, branch: str, commit: str, deployment_id: str) -> bool:
    """Whether `commit` is on `branch` and no proven revert of the deployment follows it."""
    current = head(repo, branch)
    return (is_ancestor(repo, commit, current)
            and proven_revert(repo, branch, commit, deployment_id)[0] is None)


def revert(repo: Path, *, branch: str, commit: str, deployment_id: str,
           note: str = "") -> Reverted | None:
    """Revert the landed `commit` (`-m 1` when it is a merge) on `branch`; idempotent by a
    proven revert (see `proven_revert`); a commit that only claims to be one is refused.
    None when `commit` never landed on `branch`."""
    done, claimed = proven_revert(repo, branch, commit, deployment_id)
    if done is not None:
        return Reverted(branch=branch, commit=done, created=False)
    if claimed:
        raise DeployError(
            f"{branch} holds {claimed[0][:12]}, which carries '{REVERT_TRAILER}: "
            f"{deployment_id}' but is not a revert of {commit[:12]} (its parent or its tree "
            "differ from the revert upgate computes); nothing was changed. Someone else "
            "wrote that commit: inspect it, and revert it on the deploy branch before "
            "rolling back")
    current = head(repo, branch)
    if not is_ancestor(repo, commit, current):
        return None
    tree = reverted_tree(repo, current, commit)
    if tree is None:
        raise DeployError(
            f"reverting {commit[:12]} conflicts with later commits on {branch}; nothing "
            "was changed. Revert it by hand (git revert) or land a fix through a new cycle")
    subject = run_git(repo, "log", "-1", "--format=%s", commit)
    body = f"Revert \"{subject}\"\n\nThis reverts commit {commit}.\n"
    if note:
        body += f"\n{note}\n"
    new = commit_tree(repo, tree, [current], f"{body}\n{REVERT_TRAILER}: {deployment_id}")
    move_branch(repo, branch, new=new, old=current)
    return Reverted(branch=branch, commit=new, created=True)
