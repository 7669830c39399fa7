"""Each limit of `[rollout]`: a value at the limit passes, one just beyond it breaches, and
the step's decision is computed from the typed breaches alone."""

from __future__ import annotations

import pytest

from upgate.gateway.routes import WindowStats
from upgate.policy import Rollout
from upgate.rollout.limits import (
    CHECKS,
    StepEvidence,
    SuiteScore,
    breaches,
    check_error_rate,
    check_error_rate_increase,
    check_min_requests,
    check_p50,
    check_p95,
    check_suite_drop,
)

LIMITS = Rollout(enabled=True, min_requests=10, max_error_rate=0.1,
                 max_error_rate_increase=0.05, max_p50_ratio=1.5, max_p95_ratio=2.0,
                 suite_cases=4, max_suite_drop=0.25)


def stats(version: str, requests: int = 100, errors: int = 0, p50: float | None = 100.0,
          p95: float | None = 200.0) -> WindowStats:
    return WindowStats(version=version, requests=requests, errors=errors,
                       error_rate=errors / requests if requests else 0.0, p50_ms=p50, p95_ms=p95)


def evidence(new: WindowStats | None = None, stable: WindowStats | None = None,
             suite_new: float | None = 1.0, suite_stable: float | None = 1.0) -> StepEvidence:
    def suite(v: str, s: float | None) -> SuiteScore | None:
        return None if s is None else SuiteScore(version=v, cases=4, errors=0, score=s)

    return StepEvidence(new=new or stats("new"), stable=stable or stats("stable"),
                        suite_new=suite("new", suite_new),
                        suite_stable=suite("stable", suite_stable))


def test_a_healthy_step_breaks_no_limit() -> None:
    assert breaches(evidence(), LIMITS) == []


def test_every_limit_has_one_check() -> None:
    limit_fields = {n for n in Rollout.model_fields if n.startswith(("max_", "min_"))}
    assert len(CHECKS) == len(limit_fields) == 6


@pytest.mark.parametrize(("requests", "breached"), [(10, False), (9, True), (0, True)])
def test_min_requests_not_met_is_a_breach(requests: int, breached: bool) -> None:
    found = check_min_requests(evidence(new=stats("new", requests=requests)), LIMITS)
    assert (found is not None) is breached
    if found:
        assert found.limit == "min_requests" and found.observed == requests


def test_an_empty_window_is_a_breach_not_a_pass() -> None:
    empty = stats("new", requests=0, p50=None, p95=None)
    assert [b.limit for b in breaches(evidence(new=empty), LIMITS)] == ["min_requests"]


@pytest.mark.parametrize(("errors", "breached"), [(10, False), (11, True)])
def test_error_rate_at_the_limit_passes_beyond_breaches(errors: int, breached: bool) -> None:
    # Stable fails as often, so only the absolute limit is in play.
    ev = evidence(new=stats("new", errors=errors), stable=stats("stable", errors=errors))
    assert (check_error_rate(ev, LIMITS) is not None) is breached
    assert check_error_rate_increase(ev, LIMITS) is None


@pytest.mark.parametrize(("new_errors", "breached"), [(8, False), (9, True)])
def test_error_rate_increase_over_stable(new_errors: int, breached: bool) -> None:
    # 0.08 - 0.03 = 0.05 exactly at the limit (not exact in floats: the check allows it).
    ev = evidence(new=stats("new", errors=new_errors), stable=stats("stable", errors=3))
    found = check_error_rate_increase(ev, LIMITS)
    assert (found is not None) is breached
    assert check_error_rate(ev, LIMITS) is None


@pytest.mark.parametrize(("p50", "breached"), [(150.0, False), (150.1, True)])
def test_p50_ratio(p50: float, breached: bool) -> None:
    found = check_p50(evidence(new=stats("new", p50=p50)), LIMITS)
    assert (found is not None) is breached
    if found:
        assert found.observed == pytest.approx(1.501)


@pytest.mark.parametrize(("p95", "breached"), [(400.0, False), (400.5, True)])
def test_p95_ratio(p95: float, breached: bool) -> None:
    assert (check_p95(evidence(new=stats("new", p95=p95)), LIMITS) is not None) is breached


def test_latency_without_a_stable_latency_is_not_compared() -> None:
    # At 100% the stable version may get no traffic at all: nothing to compare against.
    ev = evidence(new=stats("new", p50=10_000.0, p95=10_000.0),
                  stable=stats("stable", requests=0, p50=None, p95=None))
    assert check_p50(ev, LIMITS) is None and check_p95(ev, LIMITS) is None


@pytest.mark.parametrize(("new", "breached"), [(0.75, False), (0.74, True), (0.0, True)])
def test_suite_drop(new: float, breached: bool) -> None:
    found = check_suite_drop(evidence(suite_new=new, suite_stable=1.0), LIMITS)
    assert (found is not None) is breached


def test_a_better_new_version_never_breaches_the_suite_limit() -> None:
    assert check_suite_drop(evidence(suite_new=1.0, suite_stable=0.0), LIMITS) is None


def test_every_breach_is_reported_with_what_was_seen() -> None:
    bad = stats("new", requests=5, errors=5, p50=1000.0, p95=5000.0)
    found = breaches(evidence(new=bad, suite_new=0.0), LIMITS)
    assert [b.limit for b in found] == ["min_requests", "max_error_rate",
                                        "max_error_rate_increase", "max_p50_ratio",
                                        "max_p95_ratio", "max_suite_drop"]
    assert all("observed" in str(b) and "allowed" in str(b) for b in found)


def test_the_example_policys_commented_rollout_section_is_valid_when_uncommented() -> None:
    import tomllib

    from ..conftest import REPO

    text = (REPO / "examples" / "policy.toml").read_text()
    assert "\n[rollout]" not in text  # off by default: the example stays all-at-once
    section = text.split("# [rollout]\n", 1)[1]
    body = "\n".join(line.removeprefix("#").removeprefix(" ") for line in section.splitlines())
    rollout = Rollout.model_validate(tomllib.loads(body))
    assert rollout.enabled and rollout.steps[-1] == 100
