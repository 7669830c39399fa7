"""The critic refuses what is not a regular file: a submodule entry (gitlink) that `git apply`
leaves as an empty folder in a working tree (so no path check ever saw it) and a commit
records, a symbolic link, a regular file turned into one. Deny by default: a typed
`file_modes` check that blocks, read from what a commit of the patch would record."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from upgate.agents.critic_code import decide, file_mode_check
from upgate.evals.gitdiff import rederive, tree_diff

from ..conftest import make_target_repo
from .test_critique_code_cli import _critique, setup
from .test_landing_proof import GITLINK, SYMLINK

__all__ = ["setup"]

CONFIG = """diff --git a/triage/config.json b/triage/config.json
--- a/triage/config.json
+++ b/triage/config.json
@@ -1,5 +1,5 @@
 {
   "model": "triage",
-  "temperature": 0.0,
+  "temperature": 0.1,
   "few_shot": []
 }
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    repo = make_target_repo(tmp_path / "target")
    out = tmp_path / "tree"
    shutil.copytree(repo, out, ignore=shutil.ignore_patterns(".git"))
    return out


def test_a_gitlink_is_seen_and_blocks(tree: Path) -> None:
    trusted = rederive(tree, CONFIG + GITLINK)
    assert trusted.applied, trusted.error
    assert "vendor/payload" in trusted.paths  # protected paths and recipe scope see it too
    assert [(c.path, c.new_mode) for c in trusted.irregular] == [("vendor/payload", "160000")]
    verdict = file_mode_check(trusted)
    assert (verdict.name, verdict.passed, verdict.severity) == ("file_modes", False, "block")
    assert "vendor/payload (000000 -> 160000)" in verdict.reason
    assert decide([verdict]) == "reject"


def test_a_symlink_and_a_file_turned_into_one_block(tree: Path) -> None:
    assert [c.path for c in rederive(tree, CONFIG + SYMLINK).irregular] == ["triage/link"]
    work = tree.parent / "work"
    shutil.copytree(tree, work)
    (work / "triage" / "prompt.txt").unlink()
    (work / "triage" / "prompt.txt").symlink_to("/etc/passwd")
    turned = rederive(tree, tree_diff(tree, work))
    assert [c.path for c in turned.irregular] == ["triage/prompt.txt"]
    assert not file_mode_check(turned).passed


def test_regular_files_pass(tree: Path) -> None:
    trusted = rederive(tree, CONFIG)
    assert trusted.irregular == ()
    assert file_mode_check(trusted).passed


def test_upgate_critique_rejects_a_fix_that_carries_a_gitlink(setup: tuple[Path, Path]) -> None:
    cfg, repo = setup
    fix = subprocess.run(["git", "-C", str(repo), "diff", "--binary", "main", "fix"],
                         capture_output=True, text=True, check=True).stdout
    candidate = cfg.parent / "candidate.diff"
    candidate.write_text(fix + GITLINK)
    out = _critique(cfg, "--candidate", str(candidate), "--json")
    packet = json.loads(out.output)
    checks = {c["name"]: c for c in packet["checks"]}
    assert packet["verdict"] == "reject"
    assert checks["file_modes"]["passed"] is False
    assert "vendor/payload" in checks["file_modes"]["detail"]
