"""Shared fixtures: the bundled example target as a git repo, settings, scripted parts."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from upgate.evals.testing import OracleClient as OracleClient  # shared with the tests

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_TARGET = REPO / "examples" / "ticket-triage"
EXAMPLE_SUITE = REPO / "examples" / "suites" / "ticket-triage"


def make_target_repo(dest: Path) -> Path:
    """A fresh git repository holding the example target on branch main."""
    shutil.copytree(EXAMPLE_TARGET, dest, ignore=shutil.ignore_patterns("__pycache__",
                                                                        ".pytest_cache"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial"]):
        subprocess.run(["git", "-C", str(dest), *args], check=True)
    return dest


POLICY = """
name = "test"
version = "1"
approvers = ["bob", "carol"]
protected_paths = ["tests/**"]

[roles]
admin = ["alice"]
operator = ["alice"]
approver = ["bob", "carol"]

[kinds.code]
allowed = true
[kinds.prompt]
allowed = true
[kinds.config]
allowed = true
[kinds.model]
allowed = true
approval = "auto"   # ignored: a served-model change always needs a human

[thresholds]
max_revisions = 1
min_gain = 0.0
regression_tolerance = 0.05
"""


def write_config(tmp: Path, *, sandbox: str = "fake", base_url: str = "http://127.0.0.1:9/v1",
                 serving_url: str = "http://127.0.0.1:9", model: str = "scripted",
                 extra: str = "") -> Path:
    """An upgate.toml for tests."""
    (tmp / "policy.toml").write_text(POLICY)
    agents = "\n".join(
        f'[agents.{a}]\nbase_url = "{base_url}"\nmodel = "{model}"\noutput_retries = 1\n'
        for a in ("proposer", "coder", "critic")
    )
    cfg = tmp / "upgate.toml"
    cfg.write_text(
        f'state_dir = "state"\npolicy = "policy.toml"\noperator = "alice"\n{extra}\n'
        f'[target]\npath = "target"\nsuite = "{EXAMPLE_SUITE}"\n\n'
        f'[serving]\nbase_url = "{serving_url}"\n\n'
        f'[sandbox]\ntype = "{sandbox}"\n\n{agents}'
    )
    return cfg


def suite_answers() -> dict[str, str]:
    """Ticket text -> expected label, over both splits of the example suite."""
    out: dict[str, str] = {}
    for name in ("visible.jsonl", "hidden.jsonl"):
        for line in (EXAMPLE_SUITE / name).read_text().splitlines():
            if line.strip():
                case = json.loads(line)
                out[case["input"]] = case["expected"]
    return out


PEOPLE = ("bob", "carol", "dave")
"""Registered besides alice (the first admin and operator); dave holds no role."""


def init_people(workdir: Path, people: Sequence[str] = PEOPLE) -> Path:
    """`upgate init --admin alice` plus people registered by alice; returns the key dir
    (`workdir/keys`, outside the state folder) holding everyone's private key."""
    from upgate import admin
    from upgate.config import load_settings
    from upgate.identity import generate_key, load_signer, person_key_id
    from upgate.ledger import open_ledger
    from upgate.store import Store

    settings = load_settings(workdir / "upgate.toml")
    keys = workdir / "keys"
    store, ledger = Store(settings.state_dir / "state.sqlite"), open_ledger(settings.state_dir)
    try:
        admin.init_state(store, ledger, admin="alice", policy_text=settings.policy.read_text(),
                         key_dir=keys)
        alice = load_signer(person_key_id("alice"), keys)
        for name in people:
            admin.add_person(store, ledger, alice, name,
                             public_key=generate_key(person_key_id(name), keys))
    finally:
        store.close()
        ledger.close()
    return keys


def adopt(workdir: Path) -> None:
    """alice adopts the policy file as it is now (after a test edited it)."""
    from upgate import admin
    from upgate.identity import load_signer, person_key_id
    from upgate.ledger import open_ledger
    from upgate.store import Store

    store, ledger = Store(workdir / "state" / "state.sqlite"), open_ledger(workdir / "state")
    try:
        admin.adopt_policy(store, ledger, load_signer(person_key_id("alice"), workdir / "keys"),
                           (workdir / "policy.toml").read_text())
    finally:
        store.close()
        ledger.close()


def decide(runner: Any, cycle_id: str, action: str, person: str, reason: str = "",
           evidence_hash: str | None = None) -> Any:
    """`runner.decide` signed with `person`'s own key, on the evidence the request shows."""
    from upgate.identity import load_signer, person_key_id

    request = runner.pending(cycle_id) or {}
    signer = load_signer(person_key_id(person), runner.deps.state_dir.parent / "keys")
    return runner.decide(cycle_id, action=action, person=person, reason=reason, signer=signer,
                         evidence_hash=evidence_hash or request.get("evidence_hash", ""))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a target repo, a config using the fake sandbox, and an initialised
    state: alice (admin, operator), bob and carol (approvers), dave (no role); their
    private keys in `keys/`, outside `state/`."""
    make_target_repo(tmp_path / "target")
    write_config(tmp_path)
    init_people(tmp_path)
    return tmp_path
