"""`upgate rollback` as a real subprocess against the real vLLM server: two adapter versions
deployed through the LoRA alias deployer, then the alias is put back on the first
(`/v1/models` shows its folder), a second run changes and records nothing, a cycle's own
rollback restores what it replaced, and a version whose folder changed after approval is
refused with the served alias untouched.

The two versions are copies of the adapter the server serves under the alias (each with a
marker file, so their content hashes differ): no training. The alias is pointed back at
what the server started with, and every name loaded is unloaded, when the test ends."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.vllm import VllmAdmin
from upgate.hashing import sha256_tree
from upgate.ledger import Ledger, open_ledger
from upgate.store import Store

from ..conftest import init_people, make_target_repo, write_config
from ..unit.test_artifacts import tamper
from ..unit.test_rollback import deploy_model

pytestmark = pytest.mark.real

ALIAS = "triage"  # the example target's alias, as the server serves it


@pytest.fixture
def server(vllm_root: str) -> Iterator[tuple[VllmAdmin, Path, list[str]]]:
    """The real server's admin client, the folder it serves the alias from, and the names
    to unload afterwards; the alias goes back to that folder when the test ends."""
    client = VllmAdmin(vllm_root)
    served = client.models().get(ALIAS)
    if served is None or not served.root or not Path(served.root).is_dir():
        pytest.skip(f"the server serves no local adapter under {ALIAS!r}")
    original = Path(served.root)
    names: list[str] = []
    yield client, original, names
    client.point_alias(ALIAS, original, expected_sha256=sha256_tree(original))
    for name in names:
        client.unload_adapter(name)
    client.close()


def served_root(vllm_root: str) -> str | None:
    """What `/v1/models` says the alias is served from."""
    models = httpx.get(f"{vllm_root}/v1/models", timeout=10).json()["data"]
    return next((m.get("root") for m in models if m["id"] == ALIAS), None)


def upgate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a person runs it."""
    env = {**os.environ, "UPGATE_KEY_DIR": str(root / "keys"),
           "UPGATE_SANDBOX__TYPE": "docker"}
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args, "--config",
                           str(root / "upgate.toml")], capture_output=True, text=True,
                          cwd=root, env=env, timeout=300, check=False)


def rollback_records(root: Path) -> list[tuple[str, str]]:
    ledger = open_ledger(root / "state")
    try:
        return [(e.cycle_id, e.event) for e in ledger.entries() if e.node == "rollback"]
    finally:
        ledger.close()


def test_rollback_at_any_time_on_the_real_server(
        server: tuple[VllmAdmin, Path, list[str]], vllm_root: str, tmp_path: Path) -> None:
    client, original, names = server
    tag = secrets.token_hex(3)
    root = tmp_path
    make_target_repo(root / "target")
    write_config(root, base_url=f"{vllm_root}/v1", serving_url=vllm_root, model="smollm2")
    init_people(root)
    versions = {}
    for n in (1, 2):
        folder = root / "adapters" / f"v{n}"
        shutil.copytree(original, folder)
        (folder / "VERSION.txt").write_text(f"{tag} {n}\n")  # vLLM ignores it; the hash not
        versions[f"triage-{tag}-{n}"] = (folder, sha256_tree(folder))
    first, second = list(versions)
    names.extend([first, second, f"{ALIAS}@initial"])
    store, ledger = Store(root / "state" / "state.sqlite"), Ledger(root / "state" / "ledger.sqlite")
    try:
        deployer = LoraAliasDeployer(client, store, ALIAS, ledger)
        deploy_model(ledger, deployer, "c1", first, versions[first])
        deploy_model(ledger, deployer, "c2", second, versions[second])
    finally:
        store.close()
        ledger.close()
    assert served_root(vllm_root) == str(versions[second][0])

    back = upgate(root, "rollback", "--alias", ALIAS, "--to", first, "--as", "alice",
                  "--reason", "second version mislabels billing")
    assert back.returncode == 0, back.stdout + back.stderr
    assert served_root(vllm_root) == str(versions[first][0])
    ledger = open_ledger(root / "state")
    record = ledger.entries()[-1].payload
    ledger.close()
    assert record["verified"]["models_ok"] and record["verified"]["smoke_ok"], record
    assert record["verified"]["detail"]["smoke"]["status"] == 200
    assert (record["from_version"], record["to_version"]) == (second, first)
    recorded = rollback_records(root)

    again = upgate(root, "rollback", "--alias", ALIAS, "--to", first, "--as", "alice",
                   "--reason", "again")
    assert again.returncode == 0 and "already serves" in again.stdout, again.stderr
    assert rollback_records(root) == recorded

    forward = upgate(root, "rollback", "--alias", ALIAS, "--to", second, "--as", "alice",
                     "--reason", "fixed upstream")
    assert forward.returncode == 0, forward.stderr
    assert served_root(vllm_root) == str(versions[second][0])
    cycle = upgate(root, "rollback", "c2", "--as", "alice", "--reason", "regressed live")
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr
    assert served_root(vllm_root) == str(versions[first][0])
    assert rollback_records(root)[-1] == ("c2", "rolled_back")

    tamper(versions[second][0], "VERSION.txt")
    recorded = rollback_records(root)
    refused = upgate(root, "rollback", "--alias", ALIAS, "--to", second, "--as", "alice",
                     "--reason", "try the changed folder")
    assert refused.returncode == 2 and "not the approved" in refused.stderr, refused.stderr
    assert served_root(vllm_root) == str(versions[first][0])
    assert rollback_records(root) == recorded
