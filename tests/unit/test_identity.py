"""Keys, admin-signed records and roles: `upgate init`, person add/rekey/remove, policy
adoption, and the demo's people. Private keys never enter the state folder; roles come
from the adopted policy, never from who registered whom."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from upgate import admin, cli
from upgate.errors import IdentityError
from upgate.identity import (
    KEY_DIR_ENV,
    Keyring,
    default_key_dir,
    ensure_outside,
    generate_key,
    key_file,
    load_signer,
    verify_hex,
)
from upgate.ledger import Ledger, open_ledger
from upgate.store import Store

from ..conftest import make_target_repo, write_config

POLICY = """name = "p"
version = "1"
[roles]
admin = ["alice"]
operator = ["alice"]
approver = ["bob"]
"""


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[Store, Ledger, Path]]:
    store, ledger = Store(tmp_path / "state" / "state.sqlite"), open_ledger(tmp_path / "state")
    yield store, ledger, tmp_path / "keys"
    store.close()
    ledger.close()


def keyring_of(state_dir: Path) -> Keyring:
    """The keyring a state folder's signed records add up to."""
    store, ledger = Store(state_dir / "state.sqlite"), open_ledger(state_dir)
    try:
        return admin.replay(store, ledger).keyring()
    finally:
        store.close()
        ledger.close()


def init(state: tuple[Store, Ledger, Path], policy: str = POLICY) -> admin.Registered:
    store, ledger, keys = state
    return admin.init_state(store, ledger, admin="alice", policy_text=policy, key_dir=keys)


# Keys -----------------------------------------------------------------------------------


def test_a_private_key_is_written_private_and_signs_what_its_public_key_verifies(
    tmp_path: Path,
) -> None:
    public = generate_key("person:bob", tmp_path)
    path = key_file("person:bob", tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    signer = load_signer("person:bob", tmp_path)
    assert signer.public_key == public
    assert verify_hex(public, b"x", signer.sign(b"x"))
    assert not verify_hex(public, b"y", signer.sign(b"x"))
    with pytest.raises(IdentityError, match="already exists"):
        generate_key("person:bob", tmp_path)


def test_a_missing_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"no private key for person:bob.*person keygen bob"):
        load_signer("person:bob", tmp_path)


@pytest.mark.parametrize("key_id", ["bob", "person:", "person:../x", "admin:bob", "person:a b"])
def test_bad_key_ids_are_refused(tmp_path: Path, key_id: str) -> None:
    with pytest.raises(IdentityError, match="invalid key id"):
        generate_key(key_id, tmp_path)


def test_the_key_dir_defaults_outside_and_may_not_be_inside_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_DIR_ENV, str(tmp_path / "k"))
    assert default_key_dir() == tmp_path / "k"
    monkeypatch.delenv(KEY_DIR_ENV)
    assert default_key_dir().parts[-3:] == (".config", "upgate", "keys")
    for inside in (tmp_path / "state", tmp_path / "state" / "keys"):
        with pytest.raises(IdentityError, match="inside the state folder"):
            ensure_outside(inside, tmp_path / "state")
    ensure_outside(tmp_path / "keys", tmp_path / "state")


# Admin records ---------------------------------------------------------------------------


def test_init_makes_the_first_admin_and_adopts_the_policy(state: tuple[Store, Ledger, Path]
                                                          ) -> None:
    made = init(state)
    store, ledger, keys = state
    assert made.key_path == keys / "person-alice.key"
    ids = admin.replay(store, ledger)
    assert ids.people == {"alice": made.public_key} and ids.policy is not None
    assert ids.keyring().roles("alice") == ("admin", "operator")
    with pytest.raises(IdentityError, match="already initialised"):
        init(state)
    signed = [e.payload["signer"] for e in ledger.entries("admin")]
    assert signed == ["person:alice", "person:alice"]


def test_init_refuses_a_policy_that_does_not_make_the_admin_an_admin(
    state: tuple[Store, Ledger, Path],
) -> None:
    with pytest.raises(IdentityError, match=r"does not make alice an admin.*\[roles\]"):
        init(state, POLICY.replace('admin = ["alice"]', 'admin = ["bob"]'))
    assert state[0].identity_records() == []


def test_roles_come_from_the_adopted_policy_not_from_registration(
    state: tuple[Store, Ledger, Path],
) -> None:
    init(state)
    store, ledger, keys = state
    alice = load_signer("person:alice", keys)
    for name in ("bob", "erin"):
        admin.add_person(store, ledger, alice, name,
                         public_key=generate_key(f"person:{name}", keys))
    ring = admin.replay(store, ledger).keyring()
    assert ring.roles("bob") == ("approver",) and ring.roles("erin") == ()
    admin.adopt_policy(store, ledger, alice,
                       POLICY.replace('approver = ["bob"]', 'approver = ["erin"]'))
    ring = admin.replay(store, ledger).keyring()
    assert ring.roles("bob") == () and ring.roles("erin") == ("approver",)
    # A name the policy lists but nobody registered holds nothing.
    assert Keyring(role_members={"approver": ("zed",)}).roles("zed") == ()


def test_removing_a_person_voids_their_key_and_a_removed_admin_signs_nothing(
    state: tuple[Store, Ledger, Path],
) -> None:
    init(state, POLICY.replace('admin = ["alice"]', 'admin = ["alice", "bob"]'))
    store, ledger, keys = state
    alice = load_signer("person:alice", keys)
    admin.add_person(store, ledger, alice, "bob", public_key=generate_key("person:bob", keys))
    bob = load_signer("person:bob", keys)
    admin.remove_person(store, ledger, alice, "bob")
    assert not admin.replay(store, ledger).keyring().verify("person:bob", b"x", bob.sign(b"x"))
    assert store.people() == ["alice"]
    with pytest.raises(IdentityError, match="person:bob, who is not an admin"):
        admin.add_person(store, ledger, bob, "mallory",
                         public_key=generate_key("person:mallory", keys))


def test_an_edited_identity_record_breaks_the_replay(state: tuple[Store, Ledger, Path]) -> None:
    init(state)
    store, ledger, _ = state
    store.execute("UPDATE identity_log SET record = replace(record, 'p@1+', 'q@1+') "
                  "WHERE seq = 2")
    assert "q@1+" in store.identity_records()[1][1]
    with pytest.raises(IdentityError, match="record 2"):
        admin.replay(store, ledger)


def test_a_service_key_is_registered_by_an_admin_and_verifies(
    state: tuple[Store, Ledger, Path],
) -> None:
    init(state)
    store, ledger, keys = state
    public = generate_key("service:approvals", keys)
    admin.add_service(store, ledger, load_signer("person:alice", keys), "approvals",
                      public_key=public)
    service = load_signer("service:approvals", keys)
    ring = admin.replay(store, ledger).keyring()
    assert ring.verify("service:approvals", b"x", service.sign(b"x"))
    with pytest.raises(IdentityError, match="already service:approvals's"):
        admin.add_person(store, ledger, load_signer("person:alice", keys), "svc",
                         public_key=public)


# The commands --------------------------------------------------------------------------


def invoke(cfg: Path, *args: str, keys: Path | None = None) -> Result:
    env = {"UPGATE_CONFIG": str(cfg), "UPGATE_KEY_DIR": str(keys or cfg.parent / "keys")}
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    make_target_repo(tmp_path / "target")
    return write_config(tmp_path)


def test_upgate_init_then_person_add_then_adopt(bare: Path) -> None:
    result = invoke(bare, "init", "--admin", "alice")
    assert result.exit_code == 0, result.output
    assert re.search(r"alice: token \S+", result.output)
    assert (bare.parent / "keys" / "person-alice.key").is_file()
    state = b"".join(p.read_bytes() for p in (bare.parent / "state").rglob("*") if p.is_file())
    assert b"PRIVATE KEY" not in state
    again = invoke(bare, "init", "--admin", "alice")
    assert again.exit_code == 2 and "already initialised" in again.output
    added = invoke(bare, "person", "add", "bob", "--as", "alice")
    assert added.exit_code == 0, added.output
    listed = invoke(bare, "person", "list")
    assert "alice: admin, operator" in listed.output and "bob: approver" in listed.output
    policy = bare.parent / "policy.toml"
    policy.write_text(policy.read_text() + "\n# edited\n")
    refused = invoke(bare, "policy", "adopt", str(policy), "--as", "bob")
    assert refused.exit_code == 2 and "not an admin" in " ".join(refused.output.split())
    adopted = invoke(bare, "policy", "adopt", str(policy), "--as", "alice")
    assert adopted.exit_code == 0 and "adopted test@1+" in adopted.output, adopted.output


def test_upgate_init_refuses_a_key_folder_inside_the_state(bare: Path) -> None:
    result = invoke(bare, "init", "--admin", "alice", keys=bare.parent / "state" / "keys")
    assert result.exit_code == 2 and "inside the state folder" in " ".join(result.output.split())


def test_a_person_can_make_their_own_key_and_an_admin_registers_the_public_half(
    bare: Path, tmp_path: Path
) -> None:
    assert invoke(bare, "init", "--admin", "alice").exit_code == 0
    own = invoke(bare, "person", "keygen", "bob", keys=tmp_path / "bobs")
    public = re.search(r"public key ([0-9a-f]{64})", own.output)
    assert public, own.output
    added = invoke(bare, "person", "add", "bob", "--public-key", public.group(1), "--as", "alice")
    assert added.exit_code == 0, added.output
    assert not (bare.parent / "keys" / "person-bob.key").exists()  # the admin never held it


def test_the_demo_sets_up_alice_and_bob_with_keys_outside_the_state(tmp_path: Path) -> None:
    from upgate.config import load_settings
    from upgate.demo import layout, people

    config = layout(tmp_path, port=9, sandbox="fake")
    settings = load_settings(config)
    for _ in range(2):  # a second run reuses everything
        people(settings, tmp_path / "keys", tmp_path / "tokens")
    ring = keyring_of(tmp_path / "state")
    assert ring.roles("alice") == ("admin", "operator") and ring.roles("bob") == ("approver",)
    # The people's keys and the key that signs the ledger's heads, none in the state;
    # the heads themselves go to the witness beside the state.
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "ledger.key", "person-alice.key", "person-bob.key"]
    assert (tmp_path / "witness.git").is_dir()
    assert not list((tmp_path / "state").glob("*.key"))


def test_only_an_admin_registers_the_approval_services_key(bare: Path) -> None:
    assert invoke(bare, "init", "--admin", "alice").exit_code == 0
    assert invoke(bare, "person", "add", "bob", "--as", "alice").exit_code == 0
    refused = invoke(bare, "service", "add", "approvals", "--as", "bob")
    assert refused.exit_code == 2 and "not an admin" in " ".join(refused.output.split())
    keys = bare.parent / "keys"
    assert not key_file("service:approvals", keys).exists()  # nothing made for a refusal
    added = invoke(bare, "service", "add", "approvals", "--as", "alice")
    assert added.exit_code == 0, added.output
    ring = keyring_of(bare.parent / "state")
    service = load_signer("service:approvals", keys)
    assert ring.verify("service:approvals", b"x", service.sign(b"x"))
