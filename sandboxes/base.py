"""The one interface every sandbox backend implements.

A sandbox holds a copy of a target tree in a workspace, runs commands in it under limits,
and gives back a diff of what changed. A command's failure (non-zero exit, timeout, a limit
hit) is an `ExecResult`, not an exception; only broken infrastructure raises.
"""

from __future__ import annotations

import abc
import logging
import posixpath
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

from pydantic import BaseModel, ConfigDict

from upgate.errors import SandboxError

log = logging.getLogger(__name__)

LimitName = Literal["timeout", "memory", "pids", "output", "disk", "network"]

WORKSPACE = "/workspace"
"""Where the target tree lives inside every backend, as the commands see it."""


def truncation_marker(max_bytes: int) -> str:
    """The line appended to an output stream cut at `max_bytes`."""
    return f"\n[upgate: output truncated at {max_bytes} bytes]"


class OutputCapture:
    """Collects one output stream, keeping at most `max_bytes` (the rest is counted, dropped)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._kept = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        """Take a chunk of output."""
        self.total += len(chunk)
        room = self.max_bytes - self._kept
        if room > 0:
            piece = chunk[:room]
            self._parts.append(piece)
            self._kept += len(piece)

    @property
    def truncated(self) -> bool:
        """True when more arrived than was kept."""
        return self.total > self.max_bytes

    def text(self) -> str:
        """The kept output as text, with the truncation marker when cut."""
        out = b"".join(self._parts).decode("utf-8", errors="replace")
        return out + truncation_marker(self.max_bytes) if self.truncated else out


OnOutput = Callable[[str], None]
"""Called with each output line (stdout or stderr, without its newline) while it runs."""

MAX_LINE_CHARS = 4096
"""Longer lines reach an `on_output` callback cut to this many characters."""


class LineFeed:
    """Splits a command's output streams into lines for an `on_output` callback, live.

    Thread-safe (stdout and stderr are read by separate threads; one line is delivered at
    a time), bounded like the captured output (at most `max_bytes` per stream reach the
    callback, so the output cap holds for listeners too), and a callback that raises is
    logged once and dropped: a listener never breaks the command it watches.
    """

    def __init__(self, callback: OnOutput | None, max_bytes: int) -> None:
        self.callback = callback
        self.max_bytes = max_bytes
        self._pending: dict[str, bytes] = {}
        self._fed: dict[str, int] = {}
        self._lock = threading.Lock()

    def feed(self, stream: str, chunk: bytes) -> None:
        """Take a chunk of one stream ("stdout", "stderr"); deliver its complete lines."""
        if self.callback is None or not chunk:
            return
        with self._lock:
            room = self._cap(stream) - self._fed.get(stream, 0)
            if room <= 0:
                return
            chunk = chunk[:room]
            self._fed[stream] = self._fed.get(stream, 0) + len(chunk)
            data = self._pending.get(stream, b"") + chunk
            *lines, rest = data.split(b"\n")
            self._pending[stream] = rest
            if len(rest) > MAX_LINE_CHARS * 4:  # a line without end: deliver what came
                self._pending[stream] = b""
                lines.append(rest)
            for line in lines:
                self._deliver(stream, line)

    def _cap(self, stream: str) -> int:
        """How many bytes of `stream` may reach the callback (subclasses cap by stream)."""
        del stream
        return self.max_bytes

    def close(self) -> None:
        """Deliver the unterminated last line of each stream, if any."""
        if self.callback is None:
            return
        with self._lock:
            for stream in list(self._pending):
                rest = self._pending.pop(stream)
                if rest:
                    self._deliver(stream, rest)

    def _deliver(self, stream: str, raw: bytes) -> None:
        if self.callback is None:
            return
        text = raw.decode("utf-8", errors="replace").rstrip("\r")[:MAX_LINE_CHARS]
        try:
            self.callback(text)
        except Exception:
            log.warning("an output listener failed; it gets no more lines", exc_info=True)
            self.callback = None


def workspace_path(path: str) -> str:
    """The absolute in-sandbox path of `path`; refuses any path that leaves the workspace.

    Relative paths are relative to the workspace. The check is lexical (`..` and absolute
    paths outside it); backends that read through the host also check symlinks.
    """
    if not path or "\x00" in path:
        raise SandboxError(f"invalid workspace path {path!r}; pass a non-empty relative path")
    joined = posixpath.normpath(posixpath.join(WORKSPACE, path))
    if joined != WORKSPACE and not joined.startswith(WORKSPACE + "/"):
        raise SandboxError(
            f"path {path!r} escapes the workspace {WORKSPACE}; "
            "use a path relative to the workspace without '..'"
        )
    return joined


class ExecResult(BaseModel):
    """What one command in a sandbox did."""

    model_config = ConfigDict(frozen=True)

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    timed_out: bool = False
    truncated: bool = False
    limits_hit: tuple[LimitName, ...] = ()
    cpu_s: float | None = None
    """CPU seconds (user + system) the command used, where the backend can tell; else None."""

    @property
    def ok(self) -> bool:
        """True when the command exited 0 and hit no limit."""
        return self.exit_code == 0 and not self.timed_out and not self.limits_hit

    def summary(self, max_chars: int = 4000) -> str:
        """A short text for prompts and evidence: exit code, limits, tail of the output."""
        out = (self.stdout + ("\n" + self.stderr if self.stderr else "")).strip()
        if len(out) > max_chars:
            out = "[...]\n" + out[-max_chars:]
        limits = f" limits_hit={list(self.limits_hit)}" if self.limits_hit else ""
        return f"exit_code={self.exit_code}{limits}\n{out}"


class Mount(BaseModel):
    """A host path made visible inside the sandbox; read-only unless said otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Path
    target: str
    read_only: bool = True


class Sandbox(abc.ABC):
    """A started, isolated workspace. Use as a context manager so `stop` always runs."""

    @abc.abstractmethod
    def start(self) -> None:
        """Create the isolated environment; idempotent."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Destroy the environment and everything in it; idempotent."""

    @abc.abstractmethod
    def exec(
        self,
        command: list[str] | str,
        *,
        timeout_s: float = 60.0,
        cwd: str = WORKSPACE,
        env: dict[str, str] | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        """Run a command (argv list, or a string for `sh -c`) under the sandbox's limits.

        `on_output`, if given, is called with each output line while the command runs
        (from another thread); the result is the same with or without it.
        """

    @abc.abstractmethod
    def read_file(self, path: str) -> str:
        """Read a text file; relative paths are relative to the workspace."""

    @abc.abstractmethod
    def write_file(self, path: str, content: str) -> None:
        """Write a text file, creating parent folders; relative to the workspace."""

    @abc.abstractmethod
    def list_files(self, path: str = ".") -> list[str]:
        """Files under a workspace folder, relative to the workspace, sorted."""

    @abc.abstractmethod
    def copy_in(self, source: Path) -> None:
        """Copy a host tree into the workspace and record it as the baseline for `diff`."""

    @abc.abstractmethod
    def copy_out(self, path: str, dest: Path) -> None:
        """Copy a workspace file or folder out to a host path."""

    @abc.abstractmethod
    def diff(self) -> str:
        """Unified diff (git format, binary-safe) of the workspace against the baseline."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Empty the workspace (and scratch folders) of a started sandbox and forget the
        baseline, so it can be lent again (SandboxPool does); SandboxError if it cannot."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What this backend isolates and enforces, and what it does not, in plain words."""

    def apply_diff(self, patch: str) -> ExecResult:
        """Apply a unified diff to the workspace; a bad patch is a failed result."""
        self.write_file(".upgate-patch.diff", patch)
        result = self.exec(
            ["sh", "-c", "git apply --whitespace=nowarn .upgate-patch.diff; "
             "rc=$?; rm -f .upgate-patch.diff; exit $rc"],
            timeout_s=30,
        )
        return result

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
