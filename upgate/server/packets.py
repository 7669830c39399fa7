"""Evidence packets by hash, and their sections as short text for the page and the model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from upgate.errors import EvalError
from upgate.evidence_store import read_packet

SECTIONS = ("verdict", "proposal", "candidate", "checks", "tests", "comparison", "findings",
            "versions")
"""The packet's sections, in the order the page shows them and answers cite them."""

_HASH = re.compile(r"[0-9a-f]{64}")
_DIFF_CHARS = 1200


def find_packet(state_dir: Path, evidence_hash: str) -> dict[str, Any]:
    """The packet with this hash, re-hashed on reading; EvalError if absent or changed."""
    if not _HASH.fullmatch(evidence_hash):
        raise EvalError("an evidence hash is 64 lowercase hex characters; copy it from the inbox")
    for path in sorted((state_dir / "evidence").glob(f"*/{evidence_hash}.json")):
        packet = read_packet(state_dir, path.parent.name, evidence_hash)
        data: dict[str, Any] = json.loads(packet.to_json())
        return data
    raise EvalError(f"no evidence packet {evidence_hash[:12]} in this state folder")


def plot_path(state_dir: Path, evidence_hash: str) -> Path | None:
    """The packet's SVG plot of per-slice deltas, if the critic drew one."""
    find_packet(state_dir, evidence_hash)
    for path in sorted((state_dir / "evidence").glob(f"*/{evidence_hash}.svg")):
        return path
    return None


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _delta_line(name: str, d: dict[str, Any]) -> str:
    return (f"{name}: {_fmt(d.get('baseline_mean'))} -> {_fmt(d.get('candidate_mean'))} "
            f"(delta {_fmt(d.get('delta'))}, 95% CI {_fmt(d.get('ci_low'))}.."
            f"{_fmt(d.get('ci_high'))}, n={d.get('n')})")


def section_texts(packet: dict[str, Any]) -> dict[str, str]:
    """Each section as a few plain lines (what the answering model reads and cites)."""
    out: dict[str, str] = {}
    out["verdict"] = "\n".join([f"verdict: {packet.get('verdict')}",
                                *(f"- {r}" for r in packet.get("reasons", []))])
    proposal = packet.get("proposal") or {}
    out["proposal"] = "\n".join(f"{k}: {v}" for k, v in proposal.items()
                                if k in ("kind", "recipe", "args", "rationale",
                                         "expected_effect", "risk", "evidence_refs"))
    cand = packet.get("candidate") or {}
    diff = str(cand.get("diff", ""))
    if len(diff) > _DIFF_CHARS:
        diff = diff[:_DIFF_CHARS] + f"\n[... {len(diff) - _DIFF_CHARS} more characters]"
    out["candidate"] = "\n".join([
        f"kind: {cand.get('kind')}", f"description: {cand.get('description', '')}",
        f"artifacts: {cand.get('artifacts', {})}", "diff:", diff])
    out["checks"] = "\n".join(f"{c['name']}: {'passed' if c['passed'] else 'FAILED'}"
                              f" ({c.get('detail', '')})" for c in packet.get("checks", []))
    tests = []
    for side in ("baseline", "candidate"):
        run = packet.get(f"tests_{side}")
        if run:
            tests.append(f"{side}: {'passed' if run['passed'] else 'failed'}, exit "
                         f"{run.get('exit_code')}; {run.get('summary', '')[:300]}")
    out["tests"] = "\n".join(tests) or "no test runs recorded"
    comp = packet.get("comparison") or {}
    lines = []
    if comp.get("overall"):
        lines.append(_delta_line("overall", comp["overall"]))
    lines += [_delta_line(f"split {k}", v) for k, v in (comp.get("by_split") or {}).items()]
    lines += [_delta_line(f"slice {k}", v) for k, v in (comp.get("per_slice") or {}).items()]
    out["comparison"] = "\n".join(lines) or "no eval comparison"
    out["findings"] = "\n".join(
        f"{f.get('name')}: {'TRIGGERED' if f.get('triggered') else 'clear'} "
        f"[{f.get('severity')}] {str(f.get('evidence', ''))[:300]}"
        for f in packet.get("findings", [])) or "no detector findings"
    out["versions"] = "\n".join(f"{k}: {v}" for k, v in (packet.get("versions") or {}).items())
    return out
