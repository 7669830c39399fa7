"""Small parts of the approval service: listen addresses, sessions, the HITL request shape,
and the `serve` command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from upgate.cli import app
from upgate.graphs.hitl import hitl_request
from upgate.server.app import is_loopback
from upgate.server.auth import Sessions


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False),  # noqa: S104
    ("::", False), ("10.0.0.5", False), ("example.org", False),
])
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_sessions_expire_when_idle_and_can_be_dropped() -> None:
    sessions = Sessions(idle_s=0.0)
    sid, session = sessions.create("bob", {"viewer"})
    assert session.csrf and sid != session.csrf
    assert sessions.get(sid) is None  # idle longer than 0 s
    live = Sessions()
    sid, _ = live.create("bob", {"viewer"})
    assert live.get(sid) is not None and live.get("forged") is None and live.get(None) is None
    live.drop(sid)
    assert live.get(sid) is None


def test_the_hitl_request_carries_the_langchain_shape() -> None:
    request = {"cycle_id": "c1", "candidate_hash": "a" * 64, "evidence_hash": "b" * 64,
               "policy_version": "p@1", "requester": "carol", "kind": "model"}
    out = hitl_request(request, ["gain +0.3"], 0.25, 0.55)
    assert out["action_request"] == {"action": "deploy_model_change", "args": request}
    assert out["config"] == {"allow_accept": True, "allow_edit": True, "allow_respond": True,
                             "allow_ignore": True}
    assert "0.25 -> 0.55" in out["description"] and "carol" in out["description"]


def test_serve_is_a_command() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "approval service" in result.output
    assert "127.0.0.1" in result.output
