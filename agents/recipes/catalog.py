"""Improvement recipes: reviewable, versioned transformations a weak proposer can choose.

A recipe turns a proposal's bounded arguments into a change of the target: few-shot
examples chosen from the visible split, a prompt-template variant, a LoRA fine-tune on the
visible split, or a free-form edit by the coder agent. The critic judges the result like any
other candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

from upgate.policy import ChangeKind


@dataclass(frozen=True)
class RecipeSpec:
    """What a recipe is, for the proposer's menu and the policy."""

    name: str
    kind: ChangeKind
    summary: str
    version: str


RECIPES: dict[str, RecipeSpec] = {
    r.name: r
    for r in (
        RecipeSpec(
            "lora_finetune", "model",
            "fine-tune a LoRA adapter of the served model on the visible eval examples; "
            "deploying it swaps the served model (needs a human approval)", "1",
        ),
        RecipeSpec(
            "few_shot", "config",
            "add labelled examples chosen from the visible split to the prompt's few-shot list",
            "1",
        ),
        RecipeSpec(
            "prompt_variant", "prompt",
            "replace the system prompt with a template variant (definitions, concise, checklist)",
            "1",
        ),
        RecipeSpec(
            "edit", "code",
            "the coder agent edits the code with tools (read, write, apply a diff, run tests)",
            "1",
        ),
    )
}

PROMPT_VARIANTS: dict[str, str] = {
    "definitions": (
        "You sort customer support tickets. Read the ticket and answer with exactly one "
        "label.\nLabels:\n{label_lines}\nAnswer with the label only."
    ),
    "concise": "Classify the support ticket. Answer with one of: {labels}.",
    "checklist": (
        "You triage support tickets.\nStep 1: find what the customer wants.\n"
        "Step 2: pick the matching label from: {labels}.\n"
        "Examples of each label:\n{label_lines}\nAnswer with the label only."
    ),
}


def recipe_menu(allowed: tuple[str, ...]) -> str:
    """The proposer's menu of allowed recipes."""
    return "\n".join(
        f"- {RECIPES[n].name}: {RECIPES[n].summary} (kind: {RECIPES[n].kind})"
        for n in allowed
        if n in RECIPES
    )
