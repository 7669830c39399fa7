"""Batch autonomy: cycles one after another until a threshold pauses them or a person stops.

Between cycles the policy's thresholds (`upgate.autonomy`) are checked; between the graph
steps of a cycle the stop flag is, and two thresholds that must hold a cycle mid-way: a
proposal's risk (before anything is built) and the accumulated regression a candidate that
the policy would approve automatically would add (before the gate). Leaving the graph's
stream between steps leaves the cycle at its last checkpoint, resumable. A paused or
stopped batch is held until a person resumes it (a new batch supersedes a paused one, on
the record; a stopped one it does not); every transition is in the ledger, and
every pause is announced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

from upgate.autonomy import (
    COST_EVENT,
    COST_NODE,
    RESET_EVENT,
    BatchView,
    Pause,
    accumulated_regression,
    check_accumulated,
    check_risk,
    first_pause,
    served_hidden_score,
    verdict_numbers,
)
from upgate.batches import Board, Status, kill_sandboxes, process_alive
from upgate.errors import UpgateError
from upgate.graphs.state import CycleState
from upgate.ledger import Entry, OutboxWrite
from upgate.meter import SANDBOX_TIME, Meter, metered_factory, metering
from upgate.notify.events import outbox_for
from upgate.records import Proposal

if TYPE_CHECKING:
    from upgate.graphs.runner import Progress, Runner

log = logging.getLogger(__name__)


class BatchHeldError(UpgateError):
    """A batch is paused or stopped; only a person's `upgate batch resume` continues."""


@dataclass
class BatchReport:
    """What a batch run did and why it stopped."""

    cycles: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    stopped_because: str = ""
    batch_id: str = ""
    pause: Pause | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    """Per cycle: outcome, the served version's hidden-split score after it, and its cost."""


class _Halt(Exception):
    def __init__(self, pause: Pause) -> None:
        super().__init__(pause.detail)
        self.pause = pause


@dataclass
class BatchLoop:
    """One leg of a batch: from its start (or a person's resume) to its next pause or end."""

    runner: Runner
    requester: str
    batch_id: str
    max_cycles: int
    leg_started_at: str
    max_pending: int | None = None
    pause_after_failures: int | None = None
    progress: Progress | None = None
    on_cycle: Callable[[CycleState], None] | None = None
    acknowledged: frozenset[str] = frozenset()
    report: BatchReport = field(default_factory=BatchReport)

    def __post_init__(self) -> None:
        deps = self.runner.deps
        self.board = Board(deps.store)
        self.report.batch_id = self.batch_id
        deps.sandbox = metered_factory(deps.sandbox)
        deps.train_sandbox = metered_factory(deps.train_sandbox)
        self._served: float | None = _last_served_score(self.runner)

    # -- between steps ---------------------------------------------------------------

    def _stop_pause(self, cycle_id: str = "") -> Pause | None:
        who = self.board.stop_requested(self.batch_id)
        if who is None:
            return None
        return Pause(threshold="stop", action="stop", observed=1, limit=1, cycle_id=cycle_id,
                     detail=f"stopped by {who[0]}: {who[1]}",
                     next_step="a person resumes it with `upgate batch resume --as NAME "
                               "--reason '...'`")

    def _watch(self, cycle_id: str) -> Progress:
        def watch(node: str, data: dict[str, Any]) -> None:
            if self.progress is not None:
                self.progress(node, data)
            pause = self._stop_pause(cycle_id)
            if pause is None and cycle_id not in self.acknowledged:
                pause = self._mid_cycle_pause(cycle_id, node, data)
            if pause is not None:
                raise _Halt(pause)
        return watch

    def _mid_cycle_pause(self, cycle_id: str, node: str, data: dict[str, Any]) -> Pause | None:
        autonomy = self.runner.deps.policy.autonomy
        if node == "propose" and data.get("proposal"):
            return check_risk(str(data["proposal"].get("risk", "high")),
                              autonomy.pause_at_risk, cycle_id)
        verdict = data.get("verdict") or {}
        if node == "critique" and verdict.get("decision") == "accept":
            proposal = Proposal.model_validate(self.runner.state(cycle_id)["proposal"])
            if self.runner.deps.policy.requires_approval(proposal.kind):
                return None  # a person sees the evidence; the next cycle checks the sum
            deltas, _ = verdict_numbers(verdict)
            totals = accumulated_regression(self.runner.deps.ledger.entries())
            return check_accumulated(totals, autonomy.max_accumulated_regression,
                                     candidate=deltas, cycle_id=cycle_id)
        return None

    # -- cycles ----------------------------------------------------------------------

    def _cycle(self, cycle_id: str, resume: bool) -> tuple[CycleState, Pause | None]:
        deps = self.runner.deps
        meter = Meter(deps.ledger, cycle_id)
        started = time.monotonic()
        halted: Pause | None = None
        with metering(meter):
            try:
                if resume:
                    state = self.runner.resume(cycle_id, progress=self._watch(cycle_id))
                else:
                    state = self.runner.start(self.requester, cycle_id=cycle_id,
                                              progress=self._watch(cycle_id))
            except _Halt as halt:
                halted = halt.pause
                state = self.runner.state(cycle_id)
            except Exception:
                # Killing the sandboxes in flight may break a step mid-way; when the stop
                # button did it, the cycle stays at its last checkpoint like any stop.
                halted = self._stop_pause(cycle_id)
                if halted is None:
                    raise
                log.info("cycle %s broke off after the stop button", cycle_id, exc_info=True)
                state = self.runner.state(cycle_id)
        outcome = "held" if halted else str(state.get("outcome", ""))
        deltas, hidden = verdict_numbers(state.get("verdict"))
        self._served = served_hidden_score(outcome, hidden, self._served)
        cost = {
            "batch_id": self.batch_id, "outcome": outcome,
            "kind": (state.get("proposal") or {}).get("kind"),
            "recipe": (state.get("proposal") or {}).get("recipe"),
            "wall_s": round(time.monotonic() - started, 3), "tokens": meter.tokens,
            "model_calls": meter.calls, "sandbox_s": round(meter.sandbox_s, 3),
            "sandbox_cpu_s": round(meter.sandbox_cpu_s, 3),
            "sandbox_time": SANDBOX_TIME, "slice_deltas": deltas, "hidden": hidden,
            "served_hidden_score": self._served,
        }
        deps.ledger.append(cycle_id, COST_NODE, COST_EVENT, cost)
        self.report.cycles.append(cycle_id)
        self.report.outcomes.append(outcome)
        self.report.curve.append({"cycle_id": cycle_id, **cost})
        if self.on_cycle is not None:
            self.on_cycle(state)
        return state, halted

    def _between_cycles(self) -> Pause | None:
        deps = self.runner.deps
        now = deps.now()
        entries = deps.ledger.entries()
        view = BatchView(
            entries=entries, verify=deps.ledger.verify(), pending=self._pending(entries),
            outcomes=[o for o in self.report.outcomes if o != "held"],
            leg_started_at=self.leg_started_at,
            day_started_at=now.astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                       microsecond=0).isoformat(),
            now=now,
        )
        limit = (self.pause_after_failures
                 or deps.policy.thresholds.pause_after_failures)
        return first_pause(view, deps.policy.autonomy, limit, self.max_pending)

    def _pending(self, entries: list[Entry]) -> int:
        """Approvals waiting; only cycles with no final record can wait (the inbox's rule,
        without reading the checkpoint of every cycle ever run)."""
        recorded = {e.cycle_id for e in entries if e.node == "record"}
        open_cycles = dict.fromkeys(e.cycle_id for e in entries
                                    if e.node == "start" and e.cycle_id not in recorded)
        # An expired request (or one made under another policy) no longer blocks autonomy:
        # `resume` sends it back for a fresh critique.
        requests = (self.runner.pending(c) for c in open_cycles)
        return sum(r is not None and not self.runner.stale_reason(r) for r in requests)

    def run(self, resume_cycle: str = "") -> BatchReport:
        """Run until a pause, a stop or `max_cycles` new cycles; record and announce it."""
        from upgate.graphs.runner import new_cycle_id

        pause: Pause | None = None
        if resume_cycle:
            _, pause = self._cycle(resume_cycle, resume=True)
        new = 0
        while pause is None:
            pause = self._stop_pause() or self._between_cycles()
            if pause is not None or new >= self.max_cycles:
                break
            _, pause = self._cycle(new_cycle_id(), resume=False)
            new += 1
        if pause is None:
            self.report.stopped_because = f"done: {new} cycle(s) run"
            self.board.set_status(self.batch_id, "done")
            self._record("finished", {"reason": self.report.stopped_because})
            return self.report
        self._hold(pause)
        return self.report

    def _record(self, event: str, data: dict[str, Any]) -> None:
        deps = self.runner.deps
        payload = {
            "cycles": self.report.cycles, "outcomes": self.report.outcomes,
            "curve": [{k: c[k] for k in ("cycle_id", "outcome", "served_hidden_score",
                                         "wall_s", "tokens", "sandbox_s")}
                      for c in self.report.curve], **data}
        # A pause or stop is written with its notification in one transaction (the outbox).
        outbox = outbox_for(deps.settings.notify, deps.state_dir, "batch", event,
                            {**payload, **(data.get("pause") or {})})
        deps.ledger.append(self.batch_id, "batch", event, payload, outbox=outbox)

    def _hold(self, pause: Pause) -> None:
        deps = self.runner.deps
        self.report.pause = pause
        self.report.stopped_because = pause.message()
        status: Status = "stopped" if pause.action == "stop" else "paused"
        self.board.set_status(self.batch_id, status, pause.model_dump())
        self._record(status, {"reason": self.report.stopped_because, "pause": pause.model_dump(),
                              "batch_id": self.batch_id, "target": deps.manifest.name})


def _last_served_score(runner: Runner) -> float | None:
    for e in reversed(runner.deps.ledger.entries()):
        if e.node == COST_NODE and e.event == COST_EVENT:
            score = e.payload.get("served_hidden_score")
            return None if score is None else float(score)
    return None


def _announce(runner: Runner, event: str, batch_id: str,
              data: dict[str, Any]) -> list[OutboxWrite]:
    """The "batch running" notification (with its stop button), in the entry's transaction."""
    deps = runner.deps
    return outbox_for(deps.settings.notify, deps.state_dir, "batch", event,
                      {**data, "batch_id": batch_id, "target": deps.manifest.name})


def start_batch(runner: Runner, requester: str, *, max_cycles: int,
                max_pending: int | None = None, pause_after_failures: int | None = None,
                progress: Progress | None = None,
                on_cycle: Callable[[CycleState], None] | None = None) -> BatchReport:
    """A new batch. Refused while a stopped one waits for a person's resume; a paused one
    is superseded (recorded): the new batch checks every threshold before its first cycle."""
    from upgate.graphs.runner import new_cycle_id

    board = Board(runner.deps.store)
    held = board.held()
    stopped = [b for b in held if b["status"] == "stopped"]
    if stopped:
        b = stopped[-1]
        raise BatchHeldError(
            f"batch {b['batch_id']} is stopped: {(b['pause'] or {}).get('detail', '')}. "
            "A person resumes it with `upgate batch resume --as NAME --reason '...'`")
    batch_id = new_cycle_id().replace("c", "b", 1)
    for b in held:
        runner.deps.ledger.append(b["batch_id"], "batch", "superseded",
                                  {"by": requester, "new_batch": batch_id})
        board.set_status(b["batch_id"], "done")
    started = {"requester": requester, "max_cycles": max_cycles, "max_pending": max_pending,
               "pause_after_failures": pause_after_failures,
               "policy_version": runner.deps.policy.version_id}
    entry = runner.deps.ledger.append(batch_id, "batch", "started", started,
                                      outbox=_announce(runner, "started", batch_id, started))
    board.begin(batch_id, requester)
    return BatchLoop(runner, requester, batch_id, max_cycles, entry.at, max_pending,
                     pause_after_failures, progress, on_cycle).run()


def resume_batch(runner: Runner, person: str, reason: str, *, max_cycles: int,
                 batch_id: str | None = None, progress: Progress | None = None,
                 on_cycle: Callable[[CycleState], None] | None = None) -> BatchReport:
    """A person resumes a paused or stopped batch: recorded, then it runs its next leg."""
    if not reason.strip():
        raise BatchHeldError("say why the batch may continue: --reason '...'")
    board = Board(runner.deps.store)
    held = [b for b in board.held() if batch_id in (None, b["batch_id"])]
    if not held:
        raise BatchHeldError("no paused or stopped batch" + (f" {batch_id}" if batch_id else "")
                             + "; start one with `upgate batch`")
    b = held[-1]
    pause = b["pause"] or {}
    ledger = runner.deps.ledger
    resumed = {"by": person, "reason": reason, "held_by": pause,
               "policy_version": runner.deps.policy.version_id}
    entry = ledger.append(b["batch_id"], "batch", "resumed", resumed,
                          outbox=_announce(runner, "resumed", b["batch_id"], resumed))
    if pause.get("threshold") == "max_accumulated_regression":
        ledger.append(b["batch_id"], COST_NODE, RESET_EVENT, {"by": person, "reason": reason})
    board.begin(b["batch_id"], b["requester"])
    held_cycle = str(pause.get("cycle_id") or "")
    resumable = held_cycle in runner.unfinished()
    loop = BatchLoop(runner, b["requester"], b["batch_id"], max_cycles, entry.at,
                     progress=progress, on_cycle=on_cycle,
                     acknowledged=frozenset({held_cycle} if held_cycle else ()))
    return loop.run(resume_cycle=held_cycle if resumable else "")


STOP_ROLES = ("operator", "approver", "admin")
"""Who may press stop, from any channel: anyone who may run, approve or administer
(stopping is always safe; only a person's resume continues)."""


def press_stop(runner: Runner, person: str, reason: str, batch_id: str | None = None,
               *, channel: str = "cli") -> list[dict[str, Any]]:
    """The stop button: flag running batches, kill their sandboxes, record who, why and
    through which channel (cli, chat, slack)."""
    if not reason.strip():
        raise BatchHeldError("say why you stop it: --reason '...'")
    board = Board(runner.deps.store)
    flagged = board.request_stop(person, reason, batch_id)
    for b in flagged:
        killed = kill_sandboxes(int(b["pid"]), str(b["host"]))
        b["sandboxes_killed"] = killed
        runner.deps.ledger.append(b["batch_id"], "stop", "pressed", {
            "by": person, "reason": reason, "channel": channel, "sandboxes_killed": killed})
        if not process_alive(int(b["pid"]), str(b["host"])):
            # Its process died without a word: nobody else will mark it, so this does.
            pause = Pause(threshold="stop", action="stop", observed=1, limit=1,
                          detail=f"stopped by {person}: {reason} (its process had ended)",
                          next_step="a person resumes it with `upgate batch resume`")
            board.set_status(b["batch_id"], "stopped", pause.model_dump())
            runner.deps.ledger.append(b["batch_id"], "batch", "stopped",
                                      {"reason": pause.message(), "pause": pause.model_dump()})
    return flagged
