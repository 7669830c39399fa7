"""`upgate batch` delivers while it runs: its "Batch running" message, with the Slack stop
button, reaches the channel before the batch's first cycle is evaluated, not when the
command ends (a Stop button that arrives after the batch would stop nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgate import cli
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import Settings
from upgate.evals.harness import ChatChoiceHarness
from upgate.graphs.runner import Runner
from upgate.notify.standin import buttons_of
from upgate.notify.testing import LoopbackReceiver

from ..conftest import OracleClient, suite_answers
from .test_cli import _clean_env, invoke  # noqa: F401 (an autouse fixture)

CHANNEL = """
[[notify.channels]]
type = "slack"
name = "team"
webhook_url_env = "UPGATE_TEST_TEAM_URL"
"""


def test_the_batch_running_message_arrives_while_the_batch_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = workdir / "upgate.toml"
    cfg.write_text(cfg.read_text() + CHANNEL)
    seen_before_first_eval: list[bool] = []
    with LoopbackReceiver() as receiver:
        monkeypatch.setenv("UPGATE_TEST_TEAM_URL", receiver.url + "/slack")
        client = OracleClient(suite_answers())

        def first_eval(url: str, t: Any) -> OracleClient:
            if not seen_before_first_eval:  # the batch is running: has the message come?
                got = receiver.wait_for(1, timeout_s=30)
                seen_before_first_eval.append(
                    any("Batch running" in r.json()["text"] for r in got))
            return client

        def runner(settings: Settings, for_cycles: bool = True) -> Runner:
            return Runner(build_deps(
                settings, models={a: scripted({"proposal": "not json"})
                                  for a in ("proposer", "coder", "critic")},
                harness=ChatChoiceHarness(client_factory=first_eval), for_cycles=for_cycles))

        monkeypatch.setattr(cli, "_runner", runner)
        result = invoke(cfg, "option", "batch", "--max-cycles", "1")
        assert result.exit_code == 0, result.output
    assert seen_before_first_eval == [True]
    running = next(r for r in receiver.requests if "Batch running" in r.json()["text"])
    (stop,) = buttons_of(running.json()).values()
    assert stop.startswith("upgate:stop:b")
