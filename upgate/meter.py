"""What a cycle costs: model tokens per agent call, and the wall and CPU seconds of sandbox
commands.

Agents report each chat call's usage metadata through `report_tokens` (one line in the
typed-call path); a `Meter` installed around a cycle records every call in the ledger and
sums it. Sandboxes made through `metered_factory` add each command's wall seconds and the
CPU seconds its backend reported (Docker: the container's cgroup counter; local and fake:
the child's rusage) to the same meter. Outside a metered cycle, reports go nowhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upgate.ledger import Ledger
from upgate.sandboxes.base import WORKSPACE, ExecResult, Mount, OnOutput, Sandbox

log = logging.getLogger(__name__)

SANDBOX_TIME = "wall"
"""What `sandbox_s` counts: the wall seconds of each command (`sandbox_cpu_s` counts CPU)."""


@dataclass
class Meter:
    """The running cost of one cycle; thread-safe."""

    ledger: Ledger | None = None
    cycle_id: str = ""
    tokens: int = 0
    calls: int = 0
    sandbox_s: float = 0.0
    sandbox_cpu_s: float = 0.0
    """CPU seconds of sandbox commands (commands whose backend could not tell count 0)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_usage(self, agent_call: str, usage: dict[str, Any], model: str) -> None:
        """Count one chat call's tokens and record it in the ledger."""
        total = int(usage.get("total_tokens")
                    or int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0)))
        with self._lock:
            self.tokens += total
            self.calls += 1
        if self.ledger is not None:
            self.ledger.append(self.cycle_id, "usage", agent_call, {
                "model": model, "input_tokens": int(usage.get("input_tokens", 0)),
                "output_tokens": int(usage.get("output_tokens", 0)), "total_tokens": total})

    def add_sandbox(self, seconds: float, cpu_s: float | None = None) -> None:
        """Count one sandbox command's duration and, where known, its CPU seconds."""
        with self._lock:
            self.sandbox_s += seconds
            self.sandbox_cpu_s += cpu_s or 0.0


_active: Meter | None = None
_active_lock = threading.Lock()


@contextmanager
def metering(meter: Meter) -> Iterator[Meter]:
    """Send every usage report made while inside to `meter`."""
    global _active
    with _active_lock:
        previous, _active = _active, meter
    try:
        yield meter
    finally:
        with _active_lock:
            _active = previous


def report_tokens(agent_call: str, usage: dict[str, Any], model: str) -> None:
    """Hook for the typed-call path: record one call's token usage, if metered."""
    meter = _active
    if meter is None or not usage:
        return
    meter.add_usage(agent_call, usage, model)


class MeteredSandbox(Sandbox):
    """A sandbox that adds each command's duration to the active meter; delegates the rest."""

    def __init__(self, inner: Sandbox) -> None:
        self.inner = inner

    def start(self) -> None:
        """Start the wrapped sandbox."""
        self.inner.start()

    def stop(self) -> None:
        """Stop the wrapped sandbox."""
        self.inner.stop()

    def exec(self, command: list[str] | str, *, timeout_s: float = 60.0, cwd: str = WORKSPACE,
             env: dict[str, str] | None = None,
             on_output: OnOutput | None = None) -> ExecResult:
        """Run a command in the wrapped sandbox and count its wall and CPU seconds."""
        result = self.inner.exec(command, timeout_s=timeout_s, cwd=cwd, env=env,
                                 on_output=on_output)
        meter = _active
        if meter is not None:
            meter.add_sandbox(result.duration_s, result.cpu_s)
        return result

    def read_file(self, path: str) -> str:
        """Read through the wrapped sandbox."""
        return self.inner.read_file(path)

    def write_file(self, path: str, content: str) -> None:
        """Write through the wrapped sandbox."""
        self.inner.write_file(path, content)

    def list_files(self, path: str = ".") -> list[str]:
        """List through the wrapped sandbox."""
        return self.inner.list_files(path)

    def copy_in(self, source: Path) -> None:
        """Copy in through the wrapped sandbox."""
        self.inner.copy_in(source)

    def copy_out(self, path: str, dest: Path) -> None:
        """Copy out through the wrapped sandbox."""
        self.inner.copy_out(path, dest)

    def diff(self) -> str:
        """The wrapped sandbox's diff."""
        return self.inner.diff()

    def reset(self) -> None:
        """Reset the wrapped sandbox."""
        self.inner.reset()

    def describe(self) -> str:
        """The wrapped sandbox's description."""
        return self.inner.describe()

    def __getattr__(self, name: str) -> Any:
        # Backend extras (container_id) stay reachable.
        return getattr(self.inner, name)


def metered_factory(factory: Any) -> Any:
    """Wrap a sandbox factory so its sandboxes report their command seconds."""
    if getattr(factory, "_upgate_metered", False):
        return factory

    def make(mounts: list[Mount]) -> Sandbox:
        return MeteredSandbox(factory(mounts))

    make._upgate_metered = True  # type: ignore[attr-defined]
    return make
