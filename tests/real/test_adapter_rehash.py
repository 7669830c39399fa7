"""Artifacts are what was approved, on the real vLLM server: a tampered adapter folder is
refused before `/v1/load_lora_adapter` is called, a good one loads, and reconcile with a
forged `served` row in a real state.sqlite loads only the version the ledger approved.

The adapter is a copy of the one the server serves under the target's alias, so the
test needs no training; every name it loads is unique and unloaded afterwards."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from upgate.artifacts import freeze_tree
from upgate.deploy.reconcile import reconcile
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import DeployError
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger
from upgate.store import Store

from ..unit.test_artifacts import approved_deploy, forge_served, tamper

pytestmark = pytest.mark.real

ALIAS = "triage"


@pytest.fixture
def admin(vllm_root: str) -> Iterator[tuple[VllmAdmin, list[str]]]:
    """The real server's admin client, and the names to unload when the test ends."""
    client = VllmAdmin(vllm_root)
    names: list[str] = []
    yield client, names
    for name in names:
        client.unload_adapter(name)
    client.close()


def stored_copy(vllm_root: str, dest: Path) -> tuple[Path, str]:
    """A read-only copy of the adapter the server serves under the alias, and its hash."""
    models = httpx.get(f"{vllm_root}/v1/models", timeout=10).json()["data"]
    root = next((m.get("root") for m in models if m["id"] == ALIAS), None)
    if not root or not Path(root).is_dir():
        pytest.skip(f"the server serves no local adapter under {ALIAS!r}")
    shutil.copytree(root, dest)
    freeze_tree(dest)
    return dest, sha256_tree(dest)


def test_a_tampered_adapter_is_refused_before_vllm_is_asked_and_a_good_one_loads(
    admin: tuple[VllmAdmin, list[str]], vllm_root: str, tmp_path: Path
) -> None:
    client, names = admin
    good, digest = stored_copy(vllm_root, tmp_path / "good")
    bad, _ = stored_copy(vllm_root, tmp_path / "bad")
    tamper(bad, "README.md")  # still a loadable adapter: only the hash tells
    tag = secrets.token_hex(4)
    names.extend([f"h2-bad-{tag}", f"h2-good-{tag}"])
    with pytest.raises(DeployError, match="not the approved"):
        client.load_adapter(f"h2-bad-{tag}", bad, expected_sha256=digest)
    assert f"h2-bad-{tag}" not in client.models()
    client.load_adapter(f"h2-good-{tag}", good, expected_sha256=digest)
    served = client.models()[f"h2-good-{tag}"]
    assert served.root == str(good)
    reply = httpx.post(f"{vllm_root}/v1/chat/completions", timeout=60, json={
        "model": f"h2-good-{tag}", "max_tokens": 2,
        "messages": [{"role": "user", "content": "My invoice is wrong"}]})
    assert reply.status_code == 200, reply.text


def test_reconcile_with_a_forged_served_row_loads_only_the_approved_version(
    admin: tuple[VllmAdmin, list[str]], vllm_root: str, tmp_path: Path
) -> None:
    client, names = admin
    tag = secrets.token_hex(4)
    alias = f"h2-alias-{tag}"
    good, digest = stored_copy(vllm_root, tmp_path / "good")
    evil, _ = stored_copy(vllm_root, tmp_path / "evil")
    tamper(evil, "README.md")
    freeze_tree(evil)
    evil_digest = sha256_tree(evil)
    state = tmp_path / "state"
    store, ledger = Store(state / "state.sqlite"), Ledger(state / "ledger.sqlite")
    try:
        store.record_served(alias, f"{alias}@good", good, digest, "d1", "c1")
        approved_deploy(store, ledger, "c1", f"{alias}@good", digest, alias=alias)
        forge_served_for(state, alias, f"{alias}@evil", evil, evil_digest)
        names.extend([alias, f"{alias}@good", f"{alias}@evil"])
        result = reconcile(store, client, alias, ledger)
    finally:
        store.close()
        ledger.close()
    models = client.models()
    assert f"{alias}@evil" not in models
    assert models[f"{alias}@good"].root == str(good)
    assert models[alias].root == str(good) and result["active"] == f"{alias}@good"
    assert any(f"{alias}@evil" in line for line in result["refused"])


def forge_served_for(state: Path, alias: str, version: str, path: Path, digest: str) -> None:
    """`forge_served` for another alias than the unit tier's."""
    import sqlite3

    forge_served(state, version, path, digest)
    conn = sqlite3.connect(state / "state.sqlite", isolation_level=None)
    conn.execute("UPDATE served SET alias = ? WHERE version_name = ?", (alias, version))
    conn.close()
