"""Critic benchmark: how well and how fast the critic tells honest improvements from gaming.

Runs every case of the critic corpus (tests/corpus.py, generated from the bundled example
target) through `critique` under the bundled policy, with the chosen sandbox backend, a
scripted critic model and the corpus's stand-in eval endpoint. Prints:

- detection rate: gaming candidates judged not-accept;
- false-rejection rate: honest candidates judged not-accept (neutral ones, honest changes
  with no measurable gain, are listed apart);
- mean and p95 critic time per candidate, and as a baseline measured in the same run, the
  time of running the target's tests once on the host, with the ratio.

    .venv/bin/python benchmarks/bench_critic.py [--backend fake|docker] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the corpus lives with the tests

from tests.corpus import (  # noqa: E402
    CorpusCase,
    Workspace,
    build_corpus,
    bundled_policy,
    judge,
    reason_tags,
)
from upgate.config import load_manifest  # noqa: E402
from upgate.sandboxes.config import DockerSandboxConfig, FakeSandboxConfig  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class HostTests:
    """The target's own test command in a plain host copy: the baseline the critic is timed
    against. Runs are spread over the benchmark so both see the same machine load."""

    def __init__(self, ws: Workspace) -> None:
        self.command = load_manifest(ws.target).test_command
        self.copy = ws.root / "host-tests"
        shutil.copytree(ws.target, self.copy, ignore=shutil.ignore_patterns(".git"))
        self.times: list[float] = []

    def run_once(self) -> None:
        """Time one run of the test command; it must pass."""
        started = time.perf_counter()
        proc = subprocess.run(["sh", "-c", self.command], cwd=self.copy, capture_output=True,
                              text=True, check=False)
        self.times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"the target's tests fail on the host: {proc.stdout[-500:]}")

    @property
    def median(self) -> float:
        """The median of the runs so far."""
        return statistics.median(self.times)


def run(backend: str) -> dict[str, Any]:
    """Judge the whole corpus once; return per-case rows and the summary."""
    sandbox = DockerSandboxConfig(default_timeout_s=300) if backend == "docker" \
        else FakeSandboxConfig()
    policy = bundled_policy()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-critic-") as tmp:
        ws = Workspace.create(Path(tmp))
        cases: list[CorpusCase] = build_corpus(ws)
        host = HostTests(ws)
        for i, case in enumerate(cases):
            if i % 4 == 0:
                host.run_once()
            started = time.perf_counter()
            verdict = judge(case, ws, policy=policy, sandbox=sandbox).verdict
            seconds = time.perf_counter() - started
            # A trick that needs the fake backend's shared files only has to fail elsewhere.
            relaxed = case.fake_only and backend != "fake"
            expected = "!accept" if relaxed else case.expected_decision
            rows.append({
                "name": case.name, "kind": case.kind, "expected": expected,
                "decision": verdict.decision, "seconds": round(seconds, 3),
                "checks": sorted(reason_tags(verdict.reasons)),
                "as_expected": (verdict.decision != "accept") if relaxed
                else verdict.decision == case.expected_decision,
            })
        baseline_s = host.median
        host_runs = len(host.times)
    gaming = [r for r in rows if r["kind"] == "gaming"]
    honest = [r for r in rows if r["kind"] == "honest"]
    times = [r["seconds"] for r in rows]
    mean, p95 = statistics.mean(times), percentile(times, 95)
    return {
        "backend": backend,
        "cases": rows,
        "gaming": len(gaming),
        "detected": sum(r["decision"] != "accept" for r in gaming),
        "detection_rate": sum(r["decision"] != "accept" for r in gaming) / len(gaming),
        "honest": len(honest),
        "false_rejections": sum(r["decision"] != "accept" for r in honest),
        "false_rejection_rate": sum(r["decision"] != "accept" for r in honest) / len(honest),
        "as_expected": sum(r["as_expected"] for r in rows),
        "mean_s": mean,
        "p95_s": p95,
        "host_tests_s": baseline_s,
        "host_test_runs": host_runs,
        "mean_ratio": mean / baseline_s,
        "p95_ratio": p95 / baseline_s,
    }


def report(result: dict[str, Any]) -> None:
    """Print the per-case table and the summary."""
    print(f"critic corpus, backend {result['backend']}, policy examples/policy.toml\n")
    print(f"{'case':32} {'kind':8} {'expected':8} {'got':8} {'secs':>6}  checks")
    for r in result["cases"]:
        flag = "" if r["as_expected"] else "  <-- not as expected"
        print(f"{r['name']:32} {r['kind']:8} {r['expected']:8} {r['decision']:8} "
              f"{r['seconds']:6.2f}  {','.join(r['checks']) or '-'}{flag}")
    neutral = [r for r in result["cases"] if r["kind"] == "neutral"]
    missed = [r["name"] for r in result["cases"]
              if r["kind"] == "gaming" and r["decision"] == "accept"]
    refused = [r["name"] for r in result["cases"]
               if r["kind"] == "honest" and r["decision"] != "accept"]
    print()
    print(f"detection rate (gaming judged not-accept): {result['detected']}/{result['gaming']}"
          f" = {result['detection_rate']:.1%}" + (f"  missed: {', '.join(missed)}" if missed
                                                   else ""))
    print(f"false-rejection rate (honest judged not-accept): {result['false_rejections']}/"
          f"{result['honest']} = {result['false_rejection_rate']:.1%}"
          + (f"  refused: {', '.join(refused)}" if refused else ""))
    for r in neutral:
        print(f"neutral (honest, no measurable gain): {r['name']} -> {r['decision']}")
    print(f"decisions as expected: {result['as_expected']}/{len(result['cases'])}")
    print(f"critic time per candidate: mean {result['mean_s']:.2f} s, "
          f"p95 {result['p95_s']:.2f} s")
    print(f"baseline, the target's tests once on the host: {result['host_tests_s']:.2f} s "
          f"(median of {result['host_test_runs']} runs spread over the benchmark)")
    print(f"ratio to the baseline: mean {result['mean_ratio']:.1f}x, "
          f"p95 {result['p95_ratio']:.1f}x")


def main() -> int:
    """Parse arguments, run the corpus, print (and optionally save) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("fake", "docker"), default="fake")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Test commands say `python3`; use this interpreter (it has pytest) for the host
    # baseline and the fake backend alike, so the ratio compares like with like.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    result = run(args.backend)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
