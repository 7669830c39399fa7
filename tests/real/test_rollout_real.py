"""Staged rollout on the real parts: the vLLM server with two adapter versions, the gateway
(`upgate gateway serve`, its own process) in front, steady clients calling the alias through
it, and the rollout controller moving traffic step by step.

- A healthy version goes 50% -> 100%, judged on live samples and suite cases pinned to each
  version, then is promoted: the server's own alias now serves it too. No client request
  fails.
- A version the server cannot answer (its name is not loaded: vLLM says 404) breaches the
  suite limit at the first step; the rollout aborts and puts all traffic back on the stable
  version. The only failed client requests are the ones the new version answered itself.

The two versions are copies of the adapter the server serves under the target's alias (one
changed by a note file, so its content hash differs): no training needed.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from upgate.artifacts import freeze_tree
from upgate.config import load_manifest
from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.vllm import VllmAdmin
from upgate.evals.suite import load_suite
from upgate.gateway.routes import Backend, RouteTable
from upgate.hashing import sha256_tree
from upgate.ledger import open_ledger
from upgate.policy import Rollout
from upgate.records import Artifact, Candidate
from upgate.rollout.controller import RolloutController, RolloutParts
from upgate.rollout.plan import RolloutPlan, RolloutResult
from upgate.rollout.probe import SuiteProbe
from upgate.store import Store
from upgate.target_tree import read_prompting

from ..conftest import EXAMPLE_SUITE, EXAMPLE_TARGET

pytestmark = pytest.mark.real

ALIAS = "triage"
CYCLE = "c-rollout-real"
LIMITS = Rollout(enabled=True, steps=(50, 100), bake_s=2.5, min_requests=4, suite_cases=4,
                 # Both versions are the same weights on a shared 2-core machine: latency
                 # noise alone must not abort; the latency checks have their unit tests.
                 max_p50_ratio=4.0, max_p95_ratio=6.0)


@dataclass
class Clients:
    """Steady clients calling the alias through the gateway until stopped."""

    url: str
    threads: int = 2
    results: list[tuple[float, int, str]] = field(default_factory=list)
    """(time, status (0: no answer), version the gateway says answered)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _loop(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    r = http.post(f"{self.url}/v1/chat/completions", json={
                        "model": ALIAS, "max_tokens": 2,
                        "messages": [{"role": "user", "content": "My invoice is wrong"}]})
                    self.results.append((time.time(), r.status_code,
                                         r.headers.get("x-upgate-version", "")))
                except httpx.HTTPError:
                    self.results.append((time.time(), 0, ""))

    def __enter__(self) -> Clients:
        for _ in range(self.threads):
            t = threading.Thread(target=self._loop, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=90)

    def failed(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


@dataclass
class Stack:
    """The server's admin, the gateway, the route table, ledger and store of one test."""

    tmp: Path
    vllm_root: str
    gateway_url: str
    admin: VllmAdmin
    original: Path

    def __post_init__(self) -> None:
        self.routes = RouteTable(self.tmp / "gateway.db")
        self.ledger = open_ledger(self.tmp / "state")
        self.store = Store(self.tmp / "state" / "state.sqlite")
        self.deployer = LoraAliasDeployer(self.admin, self.store, ALIAS)

    def candidate(self) -> Candidate:
        """A copy of the served adapter with a different content hash, as a model candidate."""
        folder = self.tmp / "adapter-new"
        shutil.copytree(self.original, folder)
        (folder / "ROLLOUT-NOTE.txt").write_text(secrets.token_hex(8))
        freeze_tree(folder)
        digest = sha256_tree(folder)
        return Candidate(proposal_id="p1", kind="model", diff="", changed_paths=(),
                         artifacts=(Artifact(name=f"{ALIAS}-{digest[:12]}", kind="adapter",
                                             path=str(folder), sha256=digest),))

    def probe(self) -> SuiteProbe:
        manifest = load_manifest(EXAMPLE_TARGET)
        prompt, shots = read_prompting(EXAMPLE_TARGET, manifest)
        suite = load_suite(EXAMPLE_SUITE)
        return SuiteProbe(gateway_url=f"{self.gateway_url}/v1", alias=ALIAS,
                          cases=suite.split("visible")[:LIMITS.suite_cases],
                          system_prompt=prompt, few_shot=shots, labels=suite.labels,
                          scorer=suite.scorer, scorer_options=suite.scorer_options)

    def run(self, candidate: Candidate, *, new_model: str | None = None) -> RolloutResult:
        deployment = self.deployer.stage(candidate, f"{CYCLE}-1")
        assert deployment.previous is not None
        url = f"{self.vllm_root}/v1"
        name, stable = str(deployment.version_name), str(deployment.previous["version_name"])
        plan = RolloutPlan(
            cycle_id=CYCLE, deployment_id=deployment.deployment_id, alias=ALIAS,
            new=Backend(version=name, base_url=url, model=new_model or name, weight=0),
            stable=Backend(version=stable, base_url=url, model=stable, weight=100),
            limits=LIMITS)
        probe = self.probe()

        def verify() -> dict[str, Any]:
            smoke = dataclasses.replace(probe, cases=probe.cases[:1]).score(stable)
            return {"models_ok": stable in self.admin.models(), "smoke_ok": smoke.errors == 0,
                    "detail": {}}

        def record(node: str, event: str, data: dict[str, Any], key: str) -> None:
            self.ledger.append(CYCLE, node, event, data, key=key)

        parts = RolloutParts(
            routes=self.routes, ledger=self.ledger, record=record, probe=probe,
            verify_stable=verify,
            promote=lambda: self.deployer.promote(candidate, deployment.deployment_id,
                                                  cycle_id=CYCLE))
        return RolloutController(plan, parts).run()


@pytest.fixture
def stack(vllm_root: str, gateway: tuple[str, RouteTable], tmp_path: Path) -> Iterator[Stack]:
    """The real server (skip without it), `upgate gateway serve` in front of it (the real
    tier's `gateway` fixture), and the server left as found afterwards."""
    admin = VllmAdmin(vllm_root)
    served = admin.models().get(ALIAS)
    if served is None or not served.root or not Path(served.root).is_dir():
        pytest.skip(f"the server serves no local adapter under {ALIAS!r}")
    original = Path(served.root)
    try:
        yield Stack(tmp_path, vllm_root, gateway[0], admin, original)
    finally:
        # Leave the server as found: the alias on its first adapter, the copies unloaded.
        admin.point_alias(ALIAS, original, expected_sha256=sha256_tree(original))
        for name in admin.models():
            if name.startswith(f"{ALIAS}-"):
                admin.unload_adapter(name)
        admin.close()


def test_a_healthy_version_rolls_out_under_load_and_is_promoted(stack: Stack) -> None:
    candidate = stack.candidate()
    new = candidate.artifacts[0].name
    with Clients(stack.gateway_url) as clients:
        time.sleep(1.0)
        result = stack.run(candidate)
        time.sleep(1.0)
    assert result.status == "promoted", result
    assert clients.failed() == []
    versions = [v for _, _, v in clients.results]
    assert {"passthrough", new, f"{ALIAS}@initial"} <= set(versions)
    assert versions[-1] == new
    assert stack.admin.models()[ALIAS].root == candidate.artifacts[0].path
    checked = [e.payload for e in stack.ledger.entries(CYCLE) if e.event == "step_checked"]
    assert [c["percent"] for c in checked] == [50, 100]
    assert all(c["suite"]["cases"] == 4 and c["new"]["requests"] >= 4 for c in checked)
    assert stack.ledger.verify().ok


def test_a_broken_version_aborts_and_traffic_returns_to_stable(stack: Stack) -> None:
    candidate = stack.candidate()
    new = candidate.artifacts[0].name
    with Clients(stack.gateway_url) as clients:
        time.sleep(1.0)
        # The new version's backend names a model the server does not serve (HTTP 404).
        result = stack.run(candidate, new_model=f"{ALIAS}-absent-{secrets.token_hex(3)}")
        aborted_at = time.time()
        time.sleep(2.0)
    assert result.status == "aborted", result
    # The server's 404 for a routed version means the version is not served: it counts as
    # an error in the window, and the suite catches it too (0 against the stable version's
    # score on the same pinned cases).
    assert {"max_error_rate", "max_suite_drop"} <= {b.split(":")[0] for b in result.breaches}
    assert {b.version: b.weight for b in stack.routes.routes(ALIAS)} == {f"{ALIAS}@initial": 100}
    # Zero failed requests outside the new version's own answers.
    assert [r for r in clients.failed() if r[2] != new] == []
    after = [r for r in clients.results if r[0] > aborted_at + 0.5]
    assert after and all(r[1] == 200 and r[2] == f"{ALIAS}@initial" for r in after)
    # The server's alias never moved.
    assert stack.admin.models()[ALIAS].root == str(stack.original)
    events = [(e.node, e.event) for e in stack.ledger.entries(CYCLE)]
    assert events[-2:] == [("rollout", "aborted"), ("rollback", "rolled_back")]
