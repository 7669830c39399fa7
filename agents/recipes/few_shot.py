"""The few_shot recipe: labelled examples from the visible split into the prompt's config."""

from __future__ import annotations

import json
import random
from typing import Any, Literal

from pydantic import Field

from upgate.agents.recipes.base import RecipeArgs, RecipeContext, require, typed_args
from upgate.policy import ChangeKind
from upgate.records import Artifact
from upgate.sandboxes.base import Sandbox


class FewShotArgs(RecipeArgs):
    """How many visible examples per label."""

    examples_per_label: Literal[1, 2, 3] = Field(..., description="few_shot: examples")


class FewShot:
    """Write examples chosen from the visible split to the config's few-shot list."""

    name = "few_shot"
    kind: ChangeKind = "config"
    version = "1"
    summary = "add labelled examples chosen from the visible split to the prompt's few-shot list"
    arguments = FewShotArgs
    scope: tuple[str, ...] | None = ("config_file",)
    revisable = False

    def apply(self, box: Sandbox, ctx: RecipeContext, args: RecipeArgs) -> tuple[Artifact, ...]:
        """Sample the examples (seeded by the proposal id) and write the config."""
        a = typed_args(args, FewShotArgs)
        config_file = require(ctx.coder.manifest.config_file, "[prompt] config_file")
        rng = random.Random(ctx.proposal.id)
        by_label: dict[str, list[dict[str, Any]]] = {}
        for case in ctx.coder.visible_cases:
            by_label.setdefault(str(case["expected"]), []).append(case)
        chosen: list[dict[str, str]] = []
        for label in sorted(by_label):
            picked = rng.sample(by_label[label], min(a.examples_per_label, len(by_label[label])))
            chosen.extend({"input": str(case["input"]), "expected": label} for case in picked)
        rng.shuffle(chosen)
        config = json.loads(box.read_file(config_file))
        config["few_shot"] = chosen
        box.write_file(config_file, json.dumps(config, indent=2) + "\n")
        ctx.log.append(f"few_shot: {len(chosen)} visible examples written to {config_file}")
        return ()


RECIPE = FewShot()
