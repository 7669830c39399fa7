"""Invariant 6 against an attacker who owns the state folder: a ledger rewritten and
re-chained (head file included), its last cycle truncated, its database deleted, an entry
dropped, edited or reordered, and a witness moved backwards or forged, are each caught by
`verify` through a witness outside the state folder. Real SQLite, real git, real files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from upgate.cli import app
from upgate.errors import ConfigError
from upgate.hashing import canonical_json
from upgate.ledger import Ledger, open_ledger
from upgate.witness import FileWitnessConfig, GitWitnessConfig, load_ledger_key

from ..conftest import write_config
from .test_ledger import drop_triggers, read_row, rechain, rehash

KINDS = ["git", "file"]


def witness_config(tmp: Path, kind: str) -> GitWitnessConfig | FileWitnessConfig:
    keys = tmp / "keys"
    if kind == "git":
        return GitWitnessConfig(path=str(tmp / "witness.git"), key_dir=keys)
    return FileWitnessConfig(path=tmp / "other-volume" / "heads.jsonl", key_dir=keys)


def two_cycles(led: Ledger) -> None:
    for cycle in ("c1", "c2"):
        for i, node in enumerate(("start", "critique", "approve", "deploy", "record")):
            led.append(cycle, node, f"e{i}", {"approver": "bob", "i": i},
                       key=f"{cycle}/{node}")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def filled(tmp: Path, kind: str) -> tuple[Path, Any]:
    """A state folder whose ledger holds two cycles, each head witnessed, and its witness."""
    cfg = witness_config(tmp, kind)
    led = open_ledger(tmp / "state", cfg)
    two_cycles(led)
    led.close()
    return tmp / "state", cfg


@pytest.fixture
def state(tmp_path: Path, kind: str) -> tuple[Path, Any]:
    """Two witnessed cycles, on each backend."""
    return filled(tmp_path, kind)


def reopen(state: tuple[Path, Any]) -> Ledger:
    return open_ledger(*state)


def attacker(state_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(state_dir / "ledger.sqlite", isolation_level=None)
    drop_triggers(conn)
    return conn


def fix_head_file(state_dir: Path, conn: sqlite3.Connection) -> None:
    """The careful attacker makes the in-folder head file agree with the rewrite."""
    row = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    (state_dir / "ledger.sqlite.head").write_text(f"{row[0]} {row[1]}\n" if row else "")
    if row is None:
        (state_dir / "ledger.sqlite.head").unlink()


def problems(state: tuple[Path, Any]) -> list[str]:
    led = reopen(state)
    try:
        report = led.verify()
    finally:
        led.close()
    assert report.ok is (not report.problems)
    return report.problems


def test_an_honest_ledger_verifies_against_its_witness(state: tuple[Path, Any]) -> None:
    assert problems(state) == []
    led = reopen(state)
    try:
        heads = led.witness.heads() if led.witness else []
        entries = led.entries()
    finally:
        led.close()
    assert [(h.seq, h.hash) for h in heads] == [(e.seq, e.hash) for e in entries]
    key = heads[0].public_key
    assert all(h.signed_by(key) for h in heads)
    signer = load_ledger_key(state[1].key_dir, create=False)
    assert signer is not None and signer.public_key == key
    assert (state[1].key_dir / "ledger.key").stat().st_mode & 0o077 == 0


def test_a_rewritten_and_rechained_ledger_is_caught(state: tuple[Path, Any]) -> None:
    state_dir, _ = state
    conn = attacker(state_dir)
    rehash(conn, 3, payload=canonical_json({"approver": "mallory", "i": 2}))
    rechain(conn, 4)
    fix_head_file(state_dir, conn)
    conn.close()
    found = problems(state)
    assert any("the ledger was rewritten: entry 3 differs" in p for p in found), found


def test_a_truncated_last_cycle_is_caught(state: tuple[Path, Any]) -> None:
    state_dir, _ = state
    conn = attacker(state_dir)
    conn.execute("DELETE FROM ledger WHERE cycle_id = 'c2'")
    fix_head_file(state_dir, conn)
    conn.close()
    assert any("entries 6..10 are missing" in p for p in problems(state))


def test_a_deleted_database_is_caught(state: tuple[Path, Any]) -> None:
    state_dir, _ = state
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "ledger.sqlite.head",
                 "ledger.sqlite.witnessed"):
        (state_dir / name).unlink(missing_ok=True)
    found = problems(state)
    assert any("entries 1..10 are missing" in p and "deleted" in p for p in found), found


def test_a_deleted_database_refilled_by_the_runner_is_caught(state: tuple[Path, Any]) -> None:
    state_dir, _ = state
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "ledger.sqlite.head"):
        (state_dir / name).unlink(missing_ok=True)
    led = reopen(state)
    try:
        two_cycles(led)  # a fresh history of the same length, with other content
        led.append("c3", "start", "e0", {})
    finally:
        led.close()
    found = problems(state)
    assert any("the ledger was rewritten" in p for p in found), found


@pytest.mark.parametrize("attack", ["drop", "edit", "swap"])
def test_a_dropped_edited_or_reordered_entry_is_caught(state: tuple[Path, Any],
                                                       attack: str) -> None:
    state_dir, _ = state
    conn = attacker(state_dir)
    if attack == "drop":
        conn.execute("DELETE FROM ledger WHERE seq = 4")
        conn.execute("UPDATE ledger SET seq = seq - 1 WHERE seq > 4")
        rechain(conn, 4)
    elif attack == "edit":
        rehash(conn, 8, event="rejected")
        rechain(conn, 9)
    else:
        row2, row3 = read_row(conn, 2), read_row(conn, 3)
        conn.execute("UPDATE ledger SET key = NULL WHERE seq IN (2, 3)")
        fields = ("at", "node", "event", "key", "payload")
        rehash(conn, 2, **{k: row3[k] for k in fields})
        rehash(conn, 3, **{k: row2[k] for k in fields})
        rechain(conn, 2)
    fix_head_file(state_dir, conn)
    conn.close()
    assert any("the ledger was rewritten" in p for p in problems(state))


def test_the_witness_refuses_a_head_that_moves_backwards(state: tuple[Path, Any]) -> None:
    led = reopen(state)
    try:
        assert led.witness is not None
        signer = load_ledger_key(state[1].key_dir, create=False)
        assert signer is not None
        with pytest.raises(Exception, match="move it backwards"):
            led.witness.publish(signer.sign(5, "0" * 64, "2026-01-01T00:00:00+00:00"))
    finally:
        led.close()
    assert problems(state) == []


def test_a_truncated_file_witness_is_caught(tmp_path: Path) -> None:
    state = filled(tmp_path, "file")
    cfg = state[1]
    lines = cfg.path.read_text().splitlines()
    cfg.path.write_text("\n".join(lines[:6]) + "\n")  # the witness loses its last heads
    found = problems(state)
    assert any("the witness moved backwards: it holds heads up to 6, but head 10" in p
               for p in found), found


def test_a_git_witness_reset_to_an_older_commit_is_caught(tmp_path: Path) -> None:
    state = filled(tmp_path, "git")
    cfg = state[1]
    bare = Path(cfg.path)
    older = subprocess.run(["git", "-C", str(bare), "rev-parse", "main~4"], check=True,
                           capture_output=True, text=True).stdout.strip()
    # Someone with the witness's files (not its push rules) moves the branch back.
    subprocess.run(["git", "-C", str(bare), "update-ref", "refs/heads/main", older], check=True)
    found = problems(state)
    assert any("moved backwards" in p for p in found), found


def test_a_git_witness_refuses_a_force_push(tmp_path: Path) -> None:
    cfg = filled(tmp_path, "git")[1]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", cfg.path, str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "reset", "-q", "--hard", "HEAD~3"], check=True)
    push = subprocess.run(["git", "-C", str(clone), "push", "-q", "--force", "origin",
                           "HEAD:main"], capture_output=True, text=True, check=False)
    assert push.returncode != 0 and "denying non-fast-forward" in push.stderr


def forged_line(tmp: Path, seq: int, digest: str) -> str:
    other = load_ledger_key(tmp / "mallory-keys", create=True)
    assert other is not None
    return other.sign(seq, digest, "2026-01-01T00:00:00+00:00").model_dump_json()


def test_a_head_forged_without_the_ledger_key_is_caught(tmp_path: Path) -> None:
    state = filled(tmp_path, "file")
    cfg = state[1]
    with cfg.path.open("a") as fh:
        fh.write(forged_line(tmp_path, 11, "f" * 64) + "\n")
    found = problems(state)
    assert any("forged" in p for p in found), found


def test_a_witness_replaced_wholesale_under_another_key_is_caught(tmp_path: Path) -> None:
    cfg = witness_config(tmp_path, "file")
    state = (tmp_path / "state", cfg)
    led = reopen(state)
    two_cycles(led)
    entries = led.entries()
    led.close()
    cfg.path.write_text("".join(forged_line(tmp_path, e.seq, e.hash) + "\n" for e in entries))
    found = problems(state)
    assert any("not by this machine's ledger key" in p for p in found), found


def test_an_unreachable_witness_loses_nothing_and_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cfg = FileWitnessConfig(path=blocker / "heads.jsonl", key_dir=tmp_path / "keys")
    state = (tmp_path / "state", cfg)
    led = reopen(state)
    two_cycles(led)  # appends still commit while the witness is down
    assert len(led.entries()) == 10
    led.close()
    assert any("cannot read" in p or "holds no head" in p for p in problems(state))
    blocker.unlink()
    good = (tmp_path / "state", cfg)
    led = reopen(good)
    try:
        assert led.publish_head()
    finally:
        led.close()
    assert problems(good) == []


@pytest.mark.parametrize("where", ["path", "key_dir"])
def test_a_witness_or_key_inside_the_state_folder_is_refused(tmp_path: Path,
                                                             where: str) -> None:
    inside = tmp_path / "state" / "x"
    cfg = FileWitnessConfig(path=inside if where == "path" else tmp_path / "w.jsonl",
                            key_dir=inside if where == "key_dir" else tmp_path / "keys")
    with pytest.raises(ConfigError, match="inside the state folder"):
        open_ledger(tmp_path / "state", cfg)


def test_concurrent_writers_publish_heads_in_commit_order(tmp_path: Path) -> None:
    import threading

    cfg = witness_config(tmp_path, "file")
    one, two = reopen((tmp_path / "state", cfg)), reopen((tmp_path / "state", cfg))

    def work(led: Ledger, w: int) -> None:
        for i in range(10):
            led.append(f"c{w}", "node", "e", {"i": i})

    threads = [threading.Thread(target=work, args=(one if w % 2 else two, w)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one.close()
    two.close()
    heads = [json.loads(line)["seq"] for line in cfg.path.read_text().splitlines()]
    assert heads == list(range(1, 41))
    assert problems((tmp_path / "state", cfg)) == []


# --- the command line --------------------------------------------------------------------


def cli_setup(tmp_path: Path, kind: str) -> Path:
    where = f'"{tmp_path / "witness.git"}"' if kind == "git" else \
        f'"{tmp_path / "vol" / "heads.jsonl"}"'
    cfg = write_config(tmp_path, extra=f'\n[witness]\ntype = "{kind}"\npath = {where}\n'
                                       f'key_dir = "{tmp_path / "keys"}"\n')
    return cfg


def verify_cli(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", "--config", str(cfg), *args])
    return result.exit_code, " ".join(result.output.split())


def test_cli_verify_fails_on_a_deleted_database(tmp_path: Path, kind: str) -> None:
    from upgate.config import load_settings

    cfg = cli_setup(tmp_path, kind)
    settings = load_settings(cfg)
    led = open_ledger(settings.state_dir, settings.witness)
    two_cycles(led)
    led.close()
    code, out = verify_cli(cfg)
    assert code == 0 and "checked against the witness" in out, out
    for p in settings.state_dir.glob("ledger.sqlite*"):
        p.unlink()
    code, out = verify_cli(cfg)
    assert code == 1 and "entries 1..10 are missing" in out, out


def test_cli_verify_without_a_witness_warns(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    code, out = verify_cli(cfg)
    assert code == 0 and "no [witness] is configured" in out, out


def test_an_unknown_witness_setting_is_an_error_naming_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, extra='\n[witness]\ntype = "file"\npath = "/x"\nappend = 1\n')
    code, out = verify_cli(cfg)
    assert code == 2 and "witness.file.append" in out, out



def test_a_whole_cycle_is_witnessed_head_by_head(workdir: Path) -> None:
    from .test_cycle import REVIEW, draft, make_runner

    cli_setup(workdir, "git")
    runner, _ = make_runner(workdir, {"proposal": draft(), "review": REVIEW})
    state = runner.start("alice")
    assert state["outcome"] == "awaiting_approval"
    ledger = runner.deps.ledger
    assert ledger.witness is not None
    assert ledger.witness.heads()[-1].seq == ledger.entries()[-1].seq
    assert ledger.verify().ok, ledger.verify().problems
