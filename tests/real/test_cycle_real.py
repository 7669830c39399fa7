"""One complete cycle on the real parts: the real SmolLM2 served by vLLM, the Docker
sandbox, SQLite, git; the approval given through the CLI as a separate process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from upgate.demo import layout
from upgate.ledger import open_ledger

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]


def upgate(*args: str, env: dict[str, str] | None = None, timeout: int = 1800
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})},
                          cwd=REPO, check=False)


def only_recipes(target: Path, recipes: list[str]) -> None:
    manifest = target / "upgate-target.toml"
    text = re.sub(r"allowed = \[.*\]", f"allowed = {json.dumps(recipes)}",
                  manifest.read_text())
    manifest.write_text(text)
    subprocess.run(["git", "-C", str(target), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qam", f"recipes: {recipes}"], check=True)


def people(config: Path) -> dict[str, str]:
    """`upgate init --admin alice`, then alice registers bob; returns the environment that
    points the CLI at their key folder (outside the state folder)."""
    env = {"UPGATE_KEY_DIR": str(config.parent / "keys")}
    init = upgate("init", "--admin", "alice", "--config", str(config), env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    out = upgate("person", "add", "bob", "--as", "alice", "--config", str(config), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return env


def served_root(root: str, name: str) -> str | None:
    models = httpx.get(f"{root}/v1/models", timeout=10).json()["data"]
    return next((m.get("root") for m in models if m["id"] == name), None)


def test_lora_cycle_on_real_parts_reaches_approval_and_swaps_the_served_model(
    tmp_path: Path, vllm_root: str, docker_engine: None
) -> None:
    port = int(vllm_root.rsplit(":", 1)[1])
    config = layout(tmp_path, port=port)
    target = tmp_path / "ticket-triage"
    only_recipes(target, ["lora_finetune"])
    keys = people(config)
    before = served_root(vllm_root, "triage")
    try:
        run = upgate("run", "--as", "alice", "--config", str(config),
                     env=keys)
        assert run.returncode == 0, run.stdout + run.stderr
        ledger = open_ledger(tmp_path / "state")
        cycle = ledger.cycles()[-1]
        assert served_root(vllm_root, "triage") == before  # nothing swapped before approval
        # The proposer only chooses among LoRA settings that train well, and the recipe
        # widens the visible split with rewrites, so the adapter must pass the critic: a
        # rejection here is a failure of the recipe, reported with the critic's reason.
        last = ledger.entries(cycle)[-1]
        assert "waits for a human decision" in run.stdout, (
            f"the cycle ended {last.node}/{last.event}: {last.payload.get('reason')}\n"
            + run.stdout[-3000:]
        )

        inbox = upgate("inbox", "--config", str(config))
        assert cycle in inbox.stdout

        # The requester cannot approve their own proposal.
        selfie = upgate("approve", cycle, "--as", "alice", "--config", str(config),
                        env=keys)
        assert selfie.returncode == 2, selfie.stdout
        assert ("cannot approve" in selfie.stderr
                or "does not hold the approver role" in selfie.stderr), selfie.stderr
        assert served_root(vllm_root, "triage") == before

        ok = upgate("approve", cycle, "--as", "bob", "--config", str(config),
                    env=keys)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        events = [(e.node, e.event) for e in ledger.entries(cycle)]
        assert ("approve", "approve") in events
        assert ("deploy", "deployed") in events
        deployed = next(e for e in ledger.entries(cycle) if e.event == "deployed").payload
        adapter = deployed["deployment"]
        assert served_root(vllm_root, "triage") != before
        assert served_root(vllm_root, adapter["version_name"]) is not None
        # The version before stays loaded for rollback.
        assert served_root(vllm_root, "triage@initial") == before

        critique = next(e for e in ledger.entries(cycle) if e.node == "critique").payload
        assert critique["candidate_score"] > critique["baseline_score"]
        lineage = critique["lineage"]
        assert lineage["candidate_hash"] and lineage["policy_version"].startswith("example@1+")
        assert critique["critic"]["model"] == "smollm2"

        verify = upgate("verify", "--config", str(config))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        history = upgate("history", cycle, "--config", str(config))
        assert "deployed" in history.stdout
    finally:
        if before:
            httpx.post(f"{vllm_root}/v1/load_lora_adapter", timeout=60,
                       json={"lora_name": "triage", "lora_path": before, "load_inplace": True})


def test_prompt_cycle_on_real_parts_ends_recorded_and_a_branch_lands_on_approval(
    tmp_path: Path, vllm_root: str, docker_engine: None
) -> None:
    port = int(vllm_root.rsplit(":", 1)[1])
    config = layout(tmp_path, port=port)
    target = tmp_path / "ticket-triage"
    only_recipes(target, ["prompt_variant", "few_shot"])
    keys = people(config)
    run = upgate("run", "--as", "alice", "--config", str(config),
                 env=keys)
    assert run.returncode == 0, run.stdout + run.stderr
    ledger = open_ledger(tmp_path / "state")
    cycle = ledger.cycles()[-1]
    branches = subprocess.run(["git", "-C", str(target), "branch"], capture_output=True,
                              text=True, check=True).stdout
    assert f"upgate/{cycle}" not in branches
    if "waits for a human decision" in run.stdout:
        ok = upgate("approve", cycle, "--as", "bob", "--config", str(config),
                    env=keys)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        branches = subprocess.run(["git", "-C", str(target), "branch"], capture_output=True,
                                  text=True, check=True).stdout
        assert f"upgate/{cycle}" in branches
    else:
        # A prompt-only recipe rarely moves a 135M model: an honest rejection, recorded.
        last = ledger.entries(cycle)[-1]
        assert last.node == "record" and last.event in ("rejected", "failed")
        assert last.payload["reason"]
    assert ledger.verify().ok
