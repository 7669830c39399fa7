"""Paired statistics on constructed data: known deltas, failures as zeros, per-slice regressions."""

from __future__ import annotations

import math
import random

import pytest

from upgate.errors import EvalError
from upgate.evals.harness import CaseResult
from upgate.evals.stats import compare, non_regression
from upgate.evals.suite import Case, Split


def r(
    cid: str,
    score: float,
    slices: tuple[str, ...] = (),
    split: Split = "visible",
    repeat: int = 0,
    error: str | None = None,
) -> CaseResult:
    return CaseResult(
        case_id=cid,
        split=split,
        slices=slices,
        output=None if error else "x",
        score=score,
        latency_s=0.1,
        error=error,
        repeat=repeat,
    )


def test_known_delta_and_interval() -> None:
    base = [r(f"c{i}", 0.0) for i in range(10)]
    cand = [r(f"c{i}", 1.0 if i < 5 else 0.0) for i in range(10)]
    c = compare(base, cand)
    assert c.overall.n == 10
    assert c.overall.baseline_mean == 0.0
    assert c.overall.candidate_mean == 0.5
    assert c.overall.delta == pytest.approx(0.5)
    assert 0.0 < c.overall.ci_low < 0.5 < c.overall.ci_high <= 1.0
    assert c.missing == ()


def test_identical_sides_give_a_zero_width_interval() -> None:
    base = [r(f"c{i}", i % 2) for i in range(8)]
    c = compare(base, base)
    assert (c.overall.delta, c.overall.ci_low, c.overall.ci_high) == (0.0, 0.0, 0.0)


def test_same_seed_same_interval_and_seed_matters() -> None:
    base = [r(f"c{i}", 0.0) for i in range(30)]
    cand = [r(f"c{i}", (i * 37 % 101) / 101) for i in range(30)]
    a, b = compare(base, cand, seed=1), compare(base, cand, seed=1)
    assert a == b
    other = compare(base, cand, seed=2)
    assert (other.overall.ci_low, other.overall.ci_high) != (a.overall.ci_low, a.overall.ci_high)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 7.0])
def test_non_finite_scores_are_failures(bad: float) -> None:
    base = [r("c1", 1.0), r("c2", 1.0)]
    cand = [r("c1", bad), r("c2", 1.0)]
    c = compare(base, cand)
    # inf and 7.0 clip or fail: never more than a pass, NaN/inf count as 0.
    expected = 1.0 if bad == 7.0 else 0.5
    assert c.overall.candidate_mean == expected


def test_an_errored_result_is_a_failure_whatever_score_it_claims() -> None:
    c = compare([r("c1", 1.0)], [r("c1", 1.0, error="TimeoutError")])
    assert c.overall.candidate_mean == 0.0
    assert c.overall.delta == -1.0


def test_missing_cases_count_as_failures_and_are_listed() -> None:
    base = [r("c1", 1.0), r("c2", 1.0)]
    cand = [r("c1", 1.0), r("c3", 1.0)]
    c = compare(base, cand)
    assert set(c.missing) == {"candidate:c2", "baseline:c3"}
    assert c.overall.n == 3
    assert c.overall.baseline_mean == pytest.approx(2 / 3)
    assert c.overall.candidate_mean == pytest.approx(2 / 3)


def test_cases_from_the_suite_catch_a_case_nobody_ran() -> None:
    cases = [Case(id=f"c{i}", input="t", expected="bug", split="hidden") for i in range(4)]
    base = [r(f"c{i}", 1.0, split="hidden") for i in range(3)]
    cand = [r(f"c{i}", 1.0, split="hidden") for i in range(3)]
    c = compare(base, cand, cases=cases)
    assert set(c.missing) == {"baseline:c3", "candidate:c3"}
    assert c.by_split["hidden"].n == 4
    with pytest.raises(EvalError, match="not in the suite"):
        compare([*base, r("zz", 1.0)], cand, cases=cases)


def test_repeats_are_averaged_per_case_before_resampling() -> None:
    base = [r("c1", 0.0, repeat=k) for k in range(4)]
    cand = [r("c1", float(k < 3), repeat=k) for k in range(4)]
    c = compare(base, cand)
    assert c.overall.n == 1
    assert c.overall.candidate_mean == pytest.approx(0.75)


def test_per_slice_and_per_split() -> None:
    base = [
        r("a1", 0.0, ("billing",), "visible"),
        r("a2", 0.0, ("billing", "short"), "hidden"),
        r("b1", 1.0, ("bug",), "visible"),
        r("b2", 1.0, ("bug", "short"), "hidden"),
    ]
    cand = [
        r("a1", 1.0, ("billing",), "visible"),
        r("a2", 1.0, ("billing", "short"), "hidden"),
        r("b1", 1.0, ("bug",), "visible"),
        r("b2", 0.0, ("bug", "short"), "hidden"),
    ]
    c = compare(base, cand)
    assert set(c.per_slice) == {"billing", "bug", "short"}
    assert c.per_slice["billing"].delta == 1.0
    assert c.per_slice["bug"].delta == -0.5
    assert c.per_slice["short"].n == 2
    assert c.by_split["visible"].delta == 0.5
    assert c.by_split["hidden"].delta == 0.0
    assert c.by_split["hidden"].slice == "split:hidden"


def test_a_slice_regression_hidden_by_an_overall_gain_is_caught() -> None:
    base, cand = [], []
    for i in range(30):  # "easy": 0 -> 1 on every case
        base.append(r(f"e{i}", 0.0, ("easy",)))
        cand.append(r(f"e{i}", 1.0, ("easy",)))
    for i in range(10):  # "rare": 1 -> 0 on 4 of 10 cases
        base.append(r(f"x{i}", 1.0, ("rare",)))
        cand.append(r(f"x{i}", 0.0 if i < 4 else 1.0, ("rare",)))
    c = compare(base, cand)
    assert c.overall.delta > 0.5
    flagged = non_regression(c, tolerance=0.05)
    assert flagged == ["rare"]
    assert non_regression(c, tolerance=0.5) == []


def test_non_inferiority_rule_is_stricter_on_noisy_slices() -> None:
    rng = random.Random(3)
    base = [r(f"c{i}", float(rng.random() < 0.5), ("s",)) for i in range(12)]
    cand = [r(f"c{i}", float(rng.random() < 0.5), ("s",)) for i in range(12)]
    c = compare(base, cand)
    # A noisy 12-case slice: the interval is wide, so it cannot show non-inferiority.
    assert c.per_slice["s"].ci_low < -0.1
    assert "s" in non_regression(c, 0.1, rule="non_inferiority")
    same = compare(base, base)
    assert non_regression(same, 0.0, rule="non_inferiority") == []


def test_paired_interval_covers_the_true_delta() -> None:
    """Bernoulli cases whose true candidate-baseline gain is 0.2: the 95% CI covers it."""
    rng = random.Random(11)
    covered, trials = 0, 60
    for t in range(trials):
        base, cand = [], []
        for i in range(80):
            p = rng.random()  # per-case difficulty: what makes pairing matter
            b = float(rng.random() < p * 0.6)
            c = float(rng.random() < p * 0.6 + 0.2)
            base.append(r(f"c{i}", b))
            cand.append(r(f"c{i}", c))
        comp = compare(base, cand, n_boot=500, seed=t)
        covered += comp.overall.ci_low <= 0.2 <= comp.overall.ci_high
    assert covered / trials >= 0.85


def test_pairing_narrows_the_interval_on_correlated_scores() -> None:
    rng = random.Random(5)
    base_scores = [rng.random() * 0.8 for _ in range(40)]
    base = [r(f"c{i}", s) for i, s in enumerate(base_scores)]
    cand = [r(f"c{i}", s + 0.02) for i, s in enumerate(base_scores)]
    c = compare(base, cand)
    # Unpaired, a 0.02 gain on scores spread over 0.8 would be lost in the noise.
    assert c.overall.delta == pytest.approx(0.02)
    assert c.overall.ci_low == pytest.approx(0.02)
    assert c.overall.ci_high == pytest.approx(0.02)


def test_misuse_raises() -> None:
    with pytest.raises(EvalError, match="nothing to compare"):
        compare([], [])
    with pytest.raises(EvalError, match="n_boot"):
        compare([r("c", 1.0)], [r("c", 1.0)], n_boot=10)
    with pytest.raises(EvalError, match="alpha"):
        compare([r("c", 1.0)], [r("c", 1.0)], alpha=1.5)
    c = compare([r("c", 1.0)], [r("c", 1.0)])
    with pytest.raises(EvalError, match="tolerance"):
        non_regression(c, math.nan)
