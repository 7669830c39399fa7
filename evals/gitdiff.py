"""Diffs made and read by trusted git on the host, never by code a candidate could write.

A candidate's diff is untrusted text: its headers may use any prefix (`x/`, `y/`), quoting
or rename trick, and a diff produced inside a sandbox may come from a `diff.external`
driver the sandboxed code configured. So every check reads a diff *re-derived* here: the
untrusted patch is applied with `git apply` to a scratch copy of the baseline tree, and the
changes are read back with upgate's own git invocation (no system, global or repository
config, no external diff driver, no textconv, no renames). The paths every check sees are
the paths `git apply` wrote, and the canonical diff is what the sandboxes apply.

What a commit of the patch would record is read too: the patch is also applied to the
scratch index alone (`git apply --cached`, as the deployer applies it), because some
entries never show in a working tree (a submodule entry, mode 160000, is an empty folder
there, which git ignores). Every entry that is not a regular file (100644/100755) on either
side is in `TrustedDiff.irregular`, and the critic refuses it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from upgate.errors import UpgateError

log = logging.getLogger(__name__)

ChangeStatus = Literal["added", "deleted", "modified", "type_changed"]
_STATUS: dict[str, ChangeStatus] = {"A": "added", "D": "deleted", "M": "modified",
                                     "T": "type_changed"}
_GIT_TIMEOUT_S = 60.0
SYMLINK_MODE = "120000"
REGULAR_MODES = frozenset({"100644", "100755"})
_ABSENT = "000000"
_MAX_FILE_BYTES = 1024 * 1024


def _env(home: Path) -> dict[str, str]:
    """An environment under which git reads no configuration but its own flags."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }


_FLAGS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
          "-c", "core.quotePath=true", "-c", "diff.noprefix=false",
          "-c", "user.name=upgate", "-c", "user.email=upgate@localhost")


def git(repo: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git in `repo` with no configuration from the system, the user or the repository."""
    return subprocess.run(
        ["git", *_FLAGS, "-C", str(repo), *args], input=stdin, capture_output=True,
        env=_env(repo), timeout=_GIT_TIMEOUT_S, check=False,
    )


def _must(proc: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if proc.returncode != 0:
        raise UpgateError(f"git failed to {what}: {proc.stderr.decode(errors='replace')[:500]}")
    return proc.stdout


@dataclass(frozen=True)
class FileChange:
    """One path a diff writes, as git itself reports it."""

    status: ChangeStatus
    path: str
    old_mode: str
    new_mode: str
    binary: bool

    @property
    def symlink(self) -> bool:
        """True when the path is a symlink after the change."""
        return self.new_mode == SYMLINK_MODE

    @property
    def regular(self) -> bool:
        """True when the path is a regular file (or absent) before and after the change."""
        return all(m == _ABSENT or m in REGULAR_MODES for m in (self.old_mode, self.new_mode))


@dataclass(frozen=True)
class TrustedDiff:
    """A candidate's change as git applied it: canonical diff text and every path."""

    diff: str
    changes: tuple[FileChange, ...]
    applied: bool = True
    error: str = ""
    files: dict[str, str] = field(default_factory=dict)
    """Text of every added or modified text file after the change (up to 1 MiB each)."""

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path written (renames appear as a deletion and an addition)."""
        return tuple(c.path for c in self.changes)

    @property
    def irregular(self) -> tuple[FileChange, ...]:
        """Entries that are not regular files on either side: submodules, symlinks."""
        return tuple(c for c in self.changes if not c.regular)


def _scratch_repo(tree: Path, dest: Path) -> Path:
    repo = dest / "repo"
    shutil.copytree(tree, repo, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    _must(git(repo, "init", "-q", "-b", "baseline"), "init a scratch repository")
    _must(git(repo, "add", "-A", "-f"), "stage the baseline")
    _must(git(repo, "commit", "-q", "--no-verify", "--allow-empty", "-m", "baseline"),
          "commit the baseline")
    return repo


def _index_changes(repo: Path, binary: frozenset[str] = frozenset()) -> list[FileChange]:
    """The entries the scratch index holds that differ from the baseline commit."""
    raw = _must(git(repo, "diff", "--cached", "--raw", "-z", "--no-renames", "--no-abbrev"),
                "list the changed paths").split(b"\0")
    changes: list[FileChange] = []
    i = 0
    while i + 1 < len(raw) and raw[i].startswith(b":"):
        old_mode, new_mode, _o, _n, status = raw[i][1:].decode().split(" ")
        path = raw[i + 1].decode("utf-8", errors="surrogateescape")
        changes.append(FileChange(status=_STATUS.get(status[:1], "modified"), path=path,
                                  old_mode=old_mode, new_mode=new_mode,
                                  binary=path in binary))
        i += 2
    return changes


def _read_changes(repo: Path, committed: tuple[FileChange, ...] = ()) -> TrustedDiff:
    """Read the working tree's change back; `committed` adds entries only the index saw."""
    _must(git(repo, "add", "-A", "-f"), "stage the change")
    numstat = _must(git(repo, "diff", "--cached", "--numstat", "-z", "--no-renames"),
                    "count the changed lines").split(b"\0")
    binary = frozenset(line.split(b"\t", 2)[2].decode("utf-8", errors="surrogateescape")
                       for line in numstat if line.startswith(b"-\t-\t"))
    changes = _index_changes(repo, binary)
    seen = {(c.path, c.new_mode) for c in changes}
    changes += [c for c in committed if (c.path, c.new_mode) not in seen]
    diff = _must(git(repo, "diff", "--cached", "--binary", "--no-renames", "--no-ext-diff",
                     "--no-textconv", "--no-color", "--src-prefix=a/", "--dst-prefix=b/"),
                 "write the canonical diff")
    files: dict[str, str] = {}
    for c in changes:
        target = repo / c.path
        if (c.status in ("added", "modified") and not c.binary and not c.symlink
                and target.is_file() and target.stat().st_size <= _MAX_FILE_BYTES):
            try:
                files[c.path] = target.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    return TrustedDiff(diff=diff.decode("utf-8", errors="replace"), changes=tuple(changes),
                       files=files)


def rederive(baseline_tree: Path, patch: str) -> TrustedDiff:
    """Apply an untrusted patch to a scratch copy of the baseline and read it back with git.

    A patch that does not apply is a value (`applied=False` with git's message), not an
    exception: the critic turns it into a verdict.
    """
    if not patch.strip():
        return TrustedDiff(diff="", changes=())
    with tempfile.TemporaryDirectory(prefix="upgate-diff-") as tmp:
        repo = _scratch_repo(baseline_tree, Path(tmp))
        committed: tuple[FileChange, ...] = ()
        for args in (("--cached",), ()):  # the index first (what a commit records), then files
            proc = git(repo, "apply", *args, "--whitespace=nowarn", "-", stdin=patch.encode())
            if proc.returncode != 0:
                return TrustedDiff(diff="", changes=(), applied=False,
                                   error=proc.stderr.decode(errors="replace")[:1000])
            if args:
                committed = tuple(_index_changes(repo))
                _must(git(repo, "read-tree", "HEAD"), "reset the scratch index")
        return _read_changes(repo, committed)


def tree_diff(baseline_tree: Path, new_tree: Path) -> str:
    """The diff from one host tree to another, as upgate's own git writes it (`.git` ignored)."""
    with tempfile.TemporaryDirectory(prefix="upgate-diff-") as tmp:
        repo = _scratch_repo(baseline_tree, Path(tmp))
        for entry in repo.iterdir():
            if entry.name != ".git":
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for entry in new_tree.iterdir():
            if entry.name == ".git":
                continue
            dest = repo / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, dest, symlinks=True,
                                ignore=shutil.ignore_patterns(".git"))
            else:
                shutil.copy2(entry, dest, follow_symlinks=False)
        return _read_changes(repo).diff
