"""Paired statistics: baseline vs candidate on the same cases, overall, per slice, per split.

Pure stdlib (a seeded `random.Random`), so results are reproducible and need no numpy.
Scores are cleaned first: NaN, inf, errors and timeouts count as 0.0 (a failure), and a
case present on one side only counts as a failure on the side that lacks it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from upgate.errors import EvalError
from upgate.evals.harness import CaseResult
from upgate.evals.scorers import clean_score
from upgate.evals.suite import Case, Split

OVERALL = "*"


class SliceDelta(BaseModel):
    """Mean score of both sides on one slice, the paired delta and its bootstrap interval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slice: str
    n: int
    baseline_mean: float
    candidate_mean: float
    delta: float
    ci_low: float
    ci_high: float


class Comparison(BaseModel):
    """Everything `compare` found: overall, per slice, per split, and what was missing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    overall: SliceDelta
    per_slice: dict[str, SliceDelta]
    by_split: dict[str, SliceDelta]
    missing: tuple[str, ...] = ()
    n_boot: int
    seed: int
    alpha: float


@dataclass(frozen=True)
class _Paired:
    case_id: str
    split: Split
    slices: tuple[str, ...]
    baseline: float
    candidate: float


def _per_case(results: Iterable[CaseResult]) -> dict[str, tuple[float, CaseResult]]:
    """Mean cleaned score per case over its repeats, with one result for the metadata."""
    sums: dict[str, list[float]] = {}
    meta: dict[str, CaseResult] = {}
    for r in results:
        # An errored repeat is a failure whatever score it carries.
        sums.setdefault(r.case_id, []).append(0.0 if r.error else clean_score(r.score))
        meta.setdefault(r.case_id, r)
    return {cid: (sum(v) / len(v), meta[cid]) for cid, v in sums.items()}


def _pair(
    baseline: Sequence[CaseResult],
    candidate: Sequence[CaseResult],
    cases: Sequence[Case] | None,
) -> tuple[list[_Paired], list[str]]:
    base, cand = _per_case(baseline), _per_case(candidate)
    if cases is not None:
        universe = [(c.id, c.split, c.slices) for c in cases]
        known = {c.id for c in cases}
        strays = sorted((set(base) | set(cand)) - known)
        if strays:
            raise EvalError(
                f"results for cases not in the suite: {strays[:5]}; compare the right suite"
            )
    else:
        ids = list(dict.fromkeys([*base, *cand]))
        universe = []
        for cid in ids:
            r = (base.get(cid) or cand[cid])[1]
            universe.append((cid, r.split, r.slices))
    paired: list[_Paired] = []
    missing: list[str] = []
    for cid, split, slices in universe:
        if cid not in base:
            missing.append(f"baseline:{cid}")
        if cid not in cand:
            missing.append(f"candidate:{cid}")
        paired.append(
            _Paired(
                case_id=cid,
                split=split,
                slices=slices,
                baseline=base[cid][0] if cid in base else 0.0,
                candidate=cand[cid][0] if cid in cand else 0.0,
            )
        )
    return paired, missing


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _slice_seed(seed: int, name: str) -> int:
    # Each slice gets its own stream so adding a slice does not change the others' intervals.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _delta(name: str, rows: Sequence[_Paired], n_boot: int, seed: int, alpha: float) -> SliceDelta:
    n = len(rows)
    b_mean = sum(r.baseline for r in rows) / n
    c_mean = sum(r.candidate for r in rows) / n
    diffs = [r.candidate - r.baseline for r in rows]
    delta = c_mean - b_mean
    if all(d == diffs[0] for d in diffs):
        low = high = delta
    else:
        rng = random.Random(_slice_seed(seed, name))
        means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(n_boot))
        low, high = _quantile(means, alpha / 2), _quantile(means, 1 - alpha / 2)
    return SliceDelta(
        slice=name,
        n=n,
        baseline_mean=b_mean,
        candidate_mean=c_mean,
        delta=delta,
        ci_low=low,
        ci_high=high,
    )


def compare(
    baseline: Sequence[CaseResult],
    candidate: Sequence[CaseResult],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    cases: Sequence[Case] | None = None,
) -> Comparison:
    """Paired bootstrap comparison of candidate vs baseline on the same cases.

    Repeats are averaged per case first; the bootstrap resamples cases. Pass `cases` (the
    suite's) so a case neither side ran still counts as a failure for both.
    """
    if n_boot < 100:
        raise EvalError("n_boot must be >= 100 for a meaningful interval")
    if not 0 < alpha < 1:
        raise EvalError("alpha must lie in (0, 1)")
    paired, missing = _pair(baseline, candidate, cases)
    if not paired:
        raise EvalError("nothing to compare: no results and no cases")
    overall = _delta(OVERALL, paired, n_boot, seed, alpha)
    per_slice: dict[str, SliceDelta] = {}
    for name in sorted({s for p in paired for s in p.slices}):
        rows = [p for p in paired if name in p.slices]
        per_slice[name] = _delta(name, rows, n_boot, seed, alpha)
    by_split: dict[str, SliceDelta] = {}
    for split in ("visible", "hidden"):
        rows = [p for p in paired if p.split == split]
        if rows:
            by_split[split] = _delta(f"split:{split}", rows, n_boot, seed, alpha)
    return Comparison(
        overall=overall,
        per_slice=per_slice,
        by_split=by_split,
        missing=tuple(missing),
        n_boot=n_boot,
        seed=seed,
        alpha=alpha,
    )


def non_regression(
    comparison: Comparison,
    tolerance: float,
    *,
    rule: Literal["point", "non_inferiority"] = "point",
) -> list[str]:
    """Names of the slices (and "*", "split:NAME") that regressed beyond `tolerance`.

    Rule "point" (default): a slice regresses when its mean delta < -tolerance, or when its
    whole interval lies below -tolerance (ci_high < -tolerance). The point rule is the one
    that bites on small slices: with a dozen cases a real regression rarely has an interval
    entirely below zero, and "not significantly worse" must not wave a visible drop through.
    Rule "non_inferiority" is stricter: the slice must show it is no worse than -tolerance,
    i.e. ci_low >= -tolerance, else it is flagged; use it when slices are large.
    """
    if tolerance < 0 or not math.isfinite(tolerance):
        raise EvalError("tolerance must be a finite number >= 0")
    rows = [comparison.overall, *comparison.by_split.values(), *comparison.per_slice.values()]
    flagged: list[str] = []
    for d in rows:
        if rule == "point":
            bad = d.delta < -tolerance or d.ci_high < -tolerance
        else:
            bad = d.ci_low < -tolerance
        if bad:
            flagged.append(d.slice)
    return flagged
