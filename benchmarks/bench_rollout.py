"""Rollout under load: failed requests, switch and rollback times, latency impact.

Starts its own vLLM server (LoRA on, the identity adapter served as `triage`) and the
gateway (`upgate gateway serve`, its own process), then runs steady clients (4 threads,
short completions) through each of:

- baseline: vLLM's bare in-place adapter swap (POST /v1/load_lora_adapter with
  load_inplace, repeated), clients calling vLLM directly;
- canary promotion: the rollout controller moves `triage` to a new adapter version by the
  steps 50% -> 100% through the gateway, judged at each step, then promotes;
- manual rollback: `upgate rollback --alias triage --to triage@initial`'s code path;
- abort with rollback: a version whose server does not answer breaches at the first step
  and the controller restores the stable version (the failed requests are the ones routed
  to it before the abort);
- blue/green switch: a second vLLM server from a copy of the model folder, warmed, then
  the alias's traffic moved in one route change; then a rollback to blue.

For each: failed requests (goal 0), the action's own time, and latency p50/p95 of the
requests started during the action and a short settle after it, also as ratios against the
baseline's. A part whose code is missing prints "not measured", never a figure.

    .venv/bin/python benchmarks/bench_rollout.py [--threads 4] [--settle 5] [--json OUT]

Environment: UPGATE_VLLM_VENV, UPGATE_VLLM_MODEL_DIR, UPGATE_VLLM_ADAPTER_DIR (defaults:
the folders `make vllm` prepares under .cache/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from upgate.artifacts import freeze_tree
from upgate.deploy.vllm_servers import Launcher, LauncherConfig, ServerHandle, stop_server
from upgate.errors import UpgateError
from upgate.gateway.routes import Backend, RouteTable
from upgate.gateway.testing import gateway_process
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.loadgen import Sample, SteadyClients, quantile
from upgate.records import Artifact, Candidate
from upgate.store import Store

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
VENV = Path(os.environ.get("UPGATE_VLLM_VENV", CACHE / "vllm-venv"))
MODEL = Path(os.environ.get("UPGATE_VLLM_MODEL_DIR", CACHE / "models" / "smollm2-135m-instruct"))
ADAPTER = Path(os.environ.get("UPGATE_VLLM_ADAPTER_DIR", CACHE / "models" / "triage-v0"))
ALIAS = "triage"
BG_ALIAS = "smollm2"
CYCLE = "c20261130-000000-be0c40"
DEAD = "http://127.0.0.1:9/v1"
"""A loopback port nothing listens on: the broken version of the abort scenario."""

Row = dict[str, Any]


def window(clients: SteadyClients, start: float, end: float) -> Row:
    """Failed requests and latency of the requests started in [start, end]."""
    taken: list[Sample] = clients.taken(start, end)
    ok = [s.latency_ms for s in taken if s.ok]
    failed_by: dict[str, int] = {}
    for s in taken:
        if not s.ok:
            failed_by[s.version or "?"] = failed_by.get(s.version or "?", 0) + 1
    return {"requests": len(taken), "failed": sum(not s.ok for s in taken),
            "failed_by_version": failed_by,
            "p50_ms": quantile(ok, 0.5), "p95_ms": quantile(ok, 0.95),
            "errors": sorted({s.error or str(s.status) for s in taken if not s.ok})[:3]}


def measured(scenario: str, clients: SteadyClients, action: Callable[[], Row],
             settle_s: float) -> Row:
    """Run `action` under the clients; its own figures plus the window's. An action that
    raises is reported as not measured, with why."""
    clients.wait_for(4)
    print(f"... {scenario}", file=sys.stderr, flush=True)
    start = time.time()
    try:
        row = action()
    except (UpgateError, httpx.HTTPError) as exc:
        return not_measured(scenario, f"it failed: {exc}")
    end = time.time()
    time.sleep(settle_s)
    return {"scenario": scenario, **row, "action_s": round(end - start, 3),
            **window(clients, start, end + settle_s)}


def copy_frozen(src: Path, dest: Path, note: str | None = None) -> tuple[Path, str]:
    """A read-only copy of a folder (with a note file making its hash differ) and its hash."""
    shutil.copytree(src, dest)
    if note is not None:
        (dest / "BENCH-NOTE.txt").write_text(note)
    freeze_tree(dest)
    return dest, sha256_tree(dest)


# baseline -----------------------------------------------------------------------------------


def in_place_swaps(root: str, folders: list[Path], swaps: int) -> Row:
    """`swaps` in-place loads of `triage`, alternating folders; each load's time."""
    times: list[float] = []
    with httpx.Client(timeout=120) as http:
        for i in range(swaps):
            t0 = time.perf_counter()
            resp = http.post(f"{root}/v1/load_lora_adapter", json={
                "lora_name": ALIAS, "lora_path": str(folders[(i + 1) % len(folders)]),
                "load_inplace": True})
            resp.raise_for_status()
            times.append(time.perf_counter() - t0)
            time.sleep(1.0)
    return {"switch_s_p50": quantile(times, 0.5), "switch_s_max": max(times), "swaps": swaps}


# canary, manual rollback, abort ---------------------------------------------------------------


class Rollouts:
    """The rollout controller and `upgate rollback`'s code on the bench's own state."""

    def __init__(self, tmp: Path, root: str, gateway: str) -> None:
        from upgate.deploy.lora_alias import LoraAliasDeployer
        from upgate.deploy.vllm import VllmAdmin

        self.tmp, self.root, self.gateway = tmp, root, gateway
        self.routes = RouteTable(tmp / "gateway.db")
        self.ledger = Ledger(tmp / "ledger.sqlite")
        self.store = Store(tmp / "state.sqlite")
        self.admin = VllmAdmin(root)
        self.deployer = LoraAliasDeployer(self.admin, self.store, ALIAS)

    def candidate(self, n: int) -> Candidate:
        folder, digest = copy_frozen(ADAPTER, self.tmp / f"adapter-{n}", f"version {n}")
        return Candidate(proposal_id=f"p{n}", kind="model", diff="", changed_paths=(),
                         artifacts=(Artifact(name=f"{ALIAS}-{digest[:12]}", kind="adapter",
                                             path=str(folder), sha256=digest),))

    def rollout(self, candidate: Candidate, n: int, *, broken: bool = False) -> Row:
        """Stage and roll out (50% -> 100%); `broken`: its route points at a server that
        does not answer (every request to it is an error the controller must see)."""
        from upgate.policy import Rollout
        from upgate.rollout.controller import RolloutController, RolloutParts
        from upgate.rollout.limits import SuiteScore
        from upgate.rollout.plan import RolloutPlan

        deployment = self.deployer.stage(candidate, f"{CYCLE}-{n}")
        assert deployment.previous is not None
        url = f"{self.root}/v1"
        name, stable = str(deployment.version_name), str(deployment.previous["version_name"])
        # A busy 2-core machine answers a few requests a second over all clients: steps are
        # judged on 2 requests or more; the limits themselves have their own tests.
        limits = Rollout(enabled=True, steps=(50, 100), bake_s=10.0, min_requests=2,
                         suite_cases=0, max_p50_ratio=4.0, max_p95_ratio=6.0)
        plan = RolloutPlan(
            cycle_id=CYCLE, deployment_id=deployment.deployment_id, alias=ALIAS,
            new=Backend(version=name, base_url=DEAD if broken else url, model=name, weight=0),
            stable=Backend(version=stable, base_url=url, model=stable, weight=100),
            limits=limits)

        class NoSuite:  # live traffic judges; the suite probe has its own tests
            def score(self, version: str) -> SuiteScore:
                return SuiteScore(version=version, cases=0, score=1.0, errors=0)

        def record(node: str, event: str, data: dict[str, Any], key: str) -> None:
            self.ledger.append(CYCLE, node, event, data, key=key)

        parts = RolloutParts(
            routes=self.routes, ledger=self.ledger, record=record, probe=NoSuite(),
            verify_stable=lambda: {"models_ok": True, "smoke_ok": True, "detail": {}},
            promote=lambda: self.deployer.promote(candidate, deployment.deployment_id,
                                                  cycle_id=CYCLE))
        result = RolloutController(plan, parts).run()
        if result.status == "promoted":
            # The cycle would have recorded these: a person's approval, then the deploy.
            self.ledger.append(f"{CYCLE}-{n}", "approve", "approve", {"approver": "bench"})
            self.ledger.append(f"{CYCLE}-{n}", "deploy", "deployed", {
                "deployment": deployment.model_dump(mode="json")})
        return {"status": result.status, "breaches": result.breaches[:2],
                "stable": stable, "new": name}

    def manual_rollback(self, version: str) -> Row:
        """`upgate rollback --alias triage --to VERSION`'s code path."""
        from upgate.deploy.rollback import RollbackParts, rollback_alias

        parts = RollbackParts(ledger=self.ledger, store=self.store, admin=self.admin,
                              routes=self.routes, serving_url=f"{self.root}/v1",
                              git_deployer=lambda: None,  # type: ignore[arg-type,return-value]
                              outbox=lambda e, d: [])
        outcome = rollback_alias(parts, ALIAS, version, by="bench", reason="benchmark")
        record = outcome.record or {}
        return {"status": outcome.status, "rollback_s": record.get("duration_s")}


# blue/green ---------------------------------------------------------------------------------


def bluegreen(tmp: Path, launcher: Launcher, blue: ServerHandle, routes: RouteTable,
              clients: SteadyClients, settle_s: float) -> list[Row]:
    """Switch `smollm2` from blue to a green started from a copy of the model folder, then
    roll back; one row each."""
    from upgate.deploy.bluegreen import BlueGreenDeployer, BlueGreenParts, ledger_recorder
    from upgate.deploy.bluegreen_state import ServerRegistry, ServerRow

    servers = ServerRegistry(tmp / "servers.db")
    ledger = Ledger(tmp / "bg-ledger.sqlite")
    servers.put(ServerRow(alias=BG_ALIAS, version=f"{BG_ALIAS}@blue", model=BG_ALIAS,
                          base_url=blue.base_url, managed=False, status="running",
                          started_at=time.time()))
    routes.set_routes(BG_ALIAS, [Backend(version=f"{BG_ALIAS}@blue", base_url=blue.base_url,
                                         model=BG_ALIAS, weight=100)], reason="bench")
    folder, digest = copy_frozen(MODEL, tmp / "green")
    name = f"{BG_ALIAS}-{digest[:12]}"
    candidate = Candidate(proposal_id="pbg", kind="model", diff="", changed_paths=(),
                          artifacts=(Artifact(name=name, kind="model", path=str(folder),
                                              sha256=digest),))
    deployer = BlueGreenDeployer(BlueGreenParts(
        routes=routes, servers=servers, launcher=launcher, window_s=600.0,
        record=ledger_recorder(ledger), default_base_url=None), BG_ALIAS)
    out: dict[str, Any] = {}

    def switch() -> Row:
        deployment = deployer.deploy(candidate, "bench-bg", cycle_id=CYCLE, message="bench")
        out["deployment"] = deployment
        switched = next(e for e in ledger.entries() if e.event == "switched").payload
        started = next(e for e in ledger.entries() if e.event == "green_started").payload
        return {"startup_s": started["startup_s"], "switch_s": switched["switch_s"]}

    def back() -> Row:
        result = deployer.rollback(out["deployment"])
        return {"status": result.status, "rollback_s": result.detail["duration_s"]}

    try:
        rows = [measured("blue/green switch", clients, switch, settle_s)]
        if "deployment" in out:
            rows.append(measured("blue/green rollback", clients, back, settle_s))
        else:
            rows.append(not_measured("blue/green rollback", "the switch failed"))
    finally:
        for row in servers.all():
            if row.managed and row.pid and row.port:
                stop_server(row.pid, row.port, grace_s=10)
    return rows


# the run ------------------------------------------------------------------------------------


def not_measured(scenario: str, why: str) -> Row:
    """A row for a part whose code is not there."""
    return {"scenario": scenario, "not_measured": why}


def run(args: argparse.Namespace) -> list[Row]:
    """Every scenario, in order; the rows."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    config = LauncherConfig(
        python=VENV / "bin" / "python", ports=(8073, 8079), startup_timeout_s=600,
        args=("--dtype", "float32", "--max-model-len", "1024", "--gpu-memory-utilization",
              "0.1", "--enforce-eager"),
        env={**LauncherConfig().env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    launcher = Launcher(config, tmp / "servers")
    stack = ExitStack()
    blue = launcher.start("blue", MODEL, served_name=BG_ALIAS, args=[
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", "4",
        "--lora-modules", f"{ALIAS}={ADAPTER}"])
    rows: list[Row] = []
    try:
        gateway = stack.enter_context(gateway_process(tmp / "gateway.db", blue.base_url))
        v0, _ = copy_frozen(ADAPTER, tmp / "swap-v0")
        v1, _ = copy_frozen(ADAPTER, tmp / "swap-v1", "swap")
        with SteadyClients(blue.base_url, ALIAS, threads=args.threads) as direct:
            rows.append(measured(
                "baseline: in-place adapter swap (direct)", direct,
                lambda: in_place_swaps(blue.root, [v0, v1], args.swaps), args.settle))
        with SteadyClients(f"{gateway}/v1", ALIAS, threads=args.threads) as clients:
            try:
                bench = Rollouts(tmp, blue.root, gateway)
            except ImportError as exc:
                rows += [not_measured(s, str(exc)) for s in
                         ("canary promotion", "manual rollback", "abort with rollback")]
            else:
                first = bench.candidate(1)
                promoted = measured("canary promotion", clients,
                                    lambda: bench.rollout(first, 1), args.settle)
                rows.append(promoted)
                if promoted.get("status") != "promoted":
                    rows.append(not_measured("manual rollback", "the canary did not promote"))
                else:
                    rows.append(measured(
                        "manual rollback", clients,
                        lambda: bench.manual_rollback(str(promoted["stable"])), args.settle))
                broken = bench.candidate(2)
                rows.append(measured("abort with rollback", clients,
                                     lambda: bench.rollout(broken, 2, broken=True),
                                     args.settle))
        with SteadyClients(f"{gateway}/v1", BG_ALIAS, threads=args.threads) as clients:
            rows += bluegreen(tmp, launcher, blue, RouteTable(tmp / "gateway.db"), clients,
                              args.settle)
    finally:
        stack.close()
        launcher.stop(blue)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def ratios(rows: list[Row]) -> list[Row]:
    """Each row's p50/p95 as a ratio against the baseline's."""
    base = rows[0]
    for row in rows:
        for q in ("p50_ms", "p95_ms"):
            if row.get(q) and base.get(q):
                row[q.replace("_ms", "_ratio")] = round(row[q] / base[q], 2)
    return rows


def main() -> None:
    """Run and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=8)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds after each action still counted in its window")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (VENV / "bin" / "python").exists() or not (MODEL / "config.json").exists():
        raise SystemExit(f"no vLLM venv at {VENV} or model at {MODEL}; run `make vllm`")
    rows = ratios(run(args))
    print(f"{'scenario':42} {'failed':>10} {'action s':>9} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p50 x':>6} {'p95 x':>6}  detail")
    for r in rows:
        if "not_measured" in r:
            print(f"{r['scenario']:42} not measured ({r['not_measured']})")
            continue
        detail = {k: v for k, v in r.items() if k not in {
            "scenario", "requests", "failed", "action_s", "p50_ms", "p95_ms", "p50_ratio",
            "p95_ratio"} and v not in (None, [], "", {})}
        fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"{r['scenario']:42} {r['failed']:>4}/{r['requests']:<5} {r['action_s']:>9.2f} "
              f"{fmt(r['p50_ms']):>8} {fmt(r['p95_ms']):>8} {r.get('p50_ratio', '-'):>6} "
              f"{r.get('p95_ratio', '-'):>6}  {json.dumps(detail, default=str)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
