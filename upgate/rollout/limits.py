"""The limits a rollout step must hold: one small check per limit of the policy's
`[rollout]` section, each returning a typed breach or None, and the step's decision computed
from them (never from text).

A value exactly at its limit passes; only a value beyond it breaches. A comparison that
cannot be made (the stable version answered nothing in the window, so it has no latency)
passes that one check: the new version is still held to its own limits (requests, error
rate, suite score).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from upgate.gateway.routes import WindowStats
from upgate.policy import Rollout

LimitName = Literal["min_requests", "max_error_rate", "max_error_rate_increase",
                    "max_p50_ratio", "max_p95_ratio", "max_suite_drop"]

_SLACK = 1e-9
"""Float noise (0.03 - 0.02 is not exactly 0.01) must not turn a value at its limit into
a breach."""


class SuiteScore(BaseModel):
    """Suite cases sent through the gateway pinned to one version, and how they scored
    (a case that got no answer scores 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    cases: int
    errors: int
    score: float


class Breach(BaseModel):
    """One limit a step broke: which, what was seen, what was allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: LimitName
    observed: float
    allowed: float
    detail: str

    def __str__(self) -> str:
        return f"{self.limit}: {self.detail} (observed {self.observed:g}, allowed {self.allowed:g})"


class StepEvidence(BaseModel):
    """What one step is judged on: both versions' window and suite scores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new: WindowStats
    stable: WindowStats
    suite_new: SuiteScore | None = None
    suite_stable: SuiteScore | None = None


def check_min_requests(ev: StepEvidence, limits: Rollout) -> Breach | None:
    """Too few requests to the new version is a breach: an unjudged step never passes."""
    if ev.new.requests >= limits.min_requests:
        return None
    return Breach(limit="min_requests", observed=ev.new.requests, allowed=limits.min_requests,
                  detail=f"{ev.new.version} got {ev.new.requests} request(s) in the window, "
                         f"fewer than the {limits.min_requests} a step is judged on")


def check_error_rate(ev: StepEvidence, limits: Rollout) -> Breach | None:
    """The new version's own error rate."""
    if ev.new.error_rate <= limits.max_error_rate + _SLACK:
        return None
    return Breach(limit="max_error_rate", observed=ev.new.error_rate,
                  allowed=limits.max_error_rate,
                  detail=f"{ev.new.version} failed {ev.new.errors} of {ev.new.requests}")


def check_error_rate_increase(ev: StepEvidence, limits: Rollout) -> Breach | None:
    """The new version's error rate over the stable one's."""
    increase = ev.new.error_rate - ev.stable.error_rate
    if increase <= limits.max_error_rate_increase + _SLACK:
        return None
    return Breach(limit="max_error_rate_increase", observed=increase,
                  allowed=limits.max_error_rate_increase,
                  detail=f"error rate {ev.new.error_rate:.3f} against the stable "
                         f"{ev.stable.error_rate:.3f}")


def _latency(limit: Literal["max_p50_ratio", "max_p95_ratio"], name: str, new: float | None,
             stable: float | None, allowed: float) -> Breach | None:
    """A latency quantile against the stable version's (not compared without both)."""
    if new is None or stable is None or stable <= 0 or new / stable <= allowed + _SLACK:
        return None
    return Breach(limit=limit, observed=new / stable, allowed=allowed,
                  detail=f"{name} {new:.0f} ms against {stable:.0f} ms")


def check_p50(ev: StepEvidence, limits: Rollout) -> Breach | None:
    """Median latency against the stable version's."""
    return _latency("max_p50_ratio", "p50", ev.new.p50_ms, ev.stable.p50_ms,
                    limits.max_p50_ratio)


def check_p95(ev: StepEvidence, limits: Rollout) -> Breach | None:
    """95th-percentile latency against the stable version's."""
    return _latency("max_p95_ratio", "p95", ev.new.p95_ms, ev.stable.p95_ms,
                    limits.max_p95_ratio)


def check_suite_drop(ev: StepEvidence, limits: Rollout) -> Breach | None:
    """The new version's suite score may trail the stable one's by at most the limit."""
    if ev.suite_new is None or ev.suite_stable is None:
        return None
    drop = ev.suite_stable.score - ev.suite_new.score
    if drop <= limits.max_suite_drop + _SLACK:
        return None
    return Breach(limit="max_suite_drop", observed=drop, allowed=limits.max_suite_drop,
                  detail=f"suite score {ev.suite_new.score:.3f} against the stable "
                         f"{ev.suite_stable.score:.3f} on {ev.suite_new.cases} case(s)")


CHECKS: tuple[Callable[[StepEvidence, Rollout], Breach | None], ...] = (
    check_min_requests, check_error_rate, check_error_rate_increase, check_p50, check_p95,
    check_suite_drop,
)
"""Every limit of `[rollout]`, in the order breaches are reported."""


def breaches(ev: StepEvidence, limits: Rollout) -> list[Breach]:
    """Every limit the step broke; none means the step is healthy."""
    return [b for b in (check(ev, limits) for check in CHECKS) if b is not None]
