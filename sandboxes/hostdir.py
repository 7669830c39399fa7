"""HostDirSandbox: a workspace in a host temp dir, shared by the fake and local backends;
a subclass only changes how a command is launched (`_run`)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from upgate.errors import SandboxError
from upgate.sandboxes.base import (
    WORKSPACE,
    ExecResult,
    Mount,
    OnOutput,
    Sandbox,
    workspace_path,
)
from upgate.sandboxes.config import FakeSandboxConfig, LocalSandboxConfig
from upgate.sandboxes.gitbaseline import baseline_diff, record_baseline
from upgate.sandboxes.process import run_host_process


def _force_rmtree(root: Path) -> None:
    def retry(func: Callable[..., Any], path: str, _exc: object) -> None:
        # Sandboxed code may have removed write permission from its own folders.
        os.chmod(os.path.dirname(path) or ".", stat.S_IRWXU)
        func(path)

    shutil.rmtree(root, onerror=retry)


class HostDirSandbox(Sandbox):
    """A workspace in a host temp dir; subclasses decide how commands are launched."""

    def __init__(
        self, config: FakeSandboxConfig | LocalSandboxConfig, mounts: Sequence[Mount] = ()
    ) -> None:
        self.config = config
        self.mounts = tuple(mounts)
        self._root: Path | None = None
        self._baseline: str | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Create the temp workspace; idempotent."""
        if self._root is not None:
            return
        root = Path(tempfile.mkdtemp(prefix="upgate-sandbox-"))
        (root / "workspace").mkdir()
        (root / "home").mkdir()
        self._root = root

    def stop(self) -> None:
        """Remove the temp workspace; idempotent."""
        root, self._root = self._root, None
        if root is not None and root.exists():
            _force_rmtree(root)

    @property
    def workspace_dir(self) -> Path:
        """The host folder that holds the workspace (started sandboxes only)."""
        if self._root is None:
            raise SandboxError("the sandbox is not started; call start() or use it as `with`")
        return self._root / "workspace"

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
        """Run a command under the backend's limits; failures come back as results."""
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
        with self._lock:
            return self._run(argv, timeout_s, cwd, env or {}, max_output_bytes, on_output)

    def _run(
        self,
        argv: list[str],
        timeout_s: float,
        cwd: str,
        env: dict[str, str],
        max_output_bytes: int,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        host_cwd = self._host_cwd(cwd)
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._home()),
            "LANG": "C.UTF-8",
            **env,
        }
        return run_host_process(
            argv,
            cwd=host_cwd,
            env=full_env,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            on_output=on_output,
        )

    def _home(self) -> Path:
        assert self._root is not None
        return self._root / "home"

    def _host_cwd(self, cwd: str) -> Path:
        if cwd == WORKSPACE or cwd.startswith(WORKSPACE + "/") or not cwd.startswith("/"):
            return self._host_path(cwd)
        return Path(cwd)

    # -- files -------------------------------------------------------------------------

    def _host_path(self, path: str) -> Path:
        """The host path for a workspace path, refusing `..` and symlinks that leave it."""
        inside = workspace_path(path)
        root = self.workspace_dir.resolve()
        host = root / inside[len(WORKSPACE) :].lstrip("/")
        real = Path(os.path.realpath(host))
        if real != root and root not in real.parents:
            raise SandboxError(
                f"path {path!r} resolves outside the workspace (through a symlink); refused"
            )
        return real

    def read_file(self, path: str) -> str:
        """Read a text file in the workspace."""
        host = self._host_path(path)
        if not host.is_file():
            raise FileNotFoundError(f"no file {path!r} in the sandbox workspace")
        return host.read_text(encoding="utf-8", errors="replace")

    def write_file(self, path: str, content: str) -> None:
        """Write a text file in the workspace, creating parent folders."""
        host = self._host_path(path)
        if host == self.workspace_dir.resolve():
            raise SandboxError("cannot write to the workspace folder itself; name a file")
        host.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(host, flags, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)

    def list_files(self, path: str = ".") -> list[str]:
        """Files under a workspace folder, relative to the workspace, sorted (no .git)."""
        host = self._host_path(path)
        root = self.workspace_dir.resolve()
        if host.is_file() or host.is_symlink():
            return [str(host.relative_to(root))]
        if not host.is_dir():
            raise FileNotFoundError(f"no folder {path!r} in the sandbox workspace")
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(host):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            base = Path(dirpath)
            found.extend(str((base / name).relative_to(root)) for name in filenames)
            # Symlinks to folders are listed as entries, never followed.
            found.extend(
                str((base / d).relative_to(root)) for d in dirnames if (base / d).is_symlink()
            )
        return sorted(found)

    def copy_in(self, source: Path) -> None:
        """Copy a host tree (without .git) into the workspace and commit it as the baseline."""
        source = Path(source)
        if not source.is_dir():
            raise SandboxError(f"copy_in needs a folder; {source} is not one")
        shutil.copytree(
            source,
            self.workspace_dir,
            symlinks=True,
            ignore=shutil.ignore_patterns(".git"),
            dirs_exist_ok=True,
        )
        self._baseline = record_baseline(self._script)

    def copy_out(self, path: str, dest: Path) -> None:
        """Copy a workspace file or folder (without .git) to `dest` on the host."""
        host = self._host_path(path)
        dest = Path(dest)
        if host.is_dir():
            shutil.copytree(
                host, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"),
                dirs_exist_ok=True,
            )
        elif host.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, dest, follow_symlinks=False)
        else:
            raise FileNotFoundError(f"nothing at {path!r} in the sandbox workspace")

    def diff(self) -> str:
        """Binary-safe git diff of the workspace against the copy_in baseline."""
        return baseline_diff(self._script, self._baseline)

    def _script(self, script: str, timeout_s: float, max_output_bytes: int) -> ExecResult:
        return self._exec(["sh", "-c", script], timeout_s, WORKSPACE, None, max_output_bytes)

    def reset(self) -> None:
        """Empty the workspace and home folder for the next run (used by SandboxPool)."""
        if self._root is None:
            raise SandboxError("the sandbox is not started; call start() first")
        for name in ("workspace", "home"):
            _force_rmtree(self._root / name)
            (self._root / name).mkdir()
        self._baseline = None
