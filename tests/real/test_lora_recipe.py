"""The LoRA recipe's training script trains a real adapter on the real small model.

It runs agents/recipes/lora_train.py with a python that has torch and peft (the env var
UPGATE_TRAIN_PYTHON, default the vLLM virtual environment's) on the model folder that
scripts/prepare_model.py makes. The lead moves this run into the Docker training sandbox.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
from array import array
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "agents" / "recipes" / "lora_train.py"
TARGET = REPO / "examples" / "ticket-triage"
SUITE = REPO / "examples" / "suites" / "ticket-triage"
LABELS = "billing,bug,account,feature"


@pytest.fixture(scope="module")
def train_python() -> str:
    """A python with torch, transformers and peft, or skip."""
    default = REPO / ".cache" / "vllm-venv" / "bin" / "python"
    python = os.environ.get("UPGATE_TRAIN_PYTHON", str(default))
    if not Path(python).exists():
        pytest.skip(f"no python at {python}; run scripts/setup_vllm.sh or set UPGATE_TRAIN_PYTHON")
    probe = subprocess.run(
        [python, "-c", "import torch, transformers, peft"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import torch, transformers and peft: {probe.stderr[-300:]}")
    return python


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The converted model folder, or skip."""
    path = Path(
        os.environ.get(
            "UPGATE_VLLM_MODEL_DIR", str(REPO / ".cache" / "models" / "smollm2-135m-instruct")
        )
    )
    if not (path / "config.json").exists():
        pytest.skip(f"no model at {path}; run scripts/prepare_model.py --out {path}")
    return path


def run_training(
    python: str, model: Path, out: Path, *extra: str, labels: str = LABELS, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run the training script as the sandbox would, with the target's own prompt file."""
    return subprocess.run(
        [
            python, str(SCRIPT), "--model", str(model), "--train", str(SUITE / "visible.jsonl"),
            "--prompt", str(TARGET / "triage" / "prompt.txt"), "--labels", labels,
            "--out", str(out), *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_safetensors(path: Path) -> dict[str, array[float]]:
    """Read every float32 tensor of a safetensors file with the standard library."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + header_len])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        values = array("f")
        values.frombytes(data[8 + header_len + start : 8 + header_len + end])
        tensors[name] = values
    return tensors


def test_a_tiny_training_run_saves_a_trained_adapter(
    train_python: str, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    result = run_training(
        train_python, model_dir, out,
        "--max-examples", "8", "--augment", "1", "--mix", "0", "--epochs", "1", "--batch-size", "4",
        "--rank", "4", "--alpha", "8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch"]
    (summary,) = [e for e in events if e["event"] == "done"]
    assert [e["epoch"] for e in epochs] == [1]
    # 8 cases and one rewrite of each: 16 examples, 4 steps of 4
    assert epochs[0]["steps"] == 4
    assert epochs[0]["epochs"] == 1
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["epoch"], e["step"], e["steps"]) for e in steps] == [(1, i, 4) for i in (1, 2, 3, 4)]
    # Each step's line comes before its epoch's line: a reader sees progress as it happens.
    assert events.index(steps[-1]) < events.index(epochs[0])
    assert math.isfinite(epochs[0]["loss"]) and epochs[0]["loss"] > 0
    assert math.isfinite(summary["final_loss"])
    assert (summary["cases"], summary["augmented"], summary["examples"]) == (8, 8, 16)
    assert summary["hyperparameters"]["augment"] == 1
    assert summary["files"] == ["adapter_config.json", "adapter_model.safetensors"]

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 4
    # The defaults: attention and MLP projections of the last 10 of the model's 30 layers.
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert config["layers_to_transform"] == list(range(20, 30))

    tensors = read_safetensors(out / "adapter_model.safetensors")
    b_weights = {n: t for n, t in tensors.items() if "lora_B" in n}
    for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(module in n for n in b_weights), module
    # Only the adapted layers carry weights.
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in b_weights}
    assert layers == set(range(20, 30)), sorted(layers)
    # B starts at zero; a training step must have moved it, and to finite values only
    assert any(any(v != 0.0 for v in t) for t in b_weights.values())
    assert all(math.isfinite(v) for t in tensors.values() for v in t)


def test_a_label_outside_the_list_is_refused(
    train_python: str, model_dir: Path, tmp_path: Path
) -> None:
    # visible.jsonl holds account and feature cases too, which this label list lacks
    result = run_training(
        train_python, model_dir, tmp_path / "adapter", labels="billing,bug"
    )
    assert result.returncode == 2
    assert "is not in ['billing', 'bug']" in result.stderr
    assert not (tmp_path / "adapter").exists()


def hidden_and_visible_scores(root: str, adapter: Path) -> dict[str, float]:
    """Load `adapter` under a fresh name and score it with the critic's own harness."""
    import uuid

    import httpx

    from upgate.evals.harness import ChatChoiceHarness
    from upgate.evals.suite import load_suite

    name = f"recipe-check-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{root}/v1/load_lora_adapter", timeout=120,
               json={"lora_name": name, "lora_path": str(adapter)}).raise_for_status()
    suite = load_suite(SUITE)
    prompt = (TARGET / "triage" / "prompt.txt").read_text().strip()
    try:
        scores = {}
        for split in ("visible", "hidden"):
            results = ChatChoiceHarness().run(
                suite.split(split), base_url=f"{root}/v1", model=name, system_prompt=prompt,
                few_shot=[], labels=suite.labels, timeout_s=120,
            )
            assert not [r.error for r in results if r.error], split
            scores[split] = sum(r.score for r in results) / len(results)
        return scores
    finally:
        httpx.post(f"{root}/v1/unload_lora_adapter", timeout=60, json={"lora_name": name})


@pytest.mark.full
@pytest.mark.parametrize("seed", [0, 1])
def test_the_default_recipe_earns_the_hidden_split(
    train_python: str, model_dir: Path, tmp_path: Path, vllm_root: str, seed: int
) -> None:
    """The recipe's defaults, trained on the visible split only, generalise to the hidden
    split of hand-written tickets (scored by number, as the critic scores it)."""
    out = tmp_path / "adapter"
    result = run_training(train_python, model_dir, out, "--seed", str(seed), timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = hidden_and_visible_scores(vllm_root, out)
    assert scores["visible"] >= 0.9, scores
    assert scores["hidden"] >= 0.85, scores
