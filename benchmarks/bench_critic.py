"""Critic benchmark: how well and how fast the critic tells honest improvements from gaming.

Judges three corpora through `critique` and reports each apart:

- in-sample, ticket-triage (tests/corpora/ticket.py): the bundled example under the bundled policy,
  a scripted critic model and the corpus's stand-in eval endpoint;
- in-sample, spans (tests/corpora/spans.py): a plain library, no eval suite, no model, the
  owner's hidden tests (examples/hidden-tests/spans), under examples/policy-code.toml;
- red team (tests/redteam/*.diff, when the folder exists): candidates for the spans example
  written without reading the critic's code.

For each: detection (gaming judged "reject"; "revise" is not a detection) and false
rejection (honest judged anything but "accept"), then a table per mechanism: which check
caught each gaming candidate first, and which refused each honest one. Also the critic's
time per candidate against the target's tests once on the host.

    .venv/bin/python benchmarks/bench_critic.py [--backend fake|docker] [--json OUT]
        [--only ticket,spans,redteam]
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
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the corpora live with the tests

from tests.corpora.spans import (  # noqa: E402
    SpansCase,
    SpansWorkspace,
    judge_spans,
    redteam_cases,
)
from tests.corpora.spans import build_corpus as build_spans  # noqa: E402
from tests.corpora.ticket import (  # noqa: E402
    CorpusCase,
    Workspace,
    build_corpus,
    bundled_policy,
    judge,
)
from upgate.config import load_manifest  # noqa: E402
from upgate.records import Verdict  # noqa: E402
from upgate.sandboxes.config import DockerSandboxConfig, FakeSandboxConfig  # noqa: E402

AnyBox = DockerSandboxConfig | FakeSandboxConfig


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def first_mechanism(verdict: Verdict) -> str:
    """The check that decided: the first failed block check, else the first failed revise."""
    checks = json.loads(verdict.evidence_json)["checks"]
    for severity in ("block", "revise"):
        for c in checks:
            if not c["passed"] and c["severity"] == severity:
                return str(c["name"]).removeprefix("detector:")
    return "-"


class HostTests:
    """A test command in a plain host copy of a target: the baseline the critic is timed
    against. Runs are spread over the benchmark so both see the same machine load."""

    def __init__(self, target: Path, dest: Path) -> None:
        self.command = load_manifest(target).test_command
        self.copy = dest
        shutil.copytree(target, self.copy, ignore=shutil.ignore_patterns(".git"))
        self.times: list[float] = []

    def run_once(self) -> None:
        """Time one run of the test command (its outcome does not matter here)."""
        started = time.perf_counter()
        subprocess.run(["sh", "-c", self.command], cwd=self.copy, capture_output=True,
                       text=True, check=False, env={**os.environ, "PYTHONPATH": str(self.copy)})
        self.times.append(time.perf_counter() - started)

    @property
    def median(self) -> float:
        """The median of the runs so far."""
        return statistics.median(self.times)


def _row(name: str, kind: str, expected: str, verdict: Verdict, seconds: float) -> dict[str, Any]:
    return {"name": name, "kind": kind, "expected": expected, "decision": verdict.decision,
            "seconds": round(seconds, 3), "mechanism": first_mechanism(verdict)}


def run_ticket(sandbox: AnyBox, tmp: Path, backend: str) -> tuple[list[dict[str, Any]], HostTests]:
    """The ticket-triage corpus under the bundled policy."""
    ws = Workspace.create(tmp / "ticket")
    cases: list[CorpusCase] = build_corpus(ws)
    host = HostTests(ws.target, tmp / "ticket-host")
    rows = []
    for i, case in enumerate(cases):
        if i % 4 == 0:
            host.run_once()
        started = time.perf_counter()
        verdict = judge(case, ws, policy=bundled_policy(), sandbox=sandbox).verdict
        # A trick that needs the fake backend's shared files only has to fail elsewhere.
        expected = "!accept" if case.fake_only and backend != "fake" else case.expected_decision
        rows.append(_row(case.name, case.kind, expected, verdict,
                         time.perf_counter() - started))
    return rows, host


def run_spans(cases: list[SpansCase], ws: SpansWorkspace, sandbox: AnyBox,
              host: HostTests) -> list[dict[str, Any]]:
    """Spans cases (in-sample or red team) with the hidden tests."""
    rows = []
    memo: dict[str, Any] = {}
    for i, case in enumerate(cases):
        if i % 4 == 0:
            host.run_once()
        started = time.perf_counter()
        verdict = judge_spans(case, ws, sandbox, memo=memo)
        expected = {"honest": "accept", "neutral": "!accept", "gaming": "reject"}[case.kind]
        rows.append(_row(case.name, case.kind, expected, verdict,
                         time.perf_counter() - started))
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Detection (reject only) and false rejection of one corpus."""
    gaming = [r for r in rows if r["kind"] == "gaming"]
    honest = [r for r in rows if r["kind"] == "honest"]
    times = [r["seconds"] for r in rows]
    return {
        "cases": len(rows),
        "gaming": len(gaming),
        "detected": sum(r["decision"] == "reject" for r in gaming),
        "revised": sum(r["decision"] == "revise" for r in gaming),
        "missed": [r["name"] for r in gaming if r["decision"] == "accept"],
        "honest": len(honest),
        "false_rejections": sum(r["decision"] != "accept" for r in honest),
        "refused": [r["name"] for r in honest if r["decision"] != "accept"],
        "mean_s": statistics.mean(times) if times else 0.0,
        "p95_s": percentile(times, 95) if times else 0.0,
    }


def run(backend: str, only: set[str]) -> dict[str, Any]:
    """Judge the chosen corpora once; return rows and summaries per corpus."""
    sandbox: AnyBox = (DockerSandboxConfig(default_timeout_s=300) if backend == "docker"
                       else FakeSandboxConfig())
    corpora: dict[str, list[dict[str, Any]]] = {}
    hosts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-critic-") as tmp_name:
        tmp = Path(tmp_name)
        if "ticket" in only:
            corpora["in-sample: ticket-triage"], host = run_ticket(sandbox, tmp, backend)
            hosts["ticket-triage"] = host.median
        if {"spans", "redteam"} & only:
            ws = SpansWorkspace.create(tmp / "spans")
            spans_host = HostTests(ws.target, tmp / "spans-host")
            if "spans" in only:
                corpora["in-sample: spans"] = run_spans(build_spans(ws), ws, sandbox,
                                                        spans_host)
            red = list(redteam_cases())
            if "redteam" in only and red:
                corpora["red team: spans"] = run_spans(red, ws, sandbox, spans_host)
            hosts["spans"] = spans_host.median
    return {"backend": backend, "corpora": corpora,
            "summary": {name: summarise(rows) for name, rows in corpora.items()},
            "host_tests_s": hosts}


def report(result: dict[str, Any]) -> None:
    """Print per-case rows, the detection table and the per-mechanism table."""
    for name, rows in result["corpora"].items():
        print(f"\n## {name} (backend {result['backend']})\n")
        print(f"{'case':34} {'kind':8} {'expected':8} {'got':7} {'secs':>6}  first check")
        for r in rows:
            ok = (r["decision"] != "accept") if r["expected"] == "!accept" \
                else r["decision"] == r["expected"]
            flag = "" if ok else "  <-- not as expected"
            print(f"{r['name'][:34]:34} {r['kind']:8} {r['expected']:8} {r['decision']:7} "
                  f"{r['seconds']:6.2f}  {r['mechanism']}{flag}")
    print("\n## detection and false rejection (detection counts reject only)\n")
    print(f"{'corpus':26} {'detected':>12} {'revise':>7} {'false rej.':>12} "
          f"{'mean s':>7} {'p95 s':>6}")
    for name, s in result["summary"].items():
        det = f"{s['detected']}/{s['gaming']}" if s["gaming"] else "-"
        fr = f"{s['false_rejections']}/{s['honest']}" if s["honest"] else "-"
        print(f"{name:26} {det:>12} {s['revised']:>7} {fr:>12} {s['mean_s']:7.2f} "
              f"{s['p95_s']:6.2f}")
        for what in ("missed", "refused"):
            if s[what]:
                print(f"    {what}: {', '.join(s[what])}")
    print("\n## per mechanism: the check that caught each gaming candidate first "
          "(and refused each honest one)\n")
    names = list(result["corpora"])
    print(f"{'check':24} " + " ".join(f"{n[:24]:>24}" for n in names))
    counts = {n: Counter((r["mechanism"] if r["decision"] == "reject" else
                          f"({r['decision']})") for r in rows if r["kind"] == "gaming")
              for n, rows in result["corpora"].items()}
    refused = {n: Counter(r["mechanism"] for r in rows
                          if r["kind"] == "honest" and r["decision"] != "accept")
               for n, rows in result["corpora"].items()}
    for mech in sorted({m for c in counts.values() for m in c}):
        print(f"{mech:24} " + " ".join(f"{counts[n][mech]:>24}" for n in names))
    for mech in sorted({m for c in refused.values() for m in c}):
        print(f"{'honest refused: ' + mech:24} "
              + " ".join(f"{refused[n][mech]:>24}" for n in names))
    print("\nthe target's tests once on the host: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in result["host_tests_s"].items()))


def main() -> int:
    """Parse arguments, run the corpus, print (and optionally save) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("fake", "docker"), default="fake")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--only", default="ticket,spans,redteam",
                        help="comma-separated corpora: ticket, spans, redteam")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Test commands say `python3`; use this interpreter (it has pytest) for the host
    # baseline and the fake backend alike, so the ratio compares like with like.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    result = run(args.backend, set(args.only.split(",")))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
