"""The gateway as a real process in front of the real vLLM server: the base model and the
`triage` adapter as two versions of one alias, split by weight, pinned, streamed, and
re-weighted under steady clients without a failed request."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from upgate.gateway.app import VERSION_HEADER
from upgate.gateway.routes import Backend, RouteTable

pytestmark = pytest.mark.real

ALIAS = "support"  # not a name vLLM serves: only the gateway knows it
BASE, ADAPTER = "support@base", "support@triage"


def backends(vllm_root: str, base: int, adapter: int) -> list[Backend]:
    url = f"{vllm_root}/v1"
    return [Backend(version=BASE, base_url=url, model="smollm2", weight=base),
            Backend(version=ADAPTER, base_url=url, model="triage", weight=adapter)]


def ask(client: httpx.Client, url: str, *, pin: str | None = None,
        **extra: Any) -> httpx.Response:
    headers = {VERSION_HEADER: pin} if pin else {}
    return client.post(f"{url}/v1/chat/completions", headers=headers, json={
        "model": ALIAS, "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 3, "temperature": 0, **extra})


def test_half_and_half_between_base_and_adapter_both_answer_and_are_logged(
        vllm_root: str, gateway: tuple[str, RouteTable]) -> None:
    url, table = gateway
    table.set_routes(ALIAS, backends(vllm_root, 50, 50), reason="real test: 50/50")
    # Ten at a time: vLLM batches them, so the test takes two rounds, not twenty.
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: ask(client, url), range(20)))
        pinned = {v: ask(client, url, pin=v, max_tokens=2) for v in (BASE, ADAPTER)}
    assert [r.status_code for r in answers] == [200] * len(answers)
    served = Counter(r.headers[VERSION_HEADER] for r in answers)
    assert set(served) == {BASE, ADAPTER}, served  # P(one side gets none) = 2 * 0.5**20
    # vLLM names the model it ran: the gateway rewrote the alias to the version's model.
    for r in answers:
        expected = "smollm2" if r.headers[VERSION_HEADER] == BASE else "triage"
        assert r.json()["model"] == expected
        assert r.json()["choices"][0]["message"]["content"]
    assert {v: r.json()["model"] for v, r in pinned.items()} == {BASE: "smollm2",
                                                                ADAPTER: "triage"}
    logged = table.samples(ALIAS)
    assert Counter(s["version"] for s in logged if not s["pinned"]) == served
    assert {s["status"] for s in logged} == {200}
    assert sorted(s["version"] for s in logged if s["pinned"]) == [BASE, ADAPTER]
    stats = table.window(ALIAS, ADAPTER, since=0)
    assert stats.errors == 0 and stats.p50_ms is not None and stats.p50_ms > 0


def test_a_stream_from_vllm_passes_through(vllm_root: str,
                                           gateway: tuple[str, RouteTable]) -> None:
    url, table = gateway
    table.set_routes(ALIAS, backends(vllm_root, 0, 1), reason="real test: stream")
    chunks: list[dict[str, Any]] = []
    with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{url}/v1/chat/completions", json={
                "model": ALIAS, "messages": [{"role": "user", "content": "Count to five."}],
                "max_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == ADAPTER
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert len(chunks) > 1 and all(c["model"] == "triage" for c in chunks)
    assert [s["status"] for s in table.samples(ALIAS)] == [200]


def test_steady_clients_while_weights_change_ten_times_fail_no_request(
        vllm_root: str, gateway: tuple[str, RouteTable]) -> None:
    url, table = gateway
    plan = [(100, 0), (95, 5), (75, 25), (50, 50), (0, 100), (100, 0), (0, 100),
            (50, 50), (1, 99), (100, 0)]
    table.set_routes(ALIAS, backends(vllm_root, 100, 0), reason="real test: start")
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop() -> None:
        # /v1/completions with a two-word prompt and one token: the cheapest real request,
        # so the clients are many and steady while the weights change.
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{url}/v1/completions", json={
                        "model": ALIAS, "prompt": "Hello there", "max_tokens": 1})
                    with lock:
                        results.append((r.status_code, r.headers.get(VERSION_HEADER, "")))
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))

    def served() -> int:
        with lock:
            return len(results) + len(failures)

    workers = [threading.Thread(target=client_loop) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for base, adapter in plan:
            # Change only after more requests went through at the current weights; with four
            # clients each waiting on the model, requests are in flight at every change.
            target = served() + 5
            while served() < target and all(w.is_alive() for w in workers):
                threading.Event().wait(0.05)
            table.set_routes(ALIAS, backends(vllm_root, base, adapter),
                             reason=f"real test: {base}/{adapter}")
        target = served() + 5
        while served() < target and all(w.is_alive() for w in workers):
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)
    assert failures == []
    assert len(results) >= 5 * (len(plan) + 1)
    assert Counter(status for status, _ in results) == {200: len(results)}
    assert {version for _, version in results} == {BASE, ADAPTER}
    assert len(table.changes(ALIAS)) == 1 + len(plan)
    logged = table.samples(ALIAS)
    assert len(logged) == len(results) and {s["status"] for s in logged} == {200}
