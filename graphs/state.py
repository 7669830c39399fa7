"""The graph's state: one thread per cycle.

The state holds plain data (dicts of JSON types) so LangGraph's strict msgpack
checkpointing stores it without any custom type; the domain records in `upgate.records`
validate it at the edges of each node.
"""

from __future__ import annotations

from typing import Any, TypedDict

from upgate.records import Outcome


class CycleState(TypedDict, total=False):
    """The graph's state: one thread per cycle."""

    cycle_id: str
    requester: str
    started_at: str
    observation: dict[str, Any]
    proposal: dict[str, Any] | None
    policy: dict[str, Any]
    candidate: dict[str, Any] | None
    verdict: dict[str, Any] | None
    revisions: int
    feedback: str
    approval: dict[str, Any] | None
    approval_error: str
    deployment: dict[str, Any] | None
    rollout: dict[str, Any] | None
    monitor: dict[str, Any] | None
    outcome: Outcome
    reason: str
