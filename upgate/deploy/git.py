"""Deploy a code, prompt or config change as a commit on a new branch of the target repo,
and land it on the deploy branch when the policy says so (`[landing] mode`).

Never a force-push: the branch `upgate/<cycle>` is created on the commit the cycle was
judged on (else the base branch), holding exactly that commit's tree with the candidate's
diff applied (computed in a temporary index), with the deployment id as a trailer. Running
it again finds the branch and does nothing, but only when the branch proves to be this
change: one parent, the judged baseline, and the same tree computed again. A branch that
merely carries the trailer (anyone who can create a branch can type it) is refused, and
nothing lands. With "fast-forward" or "merge" the commit then lands on
the base branch (see `upgate.deploy.landing`), and a rollback is a revert commit there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from upgate.deploy.base import Deployer, Health, RollbackResult
from upgate.deploy.gittree import applied_tree, commit_tree, git_ok, parents_of, tree_of
from upgate.deploy.gittree import run_git as _git
from upgate.deploy.landing import DEPLOY_TRAILER, is_ancestor, land, landed_and_live, revert
from upgate.errors import DeployError
from upgate.policy import LandingMode
from upgate.records import Candidate, Deployment

log = logging.getLogger(__name__)

PROTECTED_BRANCHES = frozenset({"main", "master"})


class GitDeployment(BaseModel):
    """Where a change landed."""

    deployment_id: str
    branch: str
    commit: str
    created: bool


def branch_name(cycle_id: str) -> str:
    """The branch a cycle's change lands on."""
    return f"upgate/{cycle_id}"


def deploy_branch(
    repo: Path, *, base: str, branch: str, diff: str, message: str, deployment_id: str,
    author: str = "upgate <upgate@localhost>", judged: bool = True,
) -> GitDeployment:
    """Commit `diff` on a new branch from `base`; idempotent by content (see the module
    docstring). `judged=False` when `base` is the base branch's name rather than the commit
    the change was judged on: an earlier run then may sit on an older commit of it."""
    if branch in PROTECTED_BRANCHES or branch == base:
        raise DeployError(f"refusing to deploy onto {branch!r}: upgate only creates new branches")
    start = _git(repo, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", check=False)
    if not start:
        raise DeployError(f"the baseline {base!r} is not a commit in {repo}; nothing landed. "
                          "Check [target] base_branch and that the judged commit still exists")
    existing = _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if existing:
        _prove(repo, branch, existing, start, diff, deployment_id, judged=judged)
        log.info("branch %s already holds deployment %s", branch, deployment_id)
        return GitDeployment(
            deployment_id=deployment_id, branch=branch, commit=existing, created=False
        )
    tree = applied_tree(repo, start, diff)
    commit = commit_tree(repo, tree, [start], f"{message}\n\n{DEPLOY_TRAILER}: {deployment_id}",
                         author)
    # Create only: refused if someone made the branch in the meantime.
    if not git_ok(repo, "update-ref", f"refs/heads/{branch}", commit, ""):
        raise DeployError(f"branch {branch} appeared in {repo} while upgate was creating it; "
                          "nothing landed. Inspect it, then resume")
    return GitDeployment(deployment_id=deployment_id, branch=branch, commit=commit, created=True)


def _prove(repo: Path, branch: str, existing: str, start: str, diff: str,
           deployment_id: str, *, judged: bool) -> None:
    """DeployError unless `existing` is this change: it carries this deployment's trailer
    (necessary, never sufficient), it has one parent, the judged baseline (an ancestor of
    the base branch when that is unknown), and exactly that parent's tree with the approved
    diff applied."""
    body = _git(repo, "log", "-1", "--format=%B", existing)
    if f"{DEPLOY_TRAILER}: {deployment_id}" not in (line.strip() for line in body.splitlines()):
        raise DeployError(
            f"branch {branch} exists in {repo} but does not hold deployment {deployment_id}; "
            "nothing landed. Delete or rename it, then resume")
    parents = parents_of(repo, existing)
    parent = parents[0] if len(parents) == 1 else None
    on_baseline = parent is not None and (
        parent == start or (not judged and is_ancestor(repo, parent, start)))
    if parent is not None and on_baseline and tree_of(repo, existing) == applied_tree(
            repo, parent, diff):
        return
    raise DeployError(
        f"branch {branch} exists in {repo} but is not deployment {deployment_id}: its commit "
        f"{existing[:12]} is not the approved diff applied to the commit the change was "
        f"judged on ({start[:12]}); nothing landed. Someone else made that branch: inspect "
        "it, then delete or rename it and resume")


def delete_branch(repo: Path, branch: str) -> bool:
    """Roll back a branch deployment by deleting the branch (never main); True if removed."""
    if branch in PROTECTED_BRANCHES:
        raise DeployError(f"refusing to delete {branch!r}")
    if not _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False):
        return False
    _git(repo, "branch", "-D", branch)
    return True


class GitDeployer(Deployer):
    """A code, prompt or config change goes live as a new branch of the target repo, and
    lands on the base branch by fast-forward or merge when `landing` says so."""

    target: Literal["git", "vllm"] = "git"

    def __init__(self, repo: Path, *, base: str, landing: LandingMode = "branch",
                 baseline_of: Callable[[str], str | None] | None = None) -> None:
        self.repo = repo
        self.base = base
        self.landing = landing
        self.baseline_of = baseline_of
        """The commit a cycle's candidate was judged on (from the ledger), if known."""

    def deploy(self, candidate: Candidate, deployment_id: str, *, cycle_id: str,
               message: str) -> Deployment:
        """Commit the candidate's diff on the cycle's branch (see `deploy_branch`), built on
        the commit it was judged on; then land it on the base branch per `landing`."""
        start = (self.baseline_of(cycle_id) if self.baseline_of else None) or self.base
        change = deploy_branch(self.repo, base=start, branch=branch_name(cycle_id),
                               diff=candidate.diff, message=message,
                               deployment_id=deployment_id, judged=start != self.base)
        if self.landing == "branch":
            return Deployment(target="git", **change.model_dump())
        landed = land(self.repo, branch=self.base, commit=change.commit, mode=self.landing,
                      deployment_id=deployment_id, message=message)
        log.info("%s landed on %s as %s (%s)", deployment_id, self.base, landed.commit[:12],
                 self.landing)
        return Deployment(target="git", **change.model_dump(), previous={
            "landing": self.landing, "deploy_branch": self.base, "head": landed.before,
            "landed_commit": landed.commit})

    def verify(self, deployment: Deployment) -> Health:
        """The change is in place: its branch points at the deployed commit, or (landed)
        the base branch holds it and no revert of it."""
        previous = deployment.previous or {}
        if previous.get("landing") in ("fast-forward", "merge"):
            branch, landed = str(previous["deploy_branch"]), str(previous["landed_commit"])
            live = landed_and_live(self.repo, branch, landed, deployment.deployment_id)
            return Health(healthy=live, detail={"deploy_branch": branch, "landed": landed})
        branch = deployment.branch or ""
        head = _git(self.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                    check=False)
        return Health(healthy=bool(head) and head == deployment.commit,
                      detail={"branch": branch, "head": head or None,
                              "commit": deployment.commit})

    def landed_after(self, deployment: Deployment,
                     others: Sequence[Deployment]) -> list[Deployment]:
        """Of `others`, the changes landed on the same deploy branch after `deployment`
        (their landed commit descends from its) and still live there; empty when
        `deployment` itself did not land or is no longer live."""
        mine = deployment.previous or {}
        if mine.get("landing") not in ("fast-forward", "merge") or not self.verify(
                deployment).healthy:
            return []
        branch, landed = str(mine["deploy_branch"]), str(mine["landed_commit"])
        later: list[Deployment] = []
        for other in others:
            theirs = other.previous or {}
            if (theirs.get("landing") in ("fast-forward", "merge")
                    and theirs.get("deploy_branch") == branch
                    and theirs.get("landed_commit") != landed
                    and is_ancestor(self.repo, landed, str(theirs.get("landed_commit")))
                    and self.verify(other).healthy):
                later.append(other)
        return later

    def rollback(self, deployment: Deployment) -> RollbackResult:
        """A landed change: a revert commit on the base branch. A branch: delete it (the
        base branch never held the change)."""
        previous = deployment.previous or {}
        if previous.get("landing") in ("fast-forward", "merge"):
            branch, landed = str(previous["deploy_branch"]), str(previous["landed_commit"])
            done = revert(self.repo, branch=branch, commit=landed,
                          deployment_id=deployment.deployment_id)
            if done is None:
                return RollbackResult(status="nothing_to_restore", detail={
                    "deploy_branch": branch, "why": f"{landed[:12]} is not on {branch}"})
            return RollbackResult(
                status="restored" if done.created else "already_restored",
                detail={"deploy_branch": branch, "reverted": landed,
                        "revert_commit": done.commit})
        branch = deployment.branch or ""
        if delete_branch(self.repo, branch):
            return RollbackResult(status="restored", detail={"branch_deleted": branch})
        return RollbackResult(status="already_restored", detail={"branch_absent": branch})
