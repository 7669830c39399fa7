"""`upgate gateway serve|routes|set`: who may change traffic, what is recorded, and the
gateway started as a real process with no upgate.toml."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from upgate.errors import ConfigError
from upgate.gateway.app import VERSION_HEADER
from upgate.gateway.routes import RouteTable
from upgate.gateway.testing import FakeUpstream, gateway_process
from upgate.ledger import open_ledger

from .test_cli import _clean_env, invoke, text  # noqa: F401 (an autouse fixture)

URL = "http://127.0.0.1:9/v1"  # the test configuration's vLLM server


def routes_of(workdir: Path, alias: str) -> list[tuple[str, str, str, int]]:
    table = RouteTable(workdir / "state" / "gateway.db")
    try:
        return [(b.version, b.model, b.base_url, b.weight) for b in table.routes(alias)]
    finally:
        table.close()


def test_parse_backend_reads_version_model_url_and_weight() -> None:
    from upgate.cli_gateway import parse_backend

    b = parse_backend(f"triage@initial=triage@{URL}:80")
    assert (b.version, b.model, b.base_url, b.weight) == ("triage@initial", "triage", URL, 80)
    b = parse_backend("v2=org@name@https://h.example:8443/v1/:0")
    assert (b.model, b.base_url, b.weight) == ("org@name", "https://h.example:8443/v1", 0)
    for bad in ("v1=triage", f"v1=triage@{URL}", f"triage@{URL}:5", f"v1=@{URL}:5",
                "v1=m@ftp://x/v1:5", f"v1=m@{URL}:-5", f"v1=m@{URL}:ten"):
        with pytest.raises(ConfigError, match="VERSION=MODEL@URL:WEIGHT"):
            parse_backend(bad)


def approved_versions(workdir: Path, *versions: str) -> None:
    """Record `versions` of triage as deployed after a signed approval, as a cycle would."""
    from upgate.records import Artifact, Candidate, Deployment
    from upgate.store import Store

    from .signed import record_approval, record_deploy, signed_decision

    ledger, store = open_ledger(workdir / "state"), Store(workdir / "state" / "state.sqlite")
    try:
        for i, version in enumerate(versions):
            cycle = f"c-approved-{i}"
            art = Artifact(name=version, kind="adapter", path=str(workdir / version),
                           sha256=f"{i:064d}")
            candidate = Candidate(proposal_id="p", kind="model", diff="", changed_paths=(),
                                  artifacts=(art,))
            record_approval(ledger, signed_decision(store, ledger, workdir / "keys", cycle,
                                                    candidate.content_hash))
            record_deploy(ledger, cycle, candidate, Deployment(
                target="vllm", deployment_id=f"{cycle}-d", alias="triage",
                version_name=version, adapter_sha256=art.sha256))
    finally:
        ledger.close()
        store.close()


def test_set_by_an_operator_changes_routes_and_is_recorded(workdir: Path) -> None:
    cfg = workdir / "upgate.toml"
    approved_versions(workdir, "triage-old", "triage-abc")
    result = invoke(cfg, "option", "gateway", "set", "triage",
                    f"triage-old=triage-old@{URL}:80",
                    f"triage-abc=triage-abc@{URL}:20", "--reason", "canary by hand")
    assert result.exit_code == 0, result.output
    assert "set by alice" in text(result)
    assert routes_of(workdir, "triage") == [("triage-old", "triage-old", URL, 80),
                                            ("triage-abc", "triage-abc", URL, 20)]
    [entry] = [e for e in open_ledger(workdir / "state").entries()
               if (e.node, e.event) == ("gateway", "routes_set")]
    assert entry.payload["by"] == "alice" and entry.payload["alias"] == "triage"
    assert entry.payload["reason"] == "canary by hand"
    assert [b["weight"] for b in entry.payload["backends"]] == [80, 20]
    shown = invoke(cfg, "env", "gateway", "routes", "triage")
    assert shown.exit_code == 0, shown.output
    assert "80.0%" in text(shown) and "triage-abc" in text(shown)
    assert "set by alice: canary by hand" in text(shown)
    as_json = json.loads(invoke(cfg, "env", "gateway", "routes", "--json").output)
    assert [b["version"] for b in as_json["routes"]["triage"]] == ["triage-old", "triage-abc"]
    assert as_json["last_change"]["triage"]["generation"] == entry.payload["generation"]


@pytest.mark.parametrize("backend", [
    f"triage-evil=triage-evil@{URL}:100",            # never approved
    f"triage-old=triage-evil@{URL}:100",             # an approved name, another model
    "triage-old=triage-old@http://127.0.0.1:9999/v1:100",  # an approved name, another server
])
def test_set_to_anything_not_approved_for_the_alias_changes_nothing(workdir: Path,
                                                                    backend: str) -> None:
    """Routing traffic to a version is a served-model swap: only approved versions, served
    under their own name by the configured server, may get any."""
    approved_versions(workdir, "triage-old")
    result = invoke(workdir / "upgate.toml", "option", "gateway", "set", "triage", backend,
                    "--reason", "quick swap")
    assert result.exit_code == 2, result.output
    assert "Nothing changed" in text(result) or "nothing changed" in text(result)
    assert routes_of(workdir, "triage") == []
    assert not [e for e in open_ledger(workdir / "state").entries() if e.node == "gateway"]


@pytest.mark.parametrize("who", ["bob", "dave"])  # an approver only; no role at all
def test_set_without_the_operator_or_admin_role_changes_nothing(workdir: Path,
                                                                 who: str) -> None:
    cfg = workdir / "upgate.toml"
    result = invoke(cfg, "env", "gateway", "set", "triage", f"v=triage@{URL}:1", "--as", who)
    assert result.exit_code == 2
    assert "operator or admin" in text(result)
    assert routes_of(workdir, "triage") == []
    assert not [e for e in open_ledger(workdir / "state").entries() if e.node == "gateway"]


def test_set_with_someone_elses_key_folder_is_refused(workdir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-keys"
    empty.mkdir()
    result = invoke(workdir / "upgate.toml", "env", "gateway", "set", "triage",
                    f"v=triage@{URL}:1", key_dir=empty)
    assert result.exit_code == 2
    assert routes_of(workdir, "triage") == []


def test_set_with_a_malformed_backend_or_no_weight_says_what_to_write(workdir: Path) -> None:
    cfg = workdir / "upgate.toml"
    bad = invoke(cfg, "env", "gateway", "set", "triage", "v=triage")
    assert bad.exit_code == 2 and "VERSION=MODEL@URL:WEIGHT" in text(bad)
    approved_versions(workdir, "triage-old")
    idle = invoke(cfg, "env", "gateway", "set", "triage", f"triage-old=triage-old@{URL}:0")
    assert idle.exit_code == 2 and "no backend carries weight" in text(idle)
    assert not [e for e in open_ledger(workdir / "state").entries() if e.node == "gateway"]


def test_serve_without_a_config_asks_for_db_and_upstream(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from upgate import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["gateway", "serve"])
    assert result.exit_code == 2
    assert "--db and --upstream" in " ".join(result.output.split())


def test_serve_runs_as_a_process_with_no_config(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    with FakeUpstream("default", models=("base",)) as up, gateway_process(db, up.url) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "base"})
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == "passthrough"
        assert r.json()["served_by"] == "default"
    assert [s["status"] for s in RouteTable(db).samples("base")] == [200]
