"""Run a host process in its own process group, with a deadline and bounded output.

Shared by the host-side backends (fake and local); a backend only decides the argv.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from upgate.sandboxes.base import ExecResult, LimitName, LineFeed, OnOutput, OutputCapture


def _pump(stream: IO[bytes], capture: OutputCapture, feed: LineFeed, name: str) -> None:
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        capture.add(chunk)
        feed.feed(name, chunk)


class _Reaper:
    """Waits for the child with wait4, keeping its exit status and CPU rusage.

    The rusage covers the child and every descendant it waited for (a shell's commands,
    bwrap's jail); processes left orphaned to the process group are not counted.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.cpu_s: float | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            _pid, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:
            return
        self.status = status
        self.cpu_s = usage.ru_utime + usage.ru_stime


def run_host_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    max_output_bytes: int,
    on_output: OnOutput | None = None,
) -> ExecResult:
    """Run `argv` in its own process group; kill the whole group at the deadline or at exit.

    Output lines go to `on_output` as they come; the result's `cpu_s` is the child's rusage.
    """
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        # Like a shell: a missing program or folder is the command's failure, code 127.
        return ExecResult(exit_code=127, stderr=str(exc), duration_s=time.monotonic() - started)
    out, err = OutputCapture(max_output_bytes), OutputCapture(max_output_bytes)
    feed = LineFeed(on_output, max_output_bytes)
    assert proc.stdout is not None
    assert proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, feed, "stdout"), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, feed, "stderr"), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    reaper = _Reaper(proc.pid)
    reaper.thread.join(timeout_s)
    timed_out = reaper.thread.is_alive()
    # Whatever the command left behind in its group dies with it (the group outlives its
    # leader until then: killpg still reaches it after the leader was reaped).
    with_suppressed_lookup(os.killpg, proc.pid, signal.SIGKILL)
    reaper.thread.join()
    proc.returncode = (
        os.waitstatus_to_exitcode(reaper.status) if reaper.status is not None else -9
    )
    for pump in pumps:
        pump.join(timeout=2.0)
    feed.close()
    proc.stdout.close()
    proc.stderr.close()
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    limits: list[LimitName] = []
    if timed_out:
        limits.append("timeout")
    if out.truncated or err.truncated:
        limits.append("output")
    return ExecResult(
        exit_code=code,
        stdout=out.text(),
        stderr=err.text(),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
        limits_hit=tuple(limits),
        cpu_s=reaper.cpu_s,
    )


def with_suppressed_lookup(fn: Callable[..., Any], *args: Any) -> None:
    """Call `fn`, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        fn(*args)
