"""LocalSandbox: bubblewrap (`bwrap`) jails for machines with no Docker engine.

What it isolates: each command runs in fresh user, pid, network, ipc, uts and cgroup
namespaces (no network at all, not even loopback of the host), as uid 1000 inside, with an
empty environment, a read-only view of the host's /usr (and /bin, /lib through it), a
private /proc, /dev and size-limited /tmp, and the workspace (a host temp dir) bound
read-write at /workspace. The command is pid 1 of its pid namespace, so every process it
started dies when it ends, and its CPU time reaches upgate through the child's rusage.

What it does NOT isolate, plainly:
- It shares the host kernel with no seccomp profile: a kernel bug is an escape.
- No cgroup limits. Memory is RLIMIT_AS (address space, per process, so several processes
  can together use more); processes are RLIMIT_NPROC, which counts per host user and is
  not enforced at all when upgate runs as root; CPU is not limited.
- The workspace is a host folder: its size is bounded only by RLIMIT_FSIZE per file, not
  in total, so a command can fill the host disk with many files.
- The host's installed programs under /usr are visible (read-only) to the command.
Use the docker backend for untrusted code wherever a Docker engine is available.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from upgate.errors import SandboxError, SandboxUnavailableError
from upgate.sandboxes.base import WORKSPACE, ExecResult, LimitName, Mount, OnOutput
from upgate.sandboxes.config import LocalSandboxConfig, parse_size
from upgate.sandboxes.hostdir import HostDirSandbox
from upgate.sandboxes.process import run_host_process

SANDBOX_PATH = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
SANDBOX_TMP = "/tmp"  # noqa: S108 (a private tmpfs inside the jail, not the host's /tmp)
# Only what dynamic linking, Python and git need from /etc; not passwd, not secrets.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
)
MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc")
PIDS_SIGNS = ("Resource temporarily unavailable", "Cannot fork", "can't fork")


def bwrap_path() -> str:
    """The bwrap executable, or SandboxUnavailableError saying how to install it."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailableError(
            "the local sandbox needs bubblewrap: install it (Debian/Ubuntu: "
            "`apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`) or use the "
            "docker backend"
        )
    return found


class LocalSandbox(HostDirSandbox):
    """Commands in bubblewrap namespaces on the host kernel; see the module docstring."""

    config: LocalSandboxConfig

    def __init__(self, config: LocalSandboxConfig, mounts: Sequence[Mount] = ()) -> None:
        super().__init__(config, mounts)
        self._bwrap = bwrap_path()
        self._prlimit = shutil.which("prlimit")

    def describe(self) -> str:
        """A plain statement of what this backend isolates and what it does not."""
        return (
            "local sandbox (bubblewrap): new user/pid/net/ipc/uts namespaces, no network, "
            "empty environment, read-only /usr, private /tmp; NOT isolated: shares the host "
            "kernel without a seccomp profile, no cgroup memory/pids/CPU limits (only "
            "rlimits; the process limit is not enforced for root), workspace disk use is "
            "bounded only per file"
        )

    def _run(
        self,
        argv: list[str],
        timeout_s: float,
        cwd: str,
        env: dict[str, str],
        max_output_bytes: int,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        result = run_host_process(
            [*self._rlimits(), *self._jail_argv(cwd, env), "--", *argv],
            cwd=self.workspace_dir,
            env={"PATH": "/usr/bin:/bin"},
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            on_output=on_output,
        )
        return _with_guessed_limits(result)

    def _rlimits(self) -> list[str]:
        if self._prlimit is None:
            return []
        return [
            self._prlimit,
            f"--as={parse_size(self.config.memory)}",
            f"--nproc={self.config.pids}",
            f"--fsize={parse_size(self.config.max_file_size)}",
            "--core=0",
            "--",
        ]

    def _jail_argv(self, cwd: str, env: dict[str, str]) -> list[str]:
        if not cwd.startswith("/"):
            cwd = f"{WORKSPACE}/{cwd}"
        args = [
            self._bwrap,
            "--unshare-all",
            # The command is pid 1 of its namespace (no bwrap reaper between): bwrap's
            # reaper is never waited for, so the command's CPU rusage would be lost with it.
            # When pid 1 ends, the kernel kills everything else in the namespace.
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--uid", "1000",
            "--gid", "1000",
            "--ro-bind", "/usr", "/usr",
        ]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for path in ETC_FILES:
            args += ["--ro-bind-try", path, path]
        args += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(parse_size(self.config.tmp_size)),
            "--tmpfs", SANDBOX_TMP,
            "--bind", str(self.workspace_dir), WORKSPACE,
        ]
        for mount in self.mounts:
            if not mount.source.exists():
                raise SandboxError(f"mount source {mount.source} does not exist; create it")
            flag = "--ro-bind" if mount.read_only else "--bind"
            args += [flag, str(mount.source), mount.target]
        full_env = {"PATH": SANDBOX_PATH, "HOME": SANDBOX_TMP, "LANG": "C.UTF-8", **env}
        for key, value in full_env.items():
            args += ["--setenv", key, value]
        args += ["--chdir", cwd]
        return args


def _with_guessed_limits(result: ExecResult) -> ExecResult:
    """Name rlimit hits from their error messages (no cgroup counters exist here)."""
    if result.exit_code == 0:
        return result
    text = result.stderr + result.stdout
    extra: list[LimitName] = []
    if any(sign in text for sign in MEMORY_SIGNS):
        extra.append("memory")
    if any(sign in text for sign in PIDS_SIGNS):
        extra.append("pids")
    if not extra:
        return result
    limits = tuple(dict.fromkeys([*result.limits_hit, *extra]))
    return result.model_copy(update={"limits_hit": limits})

