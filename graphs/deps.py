"""Run-scoped dependencies handed to every node through LangGraph's runtime context.

Nodes never build clients: the CLI (or a test) builds one `Deps` and passes it as the
context, so tests compile the same graph with scripted models and fake sandboxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from upgate.config import Settings, TargetManifest
from upgate.deploy.base import Deployer
from upgate.deploy.bluegreen import BlueGreenParts, bluegreen_parts
from upgate.deploy.registry import DeployParts, deployer_for
from upgate.deploy.vllm import VllmAdmin
from upgate.evals.harness import ChatChoiceHarness
from upgate.evals.suite import Suite
from upgate.gateway.routes import RouteTable
from upgate.ledger import Ledger
from upgate.policy import Policy
from upgate.progress import ProgressBoard, ProgressSink
from upgate.rollout.probe import PinnedClientFactory, openai_pinned_client
from upgate.sandboxes.base import Mount, Sandbox
from upgate.store import Store
from upgate.target_tree import TargetTrees

SandboxFactory = Callable[[list[Mount]], Sandbox]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deps:
    """Everything the nodes of one cycle use."""

    settings: Settings
    policy: Policy
    ledger: Ledger
    store: Store
    manifest: TargetManifest
    suite: Suite
    proposer: BaseChatModel
    coder: BaseChatModel
    critic: BaseChatModel
    sandbox: SandboxFactory
    train_sandbox: SandboxFactory
    harness: ChatChoiceHarness
    admin: VllmAdmin | None
    now: Callable[[], datetime] = field(default=_utcnow)
    monitor_cases: int = 16
    pinned_client: PinnedClientFactory = openai_pinned_client
    """How a rollout sends suite cases through the gateway pinned to one version."""
    rollout_sleep: Callable[[float], None] = time.sleep
    """How a rollout step waits out its bake time."""
    progress: ProgressSink | None = None
    """Where long steps report progress; None: the state database's board alone."""

    @property
    def state_dir(self) -> Path:
        """The state folder."""
        return self.settings.state_dir

    @cached_property
    def progress_board(self) -> ProgressBoard:
        """The progress of running steps, in the state database (other processes read it)."""
        return ProgressBoard(self.store)

    def progress_sink(self) -> ProgressSink:
        """Where this process's long steps publish progress."""
        return self.progress if self.progress is not None else self.progress_board

    @cached_property
    def trees(self) -> TargetTrees:
        """The target's exported trees, cached by commit (read-only; sandboxes copy them)."""
        return TargetTrees(self.settings.target.path, self.state_dir / "trees")

    @cached_property
    def routes(self) -> RouteTable:
        """The gateway's route table and request log."""
        return RouteTable(self.settings.gateway_db)

    def base_tree(self) -> Path:
        """The target's tree at its base branch now."""
        return self.trees.at(self.settings.target.base_branch)

    @cached_property
    def bluegreen(self) -> BlueGreenParts:
        """The route table, servers table and launcher a blue/green switch uses."""
        return bluegreen_parts(self.settings, self.policy.rollout.rollback_window_s,
                               self.ledger)

    def deployer(self, target: str) -> Deployer:
        """The deployer for a target tag ("git", "vllm", "bluegreen"), built from these parts."""
        return deployer_for(target, DeployParts(
            repo=self.settings.target.path, base_branch=self.settings.target.base_branch,
            store=self.store, admin=self.admin, alias=self.manifest.model_alias,
            bluegreen=self.bluegreen if target == "bluegreen" else None,
            landing=self.policy.landing.mode, baseline_of=self.baseline_commit,
            ledger=self.ledger,
        ))

    def baseline_commit(self, cycle_id: str) -> str | None:
        """The target commit a cycle observed (and its candidate was judged on), from the
        ledger; None for a cycle that recorded none."""
        for e in self.ledger.entries(cycle_id):
            if e.node == "observe" and e.event == "evidence":
                commit = ((e.payload.get("evidence") or {}).get("baseline") or {}).get("commit")
                return str(commit) if commit else None
        return None
