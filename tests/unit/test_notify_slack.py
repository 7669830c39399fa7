"""Slack buttons: only signed, fresh, first-seen requests from mapped people decide, and
only on the evidence the message showed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from upgate.errors import ApprovalError
from upgate.notify.render import action_id
from upgate.notify.slack_actions import PATH, SlackActions, slack_router
from upgate.notify.slack_people import SlackState
from upgate.notify.testing import slack_action_request
from upgate.store import Store

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
EVIDENCE = "e" * 64


class Decisions:
    """A decider double: records calls; refuses what `refuse` names."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.refuse = ""
        self.crash = False

    def __call__(self, cycle_id: str, *, action: str, person: str, reason: str,
                 evidence_hash: str) -> dict[str, Any]:
        if self.refuse:
            raise ApprovalError(self.refuse)
        if self.crash:
            raise RuntimeError("a bug")
        self.calls.append({"cycle_id": cycle_id, "action": action, "person": person,
                           "evidence_hash": evidence_hash})
        return {"outcome": "deployed" if action == "approve" else "rejected"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(tmp_path / "state.sqlite")
    st.set_person("bob", "0" * 64)  # registered (the admin records are tested elsewhere)
    yield st
    st.close()


@pytest.fixture
def setup(store: Store) -> tuple[TestClient, Decisions, list[tuple[str, dict[str, Any]]]]:
    people = SlackState(store)
    people.map_user("U0BOB", "bob", by="admin")
    decisions = Decisions()
    replies: list[tuple[str, dict[str, Any]]] = []
    actions = SlackActions(
        signing_secret=SECRET, people=people, decide=decisions,
        pending=lambda c: {"evidence_hash": EVIDENCE} if c == "c1" else None,
        head=lambda: (7, "h" * 64), respond=lambda url, body: replies.append((url, body)),
    )
    app = FastAPI()
    app.include_router(slack_router(actions))
    return TestClient(app), decisions, replies


def press(client: TestClient, *, secret: str = SECRET, action: str = "approve",
          cycle: str = "c1", evidence: str = EVIDENCE, user: str = "U0BOB",
          timestamp: int | None = None, tamper: bool = False) -> int:
    body, headers = slack_action_request(
        secret, action_id=action_id(action, cycle, evidence), user=user,
        response_url="http://127.0.0.1:9/respond", timestamp=timestamp)
    if tamper:
        body = body.replace(b"U0BOB", b"U0EVE")
    return client.post(PATH, content=body, headers=headers).status_code


Setup = tuple[TestClient, Decisions, list[tuple[str, dict[str, Any]]]]


def test_a_signed_press_by_a_mapped_person_decides(setup: Setup) -> None:
    client, decisions, replies = setup
    assert press(client) == 200
    assert decisions.calls == [{"cycle_id": "c1", "action": "approve", "person": "bob",
                                "evidence_hash": EVIDENCE}]
    url, body = replies[0]
    assert url == "http://127.0.0.1:9/respond" and body["replace_original"] is True
    assert "approved" in body["text"] and "deployed" in body["text"]
    assert "#7" in str(body["blocks"])


@pytest.mark.parametrize("how", ["wrong secret", "tampered body", "too old", "too new"])
def test_forged_and_stale_requests_are_refused(setup: Setup, how: str) -> None:
    client, decisions, replies = setup
    now = int(time.time())
    status = press(client, secret="another-secret" if how == "wrong secret" else SECRET,
                   tamper=how == "tampered body",
                   timestamp={"too old": now - 301, "too new": now + 301}.get(how))
    assert status == 401
    assert decisions.calls == [] and replies == []


def test_a_replayed_request_is_refused(setup: Setup) -> None:
    client, decisions, _ = setup
    body, headers = slack_action_request(SECRET, action_id=action_id("approve", "c1", EVIDENCE),
                                         user="U0BOB")
    assert client.post(PATH, content=body, headers=headers).status_code == 200
    second = client.post(PATH, content=body, headers=headers)
    assert second.status_code == 401 and "replay" in second.json()["error"]
    assert len(decisions.calls) == 1


def test_missing_headers_are_refused(setup: Setup) -> None:
    client, decisions, _ = setup
    assert client.post(PATH, content=b"payload=%7B%7D").status_code == 401
    assert client.post(PATH, content=b"x", headers={"X-Slack-Request-Timestamp": "soon",
                                                    "X-Slack-Signature": "v0=00"}
                       ).status_code == 401
    assert decisions.calls == []


@pytest.mark.parametrize(("kw", "why"), [
    ({"user": "U0EVE"}, "not mapped"),
    ({"evidence": "f" * 64}, "evidence changed"),
    ({"cycle": "c2"}, "not waiting"),
])
def test_refusals_are_reported_and_decide_nothing(setup: Setup, kw: dict[str, Any],
                                                 why: str) -> None:
    client, decisions, replies = setup
    assert press(client, **kw) == 200
    assert decisions.calls == []
    assert why in replies[0][1]["text"] and replies[0][1]["replace_original"] is False


def test_the_runners_own_refusal_reaches_the_message(setup: Setup) -> None:
    client, decisions, replies = setup
    decisions.refuse = "bob requested this change and cannot approve it; another person must"
    assert press(client) == 200
    assert "cannot approve it" in replies[0][1]["text"]


def test_a_crash_while_deciding_is_reported_not_swallowed(setup: Setup) -> None:
    client, decisions, replies = setup
    decisions.crash = True
    assert press(client) == 200
    assert "failed while deciding" in replies[0][1]["text"]


def test_only_upgate_buttons_are_handled(setup: Setup) -> None:
    client, decisions, _ = setup
    body, headers = slack_action_request(SECRET, action_id="someone_elses_button",
                                         user="U0BOB")
    assert client.post(PATH, content=body, headers=headers).status_code == 400
    assert decisions.calls == []


def test_mapping_needs_a_real_slack_id_and_a_registered_person(store: Store) -> None:
    people = SlackState(store)
    with pytest.raises(ApprovalError, match="not a Slack user id"):
        people.map_user("bob", "bob", by="admin")
    with pytest.raises(ApprovalError, match="not a registered person"):
        people.map_user("U0CAROL", "carol", by="admin")
    people.map_user("U0BOB", "bob", by="admin")
    assert people.person_for("U0BOB") == "bob" and people.person_for("U0X") is None


def test_the_approval_service_serves_slack_buttons_when_configured(
    workdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from upgate.agents.testing import scripted
    from upgate.app import build_deps
    from upgate.config import load_settings
    from upgate.graphs.runner import Runner
    from upgate.identity import generate_key, load_signer
    from upgate.server.app import create_app

    from ..conftest import write_config

    generate_key("service:approvals", workdir / "keys")
    signer = load_signer("service:approvals", workdir / "keys")
    for extra in ("", '[notify]\nslack_signing_secret_env = "T_SLACK_SIGNING"\n'):
        write_config(workdir, extra=extra)
        monkeypatch.setenv("T_SLACK_SIGNING", SECRET)
        models = {a: scripted({}) for a in ("proposer", "coder", "critic")}
        runner = Runner(build_deps(load_settings(workdir / "upgate.toml"), models=models))
        app = create_app(runner, signer=signer)
        with TestClient(app) as client:  # the lifespan starts and stops the notify worker
            body, headers = slack_action_request(
                SECRET, action_id=action_id("approve", "c1", EVIDENCE), user="U0BOB")
            answer = client.post(PATH, content=body, headers=headers).status_code
            # Served only when Slack's signing secret is configured.
            assert answer == (200 if extra else 404)
            forged = client.post(PATH, content=body + b"x", headers=headers).status_code
            assert forged == (401 if extra else 404)
