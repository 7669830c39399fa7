"""Shared fixtures: the bundled example target as a git repo, settings, scripted parts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from upgate.evals.testing import OracleClient as OracleClient  # shared with the tests

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_TARGET = REPO / "examples" / "ticket-triage"
EXAMPLE_SUITE = REPO / "examples" / "suites" / "ticket-triage"


def make_target_repo(dest: Path) -> Path:
    """A fresh git repository holding the example target on branch main."""
    shutil.copytree(EXAMPLE_TARGET, dest, ignore=shutil.ignore_patterns("__pycache__",
                                                                        ".pytest_cache"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial"]):
        subprocess.run(["git", "-C", str(dest), *args], check=True)
    return dest


POLICY = """
name = "test"
version = "1"
approvers = ["bob", "carol"]
protected_paths = ["tests/**"]

[kinds.code]
allowed = true
[kinds.prompt]
allowed = true
[kinds.config]
allowed = true
[kinds.model]
allowed = true
approval = "auto"   # ignored: a served-model change always needs a human

[thresholds]
max_revisions = 1
min_gain = 0.0
regression_tolerance = 0.05
"""


def write_config(tmp: Path, *, sandbox: str = "fake", base_url: str = "http://127.0.0.1:9/v1",
                 serving_url: str = "http://127.0.0.1:9", model: str = "scripted",
                 extra: str = "") -> Path:
    """An upgate.toml for tests."""
    (tmp / "policy.toml").write_text(POLICY)
    agents = "\n".join(
        f'[agents.{a}]\nbase_url = "{base_url}"\nmodel = "{model}"\noutput_retries = 1\n'
        for a in ("proposer", "coder", "critic")
    )
    cfg = tmp / "upgate.toml"
    cfg.write_text(
        f'state_dir = "state"\npolicy = "policy.toml"\noperator = "alice"\n{extra}\n'
        f'[target]\npath = "target"\nsuite = "{EXAMPLE_SUITE}"\n\n'
        f'[serving]\nbase_url = "{serving_url}"\n\n'
        f'[sandbox]\ntype = "{sandbox}"\n\n{agents}'
    )
    return cfg


def suite_answers() -> dict[str, str]:
    """Ticket text -> expected label, over both splits of the example suite."""
    out: dict[str, str] = {}
    for name in ("visible.jsonl", "hidden.jsonl"):
        for line in (EXAMPLE_SUITE / name).read_text().splitlines():
            if line.strip():
                case = json.loads(line)
                out[case["input"]] = case["expected"]
    return out


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a target repo and a config using the fake sandbox."""
    make_target_repo(tmp_path / "target")
    write_config(tmp_path)
    return tmp_path
