"""The rollout controller: move an alias's traffic to a new version step by step, judge each
step against the stable version, abort and restore on a breach, promote after the last.

Order is what makes it crash-safe: each traffic change is recorded in the ledger *before*
the route table changes (`rollout/step`, `rollout/aborted`), so the ledger never lags
traffic. `run` starts from whatever the ledger holds for this deployment: run again after a
SIGKILL at any point, it re-applies the last recorded traffic state (a no-op when the table
already holds it), records `rollout/resumed`, and carries on from that step; a rollback
someone else recorded meanwhile ends it without moving traffic again.

`rollout/step` carries the step's whole route list (what a resume re-applies) and the route
generation in force when it was recorded, i.e. before its change; `step_checked` carries the
generation the step was judged under.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from upgate.gateway.routes import Backend, RouteTable
from upgate.ledger import Ledger
from upgate.rollout.limits import StepEvidence, SuiteScore, breaches
from upgate.rollout.plan import RolloutPlan, RolloutResult
from upgate.rollout.probe import Prober
from upgate.rollout.progress import Progress, key, read_progress

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Appends one ledger record (with its notifications) under an idempotency key."""

    def __call__(self, node: str, event: str, data: dict[str, Any], key: str) -> None:
        """Record `event` of `node`."""


@dataclass
class RolloutParts:
    """What the controller acts through; tests give doubles for the probe and promotion."""

    routes: RouteTable
    ledger: Ledger
    record: Recorder
    probe: Prober
    promote: Callable[[], None]
    """Point the served alias itself at the new version (idempotent)."""
    verify_stable: Callable[[], dict[str, Any]]
    """After an abort: {models_ok, smoke_ok, detail} for the restored version."""
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    on_event: Callable[[str, dict[str, Any]], None] = field(default=lambda e, d: None)
    """Told of each record as it is made (progress output; a test's kill switch)."""


def _same(a: list[Backend], b: list[Backend]) -> bool:
    """Whether two backend lists route alike (order aside)."""
    def key(x: Backend) -> tuple[str, str, str, int]:
        return x.version, x.base_url, x.model, x.weight

    return sorted(map(key, a)) == sorted(map(key, b))


class RolloutController:
    """Runs (or resumes) one rollout plan to promotion or abort."""

    def __init__(self, plan: RolloutPlan, parts: RolloutParts) -> None:
        self.plan = plan
        self.parts = parts
        self._t0 = parts.clock()

    # records ------------------------------------------------------------------------------

    def _record(self, node: str, event: str, data: dict[str, Any], part: object) -> None:
        body = {"deployment_id": self.plan.deployment_id, **data} if node == "rollout" else data
        self.parts.record(node, event, body, key(self.plan, node, event, part))
        self.parts.on_event(event, body)

    def _duration(self) -> float:
        return round(self.parts.clock() - self._t0, 3)

    def _apply(self, backends: list[Backend], reason: str) -> int:
        """Make the alias's routes `backends` unless they already are; the generation."""
        routes = self.parts.routes
        if _same(routes.routes(self.plan.alias), backends):
            return routes.generation()
        return routes.set_routes(self.plan.alias, backends, reason=reason)

    # the run ------------------------------------------------------------------------------

    def run(self) -> RolloutResult:
        """Run the rollout from where the ledger says it stands."""
        plan = self.plan
        progress = read_progress(self.parts.ledger, plan)
        if progress.started is not None:
            started = datetime.fromisoformat(progress.started.at).timestamp()
            self._t0 = min(self._t0, started)
        if progress.promoted is not None:
            return self._result("promoted", progress, resumed=True)
        if progress.aborted is not None:
            if not progress.rolled_back:  # killed mid-abort: finish it
                self._record_resumed(progress, int((progress.last_step or {}).get("step", 0)),
                                     self.parts.routes.generation())
            return self._finish_abort(progress, list(progress.aborted.get("breaches", [])))
        if progress.rolled_back_elsewhere is not None:
            return self._overtaken(progress)
        steps = plan.limits.steps
        if progress.started is None:
            self._record("rollout", "started", {
                "alias": plan.alias, "stable_version": plan.stable.version,
                "new_version": plan.new.version, "steps": list(steps),
                "bake_s": plan.limits.bake_s}, 0)
            index = 0
        else:
            index = self._resume(progress)
            if index < 0:
                step = int((progress.last_step or {})["step"])
                return self._abort(progress, list(progress.checked[step]["breaches"]))
        for i in range(index, len(steps)):
            number, percent = i + 1, steps[i]
            if (progress.last_step or {}).get("step") != number:
                self._record("rollout", "step", {
                    "step": number, "percent": percent, "alias": plan.alias,
                    "version_name": plan.new.version, "stable_version": plan.stable.version,
                    "generation": self.parts.routes.generation(),
                    "routes": [b.model_dump() for b in plan.backends(percent)]}, number)
                self._apply(plan.backends(percent), f"rollout {plan.deployment_id} step "
                                                    f"{number}: {percent}%")
            checked = self._bake_and_check(number, percent)
            progress.checked[number] = checked
            if not checked["healthy"]:
                return self._abort(progress, list(checked["breaches"]))
        self.parts.promote()
        self._record("rollout", "promoted", {"alias": plan.alias,
                                             "version_name": plan.new.version,
                                             "duration_s": self._duration()}, 0)
        log.info("rollout %s: %s promoted", plan.deployment_id, plan.new.version)
        return self._result("promoted", progress, resumed=progress.started is not None)

    def _resume(self, progress: Progress) -> int:
        """Restore the last recorded step's routes, record the resume; the step index to
        run next (-1: the last step was judged unhealthy, so abort)."""
        last = progress.last_step
        if last is None:
            generation, from_step = self.parts.routes.generation(), 0
            index = 0
        else:
            from_step = int(last["step"])
            backends = [Backend.model_validate(b) for b in last["routes"]]
            generation = self._apply(backends, f"rollout {self.plan.deployment_id} resumed at "
                                               f"step {from_step}")
            checked = progress.checked.get(from_step)
            # Unjudged: judge this step again, on a fresh window; judged: next, or abort.
            index = (from_step - 1 if checked is None
                     else from_step if checked["healthy"] else -1)
        self._record_resumed(progress, from_step, generation)
        return index

    def _record_resumed(self, progress: Progress, from_step: int, generation: int) -> None:
        self._record("rollout", "resumed", {"from_step": from_step, "generation": generation},
                     progress.resumes + 1)
        progress.resumes += 1
        log.info("rollout %s resumed at step %d", self.plan.deployment_id, from_step)

    def _bake_and_check(self, number: int, percent: int) -> dict[str, Any]:
        """Bake the step (suite cases pinned to each version meanwhile), then judge it."""
        plan, parts = self.plan, self.parts
        since = parts.clock()
        suite_new: SuiteScore | None = None
        suite_stable: SuiteScore | None = None
        if plan.limits.suite_cases:
            suite_new = parts.probe.score(plan.new.version)
            suite_stable = parts.probe.score(plan.stable.version)
        left = plan.limits.bake_s - (parts.clock() - since)
        if left > 0:
            parts.sleep(left)
        evidence = StepEvidence(
            new=parts.routes.window(plan.alias, plan.new.version, since=since),
            stable=parts.routes.window(plan.alias, plan.stable.version, since=since),
            suite_new=suite_new, suite_stable=suite_stable)
        found = [str(b) for b in breaches(evidence, plan.limits)]
        checked = {
            "step": number, "percent": percent, "new": evidence.new.model_dump(),
            "stable": evidence.stable.model_dump(),
            "suite": {"new": suite_new.score if suite_new else None,
                      "stable": suite_stable.score if suite_stable else None,
                      "cases": suite_new.cases if suite_new else 0,
                      "errors": {"new": suite_new.errors if suite_new else 0,
                                 "stable": suite_stable.errors if suite_stable else 0}},
            "breaches": found, "healthy": not found,
            "generation": parts.routes.generation()}
        self._record("rollout", "step_checked", checked, number)
        return checked

    # endings ------------------------------------------------------------------------------

    def _abort(self, progress: Progress, found: list[str]) -> RolloutResult:
        """Record the abort, then restore all traffic to the stable version."""
        plan = self.plan
        aborted = {"alias": plan.alias, "version_name": plan.new.version, "breaches": found,
                   "restored_version": plan.stable.version, "duration_s": self._duration(),
                   "started_at": datetime.now(UTC).isoformat()}
        self._record("rollout", "aborted", aborted, 0)
        progress.aborted = aborted
        return self._finish_abort(progress, found)

    def _finish_abort(self, progress: Progress, found: list[str]) -> RolloutResult:
        """Put (or keep) all traffic on the stable version, verify it, record the rollback
        once."""
        plan, parts = self.plan, self.parts
        began = parts.clock()
        generation = self._apply(plan.restored(), f"rollout {plan.deployment_id} aborted")
        if not progress.rolled_back:
            verified = parts.verify_stable()
            aborted = progress.aborted or {}
            self._record("rollback", "rolled_back", {
                "alias": plan.alias, "from_version": plan.new.version,
                "to_version": plan.stable.version, "trigger": "rollout", "by": "upgate",
                "reason": "; ".join(found) or "rollout aborted",
                "restored": plan.stable.version, "status": "restored",
                "started_at": aborted.get("started_at") or datetime.now(UTC).isoformat(),
                "duration_s": round(parts.clock() - began, 3), "generation": generation,
                "verified": verified}, "rollout")
            progress.rolled_back = True
        log.warning("rollout %s aborted: %s", plan.deployment_id, "; ".join(found))
        return self._result("aborted", progress, breaches=found, resumed=progress.resumes > 0)

    def _overtaken(self, progress: Progress) -> RolloutResult:
        """A rollback recorded meanwhile by someone else: end without moving traffic."""
        other = progress.rolled_back_elsewhere or {}
        to_version = str(other.get("to_version") or other.get("restored") or "")
        found = [f"rolled back meanwhile ({other.get('trigger', 'unknown')}"
                 f"{', by ' + str(other['by']) if other.get('by') else ''}) to "
                 f"{to_version or 'an earlier version'}"]
        self._record("rollout", "aborted", {
            "alias": self.plan.alias, "version_name": self.plan.new.version, "breaches": found,
            "restored_version": to_version or None, "duration_s": self._duration()}, 0)
        return self._result("aborted", progress, breaches=found, resumed=True,
                            restored=to_version or None)

    def _result(self, status: str, progress: Progress, *, breaches: list[str] | None = None,
                resumed: bool, restored: str | None = None) -> RolloutResult:
        plan = self.plan
        if status == "aborted" and restored is None:
            restored = plan.stable.version
        return RolloutResult.model_validate({
            "status": status, "alias": plan.alias, "version_name": plan.new.version,
            "stable_version": plan.stable.version, "steps_done": len(progress.checked),
            "breaches": breaches or [], "restored_version": restored, "resumed": resumed})
