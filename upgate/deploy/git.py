"""Deploy a code, prompt or config change as a commit on a new branch of the target repo.

Never main, never a force-push: the branch is created from the base branch in a temporary
worktree, the candidate's diff applied and committed with the deployment id as a trailer.
Running it again with the same deployment id finds the branch and does nothing.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from upgate.deploy.base import Deployer, Health, RollbackResult
from upgate.errors import DeployError
from upgate.records import Candidate, Deployment

log = logging.getLogger(__name__)

PROTECTED_BRANCHES = frozenset({"main", "master"})


class GitDeployment(BaseModel):
    """Where a change landed."""

    deployment_id: str
    branch: str
    commit: str
    created: bool


def _git(repo: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, input=stdin,
        check=False,
    )
    if check and proc.returncode != 0:
        raise DeployError(
            f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout.strip()


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
    """A code, prompt or config change goes live as a new branch of the target repo."""

    target: Literal["git", "vllm"] = "git"

    def __init__(self, repo: Path, *, base: str) -> None:
        self.repo = repo
        self.base = base

    def deploy(self, candidate: Candidate, deployment_id: str, *, cycle_id: str,
               message: str) -> Deployment:
        """Commit the candidate's diff on the cycle's branch (see `deploy_branch`)."""
        landed = deploy_branch(self.repo, base=self.base, branch=branch_name(cycle_id),
                               diff=candidate.diff, message=message,
                               deployment_id=deployment_id)
        return Deployment(target="git", **landed.model_dump())

    def verify(self, deployment: Deployment) -> Health:
        """The branch exists and still points at the deployed commit."""
        branch = deployment.branch or ""
        head = _git(self.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                    check=False)
        return Health(healthy=bool(head) and head == deployment.commit,
                      detail={"branch": branch, "head": head or None,
                              "commit": deployment.commit})

    def rollback(self, deployment: Deployment) -> RollbackResult:
        """Delete the branch: the base branch never held the change."""
        branch = deployment.branch or ""
        if delete_branch(self.repo, branch):
            return RollbackResult(status="restored", detail={"branch_deleted": branch})
        return RollbackResult(status="already_restored", detail={"branch_absent": branch})
