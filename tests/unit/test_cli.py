"""The command line: a token is shown once, a wrong token changes nothing, an empty state
reads cleanly, a config error names its key. Each test runs `upgate.cli.app` in-process."""

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
from upgate.errors import ApprovalError
from upgate.graphs.runner import Runner
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

    def runner(settings: Settings) -> Runner:
        return Runner(build_deps(settings, models={
            a: scripted({}) for a in ("proposer", "coder", "critic")}))

    monkeypatch.setattr(cli, "_runner", runner)


def invoke(cfg: Path, how: str, *args: str, token: str | None = None) -> Result:
    """Run `upgate ARGS` with the config passed as an option or through UPGATE_CONFIG."""
    env = {"UPGATE_TOKEN": token} if token is not None else {}
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
    hashes = [people.token_hash(n) for n in people.people()]
    return entries, hashes, branches


@pytest.fixture
def people(workdir: Path) -> Iterator[Store]:
    store = Store(workdir / "state" / "state.sqlite")
    yield store
    store.close()


def add(workdir: Path, name: str, how: str = "env") -> str:
    result = invoke(workdir / "upgate.toml", how, "person", "add", name)
    assert result.exit_code == 0, result.output
    match = re.search(rf"^{re.escape(name)}: token (\S+)$", result.output, re.MULTILINE)
    assert match, result.output
    return match.group(1)


@pytest.mark.parametrize("how", HOW)
def test_person_add_prints_a_token_once_and_stores_only_its_hash(
    workdir: Path, people: Store, how: str
) -> None:
    result = invoke(workdir / "upgate.toml", how, "person", "add", "bob")
    assert result.exit_code == 0, result.output
    token = re.findall(r"bob: token (\S+)", result.output)
    assert len(token) == 1 and result.output.count(token[0]) == 1
    assert authenticate(people, "bob", token[0]) == "bob"
    assert token[0].encode() not in state_bytes(workdir / "state")
    ledger = open_ledger(workdir / "state")
    try:
        added = [(e.node, e.event, e.payload) for e in ledger.entries("admin")]
        assert added == [("person", "added", {"name": "bob"})]
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_person_add_again_rotates_the_token(workdir: Path, people: Store) -> None:
    old = add(workdir, "bob")
    new = add(workdir, "bob")
    assert new != old
    with pytest.raises(ApprovalError, match="wrong token"):
        authenticate(people, "bob", old)
    assert authenticate(people, "bob", new) == "bob"


@pytest.mark.parametrize("name", ["bob smith", "upgate:autonomous"])
def test_person_add_refuses_a_bad_name_and_records_nothing(
    workdir: Path, people: Store, name: str
) -> None:
    result = invoke(workdir / "upgate.toml", "env", "person", "add", name)
    assert result.exit_code == 2, result.output
    assert "invalid name" in text(result)
    assert "token" not in result.output.split("invalid name")[0]
    assert people.people() == []
    ledger = open_ledger(workdir / "state")
    try:
        assert ledger.entries() == []
    finally:
        ledger.close()


@pytest.mark.usefixtures("scripted_runner")
@pytest.mark.parametrize("how", ["env", "option"])
@pytest.mark.parametrize(("as_", "token", "why"), [
    ("bob", "not-the-token", "wrong token for 'bob'"),
    ("bob", "", "no token for 'bob'"),
    ("mallory", "anything", "'mallory' is not a registered person"),
    ("bob", "ALICE", "wrong token for 'bob'"),  # alice's own token, used as bob
])
def test_approve_with_a_bad_token_exits_2_and_changes_nothing(
    workdir: Path, people: Store, how: str, as_: str, token: str, why: str
) -> None:
    bob = add(workdir, "bob")
    alice = add(workdir, "alice")
    token = alice if token == "ALICE" else token
    before = recorded(workdir, people)
    result = invoke(workdir / "upgate.toml", how, "approve", "c1", "--as", as_, token=token)
    assert result.exit_code == 2, result.output
    assert why in text(result)
    assert recorded(workdir, people) == before
    assert authenticate(people, "bob", bob) == "bob"
    # The same command with bob's real token gets past authentication (and then finds no
    # waiting cycle), so the refusal above was the token's doing.
    ok = invoke(workdir / "upgate.toml", how, "approve", "c1", "--as", "bob", token=bob)
    assert ok.exit_code == 2 and "not waiting for a decision" in text(ok), ok.output


@pytest.mark.usefixtures("scripted_runner")
def test_approve_takes_the_token_from_the_option(workdir: Path) -> None:
    bob = add(workdir, "bob")
    result = CliRunner().invoke(cli.app, ["approve", "c1", "--as", "bob", "--token", "nope"],
                                env={"UPGATE_CONFIG": str(workdir / "upgate.toml")})
    assert result.exit_code == 2 and "wrong token for 'bob'" in text(result), result.output
    result = CliRunner().invoke(cli.app, ["approve", "c1", "--as", "bob", "--token", bob],
                                env={"UPGATE_CONFIG": str(workdir / "upgate.toml")})
    assert "not waiting for a decision" in text(result), result.output


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
@pytest.mark.parametrize("command", [["verify"], ["history"], ["person", "add", "bob"]])
def test_a_config_error_exits_2_naming_the_key(
    workdir: Path, how: str, command: list[str]
) -> None:
    cfg = workdir / "upgate.toml"
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


def test_verify_reports_a_tampered_ledger_with_exit_1(workdir: Path) -> None:
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
