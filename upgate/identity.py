"""Identities and keys: ed25519 key pairs kept outside the state folder, public keys in it.

A person (`person:NAME`) or the approval service (`service:NAME`) holds a private key in a
key folder of their own (`$UPGATE_KEY_DIR`, else `~/.config/upgate/keys`), never in the
state folder. The state holds public keys only, registered by admin-signed records
(`upgate.admin`), so nothing that runs cycles can sign a decision: the runner verifies
with a `Keyring` and holds no private key that can approve.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from upgate.errors import IdentityError

log = logging.getLogger(__name__)

KEY_DIR_ENV = "UPGATE_KEY_DIR"
ROLES = ("admin", "approver", "operator", "viewer")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Names of people and services: no spaces, no colon ('upgate:' ids are reserved)."""
_KEY_ID = re.compile(r"(person|service):([A-Za-z0-9][A-Za-z0-9._-]{0,63})")


def default_key_dir() -> Path:
    """Where private keys live: `$UPGATE_KEY_DIR`, else `~/.config/upgate/keys`."""
    env = os.environ.get(KEY_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "upgate" / "keys"


def person_key_id(name: str) -> str:
    """The key id of a person."""
    return f"person:{name}"


def split_key_id(key_id: str) -> tuple[str, str]:
    """`person:bob` -> ("person", "bob"); anything else is refused."""
    match = _KEY_ID.fullmatch(key_id)
    if not match:
        raise IdentityError(
            f"invalid key id {key_id!r}: use person:NAME or service:NAME (letters, digits, "
            "'-', '_' or '.')"
        )
    return match.group(1), match.group(2)


def key_file(key_id: str, key_dir: Path) -> Path:
    """The private key file of a key id in a key folder."""
    kind, name = split_key_id(key_id)
    return key_dir / f"{kind}-{name}.key"


def ensure_outside(key_dir: Path, state_dir: Path) -> None:
    """Refuse a key folder inside the state folder (what runs cycles must not read it)."""
    keys, state = key_dir.resolve(), state_dir.resolve()
    if keys == state or state in keys.parents:
        raise IdentityError(
            f"the key folder {key_dir} is inside the state folder {state_dir}; private keys "
            f"must live elsewhere (set {KEY_DIR_ENV} or --key-dir to a folder of your own)"
        )


class Signer(Protocol):
    """Something that signs payloads under a key id (a person's key, the service's key)."""

    key_id: str

    def sign(self, payload: bytes) -> str:
        """The signature of the payload, hex."""
        ...


class KeySigner:
    """A private ed25519 key with its key id."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        split_key_id(key_id)
        self.key_id = key_id
        self._key = private_key

    def sign(self, payload: bytes) -> str:
        """The signature of the payload, hex."""
        return self._key.sign(payload).hex()

    @property
    def public_key(self) -> str:
        """The public key, hex of its raw 32 bytes."""
        return public_hex(self._key.public_key())


def public_hex(key: Ed25519PublicKey) -> str:
    """Hex of a public key's raw bytes."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def generate_key(key_id: str, key_dir: Path, *, replace: bool = False) -> str:
    """Write a new private key (mode 0600) for a key id; returns its public key (hex).

    An existing key file is kept unless `replace` (a re-key); the old one is then moved
    aside to `*.key.old` so nothing is lost by a mistaken command.
    """
    private = Ed25519PrivateKey.generate()
    write_key(key_id, key_dir, private, replace=replace)
    return public_hex(private.public_key())


def key_file_free(key_id: str, key_dir: Path) -> None:
    """Raise unless a new key may be written for `key_id` in `key_dir`."""
    path = key_file(key_id, key_dir)
    if path.exists():
        raise IdentityError(
            f"{path} already exists; use it (`upgate person add NAME --public-key HEX`) "
            "or re-key with `upgate person rekey`"
        )


def write_key(key_id: str, key_dir: Path, private: Ed25519PrivateKey, *,
              replace: bool = False) -> Path:
    """Write a private key file (0600) in a key folder."""
    path = key_file(key_id, key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not replace:
        key_file_free(key_id, key_dir)
    elif path.exists():
        path.replace(path.with_suffix(".key.old"))
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    log.info("wrote private key %s", path)
    return path


def load_signer(key_id: str, key_dir: Path) -> KeySigner:
    """The signer of a key id from its private key file; a missing key says how to make one."""
    path = key_file(key_id, key_dir)
    if not path.is_file():
        kind, name = split_key_id(key_id)
        how = (f"`upgate person keygen {name}` and ask an admin to register the public key"
               if kind == "person" else "ask an admin to register the service's key")
        raise IdentityError(
            f"no private key for {key_id} in {key_dir} (looked for {path.name}); set "
            f"{KEY_DIR_ENV} or --key-dir to your key folder, or create one with {how}"
        )
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not a readable private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an ed25519 private key")
    return KeySigner(key_id, private)


def verify_hex(public_key: str, payload: bytes, signature: str) -> bool:
    """Whether `signature` (hex) is the public key's signature of `payload`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        raw = bytes.fromhex(signature)
    except ValueError:
        return False
    if signature != raw.hex():  # one spelling only: lower-case hex
        return False
    try:
        key.verify(raw, payload)
    except InvalidSignature:
        return False
    return True


def check_public_key(public_key: str) -> str:
    """A public key given as hex, validated; returns it lower-cased."""
    try:
        raw = bytes.fromhex(public_key)
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise IdentityError(
            f"{public_key!r} is not an ed25519 public key (64 hex digits, as `upgate person "
            "keygen` prints)"
        ) from exc
    return raw.hex()


@dataclass(frozen=True)
class Keyring:
    """Public keys only (from the state), and the roles the adopted policy gives people."""

    public_keys: dict[str, str] = field(default_factory=dict)
    """key id -> public key (hex)."""
    role_members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """role -> names of people."""

    def verify(self, key_id: str, payload: bytes, signature: str) -> bool:
        """Whether a registered key signed the payload."""
        public = self.public_keys.get(key_id)
        return public is not None and verify_hex(public, payload, signature)

    def roles(self, name: str) -> tuple[str, ...]:
        """The roles a person holds under the adopted policy (none if unregistered)."""
        if person_key_id(name) not in self.public_keys:
            return ()
        return tuple(r for r in ROLES if name in self.role_members.get(r, ()))

    def has_role(self, name: str, role: str) -> bool:
        """Whether a registered person holds a role."""
        return role in self.roles(name)

    def people(self) -> list[str]:
        """Registered people."""
        return sorted(split_key_id(k)[1] for k in self.public_keys if k.startswith("person:"))
