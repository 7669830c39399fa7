"""`upgate critique` on a plain library with a minimal config: no suite, no model endpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from upgate import cli

from ..corpora.spans import EXAMPLE, FIX, GAMING, HIDDEN, POLICY, SpansWorkspace


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A spans repo with a fix branch and a gaming branch, and the smallest upgate.toml."""
    ws = SpansWorkspace.create(tmp_path / "ws")
    repo = ws.target
    for branch, edit in (("fix", FIX), ("game", GAMING["special_case_literal"][0])):
        _git(repo, "checkout", "-qb", branch)
        edit(repo)
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", branch)
        _git(repo, "checkout", "-q", "main")
    shutil.copy(POLICY, tmp_path / "policy.toml")
    cfg = tmp_path / "upgate.toml"
    cfg.write_text('policy = "policy.toml"\nstate_dir = "state"\n\n[target]\npath = "ws/target"\n'
                   '\n[sandbox]\ntype = "fake"\n')
    assert (repo / "upgate-target.toml").read_text() == (EXAMPLE / "upgate-target.toml").read_text()
    return cfg, repo


def _critique(cfg: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.app, ["critique", *args, "--config", str(cfg)])


def test_critique_accepts_a_fix_and_rejects_a_special_case_with_hidden_tests(
        setup: tuple[Path, Path]) -> None:
    cfg, _repo = setup
    ok = _critique(cfg, "--candidate", "fix", "--hidden-tests", str(HIDDEN), "--json")
    assert ok.exit_code == 0, ok.output
    packet = json.loads(ok.output)
    checks = {c["name"]: c for c in packet["checks"]}
    assert packet["verdict"] == "accept"
    assert "skipped: no critic model endpoint" in checks["critic_review"]["detail"]
    assert "hidden FAIL_TO_PASS 23" in checks["hidden_tests"]["detail"]
    game = _critique(cfg, "--candidate", "game", "--hidden-tests", str(HIDDEN))
    assert game.exit_code == 1, game.output
    assert "overfitting_hidden" in game.output


def test_without_hidden_tests_only_the_visible_evidence_counts(setup: tuple[Path, Path]) -> None:
    cfg, _repo = setup
    game = _critique(cfg, "--candidate", "game", "--json")
    assert game.exit_code == 0, game.output
    assert "hidden_tests" not in {c["name"] for c in json.loads(game.output)["checks"]}


def test_hidden_tests_from_the_config_and_bad_input_errors(setup: tuple[Path, Path]) -> None:
    cfg, _repo = setup
    cfg.write_text(cfg.read_text().replace('path = "ws/target"\n',
                                           f'path = "ws/target"\nhidden_tests = "{HIDDEN}"\n'))
    game = _critique(cfg, "--candidate", "game")
    assert game.exit_code == 1
    missing = _critique(cfg, "--candidate", "fix", "--hidden-tests", "/nonexistent/dir")
    assert missing.exit_code == 2
    assert "is not a folder" in missing.output


def test_the_policy_decides_which_kinds_may_be_critiqued(setup: tuple[Path, Path]) -> None:
    cfg, _repo = setup
    policy = cfg.parent / "policy.toml"
    policy.write_text(policy.read_text().replace(
        "[kinds.code]\nallowed = true", "[kinds.code]\nallowed = false"))
    out = _critique(cfg, "--candidate", "fix", "--hidden-tests", str(HIDDEN))
    assert out.exit_code == 1
    assert "the policy does not allow code changes" in out.output
