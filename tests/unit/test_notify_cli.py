"""`upgate notify`: status shows pending, failing and dead; test sends through the outbox
to a real loopback receiver; only an admin maps Slack users, and that is recorded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from upgate import cli
from upgate.hashing import canonical_json
from upgate.identity import load_signer, person_key_id, verify_hex
from upgate.ledger import open_ledger
from upgate.notify.outbox import Outbox
from upgate.notify.slack_people import SlackState
from upgate.notify.testing import LoopbackReceiver
from upgate.store import Store

from ..conftest import write_config


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver() as r:
        yield r


@pytest.fixture
def cfg(workdir: Path, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEAM_URL", receiver.url + "/slack")
    extra = ('[notify]\nmax_attempts = 2\n'
             '[[notify.channels]]\ntype = "slack"\nname = "team"\nwebhook_url_env = "TEAM_URL"\n'
             '[[notify.channels]]\ntype = "slack"\nname = "nowhere"\n'
             'webhook_url_env = "NOWHERE_URL"\n')
    return write_config(workdir, extra=extra)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, result.output


def test_notify_test_sends_through_the_outbox(cfg: Path, receiver: LoopbackReceiver) -> None:
    code, out = run("notify", "test", "team", "--config", str(cfg))
    assert code == 0, out
    got = receiver.wait_for(1)
    head = open_ledger(cfg.parent / "state").entries()[-1]
    assert got[0].path == "/slack"
    assert f"ledger head #{head.seq} `{head.hash[:16]}`" in got[0].body.decode()
    code, out = run("notify", "status", "--config", str(cfg))
    assert code == 0 and "team" in out


def test_an_unreachable_channel_fails_and_shows_in_status(cfg: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    code, out = run("notify", "test", "nowhere", "--config", str(cfg))
    assert code == 1 and "NOWHERE_URL" in out
    monkeypatch.setenv("NOWHERE_URL", "http://127.0.0.1:9/closed")
    settings_dir = cfg.parent / "state"
    box = Outbox.of_state(settings_dir)
    row = box.rows()[0]
    box.mark_failed(row.id, "HTTP 500", retry_in=0)
    code, out = run("notify", "deliver", "--config", str(cfg))
    assert code == 0 and "dead 1" in out  # second attempt of two: dead-lettered
    code, out = run("notify", "status", "--config", str(cfg))
    assert "nowhere" in out and "dead" in out and "--retry-dead" in out
    code, out = run("notify", "test", "missing", "--config", str(cfg))
    assert code == 2 and "no notification channel named 'missing'" in out


def test_only_an_admin_maps_slack_users_and_it_is_recorded(cfg: Path) -> None:
    state, keys = cfg.parent / "state", str(cfg.parent / "keys")
    store = Store(state / "state.sqlite")
    code, out = run("notify", "map-slack", "U0BOB", "bob", "--as", "bob", "--key-dir", keys,
                    "--config", str(cfg))
    assert code == 2 and "admin role" in out
    # carol's key file under alice's name: the key does not prove alice.
    (cfg.parent / "keys" / "person-alice.key").write_bytes(
        (cfg.parent / "keys" / "person-carol.key").read_bytes())
    code, out = run("notify", "map-slack", "U0BOB", "bob", "--as", "alice", "--key-dir", keys,
                    "--config", str(cfg))
    assert code == 2 and "not the one registered" in out
    assert SlackState(store).person_for("U0BOB") is None
    assert all(e.event != "slack_mapped" for e in open_ledger(state).entries("admin"))


def test_an_admin_maps_a_slack_user_signed_and_recorded(cfg: Path) -> None:
    state, keys = cfg.parent / "state", str(cfg.parent / "keys")
    code, out = run("notify", "map-slack", "U0BOB", "bob", "--as", "alice", "--key-dir", keys,
                    "--config", str(cfg))
    assert code == 0, out
    assert SlackState(Store(state / "state.sqlite")).person_for("U0BOB") == "bob"
    entry = open_ledger(state).entries("admin")[-1]
    assert entry.event == "slack_mapped" and entry.payload["by"] == "alice"
    record = {"slack_id": "U0BOB", "person": "bob", "by": "alice"}
    alice = load_signer(person_key_id("alice"), cfg.parent / "keys")
    assert verify_hex(alice.public_key, canonical_json(record).encode(),
                      entry.payload["signature"])
    code, out = run("notify", "map-slack", "U0BOB", "zed", "--as", "alice", "--key-dir", keys,
                    "--config", str(cfg))
    assert code == 2 and "not a registered person" in out


def test_the_service_worker_delivers_in_the_background(
    cfg: Path, receiver: LoopbackReceiver,
) -> None:
    import asyncio

    from upgate.config import load_settings
    from upgate.notify.worker import notify_lifespan

    settings = load_settings(cfg)
    box = Outbox.of_state(settings.state_dir)
    box.enqueue_direct("test", ["team"], {"text": "hello"}, key="bg")

    async def serve_a_while() -> None:
        async with notify_lifespan(settings.state_dir, settings.notify) as state:
            assert state["notify_worker"].poll_s > 0
            await asyncio.to_thread(receiver.wait_for, 1, 30.0)

    asyncio.run(serve_a_while())
    assert [r.status for r in box.rows()] == ["delivered"]
    assert "hello" in receiver.requests[0].body.decode()


def test_the_demo_opts_in_to_notifications_by_a_url_variable(
    tmp_path: Path, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from upgate.config import load_settings
    from upgate.demo import NOTIFY_ENV, layout

    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    plain = load_settings(layout(tmp_path / "a", port=9, sandbox="fake"))
    assert plain.notify.channels == ()
    monkeypatch.setenv(NOTIFY_ENV, receiver.url + "/demo")
    config = layout(tmp_path / "b", port=9, sandbox="fake")
    assert receiver.url not in config.read_text()  # the file names the variable only
    assert [c.name for c in load_settings(config).notify.channels] == ["demo"]
    code, out = run("notify", "test", "demo", "--config", str(config))
    assert code == 0, out
    assert receiver.wait_for(1)[0].path == "/demo"


def test_a_cli_command_delivers_what_it_queued_when_it_ends(
    cfg: Path, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from upgate.agents.testing import scripted
    from upgate.app import build_deps
    from upgate.config import Settings
    from upgate.evals.harness import ChatChoiceHarness
    from upgate.graphs.runner import Runner

    from ..conftest import OracleClient, suite_answers
    from .test_notify_events import DRAFT, REVIEW

    client = OracleClient(suite_answers())

    def runner(settings: Settings, for_cycles: bool = True) -> Runner:
        models = {a: scripted({"proposal": DRAFT, "review": REVIEW})
                  for a in ("proposer", "coder", "critic")}
        return Runner(build_deps(settings, models=models, for_cycles=for_cycles,
                                 harness=ChatChoiceHarness(client_factory=lambda u, t: client)))

    monkeypatch.setattr(cli, "_runner", runner)
    monkeypatch.setattr(sys, "argv", ["upgate", "run", "--as", "alice", "--key-dir",
                                      str(cfg.parent / "keys"), "--config", str(cfg)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    # Delivered by the entry point after the command, before the process would exit.
    assert [r.path for r in receiver.requests] == ["/slack"]
    assert "Approval requested" in receiver.requests[0].body.decode()
    rows = Outbox.of_state(cfg.parent / "state").rows()
    # The unconfigured channel failed and waits for a retry; the command still succeeded.
    assert {r.channel: r.status for r in rows} == {"team": "delivered", "nowhere": "pending"}
    assert "NOWHERE_URL" in next(r.last_error for r in rows if r.channel == "nowhere")
