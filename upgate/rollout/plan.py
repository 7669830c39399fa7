"""What one rollout moves (the alias, its stable and new versions, the policy's steps and
limits) and the route table each traffic state stands for."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from upgate.gateway.routes import Backend
from upgate.policy import Rollout


class RolloutPlan(BaseModel):
    """A deployed-but-not-promoted version of an alias, to be moved in by the policy's steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cycle_id: str
    deployment_id: str
    alias: str
    new: Backend
    """The version being rolled out (its weight is set by each step)."""
    stable: Backend
    """The version that serves the alias now, and what an abort restores."""
    limits: Rollout

    def backends(self, percent: int) -> list[Backend]:
        """The routes of a step sending `percent` of unpinned traffic to the new version.

        At 100 the stable version stays routed with weight 0: no unpinned traffic, still
        reachable by pin (suite cases, a comparison), and one weight change from a rollback.
        """
        return [self.new.model_copy(update={"weight": percent}),
                self.stable.model_copy(update={"weight": 100 - percent})]

    def restored(self) -> list[Backend]:
        """The routes after an abort: all traffic on the stable version."""
        return [self.stable.model_copy(update={"weight": 100})]


class RolloutResult(BaseModel):
    """How a rollout ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["promoted", "aborted"]
    alias: str
    version_name: str
    stable_version: str
    steps_done: int
    breaches: list[str] = Field(default_factory=list)
    restored_version: str | None = None
    resumed: bool = False
