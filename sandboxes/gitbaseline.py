"""The workspace baseline: a git commit made inside the sandbox at copy_in, and the
binary-safe diff against it. Every backend records and diffs the same way, through a
runner it hands in (its own exec path, with the output limit these need)."""

from __future__ import annotations

from collections.abc import Callable

from upgate.errors import SandboxError
from upgate.sandboxes.base import ExecResult

ScriptRunner = Callable[[str, float, int], ExecResult]
"""(shell script, timeout in seconds, output limit in bytes) -> the result, in the workspace."""

BASELINE_SCRIPT = (
    "git init -q && git config user.name upgate && git config user.email upgate@localhost"
    " && git add -A && git commit -q --no-verify --allow-empty -m baseline"
    " && git tag -f baseline >/dev/null && git rev-parse HEAD"
)
DIFF_OUTPUT_BYTES = 64 * 1024 * 1024


def baseline_diff_script(sha: str) -> str:
    """The shell line that prints the binary diff of the workspace against `sha`."""
    return f"git add -A && git diff --cached --binary {sha}"


def record_baseline(run: ScriptRunner) -> str:
    """Commit the workspace as the baseline inside the sandbox; return the commit id."""
    result = run(BASELINE_SCRIPT, 120.0, DIFF_OUTPUT_BYTES)
    sha = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if not result.ok or len(sha) != 40:
        raise SandboxError(f"could not record the baseline commit: {result.summary(2000)}")
    return sha


def baseline_diff(run: ScriptRunner, baseline: str | None) -> str:
    """The workspace's diff against `baseline`, computed inside the sandbox."""
    if baseline is None:
        raise SandboxError("no baseline yet; call copy_in() before diff()")
    result = run(baseline_diff_script(baseline), 120.0, DIFF_OUTPUT_BYTES)
    if not result.ok:
        raise SandboxError(
            "could not compute the diff (was .git removed or rewritten inside the sandbox?): "
            + result.summary(2000)
        )
    return result.stdout
