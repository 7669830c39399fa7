"""The deployment seam: where an approved candidate goes, and how it is taken back.

A `Deployer` puts a candidate live (`deploy`), says whether what it put live is in place
(`verify`), and takes it back (`rollback`). Every step is idempotent by deployment id, so a
node that runs again after a crash changes nothing the second time. The interface assumes
nothing about how a target goes live: a branch, an alias swapped in place, or (later) a
green copy beside the blue one; the typed `Deployment` record carries what rollback needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from upgate.records import Candidate, Deployment


class Health(BaseModel):
    """Whether a deployment is in place as recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    healthy: bool
    detail: dict[str, Any] = Field(default_factory=dict)


class RollbackResult(BaseModel):
    """What a rollback did: restored the version before, found it done, or could not.

    "nothing_to_restore" is an honest outcome, not a success: the deployment stays live
    because there is no earlier version to put back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["restored", "already_restored", "nothing_to_restore"]
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def restored(self) -> bool:
        """Whether the version before is what is live now."""
        return self.status in ("restored", "already_restored")


class Deployer(ABC):
    """One deploy target (see the module docstring)."""

    target: Literal["git", "vllm", "bluegreen"]
    """The tag recorded in `Deployment.target`, which picks the deployer for rollback."""

    @abstractmethod
    def deploy(self, candidate: Candidate, deployment_id: str, *, cycle_id: str,
               message: str) -> Deployment:
        """Put `candidate` live; running it again with the same id changes nothing."""

    @abstractmethod
    def verify(self, deployment: Deployment) -> Health:
        """Whether `deployment` is what the target serves now."""

    @abstractmethod
    def rollback(self, deployment: Deployment) -> RollbackResult:
        """Put back what was live before `deployment`; idempotent."""
