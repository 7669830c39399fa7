"""Run cycles: start one, resume one, answer its approval, cancel one, list what waits.

Decisions on one cycle are serialised by a lock file in the state folder (across
processes), and each answers the request pending when it got the lock: a second decision
racing the first finds the cycle moved on and is recorded as late, not lost.
"""

from __future__ import annotations

import fcntl
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.types import Command

from upgate.admin import replay
from upgate.approvals import sign, signature_valid
from upgate.errors import ApprovalError
from upgate.graphs.batch import BatchReport, start_batch
from upgate.graphs.builder import compile_graph, sqlite_checkpointer
from upgate.graphs.deps import Deps
from upgate.graphs.state import CycleState
from upgate.identity import Signer
from upgate.notify.events import outbox_for
from upgate.records import Decision

log = logging.getLogger(__name__)

Progress = Callable[[str, dict[str, Any]], None]


CYCLE_ID = re.compile(r"(?:c|rollback-)[a-z0-9-]{1,63}")
"""Cycle ids: what `new_cycle_id` makes (and `rollback-<alias>-<utc>` for a manual rollback
not tied to a cycle), and nothing a path or a query could abuse."""


def validate_cycle_id(cycle_id: str) -> str:
    """The cycle id, or an error saying what one looks like."""
    if not isinstance(cycle_id, str) or not CYCLE_ID.fullmatch(cycle_id):
        raise ApprovalError(
            f"invalid cycle id {cycle_id!r}: cycle ids look like c20260301-120000-1a2b3c "
            "(see `upgate inbox` or `upgate history`)"
        )
    return cycle_id


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
        cycle_id = validate_cycle_id(cycle_id or new_cycle_id())
        self.deps.ledger.append(cycle_id, "start", "started",
                                {"requester": requester, "target": self.deps.manifest.name,
                                 "policy_version": self.deps.policy.version_id,
                                 "policy_hash": self.deps.policy.content_hash,
                                 "sandbox": self.deps.settings.sandbox.type},
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

    @contextmanager
    def cycle_lock(self, cycle_id: str) -> Iterator[None]:
        """Hold the cycle's lock (one decision, resume or cancel at a time, across processes)."""
        folder = self.deps.state_dir / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{validate_cycle_id(cycle_id)}.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def stale_reason(self, request: dict[str, Any]) -> str:
        """Why a pending request can no longer be approved ('' if it still can)."""
        if request.get("policy_version") != self.deps.policy.version_id:
            return (f"the policy changed ({request.get('policy_version')} -> "
                    f"{self.deps.policy.version_id})")
        ttl = timedelta(hours=self.deps.policy.thresholds.approval_ttl_hours)
        try:
            requested = datetime.fromisoformat(str(request.get("requested_at")))
        except ValueError:
            return "the request's time is unreadable"
        if self.deps.now() - requested > ttl:
            return "the approval request expired"
        return ""

    def resume(self, cycle_id: str, *, progress: Progress | None = None) -> CycleState:
        """Continue a cycle from its last checkpoint (after a crash or a stop).

        A cycle waiting on a request that expired, or was made under another policy, goes
        back for a fresh critique and a new request.
        """
        with self.cycle_lock(cycle_id):
            snap = self.graph.get_state(self._config(cycle_id))
            if not snap.values:
                started = [e for e in self.deps.ledger.entries(cycle_id) if e.node == "start"]
                if not started:
                    raise ApprovalError(f"no cycle {cycle_id!r} in {self.deps.state_dir}")
                if self._cancelled(cycle_id):
                    return self.state(cycle_id)
                # Killed before the first checkpoint: start it again under the same id.
                return self.start(str(started[0].payload["requester"]), cycle_id=cycle_id,
                                  progress=progress)
            if snap.interrupts:
                request = self.pending(cycle_id)
                why = self.stale_reason(request) if request else ""
                if not why:
                    return self.state(cycle_id)
                return self._recritique(cycle_id, why, request or {}, progress)
            if not snap.next:
                return self.state(cycle_id)
            return self._drive(cycle_id, None, progress)

    def _recritique(self, cycle_id: str, why: str, request: dict[str, Any],
                    progress: Progress | None) -> CycleState:
        expired = {"reason": why, "requested_at": request.get("requested_at"),
                   "policy_version": self.deps.policy.version_id,
                   "policy_hash": self.deps.policy.content_hash}
        self.deps.ledger.append(
            cycle_id, "approve", "expired", expired,
            key=f"{cycle_id}/approve/expired/{request.get('requested_at')}",
            outbox=outbox_for(self.deps.settings.notify, self.deps.state_dir, "approve",
                              "expired", expired))
        # As if the candidate had just been built: the critic judges it again under the
        # policy in force, and the gate makes a fresh request.
        self.graph.update_state(self._config(cycle_id),
                                {"approval_error": "", "outcome": "running"},
                                as_node="implement")
        return self._drive(cycle_id, None, progress)

    def decide(self, cycle_id: str, *, action: str, person: str, signer: Signer,
               evidence_hash: str, reason: str = "", channel: str = "cli",
               progress: Progress | None = None) -> CycleState:
        """Resume a waiting cycle with a person's decision, signed by `signer`.

        `evidence_hash` is the packet the person reviewed: it must be the one the pending
        request is bound to. The runner signs nothing itself; the approve node verifies
        the signature with the keyring (public keys only).
        """
        validate_cycle_id(cycle_id)
        with self.cycle_lock(cycle_id):
            request = self.pending(cycle_id)
            decision = sign(Decision(
                cycle_id=cycle_id, action=action,  # type: ignore[arg-type]
                approver=person, reason=reason,
                candidate_hash=(request or {}).get("candidate_hash", ""),
                evidence_hash=evidence_hash,
                policy_version=(request or {}).get("policy_version", ""),
                issued_at=self.deps.now().isoformat(), channel=channel,  # type: ignore[arg-type]
            ), signer)
            if request is None:
                self._record_late(cycle_id, decision)
                raise ApprovalError(
                    f"cycle {cycle_id} is not waiting for a decision; see `upgate inbox`"
                )
            if evidence_hash != request["evidence_hash"]:
                raise ApprovalError(
                    f"the evidence you reviewed ({evidence_hash[:16]}) is not the packet this "
                    f"request is bound to ({request['evidence_hash'][:16]}); review it again "
                    f"with `upgate show {cycle_id}`"
                )
            state = self._drive(cycle_id, Command(resume=decision.model_dump(mode="json")),
                                progress)
            if state.get("approval_error") and self.pending(cycle_id) is not None:
                raise ApprovalError(state["approval_error"])
            return state

    def _record_late(self, cycle_id: str, decision: Decision) -> None:
        """A signed decision that arrived after the cycle moved on: kept, not lost."""
        if cycle_id not in self.deps.ledger.cycles():
            return
        if not signature_valid(decision, replay(self.deps.store, self.deps.ledger).keyring()):
            return
        self.deps.ledger.append(cycle_id, "approve", "late", {
            "approver": decision.approver, "action": decision.action,
            "signer": decision.signer, "signature": decision.signature,
            "reason": "the cycle was no longer waiting for a decision"})

    def cancel(self, cycle_id: str, *, person: str, reason: str) -> CycleState:
        """End an unfinished cycle (waiting, stopped, or stuck) with a reason."""
        validate_cycle_id(cycle_id)
        if not reason.strip():
            raise ApprovalError("say why: `upgate cancel CYCLE --reason TEXT`")
        with self.cycle_lock(cycle_id):
            if cycle_id not in self.deps.ledger.cycles():
                raise ApprovalError(f"no cycle {cycle_id!r} in {self.deps.state_dir}")
            snap = self.graph.get_state(self._config(cycle_id))
            if self._cancelled(cycle_id) or (snap.values and not snap.next):
                raise ApprovalError(f"cycle {cycle_id} already ended "
                                    f"({snap.values.get('outcome', 'cancelled')})")
            self.deps.ledger.append(cycle_id, "record", "cancelled",
                                    {"by": person, "reason": reason},
                                    key=f"{cycle_id}/record/cancelled")
            if snap.values:  # ends the thread: nothing waits, nothing resumes
                self.graph.update_state(
                    self._config(cycle_id),
                    {"outcome": "cancelled", "reason": f"cancelled by {person}: {reason}"},
                    as_node="record")
            return self.state(cycle_id)

    def _cancelled(self, cycle_id: str) -> bool:
        return self.deps.ledger.find(f"{cycle_id}/record/cancelled") is not None

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
            if self._cancelled(cycle_id):
                continue
            request = self.pending(cycle_id) if snap.interrupts else None
            if request is not None and self.stale_reason(request):
                out.append(cycle_id)  # resume re-critiques it
                continue
            if (snap.values and snap.next and not snap.interrupts) or (not snap.values and any(
                e.node == "start" for e in self.deps.ledger.entries(cycle_id)
            )):
                out.append(cycle_id)
        return out
