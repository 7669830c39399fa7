"""Unit tests of ticket triage that need no model: messages, label parsing, config loading."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from triage import (
    LABELS,
    FewShotExample,
    build_messages,
    classify,
    classify_ticket,
    load_config,
    load_prompt,
    parse_label,
)


def test_labels_are_the_four_queues() -> None:
    assert LABELS == ("billing", "bug", "account", "feature")


def test_build_messages_without_examples() -> None:
    messages = build_messages("My invoice is wrong.", "  Pick a label.\n")
    assert messages == [
        {"role": "system", "content": "Pick a label."},
        {"role": "user", "content": "My invoice is wrong."},
    ]


def test_build_messages_puts_examples_before_the_ticket() -> None:
    shots = [FewShotExample("Add dark mode", "feature"), FewShotExample("App crashes", "bug")]
    messages = build_messages("Reset my password", "Pick a label.", shots)
    assert [m["role"] for m in messages] == [
        "system", "user", "assistant", "user", "assistant", "user",
    ]
    assert messages[1:5] == [
        {"role": "user", "content": "Add dark mode"},
        {"role": "assistant", "content": "feature"},
        {"role": "user", "content": "App crashes"},
        {"role": "assistant", "content": "bug"},
    ]
    assert messages[-1] == {"role": "user", "content": "Reset my password"}


def test_build_messages_keeps_the_ticket_verbatim() -> None:
    ticket = "  line one\nline two  "
    assert build_messages(ticket, "p")[-1]["content"] == ticket


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("billing", "billing"),
        (" Bug\n", "bug"),
        ("account.", "account"),
        ("Label: feature", "feature"),
        ("FEATURE", "feature"),
    ],
)
def test_parse_label_accepts_one_label(reply: str, label: str) -> None:
    assert parse_label(reply) == label


@pytest.mark.parametrize("reply", ["", "refund", "billing or bug", "debugging", "accounts"])
def test_parse_label_rejects_none_or_several(reply: str) -> None:
    assert parse_label(reply) is None


def test_packaged_config_and_prompt_load() -> None:
    config = load_config()
    assert config.model == "triage"
    assert config.temperature == 0.0
    assert all(ex.expected in LABELS for ex in config.few_shot)
    prompt = load_prompt()
    assert prompt == prompt.strip()
    for label in LABELS:
        assert label in prompt


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_config_with_few_shot_examples(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"model": "m", "temperature": 0.5, "few_shot": [{"input": "x", "expected": "bug"}]},
    )
    config = load_config(path)
    assert config.model == "m"
    assert config.temperature == 0.5
    assert config.few_shot == (FewShotExample("x", "bug"),)


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"model": ""},
        {"temperature": "hot"},
        {"temperature": 3},
        {"few_shot": {"input": "x"}},
        {"few_shot": [{"input": "x", "expected": "refund"}]},
        {"few_shot": [{"input": "x"}]},
        {"modle": "typo"},
    ],
)
def test_bad_config_is_refused(tmp_path: Path, data: Any) -> None:
    with pytest.raises(ValueError, match=r"config\.json"):
        load_config(_write(tmp_path, data))


def test_empty_prompt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_prompt(path)


class RecordingClient:
    """Stands in for openai.OpenAI: records the request, replies with a fixed text."""

    def __init__(self, reply: str | None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))
        self._reply = reply

    def _create(self, **request: Any) -> Any:
        self.requests.append(request)
        message = SimpleNamespace(content=self._reply)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


def test_classify_asks_for_a_guided_choice_at_temperature_zero() -> None:
    client = RecordingClient("bug")
    assert classify(client, "triage", "It crashes", prompt="Pick.") == "bug"
    (request,) = client.requests
    assert request["model"] == "triage"
    assert request["temperature"] == 0.0
    assert request["messages"] == build_messages("It crashes", "Pick.")
    assert request["extra_body"] == {"structured_outputs": {"choice": list(LABELS)}}


@pytest.mark.parametrize("reply", [None, "no idea"])
def test_classify_returns_none_for_a_reply_that_is_no_label(reply: str | None) -> None:
    assert classify(RecordingClient(reply), "triage", "hm", prompt="Pick.") is None


def test_classify_ticket_uses_the_packaged_config_and_prompt() -> None:
    client = RecordingClient("account")
    assert classify_ticket(client, "Locked out") == "account"
    (request,) = client.requests
    assert request["model"] == load_config().model
    assert request["messages"][0] == {"role": "system", "content": load_prompt()}
