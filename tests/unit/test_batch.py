"""Batch autonomous runs: pause thresholds, and recipes the critic rejected against the
same baseline leave the proposer's menu."""

from __future__ import annotations

from pathlib import Path

from .test_cycle import REVIEW, draft, make_runner


def test_batch_learns_from_a_rejection_and_pauses_at_the_first_approval(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {
        "proposal": [draft("prompt_variant"), draft("few_shot")], "review": REVIEW,
    })
    report = runner.batch("alice", max_cycles=5)
    assert report.outcomes == ["rejected", "awaiting_approval"]
    assert report.stopped_because.startswith("paused: 1 approval")
    calls = [msgs for name, msgs in runner.deps.proposer.calls  # type: ignore[attr-defined]
             if name == "proposal"]
    assert "- prompt_variant:" in str(calls[0][0].content)
    # The second proposal's menu no longer offers what the critic just rejected.
    assert "- prompt_variant:" not in str(calls[1][0].content)
    assert "- few_shot:" in str(calls[1][0].content)
    events = [(e.node, e.event) for e in runner.deps.ledger.entries() if e.node == "batch"]
    assert events == [("batch", "started"), ("batch", "paused")]


def test_batch_pauses_after_setbacks_in_a_row(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": "not json"})
    report = runner.batch("alice", max_cycles=10, pause_after_failures=2)
    assert report.outcomes == ["failed", "failed"]
    assert "2 setbacks in a row" in report.stopped_because


def test_the_baseline_a_rejection_applies_to_is_recorded(workdir: Path) -> None:
    runner, _ = make_runner(workdir, {"proposal": draft("prompt_variant"), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "rejected"
    baseline = state["observation"]["baseline"]
    assert baseline["model_version"] == "initial"
    assert len(baseline["commit"]) == 40
    record = runner.deps.ledger.entries(state["cycle_id"])[-1]
    assert record.payload["baseline"] == baseline


def test_when_every_offered_recipe_was_rejected_the_cycle_blocks(workdir: Path) -> None:
    manifest = workdir / "target" / "upgate-target.toml"
    manifest.write_text(manifest.read_text().replace(
        'allowed = ["lora_finetune", "few_shot", "prompt_variant"]',
        'allowed = ["prompt_variant"]'))
    import subprocess

    subprocess.run(["git", "-C", str(workdir / "target"), "-c", "user.name=t", "-c",
                    "user.email=t@t", "commit", "-qam", "one recipe"], check=True)
    runner, _ = make_runner(workdir, {"proposal": draft("prompt_variant"), "review": REVIEW})
    assert runner.start("alice")["outcome"] == "rejected"
    second = runner.start("alice")
    assert second["outcome"] == "blocked"
    assert "already rejected" in second["reason"]
