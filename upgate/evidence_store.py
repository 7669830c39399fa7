"""The evidence folder: each cycle's packets, written and read by their hash.

Layout: `STATE/evidence/CYCLE/HASH.json` (the packet, the record of truth), `HASH.md` (a
rendering for people who open the folder) and `HASH.svg` (the per-slice plot). What an
approver is shown is always re-rendered from the JSON, found by the hash the approval
request is bound to and re-hashed on reading, so a file planted or edited in the folder
is never what they read. Cycle ids are checked against a strict pattern before they
become part of a path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from upgate.errors import ConfigError, EvalError
from upgate.evals.evidence import EvidencePacket

log = logging.getLogger(__name__)

CYCLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HASH = re.compile(r"[0-9a-f]{64}")


def check_cycle_id(cycle_id: str) -> str:
    """The cycle id, if it is safe as a folder name; ConfigError otherwise."""
    if not CYCLE_ID.fullmatch(cycle_id) or ".." in cycle_id:
        raise ConfigError(
            f"{cycle_id!r} is not a cycle id: use letters, digits, '.', '_' and '-' only "
            "(at most 128, starting with a letter or digit); see `upgate history`"
        )
    return cycle_id


def safe_cycle_id(text: str) -> str:
    """A cycle id made from free text (a file name): unsafe characters become '_'."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._-").replace("..", "_")
    return clean[:128] or "cycle"


def cycle_folder(state_dir: Path, cycle_id: str) -> Path:
    """The evidence folder of one cycle."""
    return state_dir / "evidence" / check_cycle_id(cycle_id)


def _check_hash(evidence_hash: str) -> str:
    if not _HASH.fullmatch(evidence_hash):
        raise EvalError(f"{evidence_hash!r} is not an evidence hash (64 hex digits)")
    return evidence_hash


def write_packet(state_dir: Path, cycle_id: str, evidence_hash: str, packet_json: str,
                 markdown: str, svg: str = "") -> Path:
    """Write a packet's JSON, Markdown and plot under its hash; returns the JSON's path."""
    folder = cycle_folder(state_dir, cycle_id)
    folder.mkdir(parents=True, exist_ok=True)
    stem = _check_hash(evidence_hash)
    if svg:
        (folder / f"{stem}.svg").write_text(svg, encoding="utf-8")
        markdown += f"\n\n![per-slice deltas and intervals]({stem}.svg)\n"
    (folder / f"{stem}.md").write_text(markdown, encoding="utf-8")
    path = folder / f"{stem}.json"
    path.write_text(packet_json, encoding="utf-8")
    return path


def read_packet(state_dir: Path, cycle_id: str, evidence_hash: str) -> EvidencePacket:
    """The packet with this hash, re-hashed; EvalError when missing or changed."""
    path = cycle_folder(state_dir, cycle_id) / f"{_check_hash(evidence_hash)}.json"
    if not path.is_file():
        raise EvalError(
            f"the evidence packet {evidence_hash[:16]} of cycle {cycle_id} is missing "
            f"({path}); do not approve: reject, or resume the cycle for a fresh critique"
        )
    packet = EvidencePacket.from_json(path.read_text(encoding="utf-8"))
    if packet.packet_hash != evidence_hash:
        raise EvalError(
            f"{path.name} holds packet {packet.packet_hash[:16]}, not the packet "
            f"{evidence_hash[:16]} the request is bound to; do not approve it"
        )
    return packet
