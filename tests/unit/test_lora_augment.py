"""The LoRA recipe's training data: label-preserving rewrites made by deterministic code."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import EXAMPLE_SUITE
from upgate.agents.recipes import lora_train


def visible() -> list[tuple[str, str]]:
    lines = (EXAMPLE_SUITE / "visible.jsonl").read_text().splitlines()
    return [(c["input"], c["expected"]) for c in map(json.loads, lines) if c]


def test_rewrites_keep_each_label_and_the_originals_first() -> None:
    cases = visible()
    out = lora_train.augment(cases, 4, seed=0)
    assert out[: len(cases)] == cases
    assert len(out) == 5 * len(cases)
    # Every case got its rewrites under its own label, so the label balance is unchanged.
    assert Counter(label for _, label in out) == Counter(
        {label: 5 * n for label, n in Counter(label for _, label in cases).items()}
    )
    texts = [text for text, _ in out]
    assert len(set(texts)) == len(texts)
    assert all(text.strip() and len(text.split()) >= 3 for text in texts)


def test_rewrites_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    cases = visible()[:12]
    assert lora_train.augment(cases, 3, seed=7) == lora_train.augment(cases, 3, seed=7)
    assert lora_train.augment(cases, 3, seed=7) != lora_train.augment(cases, 3, seed=8)


def test_no_augmentation_is_the_cases_alone() -> None:
    cases = visible()[:5]
    assert lora_train.augment(cases, 0, seed=0) == cases


@pytest.mark.parametrize("rewrite", lora_train.REWRITES, ids=lambda f: f.__name__)
def test_each_rewrite_changes_text_yet_keeps_its_content_words(rewrite: object) -> None:
    import random

    text = ("Hello, I was charged twice for my Team plan in March and the invoice shows "
            "$45.50. Please refund the extra payment.")
    rng = random.Random(3)
    outs = {rewrite(text, rng) for _ in range(10)}  # type: ignore[operator]
    assert outs - {text}, f"{rewrite} never changed the text"
    for out in outs:
        assert out.strip()
        # A rewrite rephrases; it never empties the ticket of what it is about.
        assert any(w in out.lower() for w in ("charged", "billed", "debited", "refund",
                                              "reimbursement", "money back", "chagred",
                                              "invoice", "receipt", "bill", "payment"))


def test_mixed_tickets_join_sentences_of_two_cases_with_the_same_label() -> None:
    cases = visible()
    label_of = {text: label for text, label in cases}
    sentences = {s: label_of[text] for text in label_of for s in lora_train._sentences(text)}
    out = lora_train.mix(cases, 2, seed=0)
    assert len(out) >= 1.8 * len(cases)  # a few repeats are dropped, not replaced
    assert not {text for text, _ in out} & set(label_of)  # nothing repeats a case
    for text, label in out:
        parts = [s for s in sentences if s in text]
        # Both halves are sentences of cases with this very label: the label stays true.
        assert parts and all(sentences[s] == label for s in parts), text
    assert lora_train.mix(cases, 2, seed=0) == out
    assert lora_train.mix(cases, 0, seed=0) == []
    # A label with one case has no partner: that case makes no mixed ticket.
    assert lora_train.mix([("The app crashes on start.", "bug"),
                           ("I was charged twice.", "billing")], 3, seed=0) == []
