"""Witnesses: copies of the ledger's signed heads kept outside the state folder.

The hash chain alone cannot tell a rewritten ledger from an honest one: whoever holds the
state folder can edit an entry and recompute every link after it. A witness holds each
head (seq, hash) as it was when it was committed, somewhere the state folder's writer
cannot rewrite: a separate append-only git repository (pushes that are not
fast-forwards are refused) or an append-only file on another volume. `upgate verify`
checks the chain against it.

Heads are signed with the ledger key (ed25519), kept outside the state folder; every head
carries its public key, and the first head a witness holds fixes the key for the rest.
The signature proves a head came from the holder of that key; it cannot stop that holder
(the runner) from signing a rewrite. What catches a rewrite is that the witness already
holds the older heads.

Backends share one interface (`Witness`); notification channels can become one more.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from upgate.errors import ConfigError, LedgerError
from upgate.hashing import canonical_json

log = logging.getLogger(__name__)

LEDGER_KEY = "ledger.key"
HEADS_FILE = "heads.jsonl"


class WitnessError(LedgerError):
    """A witness could not be read or refused a head."""


# --- settings -----------------------------------------------------------------------------


class GitWitnessConfig(BaseModel):
    """A separate git repository (a path or a URL) that only ever moves forward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["git"] = "git"
    path: str
    """A bare repository (created with fast-forward-only settings if the path is new)."""
    branch: str = "main"
    key_dir: Path | None = None
    """Where `ledger.key` lives (default: $UPGATE_KEY_DIR, else ~/.config/upgate/keys)."""


class FileWitnessConfig(BaseModel):
    """An append-only JSON-lines file, on another volume than the state folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["file"] = "file"
    path: Path
    key_dir: Path | None = None
    """Where `ledger.key` lives (default: $UPGATE_KEY_DIR, else ~/.config/upgate/keys)."""


WitnessConfig = Annotated[GitWitnessConfig | FileWitnessConfig, Field(discriminator="type")]


# --- signed heads --------------------------------------------------------------------------


class Head(BaseModel):
    """One ledger head as the witness holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    hash: str
    at: str
    public_key: str
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature."""
        return canonical_json(self.model_dump(exclude={"signature"})).encode("utf-8")

    def signed_by(self, public_key_hex: str) -> bool:
        """Whether the signature is valid for that key."""
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
            key.verify(bytes.fromhex(self.signature), self.signed_bytes())
        except (ValueError, InvalidSignature):
            return False
        return True


def default_key_dir() -> Path:
    """$UPGATE_KEY_DIR, else ~/.config/upgate/keys."""
    env = os.environ.get("UPGATE_KEY_DIR")
    return Path(env).expanduser() if env else Path.home() / ".config" / "upgate" / "keys"


class HeadSigner:
    """Signs heads with the ledger key (ed25519)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        self.public_key = raw.hex()

    def sign(self, seq: int, digest: str, at: str) -> Head:
        """A signed head."""
        head = Head(seq=seq, hash=digest, at=at, public_key=self.public_key)
        return head.model_copy(update={"signature": self._key.sign(head.signed_bytes()).hex()})


def _key_path(key_dir: Path) -> Path:
    return key_dir / LEDGER_KEY


def load_ledger_key(key_dir: Path, *, create: bool) -> HeadSigner | None:
    """The ledger key's signer; made (0600) when missing and `create`, else None."""
    path = _key_path(key_dir)
    if not path.exists():
        if not create:
            return None
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_ledger_key(key_dir, create=False)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        log.warning("created the ledger key %s; keep it outside the state folder", path)
        return HeadSigner(key)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an ed25519 private key ({exc}); restore it from "
                          "your backup, or move it away to start a new witness") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key; move it away to make a new one")
    return HeadSigner(loaded)


def parse_heads(lines: list[str], where: str) -> list[Head]:
    """Heads from JSON lines; a garbled line is a WitnessError naming it."""
    heads = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            heads.append(Head.model_validate_json(line))
        except ValidationError as exc:
            raise WitnessError(f"line {n} of {where} is not a ledger head: {exc.errors()[0]}"
                               ) from exc
    return heads


def _refuse_backwards(last: Head | None, head: Head, where: str) -> None:
    if last is not None and head.seq <= last.seq:
        raise WitnessError(
            f"{where} already holds head {last.seq}; head {head.seq} would move it backwards "
            "(was the ledger truncated or its database replaced? run `upgate verify`)"
        )


# --- the interface ---------------------------------------------------------------------------


class Witness(ABC):
    """Somewhere outside the state folder that keeps every published head, in order."""

    @abstractmethod
    def describe(self) -> str:
        """Where the heads go, for messages."""

    @abstractmethod
    def publish(self, head: Head) -> None:
        """Append one head; WitnessError if unreachable or if it would move backwards."""

    @abstractmethod
    def heads(self) -> list[Head]:
        """Every head held, oldest first; WitnessError if unreadable or rewritten."""


class FileWitness(Witness):
    """Append-only JSON lines in a file (put it on another volume; `chattr +a` it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        """The file."""
        return f"file {self.path}"

    def publish(self, head: Head) -> None:
        """Append under an exclusive lock, after checking the last line."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WitnessError(f"cannot open the witness {self.path}: {exc}") from exc
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 8192))
            tail = fh.read().decode("utf-8", "replace").splitlines()
            last = parse_heads(tail[-1:], str(self.path))[-1] if tail else None
            _refuse_backwards(last, head, self.describe())
            fh.write((head.model_dump_json() + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())

    def heads(self) -> list[Head]:
        """Every line."""
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WitnessError(f"cannot read the witness {self.path}: {exc}") from exc
        return parse_heads(text.splitlines(), str(self.path))


_GIT_ENV = {"GIT_AUTHOR_NAME": "upgate", "GIT_AUTHOR_EMAIL": "upgate@localhost",
            "GIT_COMMITTER_NAME": "upgate", "GIT_COMMITTER_EMAIL": "upgate@localhost",
            "GIT_TERMINAL_PROMPT": "0"}


def init_git_witness(path: Path, branch: str = "main") -> None:
    """A bare repository that refuses pushes that rewrite or delete history."""
    for args in (["init", "-q", "--bare", f"--initial-branch={branch}", str(path)],
                 ["-C", str(path), "config", "receive.denyNonFastForwards", "true"],
                 ["-C", str(path), "config", "receive.denyDeletes", "true"]):
        proc = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise WitnessError(f"cannot create the git witness {path}: {proc.stderr.strip()}")


class GitWitness(Witness):
    """A separate git repository: one commit per head, pushed as a fast-forward.

    A local cache (a bare repository in the state folder) fetches the witness; the last
    tip it saw is kept, and a witness whose new tip does not descend from it was rewritten.
    """

    def __init__(self, url: str, cache: Path, *, branch: str = "main") -> None:
        self.url = url
        self.cache = cache
        self.branch = branch

    def describe(self) -> str:
        """The repository."""
        return f"git repository {self.url} ({self.branch})"

    def _git(self, *args: str, stdin: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
        env = {**os.environ, **_GIT_ENV}
        proc = subprocess.run(["git", "-C", str(self.cache), *args], input=stdin,
                              capture_output=True, text=True, check=False, env=env)
        if proc.returncode not in ok:
            raise WitnessError(f"git {args[0]} on the witness {self.url} failed: "
                               f"{proc.stderr.strip()[:400]}")
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def _fetch(self) -> str | None:
        """The witness's tip (None when it holds nothing yet), checked against the last seen."""
        local = Path(self.url)
        if "://" not in self.url and not local.exists():
            log.warning("creating the git witness %s", local)
            init_git_witness(local, self.branch)
        if not (self.cache / "HEAD").exists():
            self.cache.mkdir(parents=True, exist_ok=True)
            self._git("init", "-q", "--bare")
        if not self._git("ls-remote", self.url, f"refs/heads/{self.branch}"):
            tip = None
        else:
            self._git("fetch", "-q", self.url, f"+refs/heads/{self.branch}:refs/witness/remote")
            tip = self._git("rev-parse", "refs/witness/remote")
        seen = self._git("rev-parse", "-q", "--verify", "refs/witness/seen", ok=(0, 1))
        if seen and (tip is None or subprocess.run(
                ["git", "-C", str(self.cache), "merge-base", "--is-ancestor", seen, tip],
                capture_output=True, check=False).returncode != 0):
            raise WitnessError(
                f"the witness {self.url} moved backwards: its history no longer contains "
                f"commit {seen[:12]}, which upgate published or saw there before"
            )
        return tip

    def _lines(self, tip: str | None) -> list[str]:
        if tip is None:
            return []
        text = self._git("cat-file", "-p", f"{tip}:{HEADS_FILE}", ok=(0, 128))
        return text.splitlines()

    def publish(self, head: Head) -> None:
        """Commit the head on top of the witness's tip and push it as a fast-forward."""
        tip = self._fetch()
        lines = self._lines(tip)
        held = parse_heads(lines, self.describe())
        _refuse_backwards(held[-1] if held else None, head, self.describe())
        content = "\n".join([*lines, head.model_dump_json()]) + "\n"
        blob = self._git("hash-object", "-w", "--stdin", stdin=content)
        tree = self._git("mktree", stdin=f"100644 blob {blob}\t{HEADS_FILE}\n")
        parents = ["-p", tip] if tip else []
        commit = self._git("commit-tree", tree, *parents, "-m", f"ledger head {head.seq}")
        self._git("push", "-q", self.url, f"{commit}:refs/heads/{self.branch}")
        self._git("update-ref", "refs/witness/seen", commit)

    def heads(self) -> list[Head]:
        """The heads file at the witness's tip."""
        return parse_heads(self._lines(self._fetch()), self.describe())


def build_witness(cfg: GitWitnessConfig | FileWitnessConfig, state_dir: Path) -> Witness:
    """The configured backend; a witness inside the state folder is refused."""
    state = state_dir.resolve()
    where = Path(cfg.path) if cfg.type == "file" or "://" not in str(cfg.path) else None
    if where is not None and where.resolve().is_relative_to(state):
        raise ConfigError(
            f"witness.path {where} is inside the state folder {state_dir}: a witness must be "
            "somewhere the state folder's writer cannot rewrite (another volume, repository)"
        )
    key_dir = cfg.key_dir or default_key_dir()
    if key_dir.resolve().is_relative_to(state):
        raise ConfigError(f"witness.key_dir {key_dir} is inside the state folder {state_dir}; "
                          "keep the ledger key outside it ($UPGATE_KEY_DIR)")
    if isinstance(cfg, FileWitnessConfig):
        return FileWitness(cfg.path)
    return GitWitness(str(cfg.path), state_dir / "witness-cache.git", branch=cfg.branch)


def compare(chain: dict[int, str], heads: list[Head], *, where: str,
            local_key: str | None, seen: int) -> list[str]:
    """What is wrong between the ledger's chain (seq -> hash) and the witness's heads.

    `local_key` is this machine's ledger key (None when absent); `seen` is the highest
    head this state folder published to or saw in the witness.
    """
    last = max(chain, default=0)
    if not heads:
        if last or seen:
            return [f"the witness ({where}) holds no head, but the ledger has {last} entries "
                    "(a new or replaced witness, or one never published to)"]
        return []
    problems: list[str] = []
    key = heads[0].public_key
    if local_key is not None and key != local_key:
        problems.append(f"the witness's heads are signed by key {key[:16]}, not by this "
                        f"machine's ledger key {local_key[:16]} (a replaced witness?)")
    rewritten: list[int] = []
    previous = 0
    for n, head in enumerate(heads, start=1):
        if head.public_key != key or not head.signed_by(key):
            problems.append(f"witness head {n} (seq {head.seq}) is not signed by the ledger key "
                            f"{key[:16]}: forged")
        if head.seq <= previous:
            problems.append(f"the witness moved backwards at head {n}: seq {head.seq} after "
                            f"seq {previous}")
        previous = max(previous, head.seq)
        if head.seq in chain and chain[head.seq] != head.hash:
            rewritten.append(head.seq)
    if rewritten:
        problems.append(
            f"the ledger was rewritten: entry {rewritten[0]} differs from the head the witness "
            f"holds ({len(rewritten)} witnessed head(s) no longer match)"
        )
    newest = heads[-1].seq
    if previous > last:
        problems.append(f"entries {last + 1}..{previous} are missing: the witness holds head "
                        f"{previous} (the ledger was truncated, or its database deleted)")
    elif newest < last:
        problems.append(f"entries {newest + 1}..{last} are not witnessed (added outside "
                        "upgate, or the witness was unreachable: `upgate verify --publish` "
                        "witnesses them once you have checked them)")
    if newest < seen:
        problems.append(f"the witness moved backwards: it holds heads up to {newest}, but "
                        f"head {seen} was published to it")
    return problems
