"""The proposer: reads the evidence and proposes one typed change.

It chooses from a closed menu under a JSON schema (recipe, bounded arguments, risk), so even
a very small model gives a valid, reviewable proposal; a strong model writes a better
rationale and picks better arguments.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from upgate.agents.recipes.registry import RECIPES, get_recipe, recipe_menu
from upgate.agents.structured import call_structured
from upgate.errors import ConfigError
from upgate.prompts import load_prompt
from upgate.records import ModelRef, Proposal


class _DraftBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


_COMMON = ("recipe", "rationale", "expected_effect", "risk")


def _draft_fields() -> dict[str, tuple[Any, FieldInfo]]:
    """Every registered recipe's argument fields, under their draft names (aliases)."""
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    owner: dict[str, str] = {}
    for recipe in RECIPES.values():
        for name, info in recipe.arguments.model_fields.items():
            key = info.alias or name
            if key in fields or key in _COMMON:
                raise ConfigError(
                    f"recipe {recipe.name!r} argument {key!r} clashes with "
                    f"{owner.get(key, 'the proposal')!r}; give it a distinct name or alias"
                )
            fields[key] = (info.annotation, info)
            owner[key] = recipe.name
    return fields


def draft_schema(recipes: tuple[str, ...]) -> type[BaseModel]:
    """The JSON schema the proposer must fill, with the allowed recipes as an enum.

    Strict decoding asks for every field, so the draft holds every registered recipe's
    arguments; only the chosen recipe's are kept (see `recipe_args`).
    """
    if not recipes:
        raise ValueError("no recipes are allowed for this target")
    # Typed as Any: these are runtime-built types for create_model, not annotations.
    recipe_type: Any = Literal[tuple(recipes)]
    risk_type: Any = Literal["low", "medium", "high"]
    fields: dict[str, Any] = {
        "recipe": (recipe_type, ...),
        "rationale": (str, Field(..., min_length=1, max_length=280)),
        "expected_effect": (str, Field(..., min_length=1, max_length=140)),
        "risk": (risk_type, ...),
        **_draft_fields(),
    }
    model: type[BaseModel] = create_model("ProposalDraft", __base__=_DraftBase, **fields)
    return model


def recipe_args(recipe: str, draft: dict[str, Any]) -> dict[str, Any]:
    """The arguments that matter for the chosen recipe, checked by its argument model."""
    arguments = get_recipe(recipe).arguments
    picked = {
        (info.alias or name): draft[info.alias or name]
        for name, info in arguments.model_fields.items()
    }
    return arguments.model_validate(picked).model_dump()


def propose(
    model: BaseChatModel,
    *,
    proposal_id: str,
    target: str,
    recipes: tuple[str, ...],
    evidence: dict[str, Any],
    history: list[dict[str, Any]],
    made_by: ModelRef,
    retries: int,
) -> Proposal:
    """Ask the model for one proposal; raises AgentOutputError on persistent bad output."""
    prompt = load_prompt("proposer")
    system = prompt.render(
        target=target,
        recipes=recipe_menu(recipes),
        evidence=json.dumps(evidence, indent=1, sort_keys=True)[:6000],
        history=json.dumps(history[-5:], indent=1)[:2000] or "none",
    )
    schema = draft_schema(recipes)
    draft = call_structured(
        model,
        [SystemMessage(content=system), HumanMessage(content="Propose one change now.")],
        schema,
        name="proposal",
        retries=retries,
    ).model_dump()
    spec = get_recipe(draft["recipe"])
    return Proposal(
        id=proposal_id,
        kind=spec.kind,
        target=target,
        recipe=spec.name,
        args=recipe_args(spec.name, draft),
        rationale=draft["rationale"],
        expected_effect=draft["expected_effect"],
        risk=draft["risk"],
        evidence_refs=tuple(sorted(evidence.get("refs", []))),
        made_by=made_by,
    )
