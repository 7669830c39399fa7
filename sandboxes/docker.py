"""DockerSandbox: one hardened, long-lived container per sandbox; commands run by exec.

Hardening: no network, read-only root, size-limited tmpfs for /workspace (a tmpfs-backed
volume, so the archive API can reach it) and /tmp, all capabilities dropped,
no-new-privileges, uid 1000, pids/memory (no swap)/CPU limits, no host environment, no
Docker socket. Containers and volumes carry labels so `cleanup_orphans` can remove what a
crashed process left behind.

Each command runs under a small in-container wrapper: `timeout -s KILL` for the wall
clock, then `kill -9 -1` so nothing it started outlives it, then it prints the memory and
pids cgroup counters after a per-exec nonce. The host also enforces the deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import posixpath
import secrets
import socket
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from upgate.errors import SandboxError, SandboxUnavailableError
from upgate.sandboxes.base import (
    WORKSPACE,
    ExecResult,
    LimitName,
    Mount,
    OnOutput,
    OutputCapture,
    Sandbox,
    workspace_path,
)
from upgate.sandboxes.config import DockerSandboxConfig
from upgate.sandboxes.docker_exec import (
    PROBE,
    WRAPPER,
    StderrCapture,
    WrapperLineFeed,
    read_frames,
)
from upgate.sandboxes.gitbaseline import DIFF_OUTPUT_BYTES, baseline_diff, record_baseline

logger = logging.getLogger(__name__)

LABEL = "upgate.sandbox"
SANDBOX_UID = 1000
SANDBOX_TMP = "/tmp"  # noqa: S108 (a tmpfs inside the container, not the host's /tmp)
SANDBOX_ENV = {
    "PATH": "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": SANDBOX_TMP,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
# pid 1 ignores SIGCHLD so the kernel reaps orphans: zombies would otherwise pile up
# against the pids limit after every killed command.
INIT_COMMAND = [
    "python3",
    "-c",
    "import signal\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\nwhile True: signal.pause()",
]
MAX_READ_BYTES = 64 * 1024 * 1024

_live: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()


def docker_client() -> Any:
    """A docker SDK client for the default engine, or SandboxUnavailableError."""
    try:
        import docker
    except ImportError as exc:
        raise SandboxUnavailableError(
            "the docker backend needs the docker SDK: pip install docker==7.2.0"
        ) from exc
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise SandboxUnavailableError(
            f"no Docker engine answers ({exc}); start dockerd, or use the local backend"
        ) from exc
    return client


class DockerSandbox(Sandbox):
    """A hardened container per sandbox; see the module docstring for what it enforces."""

    def __init__(self, config: DockerSandboxConfig, mounts: Sequence[Mount] = ()) -> None:
        self.config = config
        self.mounts = tuple(mounts)
        self._client: Any = None
        self._container: Any = None
        self._volume: Any = None
        self._baseline: str | None = None
        self._counters = (0, 0)
        self._broken: str | None = None
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def container_id(self) -> str | None:
        """The container's id while started."""
        return None if self._container is None else str(self._container.id)

    def start(self) -> None:
        """Create the volume and the container and start it; idempotent."""
        with self._lock:
            if self._container is not None:
                return
            from docker.types import Mount as DockerMount
            from docker.types import Ulimit

            from upgate.sandboxes.images import ensure_image

            self._client = docker_client()
            image = self.config.image or ensure_image(self.config.image_kind, self._client)
            suffix = secrets.token_hex(6)
            labels = {
                LABEL: "1",
                "upgate.owner_pid": str(os.getpid()),
                "upgate.owner_host": socket.gethostname(),
                "upgate.created": str(int(time.time())),
            }
            try:
                self._volume = self._client.volumes.create(
                    name=f"upgate-ws-{suffix}",
                    driver="local",
                    driver_opts={
                        "type": "tmpfs",
                        "device": "tmpfs",
                        "o": f"size={self.config.workspace_size},uid={SANDBOX_UID},"
                        f"gid={SANDBOX_UID},mode=0755,nosuid,nodev",
                    },
                    labels=labels,
                )
                mounts = [DockerMount(target=WORKSPACE, source=self._volume.name, type="volume")]
                for mount in self.mounts:
                    mounts.append(
                        DockerMount(
                            target=mount.target,
                            source=str(Path(mount.source).resolve()),
                            type="bind",
                            read_only=mount.read_only,
                        )
                    )
                self._container = self._client.containers.create(
                    image,
                    command=INIT_COMMAND,
                    name=f"upgate-sandbox-{suffix}",
                    hostname="sandbox",
                    user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                    working_dir=WORKSPACE,
                    environment=SANDBOX_ENV,
                    labels=labels,
                    network_mode="none",
                    read_only=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    pids_limit=self.config.pids,
                    mem_limit=self.config.memory,
                    memswap_limit=self.config.memory,
                    nano_cpus=int(self.config.cpus * 1e9),
                    tmpfs={SANDBOX_TMP: f"size={self.config.tmp_size},mode=1777,nosuid,nodev"},
                    mounts=mounts,
                    ulimits=[Ulimit(name="core", soft=0, hard=0)],
                    stop_signal="SIGKILL",
                )
                self._container.start()
            except Exception as exc:
                self.stop()
                if isinstance(exc, SandboxError):
                    raise
                raise SandboxError(f"could not start the sandbox container: {exc}") from exc
            _live.add(self)
            logger.debug("started sandbox container %s from %s", self._container.id[:12], image)

    def stop(self) -> None:
        """Remove the container and its workspace volume; idempotent."""
        with self._lock:
            container, self._container = self._container, None
            volume, self._volume = self._volume, None
            _live.discard(self)
            if container is not None:
                try:
                    container.remove(force=True)
                except Exception as exc:
                    if getattr(exc, "status_code", None) != 404:
                        logger.warning("could not remove sandbox container: %s", exc)
            if volume is not None:
                _remove_volume(volume)

    def _require(self) -> Any:
        if self._broken is not None:
            raise SandboxError(f"this sandbox is unusable ({self._broken}); start a new one")
        if self._container is None:
            raise SandboxError("the sandbox is not started; call start() or use it as `with`")
        return self._container

    # -- commands ----------------------------------------------------------------------

    def exec(
        self,
        command: list[str] | str,
        *,
        timeout_s: float = 60.0,
        cwd: str = WORKSPACE,
        env: dict[str, str] | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        """Run a command in the container under its limits; failures come back as results."""
        return self._exec(command, timeout_s, cwd, env, self.config.max_output_bytes, on_output)

    def _exec(
        self,
        command: list[str] | str,
        timeout_s: float,
        cwd: str,
        env: dict[str, str] | None,
        max_output_bytes: int,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        if not argv:
            raise SandboxError("empty command; pass an argv list or a shell string")
        if not cwd.startswith("/"):
            cwd = posixpath.join(WORKSPACE, cwd)
        with self._lock:
            container = self._require()
            return self._run(
                container, argv, timeout_s, cwd, env or {}, max_output_bytes, on_output
            )

    def _run(
        self,
        container: Any,
        argv: list[str],
        timeout_s: float,
        cwd: str,
        env: dict[str, str],
        max_output_bytes: int,
        on_output: OnOutput | None,
    ) -> ExecResult:
        api = self._client.api
        nonce = "upgate-" + secrets.token_hex(8)
        cmd = ["sh", "-c", WRAPPER, "sh", nonce, f"{timeout_s:.3f}", *argv]
        started = time.monotonic()
        exec_id = api.exec_create(
            container.id,
            cmd,
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            workdir=cwd,
            environment={**SANDBOX_ENV, **env},
        )["Id"]
        sock = api.exec_start(exec_id, socket=True)
        out = OutputCapture(max_output_bytes)
        err = StderrCapture(max_output_bytes)
        feed = WrapperLineFeed(on_output, max_output_bytes, nonce)
        reader = threading.Thread(
            target=read_frames, args=(sock, out, err, feed), daemon=True
        )
        reader.start()
        reader.join(timeout_s + self.config.host_kill_grace_s)
        host_killed = False
        if reader.is_alive():
            # The in-container timeout did not end it: kill from the host side.
            host_killed = True
            self._host_kill(container)
            reader.join(3.0)
            if reader.is_alive():
                _shutdown(sock)
                reader.join(3.0)
        _close(sock)
        feed.close()
        duration = time.monotonic() - started
        stderr, err_truncated, marker = err.split(nonce)
        exit_code = self._exit_code(exec_id, marker)
        oom, pids = self._new_limit_events(marker)
        timed_out = host_killed or (exit_code == 137 and duration >= timeout_s * 0.98 and not oom)
        limits: list[LimitName] = []
        if timed_out:
            limits.append("timeout")
        if oom:
            limits.append("memory")
        if pids:
            limits.append("pids")
        if out.truncated or err_truncated:
            limits.append("output")
        stdout = out.text()
        if exit_code != 0 and "No space left on device" in stderr + stdout:
            limits.append("disk")
        return ExecResult(
            exit_code=137 if host_killed else exit_code,
            stdout=stdout,
            stderr=stderr,
            duration_s=duration,
            timed_out=timed_out,
            truncated=out.truncated or err_truncated,
            limits_hit=tuple(limits),
            cpu_s=None if marker is None or marker[3] < 0 else marker[3] / 1e9,
        )

    def _exit_code(self, exec_id: str, marker: tuple[int, int, int, int] | None) -> int:
        if marker is not None:
            return marker[0]
        for _ in range(20):
            code = self._client.api.exec_inspect(exec_id).get("ExitCode")
            if code is not None:
                return int(code)
            time.sleep(0.05)
        return 137

    def _new_limit_events(
        self, marker: tuple[int, int, int, int] | None
    ) -> tuple[bool, bool]:
        """Whether the memory (OOM kills) or pids (fork refused) counters moved."""
        counters = self._probe_counters() if marker is None else (marker[1], marker[2])
        if counters is None:
            return False, False
        oom = counters[0] > self._counters[0]
        pids = counters[1] > self._counters[1]
        self._counters = counters
        return oom, pids

    def _probe_counters(self) -> tuple[int, int] | None:
        try:
            _code, output = self._require().exec_run(
                ["sh", "-c", PROBE], user=f"{SANDBOX_UID}:{SANDBOX_UID}"
            )
            oom, pids = (int(x) for x in output.split())
        except Exception:
            return None
        return oom, pids

    def _host_kill(self, container: Any) -> None:
        """Kill every sandbox process; restart the container if even that fails."""
        try:
            result = container.exec_run(
                ["sh", "-c", "kill -9 -1"], user=f"{SANDBOX_UID}:{SANDBOX_UID}"
            )
            logger.warning("host-side kill of a command that outlived its timeout: %s", result)
            return
        except Exception as exc:
            logger.warning("host-side kill failed (%s); killing the container", exc)
        try:
            container.kill()
        finally:
            self._broken = "a command could not be stopped, so the container was killed"

    # -- files -------------------------------------------------------------------------

    def read_file(self, path: str) -> str:
        """Read a text file in the workspace (through the archive API)."""
        target = workspace_path(path)
        with self._lock:
            data = self._get_file_bytes(self._require(), target)
        return data.decode("utf-8", errors="replace")

    def _get_file_bytes(self, container: Any, target: str, depth: int = 0) -> bytes:
        from docker.errors import NotFound

        try:
            stream, _stat = container.get_archive(target)
        except NotFound:
            raise FileNotFoundError(f"no file {target!r} in the sandbox") from None
        with tempfile.TemporaryFile() as buf:
            _spool(stream, buf)
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tar:
                member = tar.next()
                if member is None:
                    raise FileNotFoundError(f"no file {target!r} in the sandbox")
                if member.issym() and depth < 8:
                    link = posixpath.normpath(
                        posixpath.join(posixpath.dirname(target), member.linkname)
                    )
                    return self._get_file_bytes(container, workspace_path(link), depth + 1)
                if not member.isfile():
                    raise FileNotFoundError(f"{target!r} in the sandbox is not a regular file")
                if member.size > MAX_READ_BYTES:
                    raise SandboxError(f"{target!r} is over {MAX_READ_BYTES} bytes; copy_out it")
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read()

    def write_file(self, path: str, content: str) -> None:
        """Write a text file in the workspace (through the archive API, no shell quoting)."""
        target = workspace_path(path)
        rel = target[len(WORKSPACE) :].lstrip("/")
        if not rel:
            raise SandboxError("cannot write to the workspace folder itself; name a file")
        data = content.encode("utf-8")
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                tar.addfile(_tar_dir("/".join(parts[:i]), now))
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            info.uid = info.gid = SANDBOX_UID
            tar.addfile(info, io.BytesIO(data))
        with self._lock:
            self._put_archive(self._require(), buf.getvalue())

    def _put_archive(self, container: Any, data: bytes | Any) -> None:
        try:
            ok = container.put_archive(WORKSPACE, data)
        except Exception as exc:
            raise SandboxError(f"could not write into the sandbox workspace: {exc}") from exc
        if not ok:
            raise SandboxError("the Docker engine refused the archive for the workspace")

    def list_files(self, path: str = ".") -> list[str]:
        """Files under a workspace folder, relative to the workspace, sorted (no .git)."""
        target = workspace_path(path)
        script = (
            'cd "$1" 2>/dev/null || exit 3; '
            "find \"$1\" -path '*/.git' -prune -o '(' -type f -o -type l ')' -print0"
        )
        result = self._exec(["sh", "-c", script, "sh", target], 60.0, "/", None, DIFF_OUTPUT_BYTES)
        if result.exit_code == 3:
            raise FileNotFoundError(f"no folder {path!r} in the sandbox workspace")
        if not result.ok:
            raise SandboxError(f"could not list {path!r}: {result.summary(1000)}")
        prefix = WORKSPACE + "/"
        return sorted(p[len(prefix) :] for p in result.stdout.split("\0") if p.startswith(prefix))

    def copy_in(self, source: Path) -> None:
        """Tar a host tree (without .git) into the workspace and commit it as the baseline."""
        source = Path(source)
        if not source.is_dir():
            raise SandboxError(f"copy_in needs a folder; {source} is not one")

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if ".git" in info.name.split("/"):
                return None
            info.uid = info.gid = SANDBOX_UID
            info.uname = info.gname = ""
            return info

        with tempfile.TemporaryFile() as buf:
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for child in sorted(source.iterdir()):
                    tar.add(child, arcname=child.name, filter=owned)
            buf.seek(0)
            with self._lock:
                self._put_archive(self._require(), buf)
        self._baseline = record_baseline(self._script)

    def copy_out(self, path: str, dest: Path) -> None:
        """Copy a workspace file or folder (without .git) to `dest` on the host."""
        from docker.errors import NotFound

        target = workspace_path(path)
        dest = Path(dest)
        with self._lock:
            container = self._require()
            try:
                stream, _stat = container.get_archive(target)
            except NotFound:
                raise FileNotFoundError(f"nothing at {path!r} in the sandbox workspace") from None
            with tempfile.TemporaryFile() as buf, tempfile.TemporaryDirectory() as tmp:
                _spool(stream, buf)
                buf.seek(0)
                with tarfile.open(fileobj=buf) as tar:
                    # The archive is untrusted: the data filter refuses absolute paths, `..`,
                    # links out of the folder and device files.
                    members = [m for m in tar if ".git" not in m.name.split("/")]
                    tar.extractall(tmp, members=members, filter="data")
                extracted = Path(tmp) / posixpath.basename(target)
                if extracted.is_dir():
                    import shutil

                    shutil.copytree(extracted, dest, symlinks=True, dirs_exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(extracted, dest)

    def diff(self) -> str:
        """Binary-safe git diff of the workspace against the copy_in baseline."""
        return baseline_diff(self._script, self._baseline)

    def _script(self, script: str, timeout_s: float, max_output_bytes: int) -> ExecResult:
        return self._exec(["sh", "-c", script], timeout_s, WORKSPACE, None, max_output_bytes)

    def reset(self) -> None:
        """Empty /workspace, /tmp and /dev/shm for the next run (used by SandboxPool)."""
        result = self._exec(
            ["sh", "-c", "find /workspace /tmp /dev/shm -mindepth 1 -delete"],
            60.0, "/", None, 64 * 1024,
        )
        if not result.ok:
            raise SandboxError(f"could not reset the workspace: {result.summary(1000)}")
        self._baseline = None

    def describe(self) -> str:
        """What this backend enforces."""
        c = self.config
        return (
            f"docker sandbox: network none, read-only root, uid {SANDBOX_UID}, caps dropped, "
            f"no-new-privileges, memory {c.memory} (no swap), cpus {c.cpus}, pids {c.pids}, "
            f"workspace tmpfs {c.workspace_size}, /tmp tmpfs {c.tmp_size}"
        )


def _remove_volume(volume: Any, attempts: int = 20, pause_s: float = 0.25) -> None:
    """Remove a workspace volume, waiting while the engine still holds it.

    When the container was removed by someone else a moment ago (the stop button kills a
    batch's containers from another process), the engine may report the volume in use
    (409) until it has released the mount; a volume left behind would outlive its owner.
    """
    for attempt in range(attempts):
        try:
            volume.remove(force=True)
            return
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status == 404:
                return
            if status != 409 or attempt == attempts - 1:
                logger.warning("could not remove sandbox volume: %s", exc)
                return
            time.sleep(pause_s)


def _raw_socket(sock: Any) -> Any:
    return getattr(sock, "_sock", sock)


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError):
        _raw_socket(sock).shutdown(socket.SHUT_RDWR)


def _close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _spool(stream: Iterator[bytes], buf: Any) -> None:
    total = 0
    for chunk in stream:
        total += len(chunk)
        if total > MAX_READ_BYTES * 4:
            raise SandboxError("the archive from the sandbox is too large to copy")
        buf.write(chunk)


def _tar_dir(name: str, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
    info.uid = info.gid = SANDBOX_UID
    return info


def cleanup_orphans(client: Any = None, *, include_live_owners: bool = False) -> int:
    """Remove sandbox containers and volumes whose owning process is gone; return the count.

    Only those created from this host are touched. With `include_live_owners`, every
    labelled sandbox from this host goes, including ones of running processes.
    """
    client = client or docker_client()
    host = socket.gethostname()
    removed = 0
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        labels = container.labels
        if labels.get("upgate.owner_host") != host:
            continue
        if not include_live_owners and _pid_alive(labels.get("upgate.owner_pid", "")):
            continue
        container.remove(force=True)
        removed += 1
    for volume in client.volumes.list(filters={"label": f"{LABEL}=1"}):
        labels = volume.attrs.get("Labels") or {}
        if labels.get("upgate.owner_host") != host:
            continue
        if not include_live_owners and _pid_alive(labels.get("upgate.owner_pid", "")):
            continue
        try:
            volume.remove(force=True)
            removed += 1
        except Exception as exc:
            logger.warning("could not remove orphan volume %s: %s", volume.name, exc)
    return removed


def _pid_alive(text: str) -> bool:
    try:
        pid = int(text)
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def _stop_live_sandboxes() -> None:
    for sandbox in list(_live):
        sandbox.stop()
