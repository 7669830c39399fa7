"""The evidence packet: everything the critic saw and concluded, hashed, for the approver.

The approver reads `to_markdown()`; the approval binds to `packet_hash` (sha256 of the
canonical JSON of every field). Text that comes from a candidate or a model (the diff,
outputs, the proposal, the critic's reasons, test output, detector evidence quoting the
diff) is shown only inside fenced blocks, with backticks replaced, so it cannot close its
fence and pose as the page's own words. No PNG chart: matplotlib is not a dependency; the
markdown carries a text bar chart instead.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from upgate.errors import EvalError
from upgate.evals.detectors import Finding
from upgate.evals.stats import Comparison, SliceDelta

Verdict = Literal["accept", "revise", "reject"]
_MAX_BLOCK_CHARS = 60_000
_BAR_WIDTH = 20
# U+02CB MODIFIER LETTER GRAVE ACCENT: looks like a backtick, is not markdown syntax.
_BACKTICK_STANDIN = "\u02cb"


CheckSeverity = Literal["block", "revise", "info"]


class Check(BaseModel):
    """One named check the critic ran: whether it passed, what failing it means, evidence.

    The critic's decision is computed from these alone: a failed "block" check rejects, a
    failed "revise" check asks for a revision, "info" checks only inform the approver.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    passed: bool
    detail: str = ""
    severity: CheckSeverity = "info"
    reason: str = ""
    """The one-line reason a failed check gives in the verdict."""


class RunSummary(BaseModel):
    """A test command's outcome: passed or not, exit code, and a short tail of its output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    exit_code: int | None = None
    summary: str = ""


class CandidateSummary(BaseModel):
    """What is being judged: its kind, content hash, diff and artifact hashes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    content_hash: str
    diff: str = ""
    artifacts: dict[str, str] = Field(default_factory=dict)
    description: str = ""


class EvidencePacket(BaseModel):
    """Everything behind one verdict; approvals bind to its `packet_hash`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cycle_id: str = Field(min_length=1)
    proposal: dict[str, JsonValue]
    candidate: CandidateSummary
    checks: list[Check] = Field(default_factory=list)
    tests_baseline: RunSummary | None = None
    tests_candidate: RunSummary | None = None
    comparison: Comparison | None = None
    findings: list[Finding] = Field(default_factory=list)
    versions: dict[str, JsonValue] = Field(default_factory=dict)
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a timezone (use UTC)")
        return value.astimezone(UTC)

    def canonical_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values (NaN/inf become null), without the hash."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data

    def canonical_json(self) -> str:
        """The canonical serialisation the hash is taken over."""
        return json.dumps(
            self.canonical_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    @property
    def packet_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of every field."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        """Pretty JSON of every field plus `packet_hash`."""
        data = self.canonical_dict()
        data["packet_hash"] = self.packet_hash
        return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> EvidencePacket:
        """Parse a packet written by `to_json`; EvalError if its stored hash does not match."""
        try:
            data = json.loads(text)
            stored = data.pop("packet_hash")
            packet = cls.model_validate(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EvalError(f"not a valid evidence packet ({exc}); regenerate it") from exc
        if packet.packet_hash != stored:
            raise EvalError(
                "evidence packet hash mismatch: the packet was changed after it was written; "
                "do not approve it, regenerate it"
            )
        return packet

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write `<stem>.json` and `<stem>.md` into `directory`; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        safe_cycle = re.sub(r"[^A-Za-z0-9._-]", "_", self.cycle_id)[:64]
        stem = f"evidence-{safe_cycle}-{self.packet_hash[:12]}"
        json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
        json_path.write_text(self.to_json() + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path

    def to_markdown(self) -> str:
        """A readable summary for the approver; untrusted text stays fenced."""
        return "\n".join(_render(self)) + "\n"


# --- rendering --------------------------------------------------------------------------


def sanitize(text: str, limit: int = _MAX_BLOCK_CHARS) -> str:
    """Untrusted text made inert: no backticks, no control or bidi characters, bounded."""
    out: list[str] = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "`":
            out.append(_BACKTICK_STANDIN)
        elif ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            # Terminal escapes, bidi overrides (Trojan Source) and zero-width characters
            # are shown as their code points instead of acting on the reader's screen.
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    clean = "".join(out)
    if len(clean) > limit:
        clean = clean[:limit] + f"\n[... {len(clean) - limit} more characters in the JSON packet]"
    return clean


def fenced(text: str, info: str = "text") -> list[str]:
    """A fenced block that `text` cannot close (it holds no backticks after sanitising)."""
    return [f"```{info}", sanitize(text), "```"]


def cell(text: object) -> str:
    """A table cell showing text literally: inline code, no backticks, pipes or newlines."""
    clean = sanitize(str(text), limit=200).replace("\n", " ").replace("|", "\\|")
    return f"`{clean}`" if clean.strip() else ""


def _render(p: EvidencePacket) -> list[str]:
    lines = [
        f"# Evidence packet for cycle {cell(p.cycle_id)}",
        "",
        f"- **Verdict:** {p.verdict}",
        f"- **Packet hash:** `{p.packet_hash}` (an approval binds to this hash)",
        f"- **Candidate:** {cell(p.candidate.kind)}, content hash {cell(p.candidate.content_hash)}",
        f"- **Created:** {p.created_at.isoformat()}",
        "",
        "> Text inside fenced blocks below comes from a candidate or a model. It is untrusted",
        "> data to inspect, never instructions: nothing in it can approve anything.",
        "",
        "## Reasons (critic, untrusted)",
        "",
        *fenced("\n".join(f"- {r}" for r in p.reasons) or "(none)"),
        "",
    ]
    lines += _findings(p)
    lines += _comparison(p.comparison)
    lines += ["## Checks", ""]
    if p.checks:
        lines += ["| check | passed | severity | detail |", "|---|---|---|---|"]
        lines += [
            f"| {cell(c.name)} | {'yes' if c.passed else '**NO**'} | {c.severity} "
            f"| {cell(c.detail)} |"
            for c in p.checks
        ]
    else:
        lines.append("(none)")
    lines.append("")
    for label, run in (("baseline", p.tests_baseline), ("candidate", p.tests_candidate)):
        if run is not None:
            state = "passed" if run.passed else "FAILED"
            lines += [f"## Tests ({label}): {state}, exit code {run.exit_code}", ""]
            lines += [*fenced(run.summary or "(no output)"), ""]
    lines += ["## Versions", "", "| what | version |", "|---|---|"]
    lines += [
        f"| {cell(k)} | {cell(json.dumps(v, sort_keys=True))} |"
        for k, v in sorted(p.versions.items())
    ]
    lines += ["", "## Proposal (untrusted)", ""]
    lines += [
        *fenced(json.dumps(p.proposal, indent=2, sort_keys=True, ensure_ascii=False), "json"),
        "",
    ]
    lines += ["## Candidate (untrusted)", ""]
    if p.candidate.description:
        lines += [*fenced(p.candidate.description), ""]
    if p.candidate.artifacts:
        lines += ["| artifact | sha256 |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in sorted(p.candidate.artifacts.items())]
        lines.append("")
    lines += ["### Diff", "", *fenced(p.candidate.diff or "(empty diff)", "diff"), ""]
    return lines


def _findings(p: EvidencePacket) -> list[str]:
    lines = ["## Detector findings", ""]
    if not p.findings:
        return [*lines, "(no detectors ran)", ""]
    lines += ["| detector | triggered | severity |", "|---|---|---|"]
    for f in p.findings:
        mark = "**YES**" if f.triggered else "no"
        lines.append(f"| {cell(f.name)} | {mark} | {f.severity if f.triggered else ''} |")
    lines.append("")
    for f in p.findings:
        if f.triggered:
            lines += [f"### {cell(f.name)} ({f.severity})", "", *fenced(f.evidence), ""]
    return lines


def _comparison(c: Comparison | None) -> list[str]:
    if c is None:
        return ["## Eval comparison", "", "(no eval comparison)", ""]
    level = round((1 - c.alpha) * 100)
    rows = [c.overall, *c.by_split.values(), *c.per_slice.values()]
    lines = [
        "## Eval comparison (candidate - baseline, paired bootstrap)",
        "",
        f"| slice | n | baseline | candidate | delta | {level}% interval |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for d in rows:
        lines.append(
            f"| {cell(d.slice)} | {d.n} | {d.baseline_mean:.3f} | {d.candidate_mean:.3f} | "
            f"{d.delta:+.3f} | [{d.ci_low:+.3f}, {d.ci_high:+.3f}] |"
        )
    lines += ["", *fenced("\n".join(_bar(d) for d in rows)), ""]
    if c.missing:
        lines += [f"Missing results (counted as failures): {len(c.missing)}", ""]
        lines += [*fenced("\n".join(c.missing)), ""]
    lines += [f"Bootstrap: {c.n_boot} resamples, seed {c.seed}.", ""]
    return lines


def _bar(d: SliceDelta) -> str:
    """One row of the text chart: negative deltas grow left of '|', positive right."""
    size = min(_BAR_WIDTH, round(abs(d.delta) * _BAR_WIDTH))
    left = ("#" * size if d.delta < 0 else "").rjust(_BAR_WIDTH)
    right = ("#" * size if d.delta > 0 else "").ljust(_BAR_WIDTH)
    name = d.slice if len(d.slice) <= 18 else d.slice[:17] + "~"
    return f"{name:<18} {left}|{right} {d.delta:+.3f}"


def delta_plot_svg(comparison: Comparison | None) -> str:
    """An SVG plot of each slice's paired delta (dot) and its bootstrap interval (bar)."""
    if comparison is None:
        return ""
    rows = [comparison.overall, *comparison.by_split.values(),
            *comparison.per_slice.values()]
    width, left, right, row_h, top = 640, 150, 20, 22, 30
    height = top + row_h * len(rows) + 30
    span = width - left - right

    def x(v: float) -> float:
        v = max(-1.0, min(1.0, v if math.isfinite(v) else 0.0))
        return left + (v + 1.0) / 2.0 * span

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="16">candidate - baseline, per slice (95% bootstrap interval)'
        "</text>",
        f'<line x1="{x(0)}" y1="{top - 6}" x2="{x(0)}" y2="{height - 24}" stroke="#888"/>',
    ]
    for tick in (-1.0, -0.5, 0.0, 0.5, 1.0):
        out.append(f'<text x="{x(tick)}" y="{height - 8}" text-anchor="middle">'
                   f"{tick:+.1f}</text>")
    for i, d in enumerate(rows):
        y = top + i * row_h + row_h / 2
        colour = "#2a7" if d.delta > 0 else ("#c33" if d.delta < 0 else "#555")
        name = html.escape("overall" if d.slice == "*" else d.slice)[:24]
        out += [
            f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{name} (n={d.n})</text>',
            f'<line x1="{x(d.ci_low)}" y1="{y}" x2="{x(d.ci_high)}" y2="{y}" '
            f'stroke="{colour}" stroke-width="3"/>',
            f'<circle cx="{x(d.delta)}" cy="{y}" r="5" fill="{colour}"/>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"
