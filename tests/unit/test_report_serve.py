"""`upgate report` (table, JSON, HTML) and the service's /report page and /metrics
endpoint, through the real app (FastAPI's test client) over a real state folder."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from upgate import cli, guard
from upgate.graphs.runner import Runner
from upgate.report.models import RolloutReport
from upgate.server.routes_report import PAGE_CSP, TOKEN_ENV

from ..conftest import make_target_repo, write_config
from .report_sample import DAY1, EVIL, at, controlled_clock, put, write_sample
from .test_cycle import REVIEW, draft, make_runner
from .test_server_api import client_for, login, people


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A state folder with people (bob approves, dave holds no role), no cycles yet."""
    root = tmp_path_factory.mktemp("report")
    make_target_repo(root / "target")
    write_config(root)
    _, tokens = people(root)
    return root, tokens


@pytest.fixture
def served(template: tuple[Path, dict[str, str]], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> tuple[Runner, dict[str, str]]:
    """The sample's records in the state folder's ledger, and a Runner over it."""
    root, tokens = template
    work = tmp_path / "w"
    shutil.copytree(root, work)
    guard.ALLOW_FAKE_SANDBOX = True
    try:
        runner, _ = make_runner(work, {"proposal": draft(), "review": REVIEW})
    finally:
        guard.ALLOW_FAKE_SANDBOX = False
    with controlled_clock(monkeypatch):
        write_sample(runner.deps.ledger)
    return runner, tokens


def scrape(client: TestClient, **headers: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Scrape /metrics and parse it with prometheus-client's own parser."""
    res = client.get("/metrics", headers=headers)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: [(s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(res.text)}


# the page ---------------------------------------------------------------------------------


def test_the_report_page_needs_a_session_with_a_role(
        served: tuple[Runner, dict[str, str]]) -> None:
    runner, tokens = served
    client = client_for(runner)
    assert client.get("/report").status_code == 401
    login(client, "dave", tokens["dave"])
    assert client.get("/report").status_code == 403
    login(client, "bob", tokens["bob"])
    res = client.get("/report")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    page = res.text
    assert "Rollout metrics" in page and "50.0% (2 / 4)" in page  # rollback success
    assert "<script" not in page.lower() and "&lt;script&gt;" in page


def test_the_report_page_is_served_under_a_csp_that_allows_only_its_style(
        served: tuple[Runner, dict[str, str]]) -> None:
    runner, tokens = served
    client = client_for(runner)
    login(client, "bob", tokens["bob"])
    res = client.get("/report")
    csp = res.headers["content-security-policy"]
    assert csp == PAGE_CSP and "script-src" not in csp and "unsafe-inline" not in csp
    [style] = re.findall(r"<style>(.*?)</style>", res.text, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp  # the block the page carries is the one allowed
    assert client.get("/").headers["content-security-policy"] != csp  # other pages unchanged
    since = client.get("/report", params={"since": "2026-11-02"}).text
    assert "2026-11-01" not in since and "2026-11-02" in since


# /metrics ---------------------------------------------------------------------------------


def test_metrics_are_served_to_loopback_only_without_a_token(
        served: tuple[Runner, dict[str, str]]) -> None:
    runner, _ = served
    remote = client_for(runner)  # the test client's address is not loopback
    res = remote.get("/metrics")
    assert res.status_code == 403 and TOKEN_ENV in res.json()["detail"]
    local = TestClient(remote.app, client=("127.0.0.1", 40000))
    metrics = scrape(local)
    assert metrics["upgate_rollout_deployments"] == [({}, 4.0)]
    assert metrics["upgate_rollout_proposals"] == [({}, 5.0)]
    assert metrics["upgate_rollout_rollback_success_ratio"] == [({}, 0.5)]
    assert metrics["upgate_rollout_acceptance_ratio"] == [({}, pytest.approx(0.8))]
    rollbacks = dict((tuple(sorted(labels.items())), v)
                     for labels, v in metrics["upgate_rollout_rollbacks"])
    assert rollbacks == {(("outcome", "succeeded"), ("trigger", "rollout")): 1.0,
                         (("outcome", "succeeded"), ("trigger", "manual")): 1.0,
                         (("outcome", "failed"), ("trigger", "manual")): 1.0,
                         (("outcome", "not_restored"), ("trigger", "monitor")): 1.0}
    [(_, count), (_, total)] = metrics["upgate_rollout_lead_time_seconds"]
    assert (count, total) == (4.0, 2400 + 600 + 1200 + 1800.0)
    # the newest deployment per alias: c5 on triage (no latency measured), c3 on git
    errors = {labels["alias"]: (labels["version"], v)
              for labels, v in metrics["upgate_rollout_latest_error_ratio"]}
    assert errors == {"triage": ("triage-ccc", 0.0), "git": ("abcdef123456", 0.25)}
    assert metrics["upgate_rollout_latest_latency_ratio"] == []  # missing, not 0


def test_a_metrics_token_is_needed_from_everywhere_once_set(
        served: tuple[Runner, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _ = served
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    local = TestClient(client_for(runner).app, client=("127.0.0.1", 40000))
    assert local.get("/metrics").status_code == 401
    assert local.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 401
    remote = client_for(runner)
    assert scrape(remote, Authorization="Bearer s3cret-token")["upgate_rollout_deployments"]


def test_untrusted_label_values_are_escaped_in_the_exposition(
        served: tuple[Runner, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _ = served
    forged = 'x"} upgate_rollout_deployments 999\n#'
    with controlled_clock(monkeypatch):
        put(runner.deps.ledger, at(DAY1, 23, 0), "rollback-x-1", "rollback", "rolled_back",
            {"alias": EVIL, "trigger": forged, "from_version": EVIL})
    metrics = scrape(TestClient(client_for(runner).app, client=("127.0.0.1", 40000)))
    assert metrics["upgate_rollout_deployments"] == [({}, 4.0)]  # not the forged 999
    triggers = {labels["trigger"] for labels, _ in metrics["upgate_rollout_rollbacks"]}
    assert forged in triggers  # read back exactly: escaped on the way out


# the command ------------------------------------------------------------------------------


def invoke(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["report", "--config", str(cfg), *args])
    return result.exit_code, result.output


def test_upgate_report_prints_json_a_table_and_writes_the_page(
        served: tuple[Runner, dict[str, str]], tmp_path: Path) -> None:
    runner, _ = served
    cfg = runner.deps.state_dir.parent / "upgate.toml"
    code, out = invoke(cfg, "--json")
    assert code == 0, out
    report = RolloutReport.model_validate(json.loads(out))
    assert report.totals.deployed == 4 and report.totals.rollback_success_rate == 0.5
    assert [r.reason for r in report.rollbacks].count(EVIL) == 1
    code, out = invoke(cfg, "--since", "2026-11-02", "--html", str(tmp_path / "r.html"))
    assert code == 0, out
    assert "rollback success rate" in out and "66.7% (2 / 3)" in out
    assert "c20" not in out and "c4" in out and "c1 " not in out
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "&lt;script&gt;" in page and "<script" not in page


def test_upgate_report_refuses_a_bad_day_and_says_how_to_write_it(
        served: tuple[Runner, dict[str, str]]) -> None:
    runner, _ = served
    code, out = invoke(runner.deps.state_dir.parent / "upgate.toml", "--since", "yesterday")
    assert code == 2 and "YYYY-MM-DD" in out
