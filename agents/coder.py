"""The coder: carries out a proposal on a copy of the target inside a sandbox.

The proposal's recipe (see `upgate.agents.recipes`) does the work: a bounded, reviewable
transformation, or the `edit` recipe's typed tool calls. Whatever happens, the result is
the sandbox's diff plus content-hashed artifacts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import ValidationError

from upgate.agents.recipes.base import CoderContext, RecipeContext, SandboxFactory
from upgate.agents.recipes.registry import get_recipe
from upgate.errors import ConfigError
from upgate.evals.diffparse import parse_diff, touched_paths
from upgate.evals.gitdiff import tree_diff
from upgate.policy import UNPARSEABLE_PATH
from upgate.records import Candidate, Proposal
from upgate.sandboxes.base import Sandbox

__all__ = ["CoderContext", "SandboxFactory", "changed_paths", "implement"]



def changed_paths(diff: str) -> tuple[str, ...]:
    """Every path a diff touches (both sides of renames, quoted names included).

    An entry whose paths cannot be read counts as UNPARSEABLE_PATH, which every policy
    protects: a diff upgate cannot read is never waved through.
    """
    files = parse_diff(diff)
    paths = set(touched_paths(files))
    if any(not f.paths for f in files):
        paths.add(UNPARSEABLE_PATH)
    return tuple(sorted(paths))


def _host_diff(box: Sandbox, baseline: Path) -> str:
    """The workspace's diff, computed on the host by upgate's own git (never the sandbox's).

    Sandboxed code can write the workspace's `.git` (a `diff.external` driver, say); the
    files are copied out without it and diffed against the baseline tree here.
    """
    with tempfile.TemporaryDirectory(prefix="upgate-coder-") as tmp:
        out = Path(tmp) / "workspace"
        box.copy_out(".", out)
        return tree_diff(baseline, out)


def implement(proposal: Proposal, ctx: CoderContext, feedback: str = "") -> Candidate:
    """Carry out a proposal with its recipe and return the candidate."""
    recipe = get_recipe(proposal.recipe)
    try:
        args = recipe.arguments.model_validate(proposal.args)
    except ValidationError as exc:
        raise ConfigError(
            f"the {recipe.name} proposal's arguments do not fit the recipe: {exc}; "
            "propose again with arguments the recipe accepts"
        ) from exc
    run = RecipeContext(coder=ctx, proposal=proposal, feedback=feedback)
    with ctx.sandbox([]) as box:
        box.copy_in(ctx.target_tree)
        artifacts = recipe.apply(box, run, args)
        diff = _host_diff(box, ctx.target_tree)
    return Candidate(
        proposal_id=proposal.id,
        kind=proposal.kind,
        diff=diff,
        changed_paths=changed_paths(diff),
        artifacts=tuple(artifacts),
        log="\n".join(run.log)[-8000:],
        made_by=ctx.made_by,
    )
