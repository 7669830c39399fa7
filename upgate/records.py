"""The domain records of upgate: what a cycle proposes, builds, judges, decides and deploys.

They live at the bottom of the house (only pydantic, hashing and the policy's kinds below
them), so agents, evals, approvals and the graph all import them without importing each
other. The graph's state holds their JSON form; these models validate it at each edge.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from upgate.hashing import sha256_json
from upgate.policy import ChangeKind

Outcome = Literal[
    "running", "failed", "blocked", "rejected", "awaiting_approval", "approved",
    "deployed", "rolled_back", "cancelled",
]


class ModelRef(BaseModel):
    """Which model made a decision: endpoint, model id, and the prompt version it used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    endpoint: str
    model: str
    prompt: str
    prompt_hash: str


class Proposal(BaseModel):
    """One typed proposal for a change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: ChangeKind
    target: str
    recipe: str
    args: dict[str, Any] = Field(default_factory=dict)
    rationale: str
    expected_effect: str
    risk: Literal["low", "medium", "high"]
    evidence_refs: tuple[str, ...] = ()
    made_by: ModelRef


class Artifact(BaseModel):
    """A content-hashed artifact a candidate carries (an adapter, a prompt version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["adapter", "prompt", "config", "file", "model"]
    """"model": a whole model folder (weights, tokenizer, serving file): blue/green."""
    path: str
    sha256: str


class Candidate(BaseModel):
    """What the coder produced: a diff and artifacts, identified by their content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proposal_id: str
    kind: ChangeKind
    diff: str
    changed_paths: tuple[str, ...]
    artifacts: tuple[Artifact, ...] = ()
    log: str = ""
    made_by: ModelRef | None = None

    @property
    def content_hash(self) -> str:
        """Hash over the diff and the artifacts' hashes: what an approval binds to."""
        return sha256_json(
            {
                "kind": self.kind,
                "diff": self.diff,
                "artifacts": [(a.name, a.kind, a.sha256) for a in self.artifacts],
            }
        )


class Verdict(BaseModel):
    """The critic's decision and why, with the evidence packet it rests on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision: Literal["accept", "revise", "reject"]
    reasons: tuple[str, ...]
    evidence_hash: str
    evidence_json: str
    evidence_markdown: str
    evidence_svg: str = ""
    visible_case_scores: dict[str, float] = Field(default_factory=dict)
    """The candidate's score on each visible case, for the post-deploy check to compare."""
    baseline_score: float | None = None
    candidate_score: float | None = None
    phases: dict[str, float] = Field(default_factory=dict)
    """Seconds the critique spent per phase (tests, evals, probes, review); not evidence."""


class Decision(BaseModel):
    """A person's signed decision on one cycle's candidate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cycle_id: str
    action: Literal["approve", "reject"]
    approver: str
    reason: str = ""
    candidate_hash: str
    evidence_hash: str
    policy_version: str
    issued_at: str
    channel: Literal["cli", "chat", "slack"] = "cli"
    signer: str = ""
    """The key id that signed it: `person:<approver>` on the CLI, `service:<name>` for a
    decision the approval service signed after it authenticated the person."""
    signature: str = ""

    def signing_payload(self) -> dict[str, Any]:
        """The fields the signature covers (everything but the signature)."""
        return self.model_dump(exclude={"signature"})


class Deployment(BaseModel):
    """Where an approved candidate went, and how to take it back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["git", "vllm", "bluegreen"]
    deployment_id: str
    branch: str | None = None
    commit: str | None = None
    created: bool | None = None
    alias: str | None = None
    version_name: str | None = None
    adapter_sha256: str | None = None
    previous: dict[str, Any] | None = None
    served: dict[str, Any] | None = None
    """Blue/green: where the deployed version is served (server, model folder, hash)."""
