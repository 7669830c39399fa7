"""Scorers: each returns a score in [0, 1] or NaN, and NaN/inf never pass."""

from __future__ import annotations

import math

import pytest

from upgate.errors import EvalError
from upgate.evals.scorers import clean_score, get_scorer, is_pass, scorer_names
from upgate.sandboxes.base import ExecResult


def test_registry_knows_the_scorers_and_names_them_on_a_miss() -> None:
    assert set(scorer_names()) >= {
        "exact_match",
        "numeric_tolerance",
        "json_schema",
        "pytest_pass",
        "latency",
    }
    with pytest.raises(EvalError, match=r"unknown scorer 'llm_judge'.*exact_match"):
        get_scorer("llm_judge")


def test_exact_match() -> None:
    score = get_scorer("exact_match")
    assert score("billing", "billing") == 1.0
    assert score(" billing\n", "billing") == 1.0
    assert score("Billing", "billing") == 0.0
    assert score("Billing", "billing", ignore_case=True) == 1.0
    assert score("bug", "billing") == 0.0
    assert math.isnan(score(None, "billing"))


def test_numeric_tolerance() -> None:
    score = get_scorer("numeric_tolerance")
    assert score("3.0", 3) == 1.0
    assert score(3.05, 3.0, abs_tol=0.1) == 1.0
    assert score(3.5, 3.0, abs_tol=0.1) == 0.0
    assert score(105, 100, rel_tol=0.1) == 1.0
    assert score(120, 100, rel_tol=0.1) == 0.0
    assert score("three", 3) == 0.0
    assert score(True, 1) == 0.0
    # A NaN or inf answer is a failure, even against itself.
    assert score(float("nan"), 3.0, abs_tol=1e9) == 0.0
    assert score("inf", 3.0, rel_tol=1.0) == 0.0
    assert math.isnan(score(None, 3.0))
    with pytest.raises(EvalError, match="not a finite number"):
        score(1.0, float("inf"))
    with pytest.raises(EvalError, match=">= 0"):
        score(1.0, 1.0, abs_tol=-1)


SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["billing", "bug"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
    "required": ["label"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('{"label": "bug"}', 1.0),
        ('{"label": "bug", "confidence": 0.5, "tags": ["a"]}', 1.0),
        ({"label": "billing"}, 1.0),
        ('{"label": "refund"}', 0.0),
        ('{"confidence": 0.5}', 0.0),
        ('{"label": "bug", "extra": 1}', 0.0),
        ('{"label": "bug", "confidence": 2}', 0.0),
        ('{"label": "bug", "confidence": NaN}', 0.0),
        ('{"label": "bug", "confidence": true}', 0.0),
        ('{"label": "bug", "tags": ["a", "b", "c"]}', 0.0),
        ('{"label": "bug", "tags": [1]}', 0.0),
        ("not json", 0.0),
        ("[]", 0.0),
    ],
)
def test_json_schema(output: object, expected: float) -> None:
    assert get_scorer("json_schema")(output, None, schema=SCHEMA) == expected


def test_json_schema_takes_the_schema_from_expected_and_refuses_unknown_keywords() -> None:
    score = get_scorer("json_schema")
    assert score("3", {"type": "integer"}) == 1.0
    assert score("3.5", {"type": "integer"}) == 0.0
    assert math.isnan(score(None, {"type": "integer"}))
    with pytest.raises(EvalError, match="unsupported keywords"):
        score("{}", {"type": "object", "patternProperties": {}})
    with pytest.raises(EvalError, match="give a schema"):
        score("{}", None)


def test_pytest_pass() -> None:
    score = get_scorer("pytest_pass")
    assert score(ExecResult(exit_code=0)) == 1.0
    assert score(ExecResult(exit_code=1)) == 0.0
    assert score(ExecResult(exit_code=5)) == 0.0  # no tests collected is not a pass
    assert score(ExecResult(exit_code=0, timed_out=True)) == 0.0
    assert score(ExecResult(exit_code=0, limits_hit=("memory",))) == 0.0
    assert score(0) == 1.0
    assert score(2) == 0.0
    assert math.isnan(score(None))
    assert math.isnan(score(object()))


def test_latency_lower_is_better_within_a_budget() -> None:
    score = get_scorer("latency")
    assert score(0.5, None, budget_s=1.0) == 1.0
    assert score(1.0, None, budget_s=1.0) == 1.0
    assert score(1.5, None, budget_s=1.0) == pytest.approx(0.5)
    assert score(3.0, None, budget_s=1.0) == 0.0
    assert score(0.2, 1.0) == 1.0
    assert math.isnan(score(float("nan"), None, budget_s=1.0))
    assert math.isnan(score(-1.0, None, budget_s=1.0))
    with pytest.raises(EvalError, match="budget"):
        score(0.5, None)


def test_non_finite_scores_are_failures() -> None:
    assert clean_score(float("nan")) == 0.0
    assert clean_score(float("inf")) == 0.0
    assert clean_score(float("-inf")) == 0.0
    assert clean_score(1.7) == 1.0
    assert clean_score(0.25) == 0.25
    assert not is_pass(float("nan"))
    assert not is_pass(float("inf"))
    assert is_pass(1.0)
