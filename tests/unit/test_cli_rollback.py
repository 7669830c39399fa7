"""`upgate rollback` on the command line: only an operator or admin who proves their own
registered key may roll back; a viewer, an approver, an unknown person or a key that is not
theirs is refused with exit 2 and nothing changes. Run in-process over a real state."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from upgate import cli
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.config import Settings, load_settings
from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.testing import FakeVllmAdmin
from upgate.graphs.runner import Runner
from upgate.identity import generate_key, person_key_id
from upgate.ledger import open_ledger

from .test_rollback import deploy_model, make_adapter


@dataclass
class Served:
    fake: FakeVllmAdmin
    v1: str
    v2: str


@pytest.fixture
def served(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Served:
    """c1 deployed triage-v1, then c2 triage-v2, on the vLLM double every command uses."""
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)
    v0 = make_adapter(workdir / "adapters" / "v0", b"zero")
    fake = FakeVllmAdmin({"smollm2": "/base", "triage": str(v0[0])})

    def runner(settings: Settings, for_cycles: bool = True) -> Runner:
        return Runner(build_deps(settings, admin=fake, for_cycles=for_cycles, models={
            a: scripted({}) for a in ("proposer", "coder", "critic")}))

    monkeypatch.setattr(cli, "_runner", runner)
    deps = runner(load_settings(workdir / "upgate.toml")).deps
    deployer = LoraAliasDeployer(fake, deps.store, "triage", deps.ledger)
    folders = {v: make_adapter(workdir / "adapters" / v, v.encode()) for v in ("v1", "v2")}
    for cycle, v in (("c1", "v1"), ("c2", "v2")):
        deploy_model(deps.ledger, deployer, cycle, f"triage-{v}", folders[v])
    deps.store.close()
    deps.ledger.close()
    return Served(fake, str(folders["v1"][0]), str(folders["v2"][0]))


def rollback(workdir: Path, *args: str, key_dir: Path | None = None) -> Result:
    env = {"UPGATE_KEY_DIR": str(key_dir or workdir / "keys")}
    return CliRunner().invoke(cli.app, ["rollback", *args, "--config",
                                        str(workdir / "upgate.toml")], env=env)


def said(result: Result) -> str:
    return " ".join(result.output.split())


def entries(workdir: Path) -> int:
    ledger = open_ledger(workdir / "state")
    try:
        return len(ledger.entries())
    finally:
        ledger.close()


def test_an_operator_rolls_back_once_and_a_second_run_says_it_is_done(
        workdir: Path, served: Served) -> None:
    first = rollback(workdir, "--alias", "triage", "--to", "triage-v1", "--as", "alice",
                     "--reason", "v2 mislabels billing")
    assert first.exit_code == 0, first.output
    assert "rolled_back" in said(first) and "triage-v2 -> triage-v1" in said(first)
    assert served.fake.served["triage"] == served.v1
    ledger = open_ledger(workdir / "state")
    last = ledger.entries()[-1]
    ledger.close()
    assert (last.node, last.event, last.payload["by"]) == ("rollback", "rolled_back", "alice")
    count = entries(workdir)

    again = rollback(workdir, "--alias", "triage", "--to", "triage-v1", "--as", "alice",
                     "--reason", "again")
    assert again.exit_code == 0 and "already serves triage-v1" in said(again)
    assert entries(workdir) == count


@pytest.mark.parametrize(("person", "why"), [
    ("dave", "does not hold the operator or admin role"),   # registered, no role
    ("bob", "does not hold the operator or admin role"),    # an approver
    ("mallory", "mallory"),                                 # nobody registered
])
def test_people_without_the_role_are_refused_and_nothing_changes(
        workdir: Path, served: Served, person: str, why: str, tmp_path: Path) -> None:
    keys = workdir / "keys"
    if person == "mallory":
        keys = tmp_path / "mallory-keys"
        generate_key(person_key_id("mallory"), keys)
    before = (entries(workdir), dict(served.fake.served))
    result = rollback(workdir, "c2", "--as", person, "--reason", "r", key_dir=keys)
    assert result.exit_code == 2 and why in said(result), result.output
    assert (entries(workdir), served.fake.served) == before


def test_a_key_that_is_not_the_persons_own_is_refused(
        workdir: Path, served: Served, tmp_path: Path) -> None:
    forged = tmp_path / "forged"
    generate_key(person_key_id("alice"), forged)  # alice's name, someone else's key
    before = (entries(workdir), dict(served.fake.served))
    result = rollback(workdir, "c2", "--as", "alice", "--reason", "r", key_dir=forged)
    assert result.exit_code == 2 and "not the one registered" in said(result), result.output
    assert (entries(workdir), served.fake.served) == before


@pytest.mark.parametrize("args", [
    ("--reason", "r"),                                            # nothing named
    ("c2", "--alias", "triage", "--to", "triage-v1", "--reason", "r"),  # both
    ("--alias", "triage", "--reason", "r"),                       # no --to
    ("c2",),                                                      # no reason
    ("../c2", "--reason", "r"),                                   # not a cycle id
])
def test_unclear_requests_are_refused_before_anything_runs(
        workdir: Path, served: Served, args: tuple[str, ...]) -> None:
    before = entries(workdir)
    result = rollback(workdir, *args, "--as", "alice")
    assert result.exit_code == 2, result.output
    assert entries(workdir) == before


def test_a_cycle_rollback_and_an_unknown_cycle(
        workdir: Path, served: Served) -> None:
    done = rollback(workdir, "c2", "--as", "alice", "--reason", "regressed")
    assert done.exit_code == 0 and served.fake.served["triage"] == served.v1, done.output
    never = rollback(workdir, "c9", "--as", "alice", "--reason", "r")
    assert never.exit_code == 2 and "no cycle c9" in said(never)
