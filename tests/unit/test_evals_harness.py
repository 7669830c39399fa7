"""ChatChoiceHarness against a scripted client: request format, scoring, failures, threads."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from upgate.errors import EvalError, ModelRequestsForbiddenError
from upgate.evals.harness import CaseResult, ChatChoiceHarness, build_messages, parse_choice
from upgate.evals.suite import Case
from upgate.evals.testing import FunctionClient

LABELS = ("billing", "bug", "account", "feature")
CLASSIFY = (
    Path(__file__).resolve().parents[2] / "examples" / "ticket-triage" / "triage" / "classify.py"
)


def _harness(client: FunctionClient) -> tuple[ChatChoiceHarness, list[tuple[str, float]]]:
    made: list[tuple[str, float]] = []

    def factory(base_url: str, timeout_s: float) -> FunctionClient:
        made.append((base_url, timeout_s))
        return client

    return ChatChoiceHarness(factory), made


CASES = [
    Case(
        id="c1",
        input="I was charged twice",
        expected="billing",
        slices=("billing",),
        split="visible",
    ),
    Case(id="c2", input="The app crashes", expected="bug", slices=("bug",), split="visible"),
    Case(
        id="c3", input="Reset my password", expected="account", slices=("account",), split="hidden"
    ),
]
FEW_SHOT = [{"input": "Refund please", "expected": "billing"}]


def _run(client: FunctionClient, **overrides: Any) -> list[CaseResult]:
    harness, _ = _harness(client)
    kwargs: dict[str, Any] = {
        "base_url": "http://127.0.0.1:1/v1",
        "model": "cand",
        "system_prompt": "  Classify.\n",
        "few_shot": FEW_SHOT,
        "labels": LABELS,
    }
    kwargs.update(overrides)
    results: list[CaseResult] = harness.run(kwargs.pop("cases", CASES), **kwargs)
    return results


def _oracle(messages: list[dict[str, str]]) -> str:
    text = messages[-1]["content"]
    return {"I was charged twice": "billing", "The app crashes": "bug"}.get(text, "feature")


def test_request_format_is_the_targets_contract() -> None:
    client = FunctionClient(_oracle)
    _run(client, cases=CASES[:1])
    (call,) = client.calls
    assert call["model"] == "cand"
    assert call["messages"] == [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "Refund please"},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": "I was charged twice"},
    ]
    assert call["temperature"] == 0.0
    assert 0 < call["max_tokens"] <= 16
    assert call["extra_body"] == {"structured_outputs": {"choice": list(LABELS)}}


def _load_classify(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_classify", CLASSIFY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules while the module loads.
    monkeypatch.setitem(sys.modules, "example_classify", module)
    spec.loader.exec_module(module)
    return module


def test_messages_match_the_example_targets_classify_py(monkeypatch: pytest.MonkeyPatch) -> None:
    if not CLASSIFY.is_file():
        pytest.skip("the example target is not in this checkout")
    classify = _load_classify(monkeypatch)
    shots = [
        {"input": "Refund please", "expected": "billing"},
        {"input": "Add dark mode", "expected": "feature"},
    ]
    theirs = classify.build_messages(
        "  a ticket \n", " The prompt.\n", [classify.FewShotExample(**s) for s in shots]
    )
    assert build_messages("  a ticket \n", " The prompt.\n", shots) == theirs
    for text in ["billing", " Bug. ", "it is a feature request", "bug or billing", "nothing"]:
        assert parse_choice(text, LABELS) == classify.parse_label(text)


def test_scores_and_keeps_order_and_metadata() -> None:
    results = _run(FunctionClient(_oracle))
    assert [r.case_id for r in results] == ["c1", "c2", "c3"]
    assert [r.score for r in results] == [1.0, 1.0, 0.0]
    assert [r.output for r in results] == ["billing", "bug", "feature"]
    assert results[2].split == "hidden"
    assert results[2].slices == ("account",)
    assert all(r.error is None and r.latency_s > 0 for r in results)


def test_one_failing_case_is_a_value_and_the_rest_still_run() -> None:
    def reply(messages: list[dict[str, str]]) -> str | None:
        if messages[-1]["content"] == "The app crashes":
            raise TimeoutError("read timed out")
        if messages[-1]["content"] == "Reset my password":
            return ""
        return "billing"

    results = _run(FunctionClient(reply))
    ok, timed_out, empty = results
    assert ok.score == 1.0
    assert ok.error is None
    assert math.isnan(timed_out.score)
    assert timed_out.output is None
    assert timed_out.error is not None
    assert "TimeoutError: read timed out" in timed_out.error
    assert math.isnan(empty.score)
    assert empty.error is not None
    assert "empty" in empty.error


def test_a_reply_outside_the_labels_is_wrong_not_an_error() -> None:
    results = _run(FunctionClient(lambda _m: "I cannot help with that"), cases=CASES[:1])
    assert results[0].score == 0.0
    assert results[0].error is None
    assert results[0].output == "I cannot help with that"


def test_repeats_run_every_case_each_time() -> None:
    client = FunctionClient(_oracle)
    results = _run(client, repeats=3)
    assert len(client.calls) == 9
    assert [(r.repeat, r.case_id) for r in results] == [
        (rep, c.id) for rep in range(3) for c in CASES
    ]


def test_concurrency_is_bounded() -> None:
    client = FunctionClient(_oracle, delay=0.05)
    cases = [
        Case(id=f"c{i}", input=f"ticket {i}", expected="bug", split="visible") for i in range(12)
    ]
    _run(client, cases=cases, concurrency=3)
    assert client.max_in_flight <= 3
    assert client.max_in_flight >= 2  # it really runs in parallel
    serial = FunctionClient(_oracle, delay=0.01)
    _run(serial, cases=cases, concurrency=1)
    assert serial.max_in_flight == 1


def test_client_factory_gets_url_and_timeout() -> None:
    client = FunctionClient(_oracle)
    harness, made = _harness(client)
    harness.run(
        CASES[:1],
        base_url="http://127.0.0.1:9/v1",
        model="m",
        system_prompt="p",
        few_shot=[],
        labels=LABELS,
        timeout_s=7,
    )
    assert made == [("http://127.0.0.1:9/v1", 7)]
    assert client.calls[0]["timeout"] == 7


@pytest.mark.parametrize(
    "few_shot",
    [
        [{"input": "x"}],
        [{"input": "x", "expected": "refund"}],
        [{"input": "x", "expected": "bug", "note": "extra"}],
        [{"input": 3, "expected": "bug"}],
    ],
)
def test_bad_few_shot_is_refused_before_any_request(few_shot: list[dict[str, Any]]) -> None:
    client = FunctionClient(_oracle)
    with pytest.raises(EvalError, match="few_shot"):
        _run(client, few_shot=few_shot)
    assert client.calls == []


def test_the_real_client_is_refused_in_the_unit_tier() -> None:
    with pytest.raises(ModelRequestsForbiddenError, match="forbidden"):
        ChatChoiceHarness().run(
            CASES,
            base_url="http://127.0.0.1:9/v1",
            model="m",
            system_prompt="p",
            few_shot=[],
            labels=LABELS,
        )


def test_misuse_raises() -> None:
    with pytest.raises(EvalError, match="labels"):
        _run(FunctionClient(_oracle), labels=())
    with pytest.raises(EvalError, match="repeats"):
        _run(FunctionClient(_oracle), repeats=0)
    with pytest.raises(EvalError, match="unknown scorer"):
        _run(FunctionClient(_oracle), scorer="vibes")
