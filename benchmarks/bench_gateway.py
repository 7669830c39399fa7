"""Gateway benchmark: what the entry point adds to a request's latency and throughput.

The gateway runs as a real process (`upgate gateway serve`) in front of two upstreams: a
loopback stand-in that answers at once (the gateway's own overhead, nothing else), and the
vLLM server when one answers (a one-token completion, the cheapest real request). Each
figure is given beside the same requests sent straight to the upstream in the same run,
and as a ratio, so numbers from different machines compare.

    python benchmarks/bench_gateway.py [--requests 200] [--clients 4] [--vllm URL] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from upgate.gateway.routes import Backend, RouteTable
from upgate.gateway.testing import FakeUpstream, gateway_process

ALIAS = "bench"


def run(url: str, model: str, requests: int, clients: int) -> dict[str, float]:
    """Latency p50/p95 (ms) of sequential requests, then throughput with `clients`."""
    body = {"model": model, "prompt": "Hello there", "max_tokens": 1}
    with httpx.Client(timeout=120) as client:
        client.post(f"{url}/completions", json=body).raise_for_status()  # warm the pool
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            client.post(f"{url}/completions", json=body).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(
                lambda _: client.post(f"{url}/completions", json=body).status_code,
                range(requests)))
        wall = time.perf_counter() - started
    q = statistics.quantiles(times, n=20)
    return {"p50_ms": statistics.median(times), "p95_ms": q[18],
            "req_per_s": requests / wall, "failed": sum(s != 200 for s in statuses)}


def compare(name: str, upstream: str, model: str, args: argparse.Namespace,
            db: Path) -> dict[str, Any]:
    table = RouteTable(db)
    try:
        table.set_routes(ALIAS, [Backend(version=f"{ALIAS}@1", base_url=upstream, model=model,
                                         weight=1)], reason="benchmark")
    finally:
        table.close()
    direct = run(upstream, model, args.requests, args.clients)
    with gateway_process(db, upstream) as root:
        via = run(f"{root}/v1", ALIAS, args.requests, args.clients)
    ratios = {f"{k}_ratio": via[k] / direct[k] for k in ("p50_ms", "p95_ms", "req_per_s")
              if direct[k]}
    print(f"\n{name} ({args.requests} requests; {args.clients} clients for throughput)")
    for key in ("p50_ms", "p95_ms", "req_per_s", "failed"):
        print(f"  {key:<10} direct {direct[key]:>9.2f}   via gateway {via[key]:>9.2f}"
              + (f"   x{ratios[key + '_ratio']:.2f}" if key + "_ratio" in ratios else ""))
    return {"direct": direct, "gateway": via, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--vllm", default=os.environ.get("UPGATE_VLLM_URL",
                                                         "http://127.0.0.1:8011/v1"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream("instant") as up:
        results["instant upstream"] = compare("instant upstream (the gateway's own cost)",
                                              up.url, "base", args, Path(tmp) / "a.db")
        try:
            httpx.get(f"{args.vllm}/models", timeout=5).raise_for_status()
        except httpx.HTTPError:
            print(f"\nno vLLM server at {args.vllm}; its comparison is left out")
        else:
            results["vLLM"] = compare("vLLM, one-token completion", args.vllm, "smollm2",
                                      args, Path(tmp) / "b.db")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
