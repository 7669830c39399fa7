"""The versioned policy: which changes agents may make, which checks and approvals each needs.

The policy lives outside the target, so no candidate can change what judges it; its
version id (declared version plus content hash) is recorded with every decision.
"""

from __future__ import annotations

import fnmatch
import tomllib
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from upgate.errors import PolicyError
from upgate.hashing import sha256_text

ChangeKind = Literal["code", "prompt", "config", "model"]
CheckName = Literal["protected_paths", "tests", "eval", "detectors"]

UNPARSEABLE_PATH = "<unparseable diff entry>"
"""What a diff entry whose paths cannot be read counts as; always protected."""

ALWAYS_PROTECTED: tuple[str, ...] = (
    UNPARSEABLE_PATH,
    "upgate-target.toml",
    ".upgate/**",
    ".git/**",
)
"""Paths no policy can unprotect: the target manifest and upgate's own state."""


class KindRule(BaseModel):
    """What one kind of change is allowed, and what it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed: bool = True
    checks: tuple[CheckName, ...] = ("protected_paths", "tests", "eval", "detectors")
    approval: Literal["required", "auto"] = "required"
    recipes: tuple[str, ...] | None = None
    """Recipes allowed for this kind; None means all the target allows."""
    approvals_required: int = Field(default=1, ge=1, le=5)
    """How many distinct approvers must approve (the cycle waits until they all have)."""
    require_gain: bool = True
    """Whether the eval must improve. Off for changes the eval cannot measure (a refactor):
    tests, detectors and non-regression still apply, and a human still decides."""


class Thresholds(BaseModel):
    """Numbers at which the loop stops, pauses or rejects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_revisions: int = Field(default=1, ge=0, le=5)
    min_gain: float = Field(default=0.0, ge=0.0, le=1.0)
    """The candidate's overall score must beat the baseline's by more than this."""
    regression_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    """No slice may drop by more than this."""
    approval_ttl_hours: float = Field(default=24.0, gt=0.0, le=24.0 * 30)
    max_diff_lines: int = Field(default=400, ge=1)
    monitor_tolerance: float = Field(default=0.2, ge=0.0, le=1.0)
    """After deploy, the live score may trail the critic's by this much before rollback."""
    pause_after_failures: int = Field(default=2, ge=1)
    """Batch runs pause after this many failed or rejected cycles in a row."""


RiskLevel = Literal["low", "medium", "high"]


class Budget(BaseModel):
    """Spending limits for one scope (a batch, or a UTC day); None means no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int | None = Field(default=None, ge=0)
    """Model tokens (prompt + completion) the agents' chat calls reported."""
    sandbox_seconds: float | None = Field(default=None, ge=0.0)
    """Wall seconds of sandbox commands (the backends report wall time, not CPU time)."""
    wall_seconds: float | None = Field(default=None, ge=0.0)
    """Wall time of the cycles themselves."""


class Autonomy(BaseModel):
    """When a batch of autonomous cycles pauses (or stops) and a person must resume it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pending: int = Field(default=1, ge=1)
    """Pause when this many approvals wait in the inbox."""
    per_batch: Budget = Budget()
    """Counted from the batch's start, or from a person's last resume of it."""
    per_day: Budget = Budget()
    max_accumulated_regression: float | None = Field(default=0.05, ge=0.0, le=1.0)
    """Pause when a slice's deltas, summed over deployed changes since the last human
    reset, drop below minus this (each may pass the per-change tolerance on its own)."""
    pause_at_risk: RiskLevel | None = "high"
    """Pause before building a proposal of this risk or higher."""
    max_rollbacks: int | None = Field(default=2, ge=1)
    """Pause when this many rollbacks happened within the window."""
    rollback_window_hours: float = Field(default=24.0, gt=0.0)
    max_error_rate: float | None = Field(default=0.2, ge=0.0, le=1.0)
    """Pause when the endpoint's error rate in post-deploy checks exceeds this..."""
    error_rate_min_cases: int = Field(default=10, ge=1)
    """...over at least this many cases within the rollback window."""


class Rollout(BaseModel):
    """How a deployed served version takes live traffic: staged, compared, reversible.

    Each step sends `percent` of the alias's unpinned traffic (through the gateway) to the
    new version and bakes for `bake_s`; the new version is then compared with the stable one
    on the requests of that window and on suite cases pinned to each. A breach of any limit
    aborts and restores the stable version; otherwise the next step follows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    """Off: the alias swaps for all traffic at once (the in-place swap)."""
    steps: tuple[int, ...] = (5, 25, 100)
    """Percent of traffic on the new version at each step; rises, ends at 100."""
    bake_s: float = Field(default=30.0, ge=0.0)
    min_requests: int = Field(default=10, ge=0)
    """A step is judged only on at least this many requests to the new version (live plus
    pinned suite cases); fewer is a breach, not a pass."""
    max_error_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    """The new version's error rate may exceed the stable one's by at most this."""
    max_p50_ratio: float = Field(default=1.5, gt=0.0)
    max_p95_ratio: float = Field(default=2.0, gt=0.0)
    suite_cases: int = Field(default=8, ge=0)
    """Visible suite cases sent through the entry point to each version at each step."""
    max_suite_drop: float = Field(default=0.1, ge=0.0, le=1.0)
    """The new version's suite score may trail the stable one's by at most this."""
    rollback_window_s: float = Field(default=600.0, ge=0.0)
    """Blue/green: how long the old server stays warm after a switch."""

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if not steps or steps[-1] != 100 or any(
                not 0 < a < b for a, b in pairwise(steps)) or steps[0] <= 0:
            raise ValueError(f"steps must rise strictly from above 0 to 100, got {list(steps)}")
        return steps


LandingMode = Literal["branch", "fast-forward", "merge"]


class Landing(BaseModel):
    """How an approved code, prompt or config change lands on the target's deploy branch
    (the branch cycles take their baseline from, `[target] base_branch`).

    "branch": the change stays on its own branch `upgate/<cycle>` and the next cycle does
    not build on it. "fast-forward": the deploy branch moves to the change's commit, only
    when it has not moved since the commit the change was judged on. "merge": a merge
    commit on the deploy branch. Never a force-push, never rewritten history; a rollback
    of a landed change is a revert commit. In the policy (adopted by an admin, versioned
    with every decision), not the target's manifest: a candidate can change the target's
    files, and must not choose how its own change reaches the branch that judges the next.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: LandingMode = "branch"


RoleName = Literal["admin", "approver", "operator", "viewer"]


class Policy(BaseModel):
    """A loaded policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    approvers: tuple[str, ...] = ()
    """Kept for older files: these people also hold the approver role."""
    roles: dict[RoleName, tuple[str, ...]] = Field(default_factory=dict)
    """Who holds which role: admin (people, policy), approver, operator (starts cycles),
    viewer. Roles come from here, never from who registered whom."""
    protected_paths: tuple[str, ...] = ("tests/**",)
    kinds: dict[ChangeKind, KindRule] = Field(default_factory=dict)
    thresholds: Thresholds = Thresholds()
    autonomy: Autonomy = Autonomy()
    rollout: Rollout = Rollout()
    landing: Landing = Landing()
    content_hash: str = ""

    @property
    def version_id(self) -> str:
        """`name@version+hash12`: what the ledger records."""
        return f"{self.name}@{self.version}+{self.content_hash[:12]}"

    def rule(self, kind: ChangeKind) -> KindRule:
        """The rule for a kind; kinds the file does not name are not allowed."""
        return self.kinds.get(kind, KindRule(allowed=False))

    def requires_approval(self, kind: ChangeKind) -> bool:
        """Whether a human must approve. A served-model change always needs one."""
        if kind == "model":
            return True
        return self.rule(kind).approval == "required"

    def members(self, role: RoleName) -> tuple[str, ...]:
        """The people holding a role (approvers listed the old way included)."""
        names = self.roles.get(role, ())
        if role == "approver":
            names = tuple(dict.fromkeys(names + self.approvers))
        return names

    def role_members(self) -> dict[str, tuple[str, ...]]:
        """Every role with its members."""
        return {r: self.members(r) for r in ("admin", "approver", "operator", "viewer")}

    def approvals_required(self, kind: ChangeKind) -> int:
        """How many distinct people must approve a change of this kind."""
        return self.rule(kind).approvals_required

    def all_protected(self) -> tuple[str, ...]:
        """The policy's protected globs plus those no policy can lift."""
        return tuple(dict.fromkeys(self.protected_paths + ALWAYS_PROTECTED))

    def protected_hits(self, paths: list[str]) -> list[str]:
        """The paths (of a diff) that match a protected glob."""
        globs = self.all_protected()
        return [p for p in paths if any(_match(p, g) for g in globs)]


def _match(path: str, glob: str) -> bool:
    if fnmatch.fnmatchcase(path, glob):
        return True
    # "dir/**" also means the folder itself and everything below it at any depth.
    if glob.endswith("/**"):
        base = glob[:-3]
        return path == base or path.startswith(base + "/")
    return False


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; errors name the file and the key."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PolicyError(
            f"policy file {path} does not exist. Set `policy` in upgate.toml to a policy file "
            "(see examples/policy.toml)."
        ) from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str) -> Policy:
    """Validate a policy's text (a file's, or the adopted one kept in the state)."""
    path = source
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML: {exc}") from exc
    data["content_hash"] = sha256_text(text)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise PolicyError(f"policy file {path} is invalid: {problems}") from exc
