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

from upgate.sandboxes.base import ExecResult, LimitName, OutputCapture


def _pump(stream: IO[bytes], capture: OutputCapture) -> None:
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        capture.add(chunk)


def run_host_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    max_output_bytes: int,
) -> ExecResult:
    """Run `argv` in its own process group; kill the whole group at the deadline or at exit."""
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
    assert proc.stdout is not None
    assert proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    # Whatever the command left behind in its group dies with it.
    with_suppressed_lookup(os.killpg, proc.pid, signal.SIGKILL)
    proc.wait()
    for pump in pumps:
        pump.join(timeout=2.0)
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
    )


def with_suppressed_lookup(fn: Callable[..., Any], *args: Any) -> None:
    """Call `fn`, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        fn(*args)
