"""Artifacts are what was approved: an adapter is re-hashed before every load and refused
on a mismatch before the server is asked; the artifact store keeps it read-only; reconcile
loads only versions the ledger shows approved and deployed, whatever the state table says.
The HTTP side here records requests; tests/real/test_adapter_rehash.py runs on real vLLM."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from upgate.artifacts import freeze_tree
from upgate.deploy.reconcile import ledger_versions, reconcile
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import DeployError
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.records import Artifact, Candidate, Deployment
from upgate.store import Store

from .signed import ensure_people, record_approval, record_deploy, signed_decision


def make_adapter(folder: Path, weights: bytes = b"weights") -> tuple[Path, str]:
    """A stored adapter folder, read-only, and its content hash."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    freeze_tree(folder)
    return folder, sha256_tree(folder)


def tamper(folder: Path, name: str = "adapter_model.safetensors") -> None:
    """Edit a file after approval, as the folder's owner (who can undo read-only) would."""
    folder.chmod(0o755)
    (folder / name).chmod(0o644)
    with (folder / name).open("ab") as fh:
        fh.write(b"\x00backdoor")


class Recorder:
    """The vLLM admin endpoints as a recording HTTP transport (no server in the unit tier)."""

    def __init__(self) -> None:
        self.served: dict[str, str] = {"smollm2": "/base"}
        self.posts: list[tuple[str, dict[str, object]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            data = [{"id": k, "root": v} for k, v in self.served.items()]
            return httpx.Response(200, json={"data": data})
        body = json.loads(request.content)
        self.posts.append((request.url.path, body))
        if request.url.path == "/v1/load_lora_adapter":
            self.served[str(body["lora_name"])] = str(body["lora_path"])
        return httpx.Response(200, text="ok")


@pytest.fixture
def server() -> tuple[VllmAdmin, Recorder]:
    rec = Recorder()
    admin = VllmAdmin("http://127.0.0.1:9")
    admin._http = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(rec))
    return admin, rec


def test_the_artifact_store_keeps_adapters_read_only(tmp_path: Path) -> None:
    folder, _ = make_adapter(tmp_path / "a")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}
    assert modes == {"a": 0o555, "adapter_config.json": 0o444,
                     "adapter_model.safetensors": 0o444}


def test_an_untouched_adapter_loads(server: tuple[VllmAdmin, Recorder], tmp_path: Path) -> None:
    admin, rec = server
    folder, digest = make_adapter(tmp_path / "a")
    admin.ensure_loaded("triage@a", folder, expected_sha256=digest)
    admin.point_alias("triage", folder, expected_sha256=digest)
    assert [p for p, _ in rec.posts] == ["/v1/load_lora_adapter"] * 2


@pytest.mark.parametrize("how", ["ensure_loaded", "point_alias", "load_adapter"])
def test_an_adapter_edited_after_approval_is_refused_before_any_request(
    server: tuple[VllmAdmin, Recorder], tmp_path: Path, how: str
) -> None:
    admin, rec = server
    folder, digest = make_adapter(tmp_path / "a")
    tamper(folder)
    with pytest.raises(DeployError, match="not the approved"):
        getattr(admin, how)("triage", folder, expected_sha256=digest)
    assert rec.posts == []


@pytest.mark.parametrize("attack", ["symlink", "added_file", "missing", "renamed"])
def test_other_changes_to_an_adapter_folder_are_refused(
    server: tuple[VllmAdmin, Recorder], tmp_path: Path, attack: str
) -> None:
    admin, rec = server
    folder, digest = make_adapter(tmp_path / "a")
    folder.chmod(0o755)
    if attack == "symlink":
        (tmp_path / "outside").write_bytes(b"weights")
        (folder / "adapter_model.safetensors").unlink()
        (folder / "adapter_model.safetensors").symlink_to(tmp_path / "outside")
    elif attack == "added_file":
        (folder / "extra.py").write_text("import os\n")
    elif attack == "missing":
        folder = tmp_path / "nowhere"
    else:
        (folder / "adapter_config.json").rename(folder / "adapter_config.json.bak")
    with pytest.raises(DeployError, match="refusing to load"):
        admin.load_adapter("triage@a", folder, expected_sha256=digest)
    assert rec.posts == []


# --- reconcile ---------------------------------------------------------------------------


def approved_deploy(store: Store, ledger: Ledger, cycle: str, version: str, digest: str,
                    previous: dict[str, str] | None = None, *, approver: str = "bob",
                    alias: str = "triage") -> None:
    """The ledger entries of a cycle whose model change a person approved and deployed
    (a signed decision; "policy:..." records an approval with no signed decision)."""
    art = Artifact(name=version, kind="adapter", path="adapters/" + version, sha256=digest)
    candidate = Candidate(proposal_id="p", kind="model", diff="", changed_paths=(),
                          artifacts=(art,))
    keys = Path(ledger.path).parent.parent / "keys"
    ensure_people(store, ledger, keys)
    if approver.startswith("policy:"):
        ledger.append(cycle, "approve", "approve", {"approver": approver})
    else:
        record_approval(ledger, signed_decision(store, ledger, keys, cycle,
                                                candidate.content_hash, approver))
    record_deploy(ledger, cycle, candidate, Deployment(
        target="vllm", alias=alias, version_name=version, adapter_sha256=digest,
        deployment_id=f"{cycle}-d", previous=previous))


def forge_served(state: Path, version: str, path: Path, digest: str) -> None:
    """The attacker's row in state.sqlite: a version nobody approved, marked active."""
    conn = sqlite3.connect(state / "state.sqlite", isolation_level=None)
    conn.execute("UPDATE served SET active = 0")
    conn.execute("INSERT INTO served VALUES ('triage', ?, ?, ?, 'forged', 'forged', "
                 "'2999-01-01T00:00:00+00:00', 1)", (version, str(path), digest))
    conn.close()


Registry = tuple[Store, Ledger, dict[str, tuple[Path, str]]]
Server = tuple[VllmAdmin, Recorder]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """Two approved deployments (v0 -> v1) recorded in the ledger and the state table."""
    state = tmp_path / "state"
    store, ledger = Store(state / "state.sqlite"), Ledger(state / "ledger.sqlite")
    v0 = make_adapter(tmp_path / "v0", b"zero")
    v1 = make_adapter(tmp_path / "v1", b"one")
    store.record_served("triage", "triage@v0", v0[0], v0[1], "d0", "c0")
    approved_deploy(store, ledger, "c0", "triage@v0", v0[1])
    store.record_served("triage", "triage@v1", v1[0], v1[1], "d1", "c1")
    approved_deploy(store, ledger, "c1", "triage@v1", v1[1],
                    {"version_name": "triage@v0", "sha256": v0[1], "path": str(v0[0])})
    return store, ledger, {"v0": v0, "v1": v1}


def test_reconcile_loads_the_approved_versions_and_points_at_the_last_deployed(
    server: Server, registry: Registry
) -> None:
    admin, rec = server
    store, ledger, v = registry
    result = reconcile(store, admin, "triage", ledger)
    assert result["refused"] == [] and result["active"] == "triage@v1"
    assert sorted(result["loaded"]) == ["triage@v0", "triage@v1"]
    assert rec.served["triage"] == str(v["v1"][0])


def forged_reconcile(server: Server, registry: Registry, tmp: Path, name: str,
                     digest: str | None) -> dict[str, object]:
    """Plant a served row for an unapproved adapter, reconcile, check it was never sent."""
    admin, rec = server
    store, ledger, _ = registry
    evil, evil_digest = make_adapter(tmp / "evil", b"evil")
    forge_served(tmp / "state", name, evil, digest or evil_digest)
    assert store.active_version("triage")["version_name"] == name  # type: ignore[index]
    result = reconcile(store, admin, "triage", ledger)
    assert str(evil) not in {str(b["lora_path"]) for _, b in rec.posts}
    return result


def test_reconcile_ignores_a_forged_served_row(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    _, rec = server
    v = registry[2]
    result = forged_reconcile(server, registry, tmp_path, "triage@evil", None)
    assert rec.served["triage"] == str(v["v1"][0]) and result["active"] == "triage@v1"
    assert any("triage@evil" in line for line in result["refused"])  # type: ignore[attr-defined]


def test_reconcile_refuses_an_approved_name_pointing_at_other_files(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    v1_digest = registry[2]["v1"][1]  # the right name and hash, other files
    result = forged_reconcile(server, registry, tmp_path, "triage@v1", v1_digest)
    assert any("not the approved" in line for line in result["refused"])  # type: ignore[attr-defined]


def test_the_ledger_view_needs_a_person_s_approval(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "state.sqlite")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    ledger.append("c9", "deploy", "deployed", {"deployment": {
        "target": "vllm", "alias": "triage", "version_name": "triage@x", "adapter_sha256": "x"}})
    approved_deploy(store, ledger, "c8", "triage@y", "y", approver="policy:auto")
    assert ledger_versions(ledger, "triage", store) == ({}, None)
    approved_deploy(store, ledger, "c7", "triage@z", "z")
    ledger.append("c7", "rollback", "rolled_back", {"restored": "triage@initial"})
    assert ledger_versions(ledger, "triage", store) == ({"triage@z": "z"}, "triage@z")


def test_reconcile_refuses_to_act_on_a_ledger_that_does_not_verify(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from upgate import cli

    from .test_cli_untrusted import hostile_replies
    from .test_cycle import make_runner

    state = workdir / "state"
    store, ledger = Store(state / "state.sqlite"), Ledger(state / "ledger.sqlite")
    approved_deploy(store, ledger, "c1", "triage@v1", "0" * 64)
    ledger.close()
    store.close()
    conn = sqlite3.connect(workdir / "state" / "ledger.sqlite", isolation_level=None)
    conn.execute("DROP TRIGGER ledger_no_update")
    conn.execute("UPDATE ledger SET payload = '{\"approver\":\"mallory\"}' WHERE cycle_id = 'c1'")
    conn.close()
    monkeypatch.setattr(cli, "_runner", lambda settings: make_runner(workdir,
                                                                     hostile_replies())[0])
    result = CliRunner().invoke(cli.app, ["reconcile", "--config", str(workdir / "upgate.toml")])
    assert result.exit_code == 2, result.output
    assert "does not verify" in " ".join(result.output.split())
