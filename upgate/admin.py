"""Admin-signed records: who is registered with which key, and which policy is in force.

Every change to people, service keys and the adopted policy is a record signed by an
admin's private key (the first one, made by `upgate init`, by the new admin's own key),
chained to the record before it, kept in the state's `identity_log` and appended to the
ledger. The keyring and the policy in force are *replayed* from these records on every
load, checking each signature, each signer's admin role and the chain, so editing the
people table (or pasting a key into the state folder) gives no one a say.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from upgate.errors import IdentityError
from upgate.hashing import canonical_json, sha256_text
from upgate.identity import (
    NAME_PATTERN,
    Keyring,
    Signer,
    check_public_key,
    generate_key,
    key_file_free,
    load_signer,
    person_key_id,
    public_hex,
    verify_hex,
    write_key,
)
from upgate.ledger import Ledger
from upgate.policy import Policy, parse_policy
from upgate.store import Store

log = logging.getLogger(__name__)

GENESIS = "0" * 64
OPS = ("init", "person.add", "person.remove", "person.rekey", "service.add",
       "service.remove", "policy.adopt")


@dataclass
class Identities:
    """The state the signed records add up to."""

    people: dict[str, str] = field(default_factory=dict)
    """name -> public key."""
    tokens: dict[str, str] = field(default_factory=dict)
    """name -> SHA-256 of their login token (for the approval service)."""
    services: dict[str, str] = field(default_factory=dict)
    policy: Policy | None = None
    policy_text: str = ""
    first_admin: str = ""
    seq: int = 0
    head: str = GENESIS

    def keyring(self) -> Keyring:
        """Public keys and the adopted policy's roles."""
        keys = {person_key_id(n): k for n, k in self.people.items()}
        keys.update({f"service:{n}": k for n, k in self.services.items()})
        roles: dict[str, tuple[str, ...]] = (
            self.policy.role_members() if self.policy else {"admin": (self.first_admin,)})
        return Keyring(public_keys=keys, role_members=roles)

    def is_admin(self, name: str) -> bool:
        """Whether a registered person is an admin now."""
        if name not in self.people:
            return False
        if self.policy is None:
            return name == self.first_admin
        return name in self.policy.members("admin")


def _valid_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise IdentityError(
            f"invalid name {name!r}: use letters, digits, '-', '_' or '.'; 'upgate:' is reserved"
        )
    return name


def _record_hash(record: str, signature: str) -> str:
    return sha256_text(record + "\n" + signature)


def _key_in_use(ids: Identities, public_key: str) -> str | None:
    for name, key in ids.people.items():
        if key == public_key:
            return f"person:{name}"
    for name, key in ids.services.items():
        if key == public_key:
            return f"service:{name}"
    return None


def _apply(ids: Identities, record: dict[str, Any], signer: str, signature: str,
           raw: str) -> None:
    """Check one signed record against the state so far and apply it (or raise)."""
    seq = record.get("seq")
    op = record.get("op")
    where = f"identity record {seq} ({op})"
    if seq != ids.seq + 1 or record.get("prev") != ids.head:
        raise IdentityError(f"{where} does not follow the record before it (chain broken)")
    if op not in OPS or record.get("by") != signer:
        raise IdentityError(f"{where} is malformed")
    if op == "init":
        if ids.seq != 0:
            raise IdentityError(f"{where}: the state was already initialised")
        name = _valid_name(str(record["name"]))
        public = check_public_key(str(record["public_key"]))
        if signer != person_key_id(name) or not verify_hex(public, raw.encode(), signature):
            raise IdentityError(f"{where} is not signed by the admin it introduces")
        ids.people[name] = public
        ids.tokens[name] = str(record.get("token_sha256", ""))
        ids.first_admin = name
    else:
        kind, _, by = signer.partition(":")
        if kind != "person" or not ids.is_admin(by):
            raise IdentityError(f"{where} is signed by {signer}, who is not an admin")
        if not verify_hex(ids.people[by], raw.encode(), signature):
            raise IdentityError(f"{where}: the signature does not verify (forged or altered)")
        _apply_admin_op(ids, op, record, where)
    ids.seq = int(seq)
    ids.head = _record_hash(raw, signature)


def _apply_admin_op(ids: Identities, op: str, record: dict[str, Any], where: str) -> None:
    if op == "policy.adopt":
        text = str(record["text"])
        policy = parse_policy(text, "the adopted policy")
        if policy.content_hash != record.get("content_hash"):
            raise IdentityError(f"{where}: the policy text does not match its hash")
        ids.policy, ids.policy_text = policy, text
        return
    name = _valid_name(str(record["name"]))
    if op in ("service.add", "service.remove"):
        if op == "service.remove":
            if ids.services.pop(name, None) is None:
                raise IdentityError(f"{where}: no service {name!r}")
            return
        public = check_public_key(str(record["public_key"]))
        if (used := _key_in_use(ids, public)) is not None:
            raise IdentityError(f"{where}: that key is already {used}'s; one key, one identity")
        ids.services[name] = public
        return
    known = {n.lower(): n for n in ids.people}
    if op == "person.add":
        if name.lower() in known:
            raise IdentityError(
                f"{where}: {known[name.lower()]!r} is already registered; re-key them with "
                f"`upgate person rekey {known[name.lower()]}`"
            )
    elif name not in ids.people:
        raise IdentityError(f"{where}: {name!r} is not a registered person")
    if op == "person.remove":
        del ids.people[name]
        ids.tokens.pop(name, None)
        return
    public = check_public_key(str(record["public_key"]))
    used = _key_in_use(ids, public)
    if used is not None:
        raise IdentityError(f"{where}: that key is already {used}'s; one person, one key")
    ids.people[name] = public
    ids.tokens[name] = str(record.get("token_sha256", ""))


def replay(store: Store, ledger: Ledger | None = None) -> Identities:
    """The identities and adopted policy the signed records add up to, all checked.

    With a ledger, each record must also be in it, as signed: the ledger (witnessed outside
    the state folder) then anchors the people and the policy too.
    """
    ids = Identities()
    for _ in _replay_steps(store, ledger, ids):
        pass
    return ids


def _replay_steps(store: Store, ledger: Ledger | None, ids: Identities) -> Iterator[int]:
    """Apply the signed records to `ids` one by one; yields each record's ledger seq
    (0 without a ledger) after applying it."""
    import json

    for seq, raw, signer, signature in store.identity_records():
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise IdentityError(f"identity record {seq} is unreadable: {exc}") from exc
        if not isinstance(record, dict) or record.get("seq") != seq:
            raise IdentityError(f"identity record {seq} is malformed")
        _apply(ids, record, signer, signature, raw)
        at = 0
        if ledger is not None:
            entry = ledger.find(f"admin/identity/{seq}")
            if entry is None or entry.payload.get("signature") != signature:
                raise IdentityError(
                    f"identity record {seq} is not in the ledger as signed; the state folder "
                    "was edited outside upgate (check it with `upgate verify`)"
                )
            at = entry.seq
        yield at


def replay_timeline(store: Store, ledger: Ledger) -> list[tuple[int, Keyring, Policy | None]]:
    """The keyring and adopted policy in force after each signed record, with the ledger
    seq of that record: what was true when a later ledger entry was written."""
    ids = Identities()
    return [(at, ids.keyring(), ids.policy) for at in _replay_steps(store, ledger, ids)]


def _commit(store: Store, ledger: Ledger, ids: Identities, signer: Signer, op: str,
            fields: dict[str, Any], precheck: Callable[[], None] | None = None) -> Identities:
    """Sign one record, check it applies (and `precheck`), store it, append it to the
    ledger."""
    record = {"seq": ids.seq + 1, "prev": ids.head, "op": op, "by": signer.key_id,
              "at": datetime.now(UTC).isoformat(), **fields}
    raw = canonical_json(record)
    signature = signer.sign(raw.encode())
    after = copy.deepcopy(ids)
    _apply(after, record, signer.key_id, signature, raw)
    if precheck is not None:
        precheck()
    try:
        store.append_identity(raw, signer.key_id, signature, record["seq"])
    except ValueError as exc:
        raise IdentityError(f"another admin command got there first ({exc}); run it again") \
            from exc
    shown = {k: v for k, v in record.items() if k != "text"}
    ledger.append("admin", "identity", op, {"seq": record["seq"], "record": shown,
                                            "signer": signer.key_id, "signature": signature},
                  key=f"admin/identity/{record['seq']}")
    for name in set(ids.people) | set(after.people):
        if name not in after.people:
            store.remove_person(name)
        elif ids.people.get(name) != after.people[name]:
            store.set_person(name, after.tokens.get(name, ""), after.people[name])
    log.info("admin record %d: %s by %s", record["seq"], op, signer.key_id)
    return after


def _token() -> tuple[str, str]:
    token = secrets.token_urlsafe(24)
    return token, hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Registered:
    """What registering a person gives back: their login token (shown once) and key."""

    name: str
    token: str
    public_key: str
    key_path: Path | None


def init_state(store: Store, ledger: Ledger, *, admin: str, policy_text: str,
               key_dir: Path) -> Registered:
    """Create the state's first admin (their key in `key_dir`) and adopt the policy."""
    ids = replay(store, ledger)
    if ids.seq:
        raise IdentityError(
            f"the state is already initialised (first admin: {ids.first_admin}); admins add "
            "people with `upgate person add NAME --as ADMIN`"
        )
    _valid_name(admin)
    policy = parse_policy(policy_text, "the policy to adopt")
    if admin not in policy.members("admin"):
        raise IdentityError(
            f"the policy {policy.version_id} does not make {admin} an admin; add them under "
            f'[roles] (admin = ["{admin}"]) and run `upgate init` again'
        )
    key_id = person_key_id(admin)
    path = key_dir / f"person-{admin}.key"
    made = not path.exists()
    public = generate_key(key_id, key_dir) if made else load_signer(key_id, key_dir).public_key
    signer = load_signer(key_id, key_dir)
    token, digest = _token()
    ids = _commit(store, ledger, ids, signer, "init",
                  {"name": admin, "public_key": public, "token_sha256": digest})
    adopt_policy(store, ledger, signer, policy_text, ids=ids)
    return Registered(admin, token, public, path if made else None)


def register_person(store: Store, ledger: Ledger, signer: Signer, name: str, *,
                    public_key: str | None = None, key_dir: Path | None = None,
                    rekey: bool = False) -> Registered:
    """An admin registers a person (or re-keys them) with a public key; returns their new
    login token. Without `public_key` a key pair is made and, once the signed record is
    stored, its private key is written to `key_dir` for the admin to hand over."""
    private = None
    precheck = None
    if public_key is None:
        if key_dir is None:
            raise IdentityError("give the person's public key, or a key folder to make one in")
        folder = key_dir
        if not rekey:
            def precheck() -> None:
                key_file_free(person_key_id(name), folder)
        private = Ed25519PrivateKey.generate()
        public_key = public_hex(private.public_key())
    token, digest = _token()
    _commit(store, ledger, replay(store, ledger), signer,
            "person.rekey" if rekey else "person.add",
            {"name": name, "public_key": check_public_key(public_key), "token_sha256": digest},
            precheck)
    path = None
    if private is not None and key_dir is not None:
        path = write_key(person_key_id(name), key_dir, private, replace=rekey)
    return Registered(name, token, public_key, path)


def add_person(store: Store, ledger: Ledger, signer: Signer, name: str, *,
               public_key: str) -> Registered:
    """An admin registers a person with their public key; returns their login token."""
    return register_person(store, ledger, signer, name, public_key=public_key)


def remove_person(store: Store, ledger: Ledger, signer: Signer, name: str) -> None:
    """An admin removes a person; their key stops verifying at once."""
    _commit(store, ledger, replay(store, ledger), signer, "person.remove", {"name": name})


def add_service(store: Store, ledger: Ledger, signer: Signer, name: str, *,
                public_key: str | None = None, key_dir: Path | None = None) -> str:
    """An admin registers a service key (the approval service signs for people it logs
    in). Without `public_key` a key pair is made; its private key is written to `key_dir`
    once the signed record is stored. Returns the public key."""
    private = None
    if public_key is None:
        if key_dir is None:
            raise IdentityError("give the service's public key, or a key folder to make one in")
        private = Ed25519PrivateKey.generate()
        public_key = public_hex(private.public_key())
    folder = key_dir

    def precheck() -> None:
        if private is not None and folder is not None:
            key_file_free(f"service:{name}", folder)

    _commit(store, ledger, replay(store, ledger), signer, "service.add",
            {"name": name, "public_key": check_public_key(public_key)}, precheck)
    if private is not None and folder is not None:
        write_key(f"service:{name}", folder, private)
    return public_key


def adopt_policy(store: Store, ledger: Ledger, signer: Signer, text: str, *,
                 ids: Identities | None = None) -> Policy:
    """An admin adopts a policy: from then on it is the only one cycles run under."""
    policy = parse_policy(text, "the policy to adopt")
    _commit(store, ledger, ids or replay(store, ledger), signer, "policy.adopt",
            {"text": text, "content_hash": policy.content_hash,
             "version_id": policy.version_id})
    return policy
