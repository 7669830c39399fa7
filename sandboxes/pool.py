"""SandboxPool: K started sandboxes kept warm, each run gets a freshly emptied workspace.

Starting a container costs ~0.5 s; a warm one only needs its workspace emptied. Between
runs the pool wipes /workspace, /tmp and /dev/shm (the only writable places; every process
of a run is already dead when its command ends) and forgets the diff baseline. A sandbox
whose reset fails, or whose run raised, is replaced by a new one. Reuse means two runs
share one container's lifetime: use a pool for runs of the same trust level (one
critique's evaluations), not across tenants.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from upgate.errors import SandboxError
from upgate.sandboxes.base import Mount, Sandbox
from upgate.sandboxes.config import (
    DockerSandboxConfig,
    FakeSandboxConfig,
    LocalSandboxConfig,
    get_sandbox,
)

logger = logging.getLogger(__name__)


class SandboxPool:
    """Keeps `size` started sandboxes; `acquire()` lends one with an empty workspace."""

    def __init__(
        self,
        config: DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig,
        size: int,
        mounts: Sequence[Mount] = (),
        factory: Callable[[], Sandbox] | None = None,
    ) -> None:
        if size < 1:
            raise SandboxError("a sandbox pool needs size >= 1")
        self.size = size
        self._factory = factory or (lambda: get_sandbox(config, mounts))
        self._idle: queue.Queue[Sandbox] = queue.Queue()
        self._all: list[Sandbox] = []
        self._guard = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start every sandbox of the pool (in parallel)."""
        with ThreadPoolExecutor(max_workers=self.size) as workers:
            for sandbox in workers.map(lambda _: self._new(), range(self.size)):
                self._idle.put(sandbox)

    def _new(self) -> Sandbox:
        sandbox = self._factory()
        sandbox.start()
        with self._guard:
            self._all.append(sandbox)
        return sandbox

    def _retire(self, sandbox: Sandbox) -> None:
        with self._guard:
            if sandbox in self._all:
                self._all.remove(sandbox)
        sandbox.stop()

    @contextlib.contextmanager
    def acquire(self, source: Path | None = None, timeout_s: float = 300.0) -> Iterator[Sandbox]:
        """Lend a sandbox (copy `source` in first, if given); it comes back emptied."""
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        try:
            sandbox = self._idle.get(timeout=timeout_s)
        except queue.Empty:
            raise SandboxError(f"no pooled sandbox came free within {timeout_s} s") from None
        healthy = False
        try:
            if source is not None:
                sandbox.copy_in(source)
            yield sandbox
            healthy = True
        finally:
            self._give_back(sandbox, healthy)

    def _give_back(self, sandbox: Sandbox, healthy: bool) -> None:
        if healthy and not self._closed:
            try:
                sandbox.reset()
                self._idle.put(sandbox)
                return
            except SandboxError as exc:
                logger.warning("replacing a pooled sandbox: %s", exc)
        self._retire(sandbox)
        if not self._closed:
            self._idle.put(self._new())

    def close(self) -> None:
        """Stop every sandbox of the pool; idempotent."""
        self._closed = True
        with self._guard:
            sandboxes, self._all = list(self._all), []
        for sandbox in sandboxes:
            sandbox.stop()

    def __enter__(self) -> SandboxPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
