"""`upgate batch`, `upgate batch resume`, `upgate stop` and the held batches in the inbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate import cli
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import Settings
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.runner import Runner
from upgate.ledger import open_ledger

from ..conftest import OracleClient, suite_answers
from .test_cli import _clean_env, invoke, text  # noqa: F401 (an autouse fixture)


@pytest.fixture
def scripted_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands get scripted models that reply with nothing valid, and a scripted endpoint."""
    client = OracleClient(suite_answers())

    def runner(settings: Settings, for_cycles: bool = True) -> Runner:
        return Runner(build_deps(
            settings, models={a: scripted({"proposal": "not json"})
                              for a in ("proposer", "coder", "critic")},
            harness=ChatChoiceHarness(client_factory=lambda url, t: client),
            for_cycles=for_cycles))

    monkeypatch.setattr(cli, "_runner", runner)


@pytest.mark.usefixtures("scripted_runner")
def test_a_paused_batch_is_in_the_inbox_and_resumes_only_by_a_person(workdir: Path) -> None:
    cfg = workdir / "upgate.toml"
    nobody = workdir / "no-keys"  # a key folder without alice's private key
    nobody.mkdir()
    # The old form still works: options straight after `batch` (alice: the operator).
    first = invoke(cfg, "option", "batch", "--max-cycles", "3", "--pause-after-failures", "1")
    assert first.exit_code == 0, first.output
    assert "paused: 1 setbacks in a row" in text(first)
    assert "served version, cycle by cycle" in text(first)
    inbox = invoke(cfg, "env", "inbox")
    assert "batches waiting for a person" in text(inbox)
    assert "pause_after_failures" in text(inbox) and "inbox is empty" not in text(inbox)
    wrong = invoke(cfg, "env", "batch", "resume", "--reason", "go", key_dir=nobody)
    assert wrong.exit_code == 2
    dave = invoke(cfg, "env", "batch", "resume", "--as", "dave", "--reason", "go")
    assert dave.exit_code == 2  # a registered person without the operator or admin role
    resumed = invoke(cfg, "option", "batch", "resume", "--reason", "models fixed",
                     "--max-cycles", "1")
    assert resumed.exit_code == 0, resumed.output
    entries = open_ledger(workdir / "state").entries()
    assert [e.payload["by"] for e in entries if e.event == "resumed"] == ["alice"]
    history = invoke(cfg, "env", "history")
    assert "learning curve" in text(history)


@pytest.mark.usefixtures("scripted_runner")
def test_stop_with_no_running_batch_says_so(workdir: Path) -> None:
    cfg = workdir / "upgate.toml"
    result = invoke(cfg, "env", "stop", "--reason", "just in case")
    assert result.exit_code == 0, result.output
    assert "no batch is running" in text(result)
    empty = workdir / "no-keys"
    empty.mkdir()
    nobody = invoke(cfg, "env", "stop", "--reason", "x", key_dir=empty)
    assert nobody.exit_code == 2
    dave = invoke(cfg, "env", "stop", "--as", "dave", "--reason", "x")
    assert dave.exit_code == 2  # no role: not everyone may stop autonomy
