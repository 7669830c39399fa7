"""The prompt_variant recipe: the system prompt replaced by one of a few templates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from upgate.agents.recipes.base import RecipeArgs, RecipeContext, require, typed_args
from upgate.policy import ChangeKind
from upgate.records import Artifact
from upgate.sandboxes.base import Sandbox

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


class PromptVariantArgs(RecipeArgs):
    """Which template (the draft names the field "prompt_variant")."""

    variant: Literal["definitions", "concise", "checklist"] = Field(
        ..., alias="prompt_variant", description="prompt_variant: which template"
    )


class PromptVariant:
    """Write a template variant, filled with the labels and one visible example each."""

    name = "prompt_variant"
    kind: ChangeKind = "prompt"
    version = "1"
    summary = ("replace the system prompt with a template variant (definitions, concise, "
               "checklist)")
    arguments = PromptVariantArgs
    scope: tuple[str, ...] | None = ("prompt_file",)
    revisable = False

    def apply(self, box: Sandbox, ctx: RecipeContext, args: RecipeArgs) -> tuple[Artifact, ...]:
        """Render the chosen template and write the prompt file."""
        variant = typed_args(args, PromptVariantArgs).variant
        prompt_file = require(ctx.coder.manifest.prompt_file, "[prompt] file")
        labels = ctx.coder.manifest.labels
        examples: dict[str, str] = {}
        for case in ctx.coder.visible_cases:
            examples.setdefault(str(case["expected"]), str(case["input"]))
        label_lines = "\n".join(
            f"- {lab}: e.g. \"{examples.get(lab, '')[:80]}\"" for lab in labels
        )
        text = PROMPT_VARIANTS[variant].format(labels=", ".join(labels), label_lines=label_lines)
        box.write_file(prompt_file, text + "\n")
        ctx.log.append(f"prompt_variant: wrote the {variant!r} template to {prompt_file}")
        return ()


RECIPE = PromptVariant()
