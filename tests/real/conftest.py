"""The real tier: a real Docker engine, a real vLLM server, real SQLite, real git.

`make test-real` starts dockerd and the vLLM server first; run alone, these tests skip with
the reason when a part is missing, except under CI, where a skip fails (tests/skips.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

# The hook that fails a skip under CI, registered for this tier by its name here.
from tests.skips import pytest_runtest_makereport as pytest_runtest_makereport

if TYPE_CHECKING:
    from upgate.gateway.routes import RouteTable

VLLM_ROOT = os.environ.get("UPGATE_VLLM_ROOT", "http://127.0.0.1:8011")


def vllm_up() -> bool:
    """Whether the vLLM server answers /health."""
    try:
        return httpx.get(f"{VLLM_ROOT}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def docker_up() -> bool:
    """Whether a Docker engine answers."""
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def vllm_root() -> str:
    """The vLLM server's root URL, or skip."""
    if not vllm_up():
        pytest.skip(f"no vLLM server at {VLLM_ROOT} (start it with `make vllm`)")
    return VLLM_ROOT


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip unless a Docker engine answers."""
    if not docker_up():
        pytest.skip("no Docker engine answers (start it with `make docker`)")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, RouteTable]]:
    """`upgate gateway serve` as a real process on a free port, over a fresh route table in
    `tmp_path`, its default upstream the vLLM server: (root URL, the route table). Clients
    call root + /v1; the test routes aliases through the table (another connection to the
    same SQLite file, as a rollout in another process would)."""
    from upgate.gateway.routes import RouteTable
    from upgate.gateway.testing import gateway_process

    db = tmp_path / "gateway.db"
    table = RouteTable(db)
    try:
        with gateway_process(db, f"{VLLM_ROOT}/v1") as url:
            yield url, table
    finally:
        table.close()
