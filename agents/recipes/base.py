"""The recipe seam: what every improvement recipe is, and what it may use.

A recipe turns a proposal's bounded arguments into a change of the target inside a sandbox.
It declares its name, the kind of change it makes (the policy's kinds), a version, the
pydantic model of its arguments (the proposer's schema is built from these), its scope (which
manifest files it may change) and whether another attempt can differ after a critic's
"revise". Adding a recipe is one module with a `RECIPE` object and one registry line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict

from upgate.config import TargetManifest
from upgate.errors import SandboxError
from upgate.policy import ChangeKind
from upgate.records import Artifact, ModelRef, Proposal
from upgate.sandboxes.base import Mount, Sandbox

SandboxFactory = Callable[[list[Mount]], Sandbox]
"""Makes a (not yet started) sandbox with the given mounts."""

A = TypeVar("A", bound=BaseModel)


class RecipeArgs(BaseModel):
    """Base of every recipe's argument model: unknown keys are errors.

    Each field is one field of the proposer's draft (under its alias, when it has one) and
    must be required: strict JSON-schema decoding asks the model for every field.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoArgs(RecipeArgs):
    """The arguments of a recipe that takes none."""


@dataclass
class CoderContext:
    """What the coder may use: the target's public side only (never the hidden split)."""

    target_tree: Path
    manifest: TargetManifest
    visible_cases: list[dict[str, Any]]
    sandbox: SandboxFactory
    train_sandbox: SandboxFactory
    base_model_path: Path | None
    artifacts_dir: Path
    model: BaseChatModel
    made_by: ModelRef
    retries: int
    max_steps: int = 8


@dataclass
class RecipeContext:
    """One application of a recipe: the coder's means, the proposal, and its log."""

    coder: CoderContext
    proposal: Proposal
    feedback: str = ""
    log: list[str] = field(default_factory=list)


class Recipe(Protocol):
    """One improvement recipe (see the module docstring)."""

    @property
    def name(self) -> str:
        """The name the proposer chooses and the ledger records."""

    @property
    def kind(self) -> ChangeKind:
        """The kind of change, which the policy rules on."""

    @property
    def version(self) -> str:
        """Bumped whenever what the recipe does changes."""

    @property
    def summary(self) -> str:
        """One line for the proposer's menu."""

    @property
    def arguments(self) -> type[RecipeArgs]:
        """The pydantic model of the recipe's bounded arguments."""

    @property
    def scope(self) -> tuple[str, ...] | None:
        """Manifest file fields (e.g. "config_file") it may change; () none, None any file."""

    @property
    def revisable(self) -> bool:
        """Whether a critic's "revise" can lead to a different candidate on another try."""

    def apply(self, box: Sandbox, ctx: RecipeContext, args: RecipeArgs) -> tuple[Artifact, ...]:
        """Change the target in `box` (already holding a copy of it); return the artifacts."""


def typed_args(args: RecipeArgs, model: type[A]) -> A:
    """`args` as the recipe's own argument model (misuse if another recipe's were given)."""
    if not isinstance(args, model):
        raise TypeError(f"expected {model.__name__} arguments, got {type(args).__name__}")
    return args


def require(value: str | None, what: str) -> str:
    """A manifest setting the recipe cannot work without."""
    if not value:
        raise SandboxError(f"the target manifest does not name its {what}; add it to "
                           "upgate-target.toml to use this recipe")
    return value
