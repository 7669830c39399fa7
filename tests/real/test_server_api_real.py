"""The approval service as a real process on loopback: log in, read the inbox and a packet,
ask the real model (vLLM, structured output) a question, approve, and watch the cycle
finish on the event stream."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from upgate.server.packets import SECTIONS

from .serving import Served, served_cycles

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def served(vllm_root: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_cycles(vllm_root, tmp_path_factory.mktemp("api"), 1) as s:
        yield s


def session(served: Served, name: str) -> tuple[httpx.Client, dict[str, str]]:
    client = httpx.Client(base_url=served.url, timeout=300)
    res = client.post("/api/login", json={"name": name, "token": served.tokens[name]})
    assert res.status_code == 200, res.text
    return client, {"X-CSRF-Token": res.json()["csrf"]}


def test_a_waiting_cycle_is_asked_about_approved_and_streamed(served: Served) -> None:
    [cycle] = served.cycles
    anon = httpx.get(f"{served.url}/api/inbox")
    assert anon.status_code == 401
    client, csrf = session(served, "bob")
    [req] = client.get("/api/inbox").json()
    assert req["cycle_id"] == cycle and req["config"]["allow_accept"] is True
    evidence = req["evidence_hash"]
    packet = client.get(f"/api/evidence/{evidence}").json()["packet"]
    assert packet["packet_hash"] == evidence

    # A question answered by the real model under the JSON schema, citing only sections.
    res = client.post(f"/api/cycles/{cycle}/ask", headers=csrf, json={
        "question": "How did the score on the hidden split change?", "evidence_hash": evidence})
    assert res.status_code == 200, res.text
    reply = res.json()
    assert reply["answer"] and set(reply["cites"]) <= set(SECTIONS)
    assert reply["grounded"] == reply["found"] == bool(reply["cites"])
    for name in reply["cites"]:  # each citation comes with that section's text
        assert reply["excerpts"][name]
    assert reply["model"]["model"] == "smollm2"
    print("real model's answer:", json.dumps(reply)[:600])

    # The event stream is open while bob approves; it carries deploy, monitor and record.
    seen: list[dict[str, Any]] = []
    last_seq = client.get("/api/ledger", params={"cycle": cycle}).json()[-1]["seq"]

    def listen() -> None:
        with httpx.stream("GET", f"{served.url}/api/cycles/{cycle}/events",
                          params={"after": last_seq}, cookies=client.cookies,
                          timeout=300) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and '"node"' in line:
                    seen.append(json.loads(line[5:]))

    listener = threading.Thread(target=listen)
    listener.start()
    res = client.post(f"/api/cycles/{cycle}/decision", headers=csrf, json={
        "action": "approve", "reason": "", "evidence_hash": evidence})
    assert res.status_code == 200, res.text
    assert res.json()["outcome"] == "deployed"
    listener.join(timeout=60)
    assert not listener.is_alive()
    nodes = [e["node"] for e in seen]
    assert nodes[-4:] == ["approve", "deploy", "monitor", "record"], nodes
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)

    ledger = client.get("/api/ledger", params={"cycle": cycle}).json()
    chat = [(e["node"], e["event"]) for e in ledger if e["node"] in ("chat", "approve")]
    assert chat == [("chat", "question"), ("chat", "answer"), ("approve", "approve")]
    assert client.get("/api/verify").json()["ok"] is True
    branches = subprocess.run(["git", "-C", str(served.root / "target"), "branch"],
                              capture_output=True, text=True, check=True).stdout
    assert f"upgate/{cycle}" in branches


def test_the_service_listens_on_loopback_only_by_default(served: Served) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    # Bound to 127.0.0.1 only, the service does not answer on another address of this
    # machine. 127.0.0.2 is one every Linux machine has (all of 127/8 is loopback): a
    # service bound to every address (0.0.0.0) would answer there.
    others = ["127.0.0.2"]
    address = socket.gethostbyname(socket.gethostname())
    if address not in ("127.0.0.1", "127.0.0.2"):
        others.append(address)
    for other in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, port)) != 0, f"the service answers on {other}"
