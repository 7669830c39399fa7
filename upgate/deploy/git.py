"""Deploy a code, prompt or config change as a commit on a new branch of the target repo,
and land it on the deploy branch when the policy says so (`[landing] mode`).

Never a force-push: the branch `upgate/<cycle>` is created from the commit the cycle was
judged on (else the base branch) in a temporary worktree, the candidate's diff applied and
committed with the deployment id as a trailer. Running it again with the same deployment id
finds the branch and does nothing. With "fast-forward" or "merge" the commit then lands on
the base branch (see `upgate.deploy.landing`), and a rollback is a revert commit there.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from upgate.deploy.base import Deployer, Health, RollbackResult
from upgate.deploy.landing import land, landed_and_live, revert
from upgate.deploy.landing import run_git as _git
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
    author: str = "upgate <upgate@localhost>",
) -> GitDeployment:
    """Commit `diff` on a new branch from `base`; idempotent by deployment id."""
    if branch in PROTECTED_BRANCHES or branch == base:
        raise DeployError(f"refusing to deploy onto {branch!r}: upgate only creates new branches")
    existing = _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if existing:
        body = _git(repo, "log", "-1", "--format=%B", existing)
        if f"Upgate-Deployment: {deployment_id}" in body:
            log.info("branch %s already holds deployment %s", branch, deployment_id)
            return GitDeployment(
                deployment_id=deployment_id, branch=branch, commit=existing, created=False
            )
        raise DeployError(
            f"branch {branch} exists in {repo} but does not hold deployment {deployment_id}; "
            "delete or rename it, then resume"
        )
    with tempfile.TemporaryDirectory(prefix="upgate-deploy-") as tmp:
        work = Path(tmp) / "wt"
        _git(repo, "worktree", "add", "--detach", str(work), base)
        try:
            if diff.strip():
                _git(work, "apply", "--index", "--whitespace=nowarn", "-", stdin=diff)
            name, _, email = author.partition(" <")
            _git(
                work, "-c", f"user.name={name}", "-c", f"user.email={email.rstrip('>')}",
                "commit", "--allow-empty", "-q", "-m",
                f"{message}\n\nUpgate-Deployment: {deployment_id}",
            )
            commit = _git(work, "rev-parse", "HEAD")
            _git(repo, "branch", branch, commit)
        finally:
            _git(repo, "worktree", "remove", "--force", str(work), check=False)
    return GitDeployment(deployment_id=deployment_id, branch=branch, commit=commit, created=True)


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
                               deployment_id=deployment_id)
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
