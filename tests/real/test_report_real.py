"""`upgate serve` as a real process on loopback: Prometheus scrapes /metrics (parsed with
prometheus-client's own text parser) and a person reads /report, both computed from a real
ledger and a real gateway request log in the state folder."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from upgate.server.routes_report import TOKEN_ENV

from ..conftest import make_target_repo, write_config
from ..unit.report_sample import EVIL, sample_ledger, write_gateway
from ..unit.test_server_api import people
from .serving import serve

pytestmark = pytest.mark.real


def test_upgate_serve_exposes_rollout_metrics_and_the_report_page(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: None) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert TOKEN_ENV not in os.environ  # the subprocess inherits no token: loopback only
    make_target_repo(tmp_path / "target")
    write_config(tmp_path)
    _, tokens = people(tmp_path)
    sample_ledger(tmp_path / "state", monkeypatch).close()
    write_gateway(tmp_path / "state" / "gateway.db")
    with serve(tmp_path, tokens, []) as served:
        res = httpx.get(f"{served.url}/metrics", timeout=30)
        assert res.status_code == 200, res.text
        families = {f.name: f for f in text_string_to_metric_families(res.text)}
        [deployed] = families["upgate_rollout_deployments"].samples
        assert deployed.value == 4
        [ratio] = families["upgate_rollout_rollback_success_ratio"].samples
        assert ratio.value == 0.5
        # c4 is measured on the gateway's log (4 requests, 1 error) instead of its step
        # check (10, 5): 40/1 (c1) + 8/2 (c3) + 4/1 (c4) + 8/0 (c5)
        [errors] = families["upgate_rollout_bake_error_ratio"].samples
        assert errors.value == pytest.approx(4 / 60)

        client = httpx.Client(base_url=served.url, timeout=30)
        assert client.get("/report").status_code == 401
        login = client.post("/api/login", json={"name": "bob", "token": tokens["bob"]})
        assert login.status_code == 200, login.text
        page = client.get("/report")
        assert page.status_code == 200 and "Rollout metrics" in page.text
        assert EVIL not in page.text and "<script" not in page.text
        assert "unsafe-inline" not in page.headers["content-security-policy"]
