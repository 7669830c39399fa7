"""Git plumbing for changes that land, and the content proofs their idempotency rests on.

A commit upgate makes is built from a tree computed here (the judged baseline with the
approved diff applied in a temporary index; two heads merged by `git merge-tree`; a landed
change reverted in a scratch worktree) and written with `git commit-tree`, so its tree is
exactly the computed one. An earlier run is recognised by computing the same tree again
from the commit's parents and comparing tree ids, never by a message trailer, which anyone
who can create a branch can type.

Only regular files are written: an entry whose mode is a submodule (gitlink, 160000), a
symbolic link (120000) or anything but 100644/100755, on either side, is refused.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from upgate.errors import DeployError

log = logging.getLogger(__name__)

AUTHOR = "upgate <upgate@localhost>"
REGULAR_MODES = frozenset({"100644", "100755"})
"""The only tree entry modes a change may write: regular files, executable or not."""
_ABSENT = "000000"


def run_git(repo: Path, *args: str, check: bool = True, stdin: str | None = None,
            env: Mapping[str, str] | None = None) -> str:
    """Run git in `repo` and return its stdout; DeployError with git's words on failure."""
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, input=stdin,
        check=False, env={**os.environ, **env} if env else None,
    )
    if check and proc.returncode != 0:
        raise DeployError(
            f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout.strip()


def git_ok(repo: Path, *args: str) -> bool:
    """Whether a git command succeeds."""
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                          check=False).returncode == 0


def identity(author: str = AUTHOR) -> list[str]:
    """`-c user.name=... -c user.email=...` for commits upgate makes."""
    name, _, email = author.partition(" <")
    return ["-c", f"user.name={name}", "-c", f"user.email={email.rstrip('>')}"]


def tree_of(repo: Path, commit: str) -> str:
    """The tree id of `commit`."""
    return run_git(repo, "rev-parse", f"{commit}^{{tree}}")


def parents_of(repo: Path, commit: str) -> list[str]:
    """The parents of `commit`, in order."""
    return run_git(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]


def irregular_entries(raw: str) -> list[str]:
    """The entries of `git diff --raw -z` output whose old or new mode is not a regular
    file, as `path (mode OLD -> NEW)`."""
    fields = raw.split("\0")
    out: list[str] = []
    i = 0
    while i + 1 < len(fields) and fields[i].startswith(":"):
        old, new = fields[i][1:].split(" ")[:2]
        if any(m != _ABSENT and m not in REGULAR_MODES for m in (old, new)):
            out.append(f"{fields[i + 1]} (mode {old} -> {new})")
        i += 2
    return out


def not_regular(what: str, odd: list[str]) -> DeployError:
    """The refusal for a change that would write something other than regular files."""
    return DeployError(
        f"{what} writes entries that are not regular files: {', '.join(odd[:10])}. upgate "
        "lands only regular files (modes 100644, 100755), never a submodule entry (160000) "
        "or a symbolic link (120000); nothing landed. Reject this cycle and have the change "
        "made with plain files")


def applied_tree(repo: Path, parent: str, diff: str) -> str:
    """The tree of `parent` with `diff` applied, computed in a temporary index (no worktree
    and no branch touched); DeployError when it does not apply or writes anything but
    regular files."""
    with tempfile.TemporaryDirectory(prefix="upgate-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run_git(repo, "read-tree", parent, env=env)
        if diff.strip():
            run_git(repo, "apply", "--cached", "--whitespace=nowarn", "-", stdin=diff, env=env)
        odd = irregular_entries(run_git(repo, "diff-index", "--cached", "--raw", "-z",
                                        "--no-abbrev", parent, env=env))
        if odd:
            raise not_regular("the approved diff", odd)
        return run_git(repo, "write-tree", env=env)


def merged_tree(repo: Path, ours: str, theirs: str) -> str | None:
    """The tree of merging `theirs` into `ours` (`git merge-tree`); None on a conflict."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "merge-tree", "--write-tree", "--no-messages", ours, theirs],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.split("\n", 1)[0].strip()


@contextmanager
def scratch(repo: Path, at: str) -> Iterator[Path]:
    """A temporary detached worktree of `repo` at `at`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="upgate-land-") as tmp:
        work = Path(tmp) / "wt"
        run_git(repo, "worktree", "add", "--detach", "-q", str(work), at)
        try:
            yield work
        finally:
            run_git(repo, "worktree", "remove", "--force", str(work), check=False)


def reverted_tree(repo: Path, at: str, commit: str) -> str | None:
    """The tree of `at` with `commit` reverted (`-m 1` for a merge); None on a conflict."""
    mainline = ["-m", "1"] if len(parents_of(repo, commit)) > 1 else []
    with scratch(repo, at) as work:
        if not git_ok(work, "revert", "--no-commit", *mainline, commit):
            return None
        return run_git(work, "write-tree")


def commit_tree(repo: Path, tree: str, parents: list[str], message: str,
                author: str = AUTHOR) -> str:
    """Write a commit of exactly `tree` on `parents` (no branch moves)."""
    args = [arg for p in parents for arg in ("-p", p)]
    return run_git(repo, *identity(author), "commit-tree", tree, *args,
                   stdin=message.rstrip("\n") + "\n")
