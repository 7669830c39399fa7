"""Run-scoped dependencies handed to every node through LangGraph's runtime context.

Nodes never build clients: the CLI (or a test) builds one `Deps` and passes it as the
context, so tests compile the same graph with scripted models and fake sandboxes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from upgate.config import Settings, TargetManifest
from upgate.deploy.vllm import VllmAdmin
from upgate.evals.harness import ChatChoiceHarness
from upgate.evals.suite import Suite
from upgate.ledger import Ledger
from upgate.policy import Policy
from upgate.sandboxes.base import Mount, Sandbox
from upgate.store import Store

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

    @property
    def state_dir(self) -> Path:
        """The state folder."""
        return self.settings.state_dir
