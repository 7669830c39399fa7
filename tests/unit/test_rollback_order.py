"""`upgate rollback CYCLE` of a landed change never reverts it underneath a later landed
change: the later cycle was judged on a tree holding the earlier one, so the tree left would
be one nobody judged. Refused, naming the later cycles newest first, with nothing changed
and nothing recorded; once they are rolled back (newest first), it goes through."""

from __future__ import annotations

import pytest

from upgate.deploy.git import GitDeployer
from upgate.deploy.rollback import rollback_cycle
from upgate.errors import DeployError
from upgate.policy import LandingMode

from ..conftest import make_target_repo
from .test_git_landing import PROMPT, edit_candidate, git
from .test_rollback import World, world

__all__ = ["world"]

EDITS = {"c3": (PROMPT, "Be brief.\n"), "c4": ("triage/config.json", "\n"),
         "c5": ("README.md", "More.\n")}


def land(w: World, mode: LandingMode, *cycles: str) -> str:
    """Land each cycle's change on main in order, recorded as the graph records it; the
    tree before the first."""
    repo = make_target_repo(w.root / "target")
    before = git(repo, "rev-parse", "main^{tree}")
    d = GitDeployer(repo, base="main", landing=mode)
    for cycle in cycles:
        path, line = EDITS[cycle]
        deployment = d.deploy(edit_candidate(repo, path, line), f"{cycle}-d", cycle_id=cycle,
                              message=f"upgate: {cycle}")
        w.ledger.append(cycle, "deploy", "deployed",
                        {"deployment": deployment.model_dump(mode="json")})
    return before


@pytest.mark.parametrize("mode", ["fast-forward", "merge"])
def test_an_earlier_change_is_not_reverted_under_a_later_one(world: World,
                                                             mode: LandingMode) -> None:
    before = land(world, mode, "c3", "c4", "c5")
    repo = world.root / "target"
    head = git(repo, "rev-parse", "main")
    with pytest.raises(DeployError, match=r"later landed changes on top of it: c5, c4 \(newest"
                                          r" first\).*nothing changed.*`upgate rollback c5`"):
        rollback_cycle(world.parts(), "c3", by="alice", reason="r")
    with pytest.raises(DeployError, match="on top of it: c5 "):
        rollback_cycle(world.parts(), "c4", by="alice", reason="r")
    assert git(repo, "rev-parse", "main") == head
    assert world.rollback_events() == []

    for cycle in ("c5", "c4", "c3"):  # newest first goes through
        out = rollback_cycle(world.parts(), cycle, by="alice", reason="r")
        assert out.status == "rolled_back", out.message
    assert git(repo, "rev-parse", "main^{tree}") == before
    assert world.rollback_events() == [("c5", "rolled_back"), ("c4", "rolled_back"),
                                       ("c3", "rolled_back")]


def test_a_later_change_already_rolled_back_does_not_block(world: World) -> None:
    before = land(world, "fast-forward", "c3", "c4")
    assert rollback_cycle(world.parts(), "c4", by="alice", reason="r").status == "rolled_back"
    assert rollback_cycle(world.parts(), "c3", by="alice", reason="r").status == "rolled_back"
    assert git(world.root / "target", "rev-parse", "main^{tree}") == before
    # Asked again, each says it is done, and the earlier one no longer sees the later one.
    assert rollback_cycle(world.parts(), "c3", by="alice", reason="r").status == (
        "already_restored")
