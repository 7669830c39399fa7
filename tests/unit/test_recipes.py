"""The recipe seam: a new recipe is one module and one registry line. A toy recipe registered
here goes through the proposer's schema and argument chain, the coder's dispatch and the
revise routing without any other file knowing about it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from pydantic import Field

from upgate.agents.coder import CoderContext, implement
from upgate.agents.proposer import draft_schema, propose, recipe_args
from upgate.agents.recipes import registry
from upgate.agents.recipes.base import RecipeArgs, RecipeContext, typed_args
from upgate.agents.testing import scripted
from upgate.config import load_manifest
from upgate.errors import ConfigError
from upgate.graphs.nodes import after_critique
from upgate.policy import ChangeKind
from upgate.records import Artifact, ModelRef, Proposal
from upgate.sandboxes.base import Sandbox
from upgate.sandboxes.config import FakeSandboxConfig, get_sandbox

from ..conftest import EXAMPLE_TARGET

MADE_BY = ModelRef(agent="test", endpoint="scripted", model="scripted", prompt="test",
                   prompt_hash="0" * 64)


class ToyArgs(RecipeArgs):
    """The toy's one argument, under a draft name of its own."""

    greeting: Literal["hello", "howdy"] = Field(..., alias="toy_greeting")


class Toy:
    """Writes a greeting file; revisable, and allowed to touch any file."""

    name = "toy"
    kind: ChangeKind = "code"
    version = "1"
    summary = "write a greeting file"
    arguments = ToyArgs
    scope: tuple[str, ...] | None = None
    revisable = True

    def apply(self, box: Sandbox, ctx: RecipeContext, args: RecipeArgs) -> tuple[Artifact, ...]:
        """Write GREETING and return one artifact."""
        greeting = typed_args(args, ToyArgs).greeting
        box.write_file("GREETING", f"{greeting} from {ctx.proposal.id}\n")
        ctx.log.append(f"toy wrote {greeting}")
        return (Artifact(name="toy@1", kind="file", path="GREETING", sha256="0" * 64),)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Toy:
    recipe = Toy()
    monkeypatch.setitem(registry.RECIPES, recipe.name, recipe)
    return recipe


def draft(recipe: str, **over: Any) -> str:
    base = {"recipe": recipe, "rationale": "r", "expected_effect": "e", "risk": "low",
            "epochs": 2, "rank": 16, "learning_rate": "1e-3", "examples_per_label": 2,
            "prompt_variant": "concise"}
    return json.dumps({**base, **over})


def coder_ctx(tmp_path: Path) -> CoderContext:
    return CoderContext(
        target_tree=EXAMPLE_TARGET, manifest=load_manifest(EXAMPLE_TARGET),
        visible_cases=[{"input": "my card was charged twice", "expected": "billing"},
                       {"input": "the app crashes", "expected": "bug"}],
        sandbox=lambda mounts: get_sandbox(FakeSandboxConfig(), mounts),
        train_sandbox=lambda mounts: get_sandbox(FakeSandboxConfig(), mounts),
        base_model_path=None, artifacts_dir=tmp_path / "artifacts",
        model=scripted({}), made_by=MADE_BY, retries=0,
    )


def test_a_registered_toy_recipe_goes_from_proposal_to_candidate(
    toy: Toy, tmp_path: Path
) -> None:
    model = scripted({"proposal": draft("toy", toy_greeting="howdy")})
    proposal = propose(model, proposal_id="p1", target="ticket-triage",
                       recipes=("few_shot", "toy"), evidence={}, history=[], made_by=MADE_BY,
                       retries=0)
    system = str(model.calls[0][1][0].content)
    assert "- toy: write a greeting file (kind: code)" in system
    assert (proposal.recipe, proposal.kind, proposal.args) == ("toy", "code",
                                                              {"greeting": "howdy"})

    candidate = implement(proposal, coder_ctx(tmp_path))
    assert candidate.changed_paths == ("GREETING",)
    assert "+howdy from p1" in candidate.diff
    assert [a.name for a in candidate.artifacts] == ["toy@1"]
    assert "toy wrote howdy" in candidate.log


def test_the_draft_schema_carries_every_registered_recipes_arguments(toy: Toy) -> None:
    schema = draft_schema(("few_shot", "toy")).model_json_schema()
    assert schema["properties"]["recipe"]["enum"] == ["few_shot", "toy"]
    assert schema["properties"]["toy_greeting"]["enum"] == ["hello", "howdy"]
    assert set(schema["required"]) >= {"toy_greeting", "epochs", "prompt_variant"}
    assert schema["additionalProperties"] is False
    with pytest.raises(ValueError, match="toy_greeting"):
        draft_schema(("toy",)).model_validate_json(draft("toy", toy_greeting="hi"))


def test_a_recipe_whose_argument_clashes_with_anothers_is_refused(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    class Clash(Toy):
        name = "clash"
        arguments = registry.RECIPES["few_shot"].arguments

    monkeypatch.setitem(registry.RECIPES, "clash", Clash())
    with pytest.raises(ConfigError, match="examples_per_label"):
        draft_schema(("clash",))


def test_revise_routing_follows_the_recipes_revisable_flag(toy: Toy) -> None:
    runtime: Any = SimpleNamespace(
        context=SimpleNamespace(policy=SimpleNamespace(
            thresholds=SimpleNamespace(max_revisions=1))))
    state: Any = {"verdict": {"decision": "revise"}, "proposal": {"recipe": "toy"},
                  "revisions": 0}
    assert after_critique(state, runtime) == "revise"
    toy.revisable = False  # type: ignore[misc]
    assert after_critique(state, runtime) == "gate"
    for name in ("few_shot", "prompt_variant", "lora_finetune"):
        assert after_critique({**state, "proposal": {"recipe": name}}, runtime) == "gate"
    assert after_critique({**state, "proposal": {"recipe": "edit"}}, runtime) == "revise"
    assert after_critique({**state, "revisions": 1, "proposal": {"recipe": "edit"}},
                          runtime) == "gate"


def test_builtin_arguments_keep_the_proposal_shape() -> None:
    full = json.loads(draft("x"))
    assert recipe_args("lora_finetune", full) == {"epochs": 2, "rank": 16,
                                                  "learning_rate": 0.001}
    assert recipe_args("few_shot", full) == {"examples_per_label": 2}
    assert recipe_args("prompt_variant", full) == {"variant": "concise"}
    assert recipe_args("edit", full) == {}
    # What the proposal recorded validates again when the coder reads it.
    lora = registry.get_recipe("lora_finetune").arguments
    assert lora.model_validate({"epochs": 1, "rank": 16, "learning_rate": 1e-3}).model_dump() \
        == {"epochs": 1, "rank": 16, "learning_rate": 0.001}
    with pytest.raises(ValueError, match="learning_rate"):
        lora.model_validate({"epochs": 2, "rank": 16, "learning_rate": 0.5})
    # Only settings measured to train well are offered: a weak step or a long run is refused.
    with pytest.raises(ValueError, match="learning_rate"):
        lora.model_validate({"epochs": 2, "rank": 16, "learning_rate": 5e-4})
    with pytest.raises(ValueError, match="epochs"):
        lora.model_validate({"epochs": 4, "rank": 16, "learning_rate": 1e-3})


def test_scopes_and_lookup() -> None:
    assert registry.recipe_scope("few_shot") == ("config_file",)
    assert registry.recipe_scope("prompt_variant") == ("prompt_file",)
    assert registry.recipe_scope("lora_finetune") == ()
    assert registry.recipe_scope("edit") is None
    assert list(registry.RECIPES) == ["lora_finetune", "few_shot", "prompt_variant", "edit"]
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        registry.get_recipe("nope")


def test_the_coder_refuses_arguments_its_recipe_does_not_accept(tmp_path: Path) -> None:
    bad = Proposal(id="p2", kind="config", target="ticket-triage", recipe="few_shot",
                   args={"examples_per_label": 9}, rationale="r", expected_effect="e",
                   risk="low", made_by=MADE_BY)
    with pytest.raises(ConfigError, match="do not fit the recipe"):
        implement(bad, coder_ctx(tmp_path))
