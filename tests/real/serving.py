"""The approval service as a real process on loopback, over a state folder where scripted
models and the fake sandbox left cycles waiting for approval (the server itself uses the
real vLLM endpoint from its settings to answer questions)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from upgate import guard
from upgate.graphs.runner import Runner

from ..conftest import make_target_repo, write_config
from ..unit.test_cycle import REVIEW, draft, make_runner
from ..unit.test_server_api import people

# People (tests.conftest's policy): alice admin; carol requests and is an approver; bob
# approves; dave holds no role.


@dataclass
class Served:
    """A running service and the state folder behind it."""

    url: str
    root: Path
    tokens: dict[str, str]
    cycles: list[str]

    def runner(self) -> Runner:
        """A Runner of the test process (scripted models, the fake sandbox: use it inside
        `fake_sandbox_allowed()` to run nodes) on the same state folder."""
        with fake_sandbox_allowed():
            runner, _ = make_runner(self.root, {"proposal": draft(), "review": REVIEW})
        return runner


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def fake_sandbox_allowed() -> Iterator[None]:
    """The test process's own cycles run in the fake sandbox (test code may allow it)."""
    guard.ALLOW_FAKE_SANDBOX = True
    try:
        yield
    finally:
        guard.ALLOW_FAKE_SANDBOX = False


def waiting_cycles(root: Path, vllm_root: str, n: int) -> tuple[dict[str, str], list[str]]:
    """A target, a config whose agents use the real vLLM server, people and the service
    with keys, and `n` waiting cycles."""
    make_target_repo(root / "target")
    write_config(root, base_url=f"{vllm_root}/v1", serving_url=vllm_root, model="smollm2")
    _, tokens = people(root)
    cycles = []
    with fake_sandbox_allowed():
        runner, _ = make_runner(root, {"proposal": draft(), "review": REVIEW})
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
    # The service process runs no candidate code here (it answers, decides and deploys a git
    # branch), but it refuses the fake sandbox outright: give it the docker backend.
    env = {**os.environ, "UPGATE_SANDBOX__TYPE": "docker", "UPGATE_KEY_DIR": str(root / "keys")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "upgate.cli", "serve", "--config", str(root / "upgate.toml"),
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
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
