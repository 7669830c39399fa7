"""Scorers: turn one output (and what was expected) into a score in [0, 1], or NaN.

NaN means "could not be scored" (no output, an error); downstream, NaN, inf and missing
scores all count as failures, never as passes. A scorer never raises for a bad *output*;
it raises `EvalError` only for misuse (a bad option, a schema keyword it cannot check).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from upgate.errors import EvalError

NAN = float("nan")


class Scorer(Protocol):
    """Score one output against its expectation; options come from the suite."""

    def __call__(self, output: Any, expected: Any = None, /, **options: Any) -> float: ...


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer and what its scores mean."""

    name: str
    fn: Scorer
    description: str


_REGISTRY: dict[str, ScorerSpec] = {}


def register_scorer(name: str, description: str) -> Callable[[Scorer], Scorer]:
    """Register a scorer under a name suites can refer to."""

    def wrap(fn: Scorer) -> Scorer:
        if name in _REGISTRY:
            raise EvalError(f"scorer {name!r} is registered twice; pick another name")
        _REGISTRY[name] = ScorerSpec(name=name, fn=fn, description=description)
        return fn

    return wrap


def get_scorer(name: str) -> Scorer:
    """The scorer registered under `name`; EvalError naming the known ones otherwise."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise EvalError(f"unknown scorer {name!r}; known scorers: {sorted(_REGISTRY)}")
    return spec.fn


def scorer_names() -> tuple[str, ...]:
    """Names of every registered scorer, sorted."""
    return tuple(sorted(_REGISTRY))


def is_pass(score: float, threshold: float = 1.0) -> bool:
    """True only for a finite score at or above the threshold (NaN/inf are failures)."""
    return math.isfinite(score) and score >= threshold


def clean_score(score: float) -> float:
    """The score as used by statistics: non-finite becomes 0.0 (a failure), clipped to [0, 1]."""
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        return 0.0
    return min(1.0, max(0.0, float(score)))


# --- exact match -----------------------------------------------------------------------


@register_scorer("exact_match", "1.0 when the output equals the expected text, else 0.0")
def exact_match(
    output: Any,
    expected: Any = None,
    /,
    *,
    ignore_case: bool = False,
    strip: bool = True,
    **_: Any,
) -> float:
    """1.0 when the output equals the expected string (optionally ignoring case)."""
    if output is None or expected is None:
        return NAN
    out, exp = str(output), str(expected)
    if strip:
        out, exp = out.strip(), exp.strip()
    if ignore_case:
        out, exp = out.casefold(), exp.casefold()
    return 1.0 if out == exp else 0.0


# --- numeric tolerance ------------------------------------------------------------------


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


@register_scorer("numeric_tolerance", "1.0 when |output - expected| is within abs/rel tolerance")
def numeric_tolerance(
    output: Any,
    expected: Any = None,
    /,
    *,
    abs_tol: float = 1e-9,
    rel_tol: float = 0.0,
    **_: Any,
) -> float:
    """1.0 when the output is within abs_tol or rel_tol of the expected number."""
    if abs_tol < 0 or rel_tol < 0:
        raise EvalError("numeric_tolerance: abs_tol and rel_tol must be >= 0")
    if output is None:
        return NAN
    exp = _as_number(expected)
    if exp is None or not math.isfinite(exp):
        raise EvalError(f"numeric_tolerance: expected value {expected!r} is not a finite number")
    out = _as_number(output)
    # A NaN or inf answer is wrong, not "close": math.isclose(inf, inf) would say True.
    if out is None or not math.isfinite(out):
        return 0.0
    return 1.0 if math.isclose(out, exp, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


# --- json schema ------------------------------------------------------------------------


@register_scorer("json_schema", "1.0 when the output is JSON that satisfies the schema")
def json_schema(
    output: Any, expected: Any = None, /, *, schema: Mapping[str, Any] | None = None, **_: Any
) -> float:
    """1.0 when the output (JSON text or a parsed value) satisfies the schema.

    The schema is the `schema` option, else the case's expected value. Only a subset of
    JSON Schema is checked (see `validate_json`); an unsupported keyword raises rather than
    being ignored, so a schema can never pass more than it says.
    """
    the_schema = schema if schema is not None else expected
    if not isinstance(the_schema, Mapping):
        raise EvalError("json_schema: give a schema (a JSON object) as option or expected value")
    if output is None:
        return NAN
    if isinstance(output, str):
        try:
            value = json.loads(output, parse_constant=_no_constant)
        except ValueError:
            return 0.0
    else:
        value = output
    return 1.0 if not validate_json(value, the_schema) else 0.0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and math.isfinite(v) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_KNOWN = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "anyOf",
        "allOf",
        "oneOf",
        "not",
        "$schema",
        "$id",
        "title",
        "description",
        "default",
        "examples",
    }
)


def validate_json(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Errors of `value` against a JSON Schema subset; an empty list means valid."""
    unknown = sorted(set(schema) - _KNOWN)
    if unknown:
        raise EvalError(
            f"json_schema: unsupported keywords {unknown} at {path}; "
            "simplify the schema or add jsonschema support"
        )
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        for t in types:
            if t not in _TYPES:
                raise EvalError(f"json_schema: unknown type {t!r} at {path}")
        if not any(_TYPES[t](value) for t in types):
            return [f"{path}: expected type {types}"]
    if "enum" in schema and not any(_json_equal(value, e) for e in schema["enum"]):
        errors.append(f"{path}: not one of the enum values")
    if "const" in schema and not _json_equal(value, schema["const"]):
        errors.append(f"{path}: not the const value")
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required property {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, sub in value.items():
            if key in props:
                errors += validate_json(sub, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: property {key!r} is not allowed")
            elif isinstance(extra, Mapping):
                errors += validate_json(sub, extra, f"{path}.{key}")
    if isinstance(value, list):
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate_json(item, schema["items"], f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: too few items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: too many items")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: too short")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: too long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match the pattern")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above maximum")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: not above exclusiveMinimum")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: not below exclusiveMaximum")
    elif isinstance(value, float):
        errors.append(f"{path}: non-finite number")
    for sub in schema.get("allOf", []):
        errors += validate_json(value, sub, path)
    if "anyOf" in schema and not any(not validate_json(value, s, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema and sum(not validate_json(value, s, path) for s in schema["oneOf"]) != 1:
        errors.append(f"{path}: does not match exactly one of oneOf")
    if "not" in schema and not validate_json(value, schema["not"], path):
        errors.append(f"{path}: matches the 'not' schema")
    return errors


def _json_equal(a: Any, b: Any) -> bool:
    # JSON equality: True is not 1, unlike Python's ==.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


# --- pytest pass ------------------------------------------------------------------------


@register_scorer("pytest_pass", "1.0 when the test command exited 0 within its limits")
def pytest_pass(output: Any, expected: Any = None, /, **_: Any) -> float:
    """1.0 when an ExecResult-like output (or an exit code) says the tests passed.

    Exit code 5 (no tests collected) is a failure like any non-zero code: deleting the
    tests must not make them pass.
    """
    if output is None:
        return NAN
    if isinstance(output, bool):
        raise EvalError("pytest_pass: give an ExecResult or an int exit code, not a bool")
    if isinstance(output, int):
        return 1.0 if output == 0 else 0.0
    code = getattr(output, "exit_code", None)
    if not isinstance(code, int) or isinstance(code, bool):
        return NAN
    if getattr(output, "timed_out", False) or getattr(output, "limits_hit", ()):
        return 0.0
    return 1.0 if code == 0 else 0.0


# --- latency ----------------------------------------------------------------------------


@register_scorer("latency", "1.0 within the budget, falling linearly to 0.0 at twice the budget")
def latency(
    output: Any, expected: Any = None, /, *, budget_s: float | None = None, **_: Any
) -> float:
    """Lower is better: 1.0 at or under `budget_s`, linearly down to 0.0 at twice the budget.

    The budget is the `budget_s` option, else the case's expected value.
    """
    budget = _as_number(budget_s if budget_s is not None else expected)
    if budget is None or not math.isfinite(budget) or budget <= 0:
        raise EvalError("latency: give a positive finite budget_s (option or expected value)")
    seconds = _as_number(output)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return NAN
    if seconds <= budget:
        return 1.0
    return max(0.0, 1.0 - (seconds - budget) / budget)
