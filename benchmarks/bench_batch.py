"""Batch benchmark: autonomy at scale, with scripted models and the fake sandbox.

Runs one batch of N cycles (default 60) on a copy of the example target, under a policy
that approves config changes automatically (so every cycle proposes, builds, critiques,
deploys a branch and records), with the approvals-waiting and setback thresholds out of the
way. Prints, for the first and the last cycles:

- orchestration overhead per cycle: the batch loop's own time between cycles (threshold
  checks over the ledger, ledger verification, the inbox scan, cost records), against the
  cycle's own time, and how both grow (last / first ratio);
- ledger growth: entries and bytes the ledger gains per cycle, last against first.

    .venv/bin/python benchmarks/bench_batch.py [--cycles 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test fixtures build the target and the config

from tests.conftest import OracleClient, make_target_repo, suite_answers, write_config  # noqa: E402
from upgate import guard  # noqa: E402
from upgate.agents.testing import scripted  # noqa: E402
from upgate.app import build_deps  # noqa: E402
from upgate.config import load_settings  # noqa: E402
from upgate.evals.harness import ChatChoiceHarness  # noqa: E402
from upgate.graphs.runner import Runner  # noqa: E402

AUTO_CONFIG = """
[kinds.config]
allowed = true
approval = "auto"
"""
PROPOSAL = json.dumps({
    "recipe": "few_shot", "rationale": "visible score is low", "expected_effect": "more",
    "risk": "low", "epochs": 3, "rank": 16, "learning_rate": "5e-4",
    "examples_per_label": 2, "prompt_variant": "definitions"})
REVIEW = json.dumps({"summary": "adds examples", "concerns": [], "recommendation": "accept"})


def build(root: Path) -> Runner:
    """A runner over a fresh state folder, scripted models and a scripted eval endpoint."""
    make_target_repo(root / "target")
    write_config(root)
    policy = root / "policy.toml"
    policy.write_text(policy.read_text().replace("[kinds.config]\nallowed = true\n", "")
                      + AUTO_CONFIG)
    client = OracleClient(suite_answers())
    models = {a: scripted({"proposal": PROPOSAL, "review": REVIEW,
                           "probes": json.dumps({"probes": []})})
              for a in ("proposer", "coder", "critic")}
    deps = build_deps(load_settings(root / "upgate.toml"), models=models,
                      harness=ChatChoiceHarness(client_factory=lambda url, t: client))
    return Runner(deps)


def ledger_size(runner: Runner) -> tuple[int, int]:
    """The ledger's entries and logical size (the bytes of every payload and hash)."""
    count, size = runner.deps.ledger._db.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(hash) + LENGTH(prev_hash)), 0) "
        "FROM ledger").fetchone()
    return int(count), int(size)


def main() -> None:
    """Run the batch and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--window", type=int, default=10, help="cycles compared at each end")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    guard.ALLOW_MODEL_REQUESTS = False
    with tempfile.TemporaryDirectory(prefix="upgate-bench-batch-") as tmp:
        runner = build(Path(tmp))
        marks: list[dict[str, Any]] = []

        def on_cycle(state: Any) -> None:
            end = time.perf_counter()  # before the benchmark's own queries
            entries, size = ledger_size(runner)
            marks.append({"end": end, "entries": entries, "bytes": size,
                          "resume": time.perf_counter()})

        started = time.perf_counter()
        report = runner.batch("alice", max_cycles=args.cycles, max_pending=10**6,
                              pause_after_failures=10**6, on_cycle=on_cycle)
        total = time.perf_counter() - started
        assert len(report.cycles) == args.cycles, report.stopped_because
    rows = []
    previous_end, previous_entries, previous_bytes = started, 0, 0
    for cost, mark in zip(report.curve, marks, strict=True):
        # This cycle plus the loop's checks before it, less the benchmark's own queries.
        span = mark["end"] - previous_end
        rows.append({"cycle_s": cost["wall_s"], "overhead_s": max(span - cost["wall_s"], 0.0),
                     "entries": mark["entries"] - previous_entries,
                     "bytes": mark["bytes"] - previous_bytes})
        previous_end, previous_entries, previous_bytes = (mark["resume"], mark["entries"],
                                                          mark["bytes"])
    w = min(args.window, len(rows) // 2)
    first, last = rows[:w], rows[-w:]

    def mean(part: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r[key] for r in part)

    figures = {
        "cycles": len(rows), "outcomes": sorted(set(report.outcomes)),
        "total_s": round(total, 2), "window": w,
        "cycle_s_first": mean(first, "cycle_s"), "cycle_s_last": mean(last, "cycle_s"),
        "overhead_s_first": mean(first, "overhead_s"),
        "overhead_s_last": mean(last, "overhead_s"),
        "entries_per_cycle_first": mean(first, "entries"),
        "entries_per_cycle_last": mean(last, "entries"),
        "bytes_per_cycle_first": mean(first, "bytes"),
        "bytes_per_cycle_last": mean(last, "bytes"),
        "ledger_entries_total": marks[-1]["entries"], "ledger_bytes_total": marks[-1]["bytes"],
    }
    f = figures
    print(f"batch of {f['cycles']} cycles ({', '.join(f['outcomes'])}) in {f['total_s']:.1f} s; "
          f"first {w} against last {w} cycles:")
    print(f"  cycle time          {f['cycle_s_first']:.3f} s -> {f['cycle_s_last']:.3f} s "
          f"(x{f['cycle_s_last'] / f['cycle_s_first']:.2f})")
    print(f"  loop overhead/cycle {f['overhead_s_first'] * 1000:.1f} ms -> "
          f"{f['overhead_s_last'] * 1000:.1f} ms "
          f"(x{f['overhead_s_last'] / max(f['overhead_s_first'], 1e-9):.2f}; "
          f"{f['overhead_s_last'] / f['cycle_s_last']:.1%} of a cycle at the end)")
    print(f"  ledger entries/cycle {f['entries_per_cycle_first']:.1f} -> "
          f"{f['entries_per_cycle_last']:.1f}; bytes/cycle "
          f"{f['bytes_per_cycle_first'] / 1024:.1f} KiB -> "
          f"{f['bytes_per_cycle_last'] / 1024:.1f} KiB "
          f"(x{f['bytes_per_cycle_last'] / max(f['bytes_per_cycle_first'], 1):.2f}); "
          f"total {f['ledger_entries_total']} entries, "
          f"{f['ledger_bytes_total'] / 1024 / 1024:.2f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
