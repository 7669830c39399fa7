"""The approval service as a real process on loopback, over a state folder where scripted
models and the fake sandbox left cycles waiting for approval (the server itself uses the
real vLLM endpoint from its settings to answer questions)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from upgate.approvals import add_person
from upgate.graphs.runner import Runner

from ..conftest import make_target_repo, write_config
from ..unit.test_cycle import REVIEW, draft, make_runner

PEOPLE = ("carol", "bob", "dave")
"""carol requests (and is an approver under the test policy), bob approves, dave only views."""


@dataclass
class Served:
    """A running service and the state folder behind it."""

    url: str
    root: Path
    tokens: dict[str, str]
    cycles: list[str]

    def runner(self) -> Runner:
        """A Runner of the test process (scripted models) on the same state folder."""
        runner, _ = make_runner(self.root, {"proposal": draft(), "review": REVIEW})
        return runner


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waiting_cycles(root: Path, vllm_root: str, n: int) -> tuple[dict[str, str], list[str]]:
    """A target, a config whose agents use the real vLLM server, and `n` waiting cycles."""
    make_target_repo(root / "target")
    write_config(root, base_url=f"{vllm_root}/v1", serving_url=vllm_root, model="smollm2")
    runner, _ = make_runner(root, {"proposal": draft(), "review": REVIEW})
    tokens = {p: add_person(runner.deps.store, p) for p in PEOPLE}
    cycles = []
    for _ in range(n):
        state = runner.start("carol")
        assert state["outcome"] == "awaiting_approval", state.get("reason")
        cycles.append(state["cycle_id"])
    return tokens, cycles


@contextmanager
def serve(root: Path, tokens: dict[str, str], cycles: list[str]) -> Iterator[Served]:
    """`upgate serve` as a subprocess on a free loopback port, until the block ends."""
    port = free_port()
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "upgate.cli", "serve", "--config", str(root / "upgate.toml"),
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise AssertionError("upgate serve exited: " + (root / "serve.log").read_text())
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        else:
            raise AssertionError("upgate serve did not answer on " + url)
        yield Served(url=url, root=root, tokens=tokens, cycles=cycles)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def served_cycles(vllm_root: str, root: Path, n: int) -> Iterator[Served]:
    """`n` waiting cycles in `root`, and the service over them, until the block ends."""
    tokens, cycles = waiting_cycles(root, vllm_root, n)
    with serve(root, tokens, cycles) as s:
        yield s
