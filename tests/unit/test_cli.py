"""The command line: a token is shown once, only an admin's key changes people, a wrong key
changes nothing, an empty state reads cleanly, a config error names its key. Each test
runs `upgate.cli.app` in-process."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from upgate import cli
from upgate.agents.testing import scripted
from upgate.app import build_deps
from upgate.approvals import authenticate
from upgate.config import Settings
from upgate.graphs.runner import Runner
from upgate.identity import generate_key
from upgate.ledger import open_ledger
from upgate.store import Store

HOW = [pytest.param("env", id="UPGATE_CONFIG"),
       pytest.param("option", id="--config")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No UPGATE_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def scripted_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that build a Runner get scripted models (the unit tier forbids real ones)."""

    def runner(settings: Settings, for_cycles: bool = True) -> Runner:
        return Runner(build_deps(settings, models={
            a: scripted({}) for a in ("proposer", "coder", "critic")}, for_cycles=for_cycles))

    monkeypatch.setattr(cli, "_runner", runner)


def invoke(cfg: Path, how: str, *args: str, key_dir: Path | None = None) -> Result:
    """Run `upgate ARGS` with the config passed as an option or through UPGATE_CONFIG."""
    env = {"UPGATE_KEY_DIR": str(key_dir if key_dir is not None else cfg.parent / "keys")}
    if how == "option":
        return CliRunner().invoke(cli.app, [*args, "--config", str(cfg)], env=env)
    return CliRunner().invoke(cli.app, list(args), env={**env, "UPGATE_CONFIG": str(cfg)})


def text(result: Result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def state_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file())


def recorded(workdir: Path, people: Store) -> tuple[object, ...]:
    """What a decision could change: the ledger, the people, the target's branches."""
    ledger = open_ledger(workdir / "state")
    try:
        entries = ledger.entries()
    finally:
        ledger.close()
    branches = sorted(p.name for p in (workdir / "target" / ".git" / "refs" / "heads").iterdir())
    rows = people.execute("SELECT name, token_sha256, public_key FROM people ORDER BY name")
    return entries, rows, people.identity_records(), branches


@pytest.fixture
def people(workdir: Path) -> Iterator[Store]:
    store = Store(workdir / "state" / "state.sqlite")
    yield store
    store.close()


def add(workdir: Path, name: str, how: str = "env") -> str:
    result = invoke(workdir / "upgate.toml", how, "person", "add", name, "--as", "alice")
    assert result.exit_code == 0, result.output
    match = re.search(rf"^{re.escape(name)}: token (\S+)$", result.output, re.MULTILINE)
    assert match, result.output
    return match.group(1)


@pytest.mark.parametrize("how", HOW)
def test_person_add_prints_a_token_once_and_stores_only_its_hash(
    workdir: Path, people: Store, how: str
) -> None:
    result = invoke(workdir / "upgate.toml", how, "person", "add", "erin", "--as", "alice")
    assert result.exit_code == 0, result.output
    token = re.findall(r"erin: token (\S+)", result.output)
    assert len(token) == 1 and result.output.count(token[0]) == 1
    assert authenticate(people, "erin", token[0]) == "erin"
    assert token[0].encode() not in state_bytes(workdir / "state")
    assert (workdir / "keys" / "person-erin.key").is_file()  # outside the state folder
    assert b"PRIVATE KEY" not in state_bytes(workdir / "state")
    ledger = open_ledger(workdir / "state")
    try:
        added = [e.payload for e in ledger.entries("admin") if e.event == "person.add"]
        assert added[-1]["record"]["name"] == "erin"
        assert added[-1]["signer"] == "person:alice"  # an admin-signed record
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_person_add_again_is_refused_and_says_rekey(workdir: Path, people: Store) -> None:
    before = recorded(workdir, people)
    result = invoke(workdir / "upgate.toml", "env", "person", "add", "bob", "--as", "alice")
    assert result.exit_code == 2, result.output
    assert "'bob' is already registered" in text(result) and "rekey" in text(result)
    assert recorded(workdir, people) == before


@pytest.mark.parametrize(("args", "why"), [
    (["person", "rekey", "bob"], "Missing option '--as'"),
    (["person", "rekey", "bob", "--as", "carol"], "person:carol, who is not an admin"),
    (["person", "rekey", "bob", "--as", "dave"], "person:dave, who is not an admin"),
    (["person", "add", "bob2", "--as", "bob"], "person:bob, who is not an admin"),
    (["person", "remove", "bob", "--as", "carol"], "person:carol, who is not an admin"),
    (["person", "rekey", "bob", "--as", "mallory"], "no private key for person:mallory"),
])
def test_rekeying_bob_without_an_admin_credential_changes_nothing(
    workdir: Path, people: Store, args: list[str], why: str
) -> None:
    """Attack: the requester (or anyone without an admin's key) re-keys an approver."""
    before = recorded(workdir, people)
    result = invoke(workdir / "upgate.toml", "env", *args)
    assert result.exit_code == 2, result.output
    assert why in text(result)
    assert recorded(workdir, people) == before


def test_rekeying_with_a_copied_admin_name_but_another_key_changes_nothing(
    workdir: Path, people: Store, tmp_path: Path
) -> None:
    """Attack: a fresh key file named as alice's (alice's name, mallory's key)."""
    forged = tmp_path / "forged-keys"
    generate_key("person:alice", forged)
    before = recorded(workdir, people)
    result = invoke(workdir / "upgate.toml", "env", "person", "rekey", "bob", "--as", "alice",
                    key_dir=forged)
    assert result.exit_code == 2, result.output
    assert "signature does not verify" in text(result)
    assert recorded(workdir, people) == before


@pytest.mark.usefixtures("scripted_runner")
def test_an_admin_rekeys_bob_and_his_old_key_stops_working(workdir: Path) -> None:
    old = (workdir / "keys" / "person-bob.key").read_bytes()
    result = invoke(workdir / "upgate.toml", "env", "person", "rekey", "bob", "--as", "alice")
    assert result.exit_code == 0, result.output
    assert (workdir / "keys" / "person-bob.key").read_bytes() != old
    stale = workdir / "stale-keys"
    stale.mkdir()
    (stale / "person-bob.key").write_bytes(old)
    refused = invoke(workdir / "upgate.toml", "env", "approve", "c1", "--as", "bob",
                     key_dir=stale)
    assert refused.exit_code == 2 and "not the one registered" in text(refused)


@pytest.mark.parametrize("name", ["bob smith", "upgate:autonomous", "../bob", "Bob"])
def test_person_add_refuses_a_bad_or_taken_name_and_records_nothing(
    workdir: Path, people: Store, name: str
) -> None:
    before = recorded(workdir, people)
    result = invoke(workdir / "upgate.toml", "env", "person", "add", name, "--as", "alice")
    assert result.exit_code == 2, result.output
    assert "invalid name" in text(result) or "'bob' is already registered" in text(result)
    assert "token" not in result.output.split("error")[0]
    assert recorded(workdir, people) == before


@pytest.mark.usefixtures("scripted_runner")
@pytest.mark.parametrize("how", ["env", "option"])
@pytest.mark.parametrize(("as_", "keys", "why"), [
    ("bob", "empty", "no private key for person:bob"),
    ("bob", "alice-as-bob", "not the one registered for them"),
    ("mallory", "own", "'mallory' is not a registered person"),
    ("dave", "own", "does not hold the approver role"),
])
def test_approve_without_the_approvers_registered_key_exits_2_and_changes_nothing(
    workdir: Path, people: Store, tmp_path: Path, how: str, as_: str, keys: str, why: str
) -> None:
    folder = tmp_path / "other-keys"
    folder.mkdir()
    if keys == "alice-as-bob":
        (folder / "person-bob.key").write_bytes(
            (workdir / "keys" / "person-alice.key").read_bytes())
    elif keys == "own":
        if (workdir / "keys" / f"person-{as_}.key").exists():
            folder = workdir / "keys"
        else:
            generate_key(f"person:{as_}", folder)
    before = recorded(workdir, people)
    result = invoke(workdir / "upgate.toml", how, "approve", "c1", "--as", as_, key_dir=folder)
    assert result.exit_code == 2, result.output
    assert why in text(result)
    assert recorded(workdir, people) == before
    # The same command with bob's registered key gets past identification (and then finds
    # no waiting cycle), so the refusal above was the key's doing.
    ok = invoke(workdir / "upgate.toml", how, "approve", "c1", "--as", "bob")
    assert ok.exit_code == 2 and "not waiting for a decision" in text(ok), ok.output


@pytest.mark.usefixtures("scripted_runner")
def test_approve_takes_the_key_folder_from_the_option(workdir: Path, tmp_path: Path) -> None:
    env = {"UPGATE_CONFIG": str(workdir / "upgate.toml"), "UPGATE_KEY_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli.app, ["approve", "c1", "--as", "bob"], env=env)
    assert result.exit_code == 2 and "no private key for person:bob" in text(result)
    result = CliRunner().invoke(cli.app, ["approve", "c1", "--as", "bob", "--key-dir",
                                          str(workdir / "keys")], env=env)
    assert "not waiting for a decision" in text(result), result.output


@pytest.mark.usefixtures("scripted_runner")
@pytest.mark.parametrize("cycle", ["../c1", "c1;rm", "C1", "c" + "1" * 80, "x1", "c1/../c2"])
def test_a_malformed_cycle_id_is_refused(workdir: Path, cycle: str) -> None:
    for command in (["approve", cycle, "--as", "bob"], ["resume", cycle],
                    ["cancel", cycle, "--as", "alice", "--reason", "x"]):
        result = invoke(workdir / "upgate.toml", "env", *command)
        assert result.exit_code == 2, result.output
        assert "invalid cycle id" in text(result)
    assert not (workdir / "state" / "locks").exists() or not any(
        ".." in p.name or "/" in p.name for p in (workdir / "state" / "locks").iterdir())


@pytest.mark.parametrize("how", HOW)
def test_history_on_an_empty_state_prints_a_table(tmp_path: Path, how: str) -> None:
    from ..conftest import write_config

    cfg = write_config(tmp_path)
    result = invoke(cfg, how, "history")
    assert result.exit_code == 0, result.output
    for column in ("cycle", "outcome", "recipe", "entries", "started"):
        assert column in result.output


def test_history_of_an_unknown_cycle_prints_an_empty_table(tmp_path: Path) -> None:
    from ..conftest import write_config

    one = invoke(write_config(tmp_path), "env", "history", "c-none")
    assert one.exit_code == 0, one.output
    assert "seq" in one.output and "lineage" not in one.output


def write_two_cycles(workdir: Path) -> None:
    ledger = open_ledger(workdir / "state")
    try:
        ledger.append("c1", "start", "started", {"requester": "alice"})
        ledger.append("c1", "record", "rejected", {"recipe": "few_shot",
                                                   "lineage": {"policy_version": "test@1+ab"}})
        ledger.append("c2", "start", "started", {"requester": "alice"})
    finally:
        ledger.close()


def test_history_lists_cycles(workdir: Path) -> None:
    write_two_cycles(workdir)
    listing = invoke(workdir / "upgate.toml", "env", "history")
    assert listing.exit_code == 0, listing.output
    rows = {line.split("│")[1].strip(): line for line in listing.output.splitlines()
            if line.count("│") > 2}
    assert "rejected" in rows["c1"] and "few_shot" in rows["c1"]
    assert "(open)" in rows["c2"]


def test_history_of_a_cycle_lists_its_entries_and_lineage(workdir: Path) -> None:
    write_two_cycles(workdir)
    one = invoke(workdir / "upgate.toml", "env", "history", "c1")
    assert one.exit_code == 0, one.output
    assert "rejected" in one.output and "test@1+ab" in text(one)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("command", [["verify"], ["history"],
                                     ["person", "add", "bob", "--as", "alice"]])
def test_a_config_error_exits_2_naming_the_key(
    tmp_path: Path, how: str, command: list[str]
) -> None:
    from ..conftest import make_target_repo, write_config

    workdir = tmp_path
    make_target_repo(workdir / "target")
    cfg = write_config(workdir)
    cfg.write_text(cfg.read_text().replace('model = "scripted"\n', "", 1))
    result = invoke(cfg, how, *command)
    assert result.exit_code == 2, result.output
    msg = text(result)
    assert "agents.proposer.model" in msg and "UPGATE_AGENTS__PROPOSER__MODEL" in msg
    assert "Traceback" not in result.output
    assert not (workdir / "state").exists()  # nothing was created on the way to the error


@pytest.mark.parametrize("how", HOW)
def test_a_missing_config_file_exits_2_saying_how_to_create_one(tmp_path: Path,
                                                                 how: str) -> None:
    result = invoke(tmp_path / "nope.toml", how, "verify")
    assert result.exit_code == 2, result.output
    msg = text(result)
    assert "nope.toml not found" in msg and "--config" in msg


def test_verify_reports_a_tampered_ledger_with_exit_1(tmp_path: Path) -> None:
    from ..conftest import write_config

    workdir = tmp_path  # a state with no people yet: only the three entries below
    write_config(workdir)
    ledger = open_ledger(workdir / "state")
    try:
        for i in range(3):
            ledger.append("c1", "node", "event", {"i": i})
    finally:
        ledger.close()
    cfg = workdir / "upgate.toml"
    good = invoke(cfg, "env", "verify")
    assert good.exit_code == 0 and "3 entries" in good.output, good.output
    (workdir / "state" / "ledger.sqlite.head").unlink()
    bad = invoke(cfg, "env", "verify")
    assert bad.exit_code == 1, bad.output
    assert "head file ledger.sqlite.head is missing" in text(bad)
