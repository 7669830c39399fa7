"""LoRA recipe benchmark: train an adapter with given settings, score it on both splits.

Trains with the recipe's own script (agents/recipes/lora_train.py) on the example's visible
split, with a python that has torch and peft (UPGATE_TRAIN_PYTHON, default the vLLM venv's),
loads the adapter into a running vLLM server under a fresh name (/v1/load_lora_adapter), and
scores it with the trusted harness (`ChatChoiceHarness`) on the visible and hidden splits,
exactly as the critic does. Only the scores of the hidden split are read, never its cases.

    .venv/bin/python benchmarks/bench_lora.py --port 8021 --seeds 0,1 \
        [--set "epochs=4 rank=16 lr=1e-3 augment=4"] [--set ...] [--json OUT]

Each --set is one setting (the script's own flags, without dashes); each runs once per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from upgate.evals.harness import ChatChoiceHarness
from upgate.evals.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "agents" / "recipes" / "lora_train.py"
SUITE = REPO / "examples" / "suites" / "ticket-triage"
PROMPT = REPO / "examples" / "ticket-triage" / "triage" / "prompt.txt"


def train(
    python: str, model: Path, out: Path, setting: dict[str, str], seed: int
) -> dict[str, Any]:
    """Run the training script; its summary line."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in setting.items()]
    labels = ",".join(load_suite(SUITE).labels)
    proc = subprocess.run(
        [python, str(SCRIPT), "--model", str(model), "--train", str(SUITE / "visible.jsonl"),
         "--prompt", str(PROMPT), "--labels", labels, "--out", str(out), f"--seed={seed}",
         *flags],
        capture_output=True, text=True, timeout=3600, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def score(root: str, adapter: Path) -> dict[str, float]:
    """Load the adapter under a fresh name and score it on each split."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    reply = httpx.post(f"{root}/v1/load_lora_adapter", timeout=120,
                       json={"lora_name": name, "lora_path": str(adapter)})
    reply.raise_for_status()
    suite = load_suite(SUITE)
    prompt = PROMPT.read_text().strip()
    scores: dict[str, float] = {}
    try:
        for split in ("visible", "hidden"):
            cases = suite.split(split)
            results = ChatChoiceHarness().run(
                cases, base_url=f"{root}/v1", model=name, system_prompt=prompt, few_shot=[],
                labels=tuple(suite.labels), timeout_s=120,
            )
            scores[split] = sum(r.score for r in results) / len(results)
    finally:
        httpx.post(f"{root}/v1/unload_lora_adapter", timeout=60, json={"lora_name": name})
    return scores


def main() -> int:
    """Train and score every setting for every seed; print a table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("UPGATE_VLLM_PORT", "8011")))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    python = os.environ.get("UPGATE_TRAIN_PYTHON",
                            str(REPO / ".cache" / "vllm-venv" / "bin" / "python"))
    model = Path(os.environ.get("UPGATE_VLLM_MODEL_DIR",
                                str(REPO / ".cache" / "models" / "smollm2-135m-instruct")))
    root = f"http://127.0.0.1:{args.port}"
    rows: list[dict[str, Any]] = []
    for text in args.settings or [""]:
        setting = dict(item.split("=", 1) for item in text.split())
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                started = time.monotonic()
                summary = train(python, model, Path(tmp) / "adapter", setting, seed)
                trained_s = time.monotonic() - started
                scores = score(root, Path(tmp) / "adapter")
            row = {"setting": text or "defaults", "seed": seed, **scores,
                   "train_s": round(trained_s, 1), "examples": summary.get("examples"),
                   "final_loss": summary.get("final_loss")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
