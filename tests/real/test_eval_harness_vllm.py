"""ChatChoiceHarness against a real vLLM server (real HTTP, real guided choice, real failures).

Needs a server at $UPGATE_VLLM_URL (default http://127.0.0.1:8011/v1) serving the model
$UPGATE_VLLM_MODEL (default "smollm2"); skipped with the reason when none answers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import httpx
import pytest

from upgate.evals.harness import ChatChoiceHarness
from upgate.evals.stats import compare
from upgate.evals.suite import Suite, load_suite

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
SUITE_DIR = REPO / "examples" / "suites" / "ticket-triage"
PROMPT = REPO / "examples" / "ticket-triage" / "triage" / "prompt.txt"
URL = os.environ.get("UPGATE_VLLM_URL", "http://127.0.0.1:8011/v1").rstrip("/")
MODEL = os.environ.get("UPGATE_VLLM_MODEL", "smollm2")


@pytest.fixture(scope="module")
def served() -> None:
    try:
        reply = httpx.get(f"{URL}/models", timeout=3)
        reply.raise_for_status()
        ids = [m["id"] for m in reply.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        pytest.skip(
            f"no vLLM server answers at {URL} ({exc}); start one with scripts/vllm_server.sh"
        )
    if MODEL not in ids:
        pytest.skip(f"the server at {URL} does not serve {MODEL!r} (it serves {ids})")


@pytest.fixture(scope="module")
def suite() -> Suite:
    if not (SUITE_DIR / "suite.toml").is_file() or not PROMPT.is_file():
        pytest.skip("the example suite or target is not in this checkout")
    return load_suite(SUITE_DIR)


def test_real_outputs_are_labels_with_positive_latency(served: None, suite: Suite) -> None:
    cases = [*suite.split("visible")[:6], *suite.split("hidden")[:4]]
    results = ChatChoiceHarness().run(
        cases,
        base_url=URL,
        model=MODEL,
        system_prompt=PROMPT.read_text(encoding="utf-8"),
        few_shot=[{"input": suite.cases[0].input, "expected": str(suite.cases[0].expected)}],
        labels=suite.labels,
        repeats=1,
        concurrency=2,
        timeout_s=120,
    )
    assert [r.case_id for r in results] == [c.id for c in cases]
    for r in results:
        assert r.error is None, r.error
        assert r.raw_output in suite.labels  # guided choice: exactly one label, nothing else
        assert r.output in suite.labels
        assert r.score in (0.0, 1.0)
        assert r.latency_s > 0
    # Temperature 0 with the same inputs: a comparison with itself shows no change.
    again = ChatChoiceHarness().run(
        cases,
        base_url=URL,
        model=MODEL,
        system_prompt=PROMPT.read_text(encoding="utf-8"),
        few_shot=[{"input": suite.cases[0].input, "expected": str(suite.cases[0].expected)}],
        labels=suite.labels,
        concurrency=2,
        timeout_s=120,
    )
    comparison = compare(results, again, cases=cases)
    assert comparison.missing == ()
    assert abs(comparison.overall.delta) <= 0.2


def test_an_unknown_model_is_a_failed_case_not_a_crash(served: None, suite: Suite) -> None:
    cases = suite.split("visible")[:2]
    results = ChatChoiceHarness().run(
        cases,
        base_url=URL,
        model="no-such-model",
        system_prompt="Classify.",
        few_shot=[],
        labels=suite.labels,
        timeout_s=30,
    )
    assert len(results) == 2
    for r in results:
        assert r.output is None
        assert math.isnan(r.score)
        assert r.error is not None
        assert "NotFound" in r.error or "404" in r.error
