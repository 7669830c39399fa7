"""`upgate init`, `upgate person ...`, `upgate policy adopt`: the admin-signed commands.

Each change is signed with the acting admin's private key (from their key folder, never
the state folder), checked against the state's records, and appended to the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from upgate import admin
from upgate.config import Settings, load_settings
from upgate.errors import IdentityError, PolicyError
from upgate.identity import (
    KeySigner,
    default_key_dir,
    ensure_outside,
    generate_key,
    key_file,
    load_signer,
    person_key_id,
)
from upgate.ledger import Ledger, open_ledger
from upgate.store import Store

log = logging.getLogger(__name__)

console = Console(soft_wrap=True)

policy_app = typer.Typer(help="The policy in force (adopted by an admin).",
                         no_args_is_help=True)
service_app = typer.Typer(help="Service keys (the approval service signs for the people it "
                          "logged in).", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
AdminOpt = Annotated[str, typer.Option("--as", help="The acting admin (signs with their key).")]
KeyDirOpt = Annotated[Path | None, typer.Option(
    "--key-dir", help="Private key folder (default $UPGATE_KEY_DIR, else "
    "~/.config/upgate/keys); never inside the state folder.")]
PublicKeyOpt = Annotated[str | None, typer.Option(
    "--public-key", help="The person's public key (hex, from `upgate person keygen`). "
    "Without it a key pair is made in --key-dir for you to hand over.")]


def _say(text: str) -> None:
    console.print(text, highlight=False, markup=False)


@contextmanager
def _state(config: Path | None) -> Iterator[tuple[Settings, Store, Ledger]]:
    settings = load_settings(config)
    store = Store(settings.state_dir / "state.sqlite")
    ledger = open_ledger(settings.state_dir, settings.witness)
    try:
        yield settings, store, ledger
    finally:
        store.close()
        ledger.close()


def _key_dir(settings: Settings, key_dir: Path | None) -> Path:
    folder = key_dir or default_key_dir()
    ensure_outside(folder, settings.state_dir)
    return folder


def _admin_signer(settings: Settings, name: str, key_dir: Path | None) -> KeySigner:
    if not name:
        raise IdentityError("say which admin acts: --as ADMIN (their key signs the change)")
    return load_signer(person_key_id(name), _key_dir(settings, key_dir))


def init_command(admin_name: Annotated[str, typer.Option(
                     "--admin", help="The first admin (a key pair is made for them).")],
                 config: ConfigOpt = None, key_dir: KeyDirOpt = None) -> None:
    """Create the state: the first admin (key pair outside the state) and the policy."""
    with _state(config) as (settings, store, ledger):
        folder = _key_dir(settings, key_dir)
        try:
            text = settings.policy.read_text()
        except FileNotFoundError:
            raise PolicyError(f"policy file {settings.policy} does not exist") from None
        made = admin.init_state(store, ledger, admin=admin_name, policy_text=text,
                                key_dir=folder)
        policy = admin.replay(store, ledger).policy
    _say(f"initialised {settings.state_dir}: admin {admin_name}, policy "
         f"{policy.version_id if policy else '?'} adopted")
    _say(f"{admin_name}: key {key_file(person_key_id(admin_name), folder)}"
         + (" (new)" if made.key_path else " (existing)"))
    _say(f"{admin_name}: token {made.token}")
    _say("The token logs in to the approval service; keep it and the key file private.")


def _register(name: str, as_: str, public_key: str | None, config: Path | None,
              key_dir: Path | None, *, rekey: bool) -> None:
    with _state(config) as (settings, store, ledger):
        signer = _admin_signer(settings, as_, key_dir)
        result = admin.register_person(store, ledger, signer, name, public_key=public_key,
                                       key_dir=_key_dir(settings, key_dir), rekey=rekey)
    _say(f"{name}: token {result.token}")
    _say(f"{name}: public key {result.public_key}")
    if result.key_path is not None:
        _say(f"{name}: private key {result.key_path}: hand it to {name} and delete it here")
    _say("Roles come from the adopted policy's [roles] table.")


def _person_add(name: str, as_: AdminOpt, public_key: PublicKeyOpt = None,
                config: ConfigOpt = None, key_dir: KeyDirOpt = None) -> None:
    """An admin registers a person with their public key; prints their login token once."""
    _register(name, as_, public_key, config, key_dir, rekey=False)


def _person_rekey(name: str, as_: AdminOpt, public_key: PublicKeyOpt = None,
                  config: ConfigOpt = None, key_dir: KeyDirOpt = None) -> None:
    """An admin replaces a person's key (and login token); the old key stops verifying."""
    _register(name, as_, public_key, config, key_dir, rekey=True)


def _person_remove(name: str, as_: AdminOpt, config: ConfigOpt = None,
                   key_dir: KeyDirOpt = None) -> None:
    """An admin removes a person; their key no longer verifies anything."""
    with _state(config) as (settings, store, ledger):
        admin.remove_person(store, ledger, _admin_signer(settings, as_, key_dir), name)
    _say(f"{name}: removed")


def _person_keygen(name: str, key_dir: KeyDirOpt = None) -> None:
    """Make your own key pair in your key folder; give the public key to an admin."""
    folder = key_dir or default_key_dir()
    public = generate_key(person_key_id(name), folder)
    _say(f"{name}: private key {key_file(person_key_id(name), folder)}")
    _say(f"{name}: public key {public}")
    _say(f"An admin registers it: upgate person add {name} --public-key {public} --as ADMIN")


def _person_list(config: ConfigOpt = None) -> None:
    """Registered people and the roles the adopted policy gives them."""
    with _state(config) as (_, store, ledger):
        keyring = admin.replay(store, ledger).keyring()
    for name in keyring.people():
        _say(f"{name}: {', '.join(keyring.roles(name)) or '(no role)'}")


def _service_add(name: str, as_: AdminOpt, public_key: PublicKeyOpt = None,
                 config: ConfigOpt = None, key_dir: KeyDirOpt = None) -> None:
    """An admin registers a service's public key (made in --key-dir when not given)."""
    with _state(config) as (settings, store, ledger):
        signer = _admin_signer(settings, as_, key_dir)
        public_key = admin.add_service(store, ledger, signer, name, public_key=public_key,
                                       key_dir=_key_dir(settings, key_dir))
    _say(f"service:{name}: public key {public_key}")


def _policy_adopt(file: Path, as_: AdminOpt, config: ConfigOpt = None,
                  key_dir: KeyDirOpt = None) -> None:
    """An admin adopts a policy file: from then on cycles run under it and no other."""
    with _state(config) as (settings, store, ledger):
        signer = _admin_signer(settings, as_, key_dir)
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise PolicyError(f"policy file {file} does not exist") from None
        policy = admin.adopt_policy(store, ledger, signer, text)
    _say(f"adopted {policy.version_id} (sha256 {policy.content_hash})")
    if file.resolve() != settings.policy.resolve():
        _say(f"note: the configuration names {settings.policy}; point `policy` at {file} "
             "so cycles can start")


def register(person_app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add the admin commands to the CLI, each behind the CLI's error guard."""
    for name, fn in (("add", _person_add), ("rekey", _person_rekey),
                     ("remove", _person_remove), ("keygen", _person_keygen),
                     ("list", _person_list)):
        person_app.command(name)(guard(fn))
    policy_app.command("adopt")(guard(_policy_adopt))
    service_app.command("add")(guard(_service_add))
