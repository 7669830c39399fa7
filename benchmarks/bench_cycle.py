"""Cycle benchmark: where the time of one governed cycle goes, stage by stage.

Runs one real cycle on the bundled example (the demo's layout: the local vLLM server, the
Docker sandbox, SQLite, git) restricted to one recipe, then reads the stage times back from
the ledger: each entry's timestamp minus the one before it in the same cycle, so a stage's
time is what the node that wrote the entry took (observe, propose, policy_check, implement,
which holds the training for a LoRA recipe, critique, gate). The cycle's time is from its
first entry to the gate's (or to the record of a rejection): what a requester waits before
a human is asked; the human's own wait is not the machine's.

The figures are printed beside a baseline (the first measurement, kept in
benchmarks/baselines/cycle.json) with the ratio, so a change's effect shows in one output.

    .venv/bin/python benchmarks/bench_cycle.py [--recipe lora_finetune|few_shot|...]
        [--port 8011] [--state DIR ...] [--baseline FILE] [--save-baseline] [--json OUT]

--state reads the ledgers of runs already made (a demo's state folder, a test's) instead of
running a cycle. The server's port comes from --port or UPGATE_VLLM_PORT; the base model
folder the LoRA recipe trains on from UPGATE_VLLM_MODEL_DIR (default the demo's).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "benchmarks" / "baselines" / "cycle.json"
# A cycle's machine time ends where a human is asked, or where it is recorded as rejected.
END_NODES = ("gate", "record")
# The critique's phases in the order they run (agents/critic.py).
PHASES = ("tests", "serve_candidate", "evals", "probes_eval", "detectors", "review")


def stage_times(entries: list[Any]) -> dict[str, float]:
    """Seconds per node of one cycle's ledger entries, and the cycle's total as 'cycle'."""
    times: dict[str, float] = {}
    stamps = [(e.node, datetime.fromisoformat(e.at)) for e in entries]
    if not stamps:
        return times
    start = stamps[0][1]
    previous = start
    ended = False
    for node, at in stamps[1:]:
        times[node] = times.get(node, 0.0) + (at - previous).total_seconds()
        previous = at
        if node in END_NODES:
            ended = True
            break
    # A cycle still running (or cut off) shows how far it got, not a cycle time.
    times["cycle" if ended else "so far"] = (previous - start).total_seconds()
    return times


def critique_phases(entries: list[Any]) -> dict[str, float]:
    """Where the (last) critique's time went, as its ledger entry records it."""
    phases: dict[str, float] = {}
    for e in entries:
        if e.node == "critique" and isinstance(e.payload.get("phases"), dict):
            recorded = e.payload["phases"]  # the ledger stores keys sorted: re-order
            names = sorted(recorded, key=lambda k: (PHASES.index(k) if k in PHASES
                                                    else len(PHASES), k))
            phases = {f"  {k}": float(recorded[k]) for k in names}
    return phases


def read_state(state_dir: Path) -> list[tuple[str, str, dict[str, float]]]:
    """(cycle id, recipe, stage times) for every cycle in a state folder's ledger.

    The critique's own phases (tests, evals, probes, review) follow it, indented."""
    from upgate.ledger import open_ledger

    ledger = open_ledger(state_dir)
    out = []
    for cycle in ledger.cycles():
        entries = ledger.entries(cycle)
        if not entries or entries[0].node != "start":
            continue  # not an upgrade cycle (people added, approvals given later)
        recipe = "?"
        for e in entries:
            if e.node == "propose":
                recipe = str(e.payload.get("proposal", {}).get("recipe", "?"))
        times = stage_times(entries)
        phases = critique_phases(entries)
        if phases:
            ordered: dict[str, float] = {}
            for stage, seconds in times.items():
                ordered[stage] = seconds
                if stage == "critique":
                    ordered.update(phases)
            times = ordered
        out.append((cycle, recipe, times))
    ledger.close()
    return out


def upgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a separate process, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})},
                          timeout=3600, check=False)


def run_cycle(root: Path, recipe: str, port: int) -> Path:
    """Lay out the demo under `root`, allow only `recipe`, run one cycle; its state folder."""
    from upgate.demo import layout

    config = layout(root, port=port)
    model_dir = os.environ.get("UPGATE_VLLM_MODEL_DIR")
    if model_dir:
        text = re.sub(r'base_model_path = ".*"', f'base_model_path = "{model_dir}"',
                      config.read_text())
        config.write_text(text)
    target = root / "ticket-triage"
    manifest = target / "upgate-target.toml"
    manifest.write_text(re.sub(r"allowed = \[.*\]", f"allowed = {json.dumps([recipe])}",
                               manifest.read_text()))
    subprocess.run(["git", "-C", str(target), "-c", "user.name=b", "-c", "user.email=b@b",
                    "commit", "-qam", f"bench: only {recipe}"], check=True)
    env = {"UPGATE_KEY_DIR": str(root / "keys")}
    init = upgate("init", "--admin", "alice", "--config", str(config), env=env)
    if init.returncode != 0:
        raise SystemExit(f"could not set up the requester: {init.stdout}{init.stderr}")
    run = upgate("run", "--as", "alice", "--config", str(config), env=env)
    if run.returncode != 0:
        raise SystemExit(f"the cycle failed to run:\n{run.stdout}\n{run.stderr}")
    return root / "state"


def show(recipe: str, times: dict[str, float], baseline: dict[str, float] | None) -> None:
    """Print one cycle's stage times beside the baseline's."""
    print(f"\ncycle with recipe {recipe}  (seconds; baseline = first measurement)")
    print(f"  {'stage':<18}{'now':>9}{'baseline':>10}{'ratio':>8}")
    for stage, seconds in times.items():
        base = (baseline or {}).get(stage)
        ratio = f"{seconds / base:.2f}" if base else "-"
        shown = f"{base:.1f}" if base is not None else "-"
        print(f"  {stage:<18}{seconds:>9.1f}{shown:>10}{ratio:>8}")


def main() -> int:
    """Run (or read) cycles and print their stage times against the baseline."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="lora_finetune")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("UPGATE_VLLM_PORT", "8011")))
    parser.add_argument("--state", type=Path, action="append", default=[],
                        help="read this state folder's ledger instead of running a cycle")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--save-baseline", action="store_true",
                        help="store this run's figures as the baseline for its recipe")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    started = time.monotonic()
    if args.state:
        cycles = [c for state in args.state for c in read_state(state)]
    else:
        root = Path(tempfile.mkdtemp(prefix="upgate-bench-cycle-"))
        cycles = read_state(run_cycle(root, args.recipe, args.port))
    baselines: dict[str, Any] = (json.loads(args.baseline.read_text())
                                 if args.baseline.is_file() else {})
    print(f"cores: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}, "
          f"bench wall time: {time.monotonic() - started:.0f} s")
    figures: dict[str, Any] = {}
    for cycle, recipe, times in cycles:
        show(f"{recipe} ({cycle})", times, baselines.get(recipe, {}).get("stages"))
        figures[cycle] = {"recipe": recipe, "stages": times}
    if args.save_baseline:
        for cycle, recipe, times in cycles:
            baselines[recipe] = {"cycle": cycle, "cores": os.cpu_count(), "stages": times}
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        args.baseline.write_text(json.dumps(baselines, indent=2, sort_keys=True) + "\n")
        print(f"\nbaseline saved to {args.baseline}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
