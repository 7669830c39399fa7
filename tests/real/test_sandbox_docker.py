"""The Docker sandbox against a real engine: the shared contract, then adversarial attempts.

Each adversarial test tries something an untrusted command must not manage, checks that it
comes back as a failed ExecResult naming the limit where one applies, and (through the
`no_leftovers` fixture) that no labelled container or volume of this process is left.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from upgate.errors import SandboxError
from upgate.sandboxes.base import Mount, Sandbox
from upgate.sandboxes.config import DockerSandboxConfig, get_sandbox

pytestmark = pytest.mark.real


def _load_contract() -> Any:
    path = Path(__file__).resolve().parents[1] / "unit" / "test_sandbox_contract.py"
    spec = importlib.util.spec_from_file_location("upgate_sandbox_contract", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


contract = _load_contract()
MakeSandbox = Callable[..., Sandbox]


def _engine() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine answers ({exc}); start dockerd to run these tests")
    return client


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """A docker client, or skip when no engine answers."""
    return _engine()


@pytest.fixture(scope="session")
def sandbox_image(docker_engine: Any) -> str:
    """The content-hashed sandbox image, built once per session if missing."""
    from upgate.sandboxes.images import ensure_image

    return ensure_image("sandbox", docker_engine)


def _ours(client: Any) -> list[str]:
    pid = str(os.getpid())
    found = [
        c.name
        for c in client.containers.list(all=True, filters={"label": "upgate.sandbox=1"})
        if c.labels.get("upgate.owner_pid") == pid
    ]
    found += [
        v.name
        for v in client.volumes.list(filters={"label": "upgate.sandbox=1"})
        if (v.attrs.get("Labels") or {}).get("upgate.owner_pid") == pid
    ]
    return found


@pytest.fixture
def no_leftovers(docker_engine: Any) -> Iterator[None]:
    """Fails the test if a container or volume of this process outlives it."""
    yield
    assert _ours(docker_engine) == []


@pytest.fixture
def sandbox_config(sandbox_image: str) -> DockerSandboxConfig:
    """The default Docker sandbox configuration, on the session's image."""
    return DockerSandboxConfig(image=sandbox_image, default_timeout_s=30)


@pytest.fixture
def make_sandbox(sandbox_config: DockerSandboxConfig, no_leftovers: None) -> Iterator[MakeSandbox]:
    """A factory of started Docker sandboxes, all stopped after the test."""
    made: list[Sandbox] = []

    def make(mounts: list[Mount] | None = None, **overrides: Any) -> Sandbox:
        sandbox = get_sandbox(sandbox_config.model_copy(update=overrides), mounts or [])
        sandbox.start()
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.stop()


class TestDockerContract(contract.SandboxContract):  # type: ignore[misc,name-defined]
    """The shared contract on real Docker."""


# -- adversarial ---------------------------------------------------------------------------


def test_fork_bomb_is_contained(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    # The parent stays to watch its bomb grow, so it must run into the pids limit.
    result = sandbox.exec("f(){ f | f & }; f; sleep 8", timeout_s=15)
    assert not result.ok
    assert "pids" in result.limits_hit
    # The sandbox is still usable, and nothing of the bomb survived.
    after = sandbox.exec("ls /proc | grep -c '^[0-9]'")
    assert after.ok, after.summary()
    assert int(after.stdout.strip()) <= 6
    # A bomb whose parent returns at once may be killed before it reaches the limit;
    # either way nothing of it outlives the command.
    sandbox.exec("f(){ f | f & }; f", timeout_s=15)
    left = sandbox.exec("ls /proc | grep -c '^[0-9]'")
    assert int(left.stdout.strip()) <= 6


def test_memory_exhaustion_is_killed(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(memory="256m")
    result = sandbox.exec(["python3", "-c", "x = bytearray(1024 * 1024 * 1024); print('got it')"])
    assert not result.ok
    assert result.exit_code == 137
    assert "memory" in result.limits_hit
    assert "got it" not in result.stdout
    assert sandbox.exec("echo still alive").stdout == "still alive\n"


@pytest.mark.parametrize("folder", ["/workspace", "/tmp"])
def test_disk_fill_is_bounded(make_sandbox: MakeSandbox, folder: str) -> None:
    sandbox = make_sandbox(workspace_size="64m", tmp_size="32m", memory="512m")
    result = sandbox.exec(f"dd if=/dev/zero of={folder}/fill bs=1M count=400", timeout_s=60)
    assert not result.ok
    assert "No space left on device" in result.stderr
    assert "disk" in result.limits_hit
    size = sandbox.exec(f"du -sm {folder}/fill | cut -f1")
    assert int(size.stdout.strip()) <= 64


def test_no_network_to_host_loopback_or_outside(make_sandbox: MakeSandbox) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # The harness proves the server works from the host.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        time.sleep(0.5)
        assert len(accepted) == 1
        sandbox = make_sandbox()
        probe = (
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
            "except OSError as e:\n"
            "    print(type(e).__name__, e); sys.exit(1)\n"
            "print('connected')\n"
        )
        for host, target_port in (("127.0.0.1", port), ("172.17.0.1", port),
                                  ("10.255.255.1", 80)):
            result = sandbox.exec(["python3", "-c", probe, host, str(target_port)])
            assert not result.ok, f"{host}: {result.summary()}"
            assert "connected" not in result.stdout
            # Refused at once for want of a route, not dropped until the probe's timeout.
            assert "timed out" not in result.stdout, f"{host}: {result.stdout}"
            assert not result.stdout.startswith("TimeoutError"), f"{host}: {result.stdout}"
        interfaces = sandbox.exec("cat /proc/net/dev")
        assert "eth0" not in interfaces.stdout
        assert len(accepted) == 1
    finally:
        stop.set()
        thread.join()
        server.close()


def test_cannot_read_host_files_or_parent_environment(
    make_sandbox: MakeSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "host-secret.txt"
    secret_file.write_text("host-only-content")
    monkeypatch.setenv("UPGATE_TEST_SECRET", "parent-env-secret")
    sandbox = make_sandbox()
    read = sandbox.exec(["cat", str(secret_file)])
    assert not read.ok
    assert "host-only-content" not in read.stdout
    env = sandbox.exec("env; cat /proc/1/environ")
    assert "parent-env-secret" not in env.stdout
    assert "UPGATE_TEST_SECRET" not in env.stdout


@pytest.mark.parametrize("path", ["/evil", "/etc/evil", "/usr/evil", "/opt/venv/evil"])
def test_cannot_write_outside_the_workspace(make_sandbox: MakeSandbox, path: str) -> None:
    sandbox = make_sandbox()
    result = sandbox.exec(["touch", path])
    assert not result.ok
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr


def test_runs_unprivileged(make_sandbox: MakeSandbox) -> None:
    result = make_sandbox().exec("id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status")
    assert result.ok, result.summary()
    lines = result.stdout.split("\n")
    assert lines[0] == "1000"
    for line in lines[1:4]:
        assert line.split()[1] == "0000000000000000", line


def test_no_docker_socket(make_sandbox: MakeSandbox) -> None:
    result = make_sandbox().exec(
        "ls -la /var/run/docker.sock /run/docker.sock 2>&1; "
        "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); "
        "s.connect('/var/run/docker.sock')\""
    )
    assert not result.ok
    assert "No such file" in result.stdout + result.stderr


def test_cannot_outlive_its_timeout(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    # How soon after the limit the kill lands: benchmarks/bench_sandbox.py measures it.
    result = sandbox.exec("echo begun; sleep 100; echo finished", timeout_s=2)
    assert result.timed_out
    assert result.limits_hit == ("timeout",)
    assert result.stdout == "begun\n"
    # A detached daemon does not survive the command either.
    assert sandbox.exec("setsid sh -c 'sleep 100' >/dev/null 2>&1 & echo ok").ok
    procs = sandbox.exec("for p in /proc/[0-9]*; do cat $p/cmdline; echo; done")
    assert "sleep100" not in procs.stdout.replace("\0", "")


def test_output_flood_is_cut(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(max_output_bytes=64 * 1024)
    result = sandbox.exec("yes", timeout_s=2)
    assert result.timed_out
    assert set(result.limits_hit) == {"timeout", "output"}
    assert result.truncated
    assert len(result.stdout) <= 64 * 1024 + 100


def test_stop_leaves_nothing_behind(
    docker_engine: Any, sandbox_config: DockerSandboxConfig
) -> None:
    sandbox = get_sandbox(sandbox_config)
    sandbox.start()
    assert _ours(docker_engine)
    sandbox.stop()
    sandbox.stop()
    assert _ours(docker_engine) == []
    with pytest.raises(SandboxError):
        sandbox.exec("true")


def test_cleanup_orphans_removes_containers_of_dead_processes(
    docker_engine: Any, sandbox_image: str
) -> None:
    from upgate.sandboxes.docker import cleanup_orphans

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = docker_engine.containers.create(
        sandbox_image,
        command=["sleep", "infinity"],
        network_mode="none",
        labels={
            "upgate.sandbox": "1",
            "upgate.owner_pid": str(dead.pid),
            "upgate.owner_host": socket.gethostname(),
        },
    )
    live = get_sandbox(DockerSandboxConfig(image=sandbox_image))
    live.start()
    try:
        assert cleanup_orphans(docker_engine) >= 1
        remaining = {c.id for c in docker_engine.containers.list(all=True)}
        assert orphan.id not in remaining
        assert live.container_id in remaining  # type: ignore[attr-defined]
        assert live.exec("true").ok
    finally:
        live.stop()
