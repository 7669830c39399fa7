"""The target's committed tree at a commit, exported once and shared read-only.

Every node of a cycle reads the same tree (observe reads the prompt, the coder and the
critic copy it into sandboxes, monitor reads the prompt again). It is exported once per
commit into the state folder and reused; nobody writes into it (sandboxes take copies).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from upgate.config import TargetManifest
from upgate.errors import UpgateError

KEEP_TREES = 4
"""Exported trees kept in the cache (the newest by use); older ones are removed."""


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit `ref` names in `repo`; a clear error when it names none."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise UpgateError(
            f"cannot read {ref!r} of the target {repo}; target.path must be a git repository "
            "with that branch (target.base_branch)"
        )
    return proc.stdout.strip()


def export_tree(repo: Path, ref: str, dest: Path) -> Path:
    """A clean copy of the target at `ref` (committed files only, no .git) in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref],
        capture_output=True, check=False,
    )
    if archive.returncode != 0:
        raise UpgateError(
            f"cannot read {ref!r} of the target {repo}: {archive.stderr.decode().strip()}; "
            "target.path must be a git repository with that branch (target.base_branch)"
        )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


class TargetTrees:
    """Exported trees of one target repository, cached by commit under `cache_dir`."""

    def __init__(self, repo: Path, cache_dir: Path) -> None:
        self.repo = repo
        self.cache_dir = cache_dir
        self.exports = 0
        """How many exports this object made (a cache hit makes none)."""

    def at(self, ref: str) -> Path:
        """The tree at `ref`, exported on first use of its commit; read it, never write it."""
        commit = resolve_commit(self.repo, ref)
        final = self.cache_dir / commit
        if not final.is_dir():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".export-", dir=self.cache_dir))
            try:
                export_tree(self.repo, commit, staging)
                staging.rename(final)
                self.exports += 1
            except OSError:
                if not final.is_dir():  # not another process winning the same rename
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._prune(keep=final)
        final.touch()
        return final

    def _prune(self, keep: Path) -> None:
        trees = sorted((p for p in self.cache_dir.iterdir()
                        if p.is_dir() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[KEEP_TREES:]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


def read_prompting(tree: Path, manifest: TargetManifest) -> tuple[str, list[Any]]:
    """The target's system prompt and few-shot examples as its files hold them."""
    prompt = (tree / manifest.prompt_file).read_text() if manifest.prompt_file else ""
    shots: list[Any] = []
    if manifest.config_file:
        shots = json.loads((tree / manifest.config_file).read_text()).get("few_shot", [])
    return prompt, shots
