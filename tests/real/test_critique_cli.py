"""`upgate critique` on the real parts: exit codes a CI gate can rely on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from upgate.demo import layout

from .test_cycle_real import upgate

pytestmark = pytest.mark.real


def _branch_with(target: Path, branch: str, path: str, text: str) -> None:
    git = ["git", "-C", str(target)]
    subprocess.run([*git, "checkout", "-qb", branch], check=True)
    (target / path).write_text(text)
    subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x"],
                   check=True)
    subprocess.run([*git, "checkout", "-q", "main"], check=True)


def test_critique_rejects_a_test_edit_and_explains_errors(
    tmp_path: Path, vllm_root: str, docker_engine: None
) -> None:
    config = layout(tmp_path, port=int(vllm_root.rsplit(":", 1)[1]))
    target = tmp_path / "ticket-triage"
    _branch_with(target, "game", "tests/test_classify.py", "def test_ok():\n    assert True\n")
    out = upgate("critique", "--candidate", "game", "--json", "--config", str(config))
    assert out.returncode == 1, out.stdout + out.stderr
    packet = json.loads(out.stdout)
    assert packet["verdict"] == "reject"
    assert any("protected" in r for r in packet["reasons"])

    diff = tmp_path / "weaken.diff"
    diff.write_text(subprocess.run(["git", "-C", str(target), "diff", "main...game"],
                                   capture_output=True, text=True, check=True).stdout)
    again = upgate("critique", "--candidate", str(diff), "--config", str(config))
    assert again.returncode == 1
    assert "verdict: reject" in again.stdout
    assert "evidence:" in again.stdout

    missing = upgate("critique", "--candidate", "no-such-branch", "--config", str(config))
    assert missing.returncode == 2
    assert "neither a diff file nor a branch" in missing.stderr


def test_critique_judges_a_prompt_change_on_both_splits(
    tmp_path: Path, vllm_root: str, docker_engine: None
) -> None:
    config = layout(tmp_path, port=int(vllm_root.rsplit(":", 1)[1]))
    target = tmp_path / "ticket-triage"
    _branch_with(target, "concise", "triage/prompt.txt",
                 "Classify the support ticket. Answer with one of: billing, bug, account, "
                 "feature.\n")
    out = upgate("critique", "--candidate", "concise", "--json", "--config", str(config))
    assert out.returncode in (0, 1), out.stderr
    packet = json.loads(out.stdout)
    assert packet["candidate"]["kind"] == "prompt"
    assert set(packet["comparison"]["by_split"]) == {"visible", "hidden"}
    assert (out.returncode == 0) == (packet["verdict"] == "accept")
