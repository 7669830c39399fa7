"""Run cycles: start one, resume one, answer its approval, list what waits."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.types import Command

from upgate.approvals import sign
from upgate.errors import ApprovalError
from upgate.graphs.batch import BatchReport, start_batch
from upgate.graphs.builder import compile_graph, sqlite_checkpointer
from upgate.graphs.deps import Deps
from upgate.graphs.state import CycleState
from upgate.records import Decision

log = logging.getLogger(__name__)

Progress = Callable[[str, dict[str, Any]], None]


def new_cycle_id(now: datetime | None = None) -> str:
    """A sortable, unique cycle id."""
    now = now or datetime.now(UTC)
    return f"c{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class Runner:
    """Drives the compiled graph over one state folder."""

    def __init__(self, deps: Deps, checkpointer: Any | None = None) -> None:
        self.deps = deps
        self.checkpointer = checkpointer or sqlite_checkpointer(deps.state_dir)
        self.graph = compile_graph(self.checkpointer)

    def _config(self, cycle_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": cycle_id}}

    def _drive(self, cycle_id: str, payload: CycleState | Command[Any] | None,
               progress: Progress | None) -> CycleState:
        # durability="sync": each step's checkpoint is on disk before the next step starts,
        # so a kill at any point resumes from the last finished node.
        for update in self.graph.stream(payload, self._config(cycle_id), context=self.deps,
                                        stream_mode="updates", durability="sync"):
            assert isinstance(update, dict)
            for node, data in update.items():
                if progress is not None and node != "__interrupt__":
                    progress(node, data or {})
        return self.state(cycle_id)

    def start(self, requester: str, *, cycle_id: str | None = None,
              progress: Progress | None = None) -> CycleState:
        """Start a new cycle; returns its state when it ends or waits for approval."""
        cycle_id = cycle_id or new_cycle_id()
        self.deps.ledger.append(cycle_id, "start", "started",
                                {"requester": requester, "target": self.deps.manifest.name},
                                key=f"{cycle_id}/start")
        initial: CycleState = {
            "cycle_id": cycle_id, "requester": requester,
            "started_at": self.deps.now().isoformat(), "outcome": "running",
        }
        return self._drive(cycle_id, initial, progress)

    def batch(self, requester: str, *, max_cycles: int, max_pending: int | None = None,
              pause_after_failures: int | None = None, progress: Progress | None = None,
              on_cycle: Callable[[CycleState], None] | None = None) -> BatchReport:
        """Run cycles one after another until a pause threshold is reached.

        The thresholds are the policy's (`[autonomy]`, `thresholds.pause_after_failures`);
        `max_pending` and `pause_after_failures` override theirs. See `upgate.graphs.batch`.
        """
        return start_batch(self, requester, max_cycles=max_cycles, max_pending=max_pending,
                           pause_after_failures=pause_after_failures, progress=progress,
                           on_cycle=on_cycle)

    def resume(self, cycle_id: str, *, progress: Progress | None = None) -> CycleState:
        """Continue a cycle from its last checkpoint (after a crash or a stop)."""
        snap = self.graph.get_state(self._config(cycle_id))
        if not snap.values:
            started = [e for e in self.deps.ledger.entries(cycle_id) if e.node == "start"]
            if not started:
                raise ApprovalError(f"no cycle {cycle_id!r} in {self.deps.state_dir}")
            # Killed before the first checkpoint: start it again under the same id.
            return self.start(str(started[0].payload["requester"]), cycle_id=cycle_id,
                              progress=progress)
        if snap.interrupts:
            return self.state(cycle_id)
        if not snap.next:
            return self.state(cycle_id)
        return self._drive(cycle_id, None, progress)

    def decide(self, cycle_id: str, *, action: str, person: str, reason: str = "",
               channel: str = "cli", progress: Progress | None = None) -> CycleState:
        """Resume a waiting cycle with an authenticated person's signed decision."""
        request = self.pending(cycle_id)
        if request is None:
            raise ApprovalError(
                f"cycle {cycle_id} is not waiting for a decision; see `upgate inbox`"
            )
        decision = sign(Decision(
            cycle_id=cycle_id, action=action,  # type: ignore[arg-type]
            approver=person, reason=reason, candidate_hash=request["candidate_hash"],
            evidence_hash=request["evidence_hash"], policy_version=request["policy_version"],
            issued_at=self.deps.now().isoformat(), channel=channel,  # type: ignore[arg-type]
        ), self.deps.secret)
        state = self._drive(cycle_id, Command(resume=decision.model_dump(mode="json")),
                            progress)
        if state.get("approval_error") and self.pending(cycle_id) is not None:
            raise ApprovalError(state["approval_error"])
        return state

    def state(self, cycle_id: str) -> CycleState:
        """The cycle's current state values."""
        values = self.graph.get_state(self._config(cycle_id)).values
        return cast(CycleState, values)

    def pending(self, cycle_id: str) -> dict[str, Any] | None:
        """The approval request a cycle waits on, if any."""
        snap = self.graph.get_state(self._config(cycle_id))
        for intr in snap.interrupts:
            value = intr.value
            if isinstance(value, dict) and "candidate_hash" in value:
                return value
        return None

    def inbox(self) -> list[dict[str, Any]]:
        """Every cycle waiting for a human decision."""
        waiting = []
        for cycle_id in self.deps.ledger.cycles():
            req = self.pending(cycle_id)
            if req is not None:
                waiting.append(req)
        return waiting

    def unfinished(self) -> list[str]:
        """Cycles that stopped mid-way (not ended, not waiting for a human)."""
        out = []
        for cycle_id in self.deps.ledger.cycles():
            snap = self.graph.get_state(self._config(cycle_id))
            if (snap.values and snap.next and not snap.interrupts) or (not snap.values and any(
                e.node == "start" for e in self.deps.ledger.entries(cycle_id)
            )):
                out.append(cycle_id)
        return out
