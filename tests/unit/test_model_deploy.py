"""A served-model change: approval is mandatory, the alias swaps with the previous version
kept loaded, the post-deploy check compares the live alias with what the critic measured,
and a regression rolls back to the version before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgate.agents.recipes import lora_finetune
from upgate.deploy.testing import FakeVllmAdmin
from upgate.hashing import sha256_tree
from upgate.records import Artifact

from ..conftest import decide
from .test_cycle import REVIEW, draft, make_runner


def _good_adapter(tmp: Path) -> tuple[Path, str]:
    """The trained adapter's folder and its content hash."""
    adapter = tmp / "adapter-good"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    return adapter, sha256_tree(adapter)


def _fake_training(tmp: Path) -> Any:
    def train(box: Any, ctx: Any, p: Any, out: list[str]) -> Artifact:
        adapter, digest = _good_adapter(tmp)
        out.append("trained (test double)")
        return Artifact(name="triage@goodgoodgood", kind="adapter", path=str(adapter),
                        sha256=digest)
    return train


def _runner(workdir: Path, monkeypatch: pytest.MonkeyPatch, *, live_good: bool) -> Any:
    monkeypatch.setattr(lora_finetune, "_lora_finetune", _fake_training(workdir))
    judged_as = f"upgate-candidate-{_good_adapter(workdir)[1][:12]}"
    runner, client = make_runner(workdir, {"proposal": draft("lora_finetune"), "review": REVIEW},
                                 good_models=[judged_as])
    initial = workdir / "adapters" / "triage-v0"
    initial.mkdir(parents=True, exist_ok=True)
    fake = FakeVllmAdmin({"smollm2": "/base", "triage": str(initial)})
    runner.deps.admin = fake
    if live_good:
        # The alias answers well once it serves the trained adapter.
        original = client.create

        def create(**kw: Any) -> Any:
            if kw["model"] == "triage" and fake.served["triage"].endswith("adapter-good"):
                kw = {**kw, "model": judged_as}
            return original(**kw)

        client.create = create  # type: ignore[method-assign]
    return runner, fake


def test_model_change_waits_for_a_human_even_when_the_policy_says_auto(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, fake = _runner(workdir, monkeypatch, live_good=True)
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"  # conftest's policy sets model approval=auto
    assert fake.served["triage"] == str(workdir / "adapters" / "triage-v0")
    assert not [c for c in fake.calls if c[1] == "triage"]


def test_approved_model_swaps_the_alias_and_keeps_the_previous_loaded(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, fake = _runner(workdir, monkeypatch, live_good=True)
    state = runner.start("alice")
    done = decide(runner, state["cycle_id"], "approve", "bob")
    assert done["outcome"] == "deployed", done.get("reason")
    assert fake.served["triage"].endswith("adapter-good")
    assert fake.served["triage@goodgoodgood"].endswith("adapter-good")
    assert fake.served["triage@initial"] == str(workdir / "adapters" / "triage-v0")
    assert done["monitor"]["regressed"] is False
    assert done["monitor"]["live_score"] == done["monitor"]["critic_score"]
    assert runner.deps.store.active_version("triage")["version_name"] == "triage@goodgoodgood"
    # Deploying again (a resume after a crash) changes nothing.
    before = list(fake.calls)
    from upgate.graphs import nodes
    from upgate.records import Deployment

    again = runner.deps.deployer("vllm").deploy(
        nodes._candidate(done), done["deployment"]["deployment_id"],
        cycle_id=done["cycle_id"], message="again")
    assert [c for c in fake.calls[len(before):] if c[0] == "load"] == []
    # The version before is still what a rollback would restore.
    assert again == Deployment.model_validate(done["deployment"])


def test_a_live_regression_rolls_back_to_the_previous_version(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, fake = _runner(workdir, monkeypatch, live_good=False)
    state = runner.start("alice")
    done = decide(runner, state["cycle_id"], "approve", "bob")
    assert done["outcome"] == "rolled_back"
    assert done["monitor"]["regressed"] is True
    assert fake.served["triage"] == str(workdir / "adapters" / "triage-v0")
    assert runner.deps.store.active_version("triage")["version_name"] == "triage@initial"
    events = [(e.node, e.event) for e in runner.deps.ledger.entries(state["cycle_id"])]
    assert ("monitor", "regression") in events
    assert ("rollback", "rolled_back") in events
    assert events[-1] == ("record", "rolled_back")


def test_reconcile_after_a_server_restart_restores_alias_and_rollback_targets(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upgate.deploy.reconcile import reconcile

    runner, fake = _runner(workdir, monkeypatch, live_good=True)
    state = runner.start("alice")
    decide(runner, state["cycle_id"], "approve", "bob")
    good = fake.served["triage"]
    # The server restarts: only what it was started with is served.
    fake.served = {"smollm2": "/base", "triage": str(workdir / "adapters" / "triage-v0")}
    result = reconcile(runner.deps.store, fake, "triage", runner.deps.ledger)
    assert result["active"] == "triage@goodgoodgood"
    assert fake.served["triage"] == good
    assert fake.served["triage@initial"] == str(workdir / "adapters" / "triage-v0")
    assert sorted(result["loaded"]) == ["triage@goodgoodgood", "triage@initial"]
    # Running it again changes nothing.
    calls = len(fake.calls)
    assert reconcile(runner.deps.store, fake, "triage", runner.deps.ledger)["loaded"] == []
    assert len(fake.calls) == calls


def test_a_regression_with_no_version_before_is_recorded_as_not_restored(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, fake = _runner(workdir, monkeypatch, live_good=False)
    del fake.served["triage"]  # the server never served the alias: nothing to go back to
    state = runner.start("alice")
    done = decide(runner, state["cycle_id"], "approve", "bob")
    assert done["monitor"]["regressed"] is True
    assert done["outcome"] == "failed"
    assert "nothing to roll back to" in done["reason"]
    events = [(e.node, e.event) for e in runner.deps.ledger.entries(state["cycle_id"])]
    assert ("rollback", "not_restored") in events
    assert ("rollback", "rolled_back") not in events
    assert fake.served["triage"].endswith("adapter-good")
