"""The approval service's API in-process (FastAPI's test client) over a real Runner with
scripted models: sessions and CSRF, roles, stale pages, request changes, HITL, the ledger."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from upgate import admin, guard
from upgate.agents.testing import scripted
from upgate.config import load_settings
from upgate.errors import IdentityError
from upgate.graphs.runner import Runner
from upgate.identity import generate_key, load_signer, person_key_id
from upgate.ledger import open_ledger
from upgate.server.app import create_app
from upgate.server.ask import messages_for, section_texts
from upgate.server.keys import service_signer
from upgate.store import Store

from ..conftest import make_target_repo, write_config
from .test_cycle import REVIEW, branches, draft, make_runner

ANSWER = json.dumps({"source": "comparison", "answer": "Hidden split went from 0.25 to 1.0."})


def people(root: Path) -> tuple[Path, dict[str, str]]:
    """alice (admin) initialises the state and registers carol, bob (approvers), dave (no
    role) and the approval service; returns the key folder (outside the state) and
    everyone's login token."""
    settings = load_settings(root / "upgate.toml")
    keys = root / "keys"
    store, ledger = Store(settings.state_dir / "state.sqlite"), open_ledger(settings.state_dir)
    try:
        tokens = {"alice": admin.init_state(store, ledger, admin="alice",
                                            policy_text=settings.policy.read_text(),
                                            key_dir=keys).token}
        alice = load_signer(person_key_id("alice"), keys)
        for name in ("carol", "bob", "dave"):
            tokens[name] = admin.register_person(store, ledger, alice, name, key_dir=keys).token
        admin.add_service(store, ledger, alice, "approvals", key_dir=keys)
    finally:
        store.close()
        ledger.close()
    return keys, tokens


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str]]:
    """One cycle run to the approval (requested by carol, an approver), copied per test."""
    root = tmp_path_factory.mktemp("served")
    make_target_repo(root / "target")
    write_config(root)
    _, tokens = people(root)
    guard.ALLOW_FAKE_SANDBOX = True  # module-scoped: before the tier's autouse fixture
    try:
        runner, _ = make_runner(root, {"proposal": draft(), "review": REVIEW})
        state = runner.start("carol")
    finally:
        guard.ALLOW_FAKE_SANDBOX = False
    assert state["outcome"] == "awaiting_approval"
    return root, state["cycle_id"], tokens


@pytest.fixture
def waiting(template: tuple[Path, str, dict[str, str]], tmp_path: Path
            ) -> tuple[Runner, str, dict[str, str]]:
    root, cycle, tokens = template
    work = tmp_path / "w"
    shutil.copytree(root, work)
    runner, _ = make_runner(work, {"proposal": draft(), "review": REVIEW})
    return runner, cycle, tokens


@pytest.fixture
def workdir(waiting: tuple[Runner, str, dict[str, str]]) -> Path:
    return waiting[0].deps.settings.state_dir.parent


def client_for(runner: Runner, answer: str = ANSWER) -> TestClient:
    model = scripted({"packet_answer": answer})
    signer = service_signer(runner, "approvals", runner.deps.state_dir.parent / "keys")
    return TestClient(create_app(runner, signer=signer, answer_model=lambda: model))


def login(client: TestClient, name: str, token: str) -> dict[str, str]:
    res = client.post("/api/login", json={"name": name, "token": token})
    assert res.status_code == 200, res.text
    me: dict[str, Any] = res.json()
    return {"X-CSRF-Token": me["csrf"]}


def decide(client: TestClient, csrf: dict[str, str], cycle: str, action: str,
           evidence: str, reason: str = "") -> Any:
    return client.post(f"/api/cycles/{cycle}/decision", headers=csrf,
                       json={"action": action, "reason": reason, "evidence_hash": evidence})


def test_login_is_required_and_a_wrong_token_is_refused(waiting: Any) -> None:
    runner, _, _ = waiting
    client = client_for(runner)
    assert client.get("/api/inbox").status_code == 401
    assert client.post("/api/login", json={"name": "bob", "token": "nope"}).status_code == 401
    assert client.get("/api/inbox").status_code == 401
    events = [(e.node, e.event) for e in runner.deps.ledger.entries("admin")]
    assert ("session", "login_refused") in events


def test_unsafe_requests_need_the_sessions_csrf_token(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    body = {"action": "approve", "reason": "", "evidence_hash": evidence}
    assert client.post(f"/api/cycles/{cycle}/decision", json=body).status_code == 403
    bad = {"X-CSRF-Token": "x" + csrf["X-CSRF-Token"]}
    assert client.post(f"/api/cycles/{cycle}/decision", json=body,
                       headers=bad).status_code == 403
    assert runner.pending(cycle) is not None  # nothing was decided


def test_inbox_carries_the_langchain_hitl_shape_beside_upgates_keys(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    login(client, "bob", tokens["bob"])
    [req] = client.get("/api/inbox").json()
    assert req["cycle_id"] == cycle and len(req["evidence_hash"]) == 64
    assert req["action_request"]["args"]["evidence_hash"] == req["evidence_hash"]
    assert set(req["config"]) == {"allow_accept", "allow_edit", "allow_respond", "allow_ignore"}
    assert req["responses"] == {"accept": "approve", "edit": "request_changes",
                                "response": "ask", "ignore": "reject"}


def test_evidence_by_hash_is_verified_against_its_content(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = client.get(f"/api/evidence/{evidence}")
    assert res.status_code == 200 and res.json()["packet"]["packet_hash"] == evidence
    assert "split hidden" in res.json()["sections"]["comparison"]
    assert client.get(f"/api/evidence/{evidence}/plot.svg").headers["content-type"].startswith(
        "image/svg+xml")
    path = next((runner.deps.state_dir / "evidence" / cycle).glob("*.json"))
    path.write_text(path.read_text().replace('"verdict": "accept"', '"verdict": "reject"'))
    res = client.get(f"/api/evidence/{evidence}")
    assert res.status_code == 404 and "changed after it was written" in res.json()["detail"]


def test_the_requesters_own_approval_is_refused_and_recorded(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "carol", tokens["carol"])  # carol is an approver, and the requester
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = decide(client, csrf, cycle, "approve", evidence)
    assert res.status_code == 403, res.text
    assert "cannot approve" in res.json()["detail"]
    assert runner.pending(cycle) is not None
    refused = [e for e in runner.deps.ledger.entries(cycle) if e.event == "decision_refused"]
    assert refused and refused[-1].payload["person"] == "carol"


def test_a_person_without_the_approver_role_cannot_decide(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "dave", tokens["dave"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = decide(client, csrf, cycle, "reject", evidence, "no")
    assert res.status_code == 403 and "approver role" in res.json()["detail"]
    assert client.get("/api/inbox").status_code == 403  # no role: reads nothing either
    assert runner.pending(cycle) is not None


def test_a_stale_page_is_refused(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    res = decide(client, csrf, cycle, "approve", "0" * 64)
    assert res.status_code == 409 and "reload the page" in res.json()["detail"]
    assert runner.pending(cycle) is not None


def test_approve_from_the_service_deploys_and_is_signed_on_the_chat_channel(
        waiting: Any, workdir: Path) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = decide(client, csrf, cycle, "approve", evidence)
    assert res.status_code == 200, res.text
    assert res.json()["outcome"] == "deployed"
    assert f"upgate/{cycle}" in branches(workdir / "target")
    entry = next(e for e in runner.deps.ledger.entries(cycle) if e.node == "approve")
    assert entry.payload["channel"] == "chat" and entry.payload["approver"] == "bob"
    assert entry.payload["signature"]
    assert runner.state(cycle)["approval"]["signer"] == "service:approvals"
    assert client.get("/api/verify").json()["ok"] is True


def test_reject_needs_a_reason_and_keeps_markup_as_data(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    assert decide(client, csrf, cycle, "reject", evidence, "  ").status_code == 403
    reason = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    res = decide(client, csrf, cycle, "reject", evidence, reason)
    assert res.status_code == 200 and res.json()["outcome"] == "rejected"
    assert res.json()["reason"] == f"rejected by bob: {reason}"


def test_request_changes_goes_back_to_implement_bounded_by_the_policy(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    first = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    assert decide(client, csrf, cycle, "request_changes", first).status_code == 403  # no text
    res = decide(client, csrf, cycle, "request_changes", first, "use fewer examples")
    assert res.status_code == 200, res.text
    view = res.json()
    assert view["outcome"] == "awaiting_approval" and view["revisions"] == 1
    second = view["pending"]["evidence_hash"]
    assert second != first
    assert "use fewer examples" in view["feedback"]
    nodes = [(e.node, e.event) for e in runner.deps.ledger.entries(cycle)]
    at = nodes.index(("approve", "changes_requested"))
    assert ("implement", "candidate") in nodes[at:] and ("critique", "accept") in nodes[at:]
    # The old page's hash is stale now; and the policy (max_revisions = 1) allows no more.
    assert decide(client, csrf, cycle, "approve", first).status_code == 409
    res = decide(client, csrf, cycle, "request_changes", second, "again")
    assert res.status_code == 403 and "allows 1 revision" in res.json()["detail"]
    assert decide(client, csrf, cycle, "approve", second).json()["outcome"] == "deployed"


def test_hitl_responses_map_onto_decisions(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = client.post(f"/api/cycles/{cycle}/hitl", headers=csrf, json={
        "type": "response", "args": "how did the hidden split move?", "evidence_hash": evidence})
    assert res.status_code == 200, res.text
    assert res.json()["question"] == "how did the hidden split move?"
    res = client.post(f"/api/cycles/{cycle}/hitl", headers=csrf, json={
        "type": "ignore", "args": "not now", "evidence_hash": evidence})
    assert res.status_code == 200 and res.json()["outcome"] == "rejected"
    assert "not now" in res.json()["reason"]


@pytest.mark.parametrize(("answer", "cites", "note"), [
    (ANSWER, ["comparison"], "Cites the packet's comparison section"),
    (json.dumps({"source": "not_in_packet", "answer": "No idea."}), [],
     "does not hold the answer"),
])
def test_answers_cite_the_packet_or_say_they_cannot(waiting: Any, answer: str,
                                                    cites: list[str], note: str) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner, answer)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = client.post(f"/api/cycles/{cycle}/ask", headers=csrf,
                      json={"question": "why did the hidden split move?",
                            "evidence_hash": evidence})
    assert res.status_code == 200, res.text
    reply = res.json()
    assert reply["cites"] == cites and reply["grounded"] is bool(cites)
    assert note in reply["note"]
    assert list(reply["excerpts"]) == cites
    if cites:
        assert "split hidden" in reply["excerpts"]["comparison"]
    events = [(e.event, e.payload) for e in runner.deps.ledger.entries(cycle) if e.node == "chat"]
    assert [e for e, _ in events] == ["question", "answer"]
    assert events[1][1]["question"] == "why did the hidden split move?"
    assert events[1][1]["cites"] == cites


def test_a_citation_of_a_section_the_model_was_not_shown_is_refused(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    question = "why did the hidden split move?"
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    reader = client_for(runner)
    login(reader, "bob", tokens["bob"])
    packet = reader.get(f"/api/evidence/{evidence}").json()["packet"]
    # A section of the packet the question did not select (which ones depends on the
    # packet's size, so the test asks rather than assumes).
    unseen = sorted(set(section_texts(packet)) - set(messages_for(question, packet)[1]))
    assert unseen, "every section was shown: the question must select a subset"
    client = client_for(runner, json.dumps({"source": unseen[0], "answer": "All passed."}))
    csrf = login(client, "bob", tokens["bob"])
    res = client.post(f"/api/cycles/{cycle}/ask", headers=csrf,
                      json={"question": question, "evidence_hash": evidence})
    assert res.status_code == 502 and "no valid packet_answer" in res.json()["detail"]
    events = [e.event for e in runner.deps.ledger.entries(cycle) if e.node == "chat"]
    assert events == ["question", "answer_failed"]


def test_a_question_about_another_cycles_packet_is_refused(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    res = client.post("/api/cycles/c-other/ask", headers=csrf,
                      json={"question": "why?", "evidence_hash": evidence})
    assert res.status_code == 404


def test_the_event_stream_follows_the_ledger_node_by_node(waiting: Any) -> None:
    runner, cycle, tokens = waiting
    client = client_for(runner)
    csrf = login(client, "bob", tokens["bob"])
    evidence = runner.pending(cycle)["evidence_hash"]  # type: ignore[index]
    decide(client, csrf, cycle, "approve", evidence)
    with client.stream("GET", f"/api/cycles/{cycle}/events") as res:
        body = "".join(res.iter_text())
    nodes = [json.loads(line[5:])["node"] for line in body.splitlines()
             if line.startswith("data:") and '"node"' in line]
    assert nodes[:3] == ["start", "observe", "propose"]
    assert nodes[-3:] == ["deploy", "monitor", "record"]
    assert "event: end" in body


def test_the_page_is_served_under_a_strict_csp_and_never_uses_inner_html(
        waiting: Any) -> None:
    runner, _, _ = waiting
    client = client_for(runner)
    res = client.get("/")
    csp = res.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    static = Path(__file__).resolve().parents[2] / "upgate" / "server" / "static"
    js = (static / "app.js").read_text()
    assert "innerHTML" not in js.replace("no innerHTML anywhere", "")
    assert "outerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert "http://" not in res.text and "https://" not in res.text  # no CDN
    assert client.get("/openapi.json").json()["info"]["title"] == "upgate approval service"


def test_the_api_docs_work_offline_from_the_installed_package(waiting: Any) -> None:
    runner, _, _ = waiting
    client = client_for(runner)
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no favicon host
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "https:" not in csp and "*" not in csp
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        served = client.get(f"/docs-assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
    assert client.get("/redoc").status_code == 404  # its viewer would load from a CDN


def test_the_service_signs_only_with_a_registered_key(waiting: Any) -> None:
    runner, _, _ = waiting
    keys = runner.deps.state_dir.parent / "keys"
    with pytest.raises(IdentityError, match="upgate service add other"):
        service_signer(runner, "other", keys)
    generate_key("service:other", keys)  # a key of its own, never registered by an admin
    with pytest.raises(IdentityError, match="not the one registered"):
        service_signer(runner, "other", keys)
    with pytest.raises(IdentityError, match="inside the state folder"):
        service_signer(runner, "approvals", runner.deps.state_dir / "keys")
