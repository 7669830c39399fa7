"""Classify a support ticket into one queue label with an OpenAI-compatible chat model.

The request format is a contract shared with the eval harness and the LoRA recipe:

    messages = [system: the prompt file's text, stripped]
             + [user: example input, assistant: example label] for each few-shot example
             + [user: the ticket text, as is]

answered at temperature 0 under vLLM's guided choice over ``LABELS``, so the reply is always
exactly one label.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABELS: tuple[str, ...] = ("billing", "bug", "account", "feature")

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROMPT = PACKAGE_DIR / "prompt.txt"
DEFAULT_CONFIG = PACKAGE_DIR / "config.json"


@dataclass(frozen=True)
class FewShotExample:
    """One worked example shown to the model before the ticket."""

    input: str
    expected: str


@dataclass(frozen=True)
class TriageConfig:
    """What triage/config.json holds."""

    model: str = "triage"
    temperature: float = 0.0
    few_shot: tuple[FewShotExample, ...] = field(default_factory=tuple)


def load_prompt(path: Path | None = None) -> str:
    """Read the system prompt, without surrounding whitespace."""
    text = (path or DEFAULT_PROMPT).read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{path or DEFAULT_PROMPT} is empty; write the system prompt into it")
    return text


def load_config(path: Path | None = None) -> TriageConfig:
    """Read and check the JSON config (model name, temperature, few-shot examples)."""
    source = path or DEFAULT_CONFIG
    raw = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must hold a JSON object")
    unknown = sorted(set(raw) - {"model", "temperature", "few_shot"})
    if unknown:
        raise ValueError(
            f"{source} has unknown keys {unknown}; allowed: model, temperature, few_shot"
        )
    model = raw.get("model", "triage")
    temperature = raw.get("temperature", 0.0)
    shots = raw.get("few_shot", [])
    if not isinstance(model, str) or not model:
        raise ValueError(f"{source}: 'model' must be a non-empty string")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"{source}: 'temperature' must be a number")
    if not 0.0 <= float(temperature) <= 2.0:
        raise ValueError(f"{source}: 'temperature' must lie in [0, 2]")
    if not isinstance(shots, list):
        raise ValueError(f"{source}: 'few_shot' must be a list of {{input, expected}} objects")
    examples = tuple(_few_shot_example(source, item) for item in shots)
    return TriageConfig(model=model, temperature=float(temperature), few_shot=examples)


def _few_shot_example(source: Path, item: Any) -> FewShotExample:
    """Check one few-shot entry of the config."""
    if (
        not isinstance(item, dict)
        or set(item) != {"input", "expected"}
        or not isinstance(item["input"], str)
        or item["expected"] not in LABELS
    ):
        raise ValueError(
            f"{source}: each few_shot entry must be {{'input': text, 'expected': one of {LABELS}}}"
        )
    return FewShotExample(input=item["input"], expected=item["expected"])


def build_messages(
    ticket: str, prompt: str, few_shot: Sequence[FewShotExample] = ()
) -> list[dict[str, str]]:
    """Build the chat messages for one ticket (see the module docstring for the contract)."""
    messages = [{"role": "system", "content": prompt.strip()}]
    for example in few_shot:
        messages.append({"role": "user", "content": example.input})
        messages.append({"role": "assistant", "content": example.expected})
    messages.append({"role": "user", "content": ticket})
    return messages


def parse_label(text: str) -> str | None:
    """Return the label a reply names, or None when it names none or several."""
    cleaned = text.strip().strip(string.punctuation + string.whitespace).lower()
    if cleaned in LABELS:
        return cleaned
    words = {word.strip(string.punctuation) for word in cleaned.split()}
    found = [label for label in LABELS if label in words]
    return found[0] if len(found) == 1 else None


def classify(
    client: Any,
    model: str,
    ticket: str,
    prompt: str | None = None,
    few_shot: Sequence[FewShotExample] = (),
    temperature: float = 0.0,
) -> str | None:
    """Ask the model for the ticket's label; None when the reply is not a label."""
    response = client.chat.completions.create(
        model=model,
        messages=build_messages(ticket, prompt if prompt is not None else load_prompt(), few_shot),
        temperature=temperature,
        max_tokens=8,
        # vLLM's guided choice: the reply is always exactly one of the labels
        extra_body={"structured_outputs": {"choice": list(LABELS)}},
    )
    content = response.choices[0].message.content
    return parse_label(content) if isinstance(content, str) else None


def classify_ticket(
    client: Any, ticket: str, config: TriageConfig | None = None, prompt: str | None = None
) -> str | None:
    """Classify one ticket as the service does: the packaged config and prompt by default."""
    settings = config if config is not None else load_config()
    return classify(
        client,
        settings.model,
        ticket,
        prompt if prompt is not None else load_prompt(),
        settings.few_shot,
        settings.temperature,
    )
