"""The gateway on real loopback HTTP: real fake upstreams (threaded HTTP servers), the
gateway under uvicorn, a real SQLite route table. Each test tries to break one promise."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from upgate.gateway.app import PASSTHROUGH, VERSION_HEADER, GatewaySettings, create_app
from upgate.gateway.routes import Backend, RouteTable
from upgate.gateway.testing import FakeUpstream, serve_in_thread

ALIAS = "triage"


def binomial_bounds(n: int, p: float, tail: float = 1e-6) -> tuple[int, int]:
    """The smallest and largest counts outside which each tail holds at most `tail`."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    low, acc = 0, 0.0
    while acc + pmf[low] <= tail:
        acc += pmf[low]
        low += 1
    high, acc = n, 0.0
    while acc + pmf[high] <= tail:
        acc += pmf[high]
        high -= 1
    return low, high


@pytest.fixture
def table(tmp_path: Path) -> Iterator[RouteTable]:
    t = RouteTable(tmp_path / "gateway.db")
    yield t
    t.close()


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    ups = {n: FakeUpstream(n, models=(f"model-{n}",)).start() for n in ("a", "b", "default")}
    yield ups
    for u in ups.values():
        u.stop()


Start = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def start_gateway(table: RouteTable, upstreams: dict[str, FakeUpstream]) -> Start:
    """Start a gateway over `table`; the default upstream is `upstreams["default"]`."""

    def start(**settings: Any) -> AbstractContextManager[str]:
        cfg = GatewaySettings(upstream=upstreams["default"].url, **settings)
        return serve_in_thread(create_app(table, cfg))

    return start


@pytest.fixture
def gateway(start_gateway: Start) -> Iterator[str]:
    with start_gateway() as url:
        yield url


def route(table: RouteTable, ups: dict[str, FakeUpstream], **weights: int) -> int:
    """Route ALIAS: version `v-<name>` on upstream <name>, model `m-<name>`, by weight."""
    return table.set_routes(ALIAS, [
        Backend(version=f"v-{n}", base_url=ups[n].url, model=f"m-{n}", weight=w)
        for n, w in weights.items()], reason="test")


def chat(client: httpx.Client, url: str, model: str = ALIAS, *, pin: str | None = None,
         **extra: object) -> httpx.Response:
    headers = {VERSION_HEADER: pin} if pin else {}
    return client.post(f"{url}/v1/chat/completions", headers=headers, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def test_weights_split_traffic_as_the_binomial_allows(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    route(table, upstreams, a=80, b=20)
    n = 1000
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(client, gateway), range(n)))
    assert all(r.status_code == 200 for r in answers)
    versions = Counter(r.headers[VERSION_HEADER] for r in answers)
    low, high = binomial_bounds(n, 0.2)
    assert low <= versions["v-b"] <= high, (versions, (low, high))
    assert versions["v-a"] + versions["v-b"] == n
    # The header tells the truth: the backend that answered got the rewritten model.
    for r in answers:
        name = r.headers[VERSION_HEADER].removeprefix("v-")
        assert r.json()["served_by"] == name
        assert r.json()["model"] == f"m-{name}"
    assert len(upstreams["a"].seen) == versions["v-a"]
    assert len(upstreams["b"].seen) == versions["v-b"]
    # Every request left a sample, attributed to the version that served it.
    logged = Counter(s["version"] for s in table.samples(ALIAS))
    assert logged == versions


def test_weight_zero_gets_no_unpinned_traffic_but_a_pin_reaches_it(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    route(table, upstreams, a=1, b=0)
    with httpx.Client(timeout=30) as client:
        served = {chat(client, gateway).headers[VERSION_HEADER] for _ in range(200)}
        assert served == {"v-a"}
        assert upstreams["b"].seen == []
        pinned = chat(client, gateway, pin="v-b")
    assert pinned.status_code == 200
    assert pinned.headers[VERSION_HEADER] == "v-b"
    assert pinned.json()["served_by"] == "b"
    # The pin header is the gateway's, not the backend's.
    assert VERSION_HEADER.lower() not in upstreams["b"].seen[0]["headers"]
    assert [s["pinned"] for s in table.samples(ALIAS, version="v-b")] == [True]


def test_unknown_pin_is_404_never_a_silent_fallback(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    route(table, upstreams, a=1)
    with httpx.Client(timeout=30) as client:
        r = chat(client, gateway, pin="v-nope")
        unrouted = chat(client, gateway, "model-default", pin="v-a")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "v-nope" in message and "v-a" in message
    assert unrouted.status_code == 404 and "not a routed alias" in unrouted.json()["error"][
        "message"]
    assert all(not u.seen for u in upstreams.values())
    [sample] = table.samples(ALIAS)
    assert (sample["version"], sample["status"], sample["pinned"]) == ("v-nope", 404, True)


@pytest.mark.parametrize("body", [b"not json", b'{"messages": []}', b"[1, 2]",
                                  b'{"model": 7}', b'{"model": ""}', b"\xff\xfe"])
def test_a_body_without_json_or_model_is_400(gateway: str, body: bytes,
                                             upstreams: dict[str, FakeUpstream]) -> None:
    r = httpx.post(f"{gateway}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "model" in r.json()["error"]["message"]
    assert all(not u.seen for u in upstreams.values())


def test_upstream_down_is_502_and_a_sample_with_status_0(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    route(table, upstreams, a=1)
    upstreams["a"].stop()
    r = chat(httpx.Client(timeout=30), gateway)
    assert r.status_code == 502
    assert r.headers[VERSION_HEADER] == "v-a"
    assert "v-a" in r.json()["error"]["message"]
    [sample] = table.samples(ALIAS)
    assert sample["status"] == 0 and sample["error"]
    assert table.window(ALIAS, "v-a", since=0).error_rate == 1.0


def test_an_answer_broken_off_midway_is_502_and_a_sample_with_status_0(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    upstreams["a"].mode = "break"
    route(table, upstreams, a=1)
    r = chat(httpx.Client(timeout=30), gateway)
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_unavailable"
    assert [s["status"] for s in table.samples(ALIAS)] == [0]


def test_the_default_upstream_down_is_502_naming_it(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    upstreams["default"].stop()
    r = chat(httpx.Client(timeout=30), gateway, "model-default")
    assert r.status_code == 502 and "default upstream" in r.json()["error"]["message"]
    assert r.headers[VERSION_HEADER] == PASSTHROUGH
    assert [s["status"] for s in table.samples("model-default")] == [0]


def test_upstream_timeout_is_504(start_gateway: Start, table: RouteTable,
                                 upstreams: dict[str, FakeUpstream]) -> None:
    upstreams["a"].mode = "hang"
    route(table, upstreams, a=1)
    with start_gateway(read_timeout_s=0.3) as url:
        r = chat(httpx.Client(timeout=30), url)
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "upstream_timeout"
    assert [s["status"] for s in table.samples(ALIAS)] == [0]


def test_an_upstream_500_passes_through_and_counts_as_an_error(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    upstreams["b"].mode = "fail"
    route(table, upstreams, b=1)
    r = chat(httpx.Client(timeout=30), gateway)
    assert r.status_code == 500 and "fails on purpose" in r.text
    stats = table.window(ALIAS, "v-b", since=0)
    assert (stats.requests, stats.errors) == (1, 1)


def test_a_route_change_by_another_connection_is_seen_by_the_next_request(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream],
        tmp_path: Path) -> None:
    other = RouteTable(tmp_path / "gateway.db")  # as another process would open it
    try:
        with httpx.Client(timeout=30) as client:
            for turn in range(6):
                name = "ab"[turn % 2]
                other.set_routes(ALIAS, [Backend(version=f"v-{name}", base_url=upstreams[
                    name].url, model=f"m-{name}", weight=1)], reason=f"turn {turn}")
                assert chat(client, gateway).headers[VERSION_HEADER] == f"v-{name}"
    finally:
        other.close()


def test_a_request_in_flight_finishes_on_the_backend_it_started_on(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    upstreams["a"].hold = threading.Event()
    route(table, upstreams, a=1)
    result: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: result.append(
        chat(httpx.Client(timeout=30), gateway)))
    worker.start()
    while not upstreams["a"].seen:  # the request has reached backend a
        threading.Event().wait(0.01)
    route(table, upstreams, b=1)
    upstreams["a"].hold.set()
    worker.join(timeout=30)
    [r] = result
    assert r.status_code == 200
    assert (r.headers[VERSION_HEADER], r.json()["served_by"]) == ("v-a", "a")
    assert chat(httpx.Client(timeout=30), gateway).headers[VERSION_HEADER] == "v-b"


def test_a_stream_is_passed_through_chunk_by_chunk(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    # The upstream sends one chunk, then waits until the test has read it through the
    # gateway: a gateway that buffered the stream would make the upstream give up waiting.
    upstreams["a"].hold = threading.Event()
    route(table, upstreams, a=1)
    words: list[str] = []
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{gateway}/v1/chat/completions",
            json={"model": ALIAS, "stream": True, "messages": []}) as r:
        assert r.status_code == 200
        assert r.headers[VERSION_HEADER] == "v-a"
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                continue  # read on to the end: the sample is logged before the stream ends
            words.append(json.loads(line[6:])["choices"][0]["delta"]["content"].strip())
            upstreams["a"].hold.set()
    assert words == ["a", "streams", "m-a"]
    [sample] = table.samples(ALIAS)
    assert sample["status"] == 200


def test_a_model_that_is_not_routed_passes_through_unchanged(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    route(table, upstreams, a=1)
    r = httpx.post(f"{gateway}/v1/completions", json={"model": "model-default", "prompt": "x"})
    assert r.status_code == 200
    assert r.headers[VERSION_HEADER] == PASSTHROUGH
    assert r.json()["choices"][0]["text"] == "default answers model-default"
    assert upstreams["default"].seen[0]["path"] == "/v1/completions"
    assert [s["version"] for s in table.samples("model-default")] == [PASSTHROUGH]


def test_models_lists_routed_aliases_then_the_upstream_models(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    upstreams["default"].models = ("model-default", ALIAS)
    route(table, upstreams, a=3, b=1)
    data = httpx.get(f"{gateway}/v1/models").json()["data"]
    assert [m["id"] for m in data] == [ALIAS, "model-default"]  # the alias shadows its twin
    assert data[0]["versions"] == [{"version": "v-a", "weight": 3},
                                   {"version": "v-b", "weight": 1}]
    upstreams["default"].stop()
    assert [m["id"] for m in httpx.get(f"{gateway}/v1/models").json()["data"]] == [ALIAS]


def test_metrics_count_requests_by_alias_version_and_status(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    route(table, upstreams, a=1, b=0)
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            chat(client, gateway)
        chat(client, gateway, pin="v-b")
        chat(client, gateway, pin="v-x")
    r = httpx.get(f"{gateway}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    counts = {(s.labels["alias"], s.labels["version"], s.labels["status"]): s.value
              for fam in text_string_to_metric_families(r.text)
              if fam.name == "upgate_gateway_requests" for s in fam.samples
              if s.name.endswith("_total")}
    assert counts == {(ALIAS, "v-a", "200"): 3, (ALIAS, "v-b", "200"): 1,
                      (ALIAS, "v-x", "404"): 1}
    latency = [s for fam in text_string_to_metric_families(r.text)
               if fam.name == "upgate_gateway_request_seconds" for s in fam.samples
               if s.name.endswith("_count") and s.labels["version"] == "v-a"]
    assert [s.value for s in latency] == [3]


def test_health_answers_with_the_route_generation(
        gateway: str, table: RouteTable, upstreams: dict[str, FakeUpstream]) -> None:
    generation = route(table, upstreams, a=1)
    body = httpx.get(f"{gateway}/health").json()
    assert body["status"] == "ok" and body["generation"] == generation
