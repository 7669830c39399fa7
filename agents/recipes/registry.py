"""The registered recipes. Adding a recipe: its module, and one line in `_REGISTERED`."""

from __future__ import annotations

from upgate.agents.recipes import edit, few_shot, lora_finetune, prompt_variant
from upgate.agents.recipes.base import Recipe
from upgate.errors import ConfigError

_REGISTERED: tuple[Recipe, ...] = (
    lora_finetune.RECIPE,
    few_shot.RECIPE,
    prompt_variant.RECIPE,
    edit.RECIPE,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in _REGISTERED}
"""Every recipe by name, in menu order."""


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; a clear error for an unknown one."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown recipe {name!r}; the registered recipes are {sorted(RECIPES)} "
            "(check [recipes] allowed in upgate-target.toml and the policy)"
        ) from None


def recipe_scope(name: str) -> tuple[str, ...] | None:
    """The manifest file fields `name` may change: () none, None any (unknown: any)."""
    recipe = RECIPES.get(name)
    return recipe.scope if recipe is not None else None


def recipe_menu(allowed: tuple[str, ...]) -> str:
    """The proposer's menu of allowed recipes."""
    return "\n".join(
        f"- {RECIPES[n].name}: {RECIPES[n].summary} (kind: {RECIPES[n].kind})"
        for n in allowed
        if n in RECIPES
    )
