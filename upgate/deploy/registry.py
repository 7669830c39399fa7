"""Which deployer takes which candidate: chosen by the candidate's kind, found again for
monitor and rollback by the target its `Deployment` record names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from upgate.deploy.base import Deployer
from upgate.deploy.bluegreen import BlueGreenDeployer, BlueGreenParts
from upgate.deploy.git import GitDeployer
from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import DeployError
from upgate.ledger import Ledger
from upgate.policy import ChangeKind, LandingMode
from upgate.records import Candidate
from upgate.store import Store

DeployTarget = Literal["git", "vllm", "bluegreen"]


@dataclass(frozen=True)
class DeployParts:
    """What deployers are built from."""

    repo: Path
    base_branch: str
    store: Store
    admin: VllmAdmin | None
    alias: str | None
    bluegreen: BlueGreenParts | None = None
    landing: LandingMode = "branch"
    """How a git change lands on `base_branch` (the policy's `[landing] mode`)."""
    baseline_of: Callable[[str], str | None] | None = None
    """The commit a cycle's candidate was judged on, by cycle id (from the ledger)."""
    ledger: Ledger | None = None
    """Where the LoRA deployer finds approved versions (see `upgate.verified`)."""


DEPLOYERS: dict[str, Callable[[DeployParts], Deployer]] = {
    "git": lambda p: GitDeployer(p.repo, base=p.base_branch, landing=p.landing,
                                 baseline_of=p.baseline_of),
    "vllm": lambda p: LoraAliasDeployer(p.admin, p.store, p.alias, p.ledger),
    "bluegreen": lambda p: BlueGreenDeployer(p.bluegreen, p.alias),
}
"""Deployer factories by target tag."""

TARGET_BY_KIND: dict[ChangeKind, DeployTarget] = {
    "code": "git", "prompt": "git", "config": "git", "model": "vllm",
}
"""Where each kind of change goes live."""


def target_for(candidate: Candidate) -> DeployTarget:
    """Where a candidate goes live: by its kind, except that a model candidate carrying a
    whole model folder (new weights or serving configuration) goes blue/green."""
    if candidate.kind == "model" and any(a.kind == "model" for a in candidate.artifacts):
        return "bluegreen"
    return TARGET_BY_KIND[candidate.kind]


def deployer_for(target: str, parts: DeployParts) -> Deployer:
    """The deployer for a target tag; a clear error for an unknown one."""
    factory = DEPLOYERS.get(target)
    if factory is None:
        raise DeployError(f"no deployer for target {target!r}; known: {sorted(DEPLOYERS)}")
    return factory(parts)

