"""`upgate critique`: the critic alone, for operators, CI gates and audits.

Exit code 0 when the critic accepts, 1 when it asks for a revision or rejects, 2 on errors.
It needs no eval suite for a code-only target and no model endpoint: the tests (visible
and hidden) are the evidence, and the critic model's advisory review runs only when
`[agents.critic]` is configured.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.markup import escape

from upgate.agents.critic import CriticContext, critique
from upgate.config import (
    EndpointConfig,
    Settings,
    TargetConfig,
    TargetManifest,
    load_manifest,
    load_settings,
)
from upgate.errors import ConfigError, UpgateError
from upgate.evals.gitdiff import rederive
from upgate.evidence_store import safe_cycle_id, write_packet
from upgate.ledger import open_ledger
from upgate.policy import ChangeKind, load_policy
from upgate.prompts import load_prompt
from upgate.records import Candidate, ModelRef, Proposal
from upgate.sandboxes.base import Mount, Sandbox
from upgate.target_tree import export_tree

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class CritiqueAgents(BaseModel):
    """Agents for `critique`: only the critic's endpoint is used, and it is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proposer: EndpointConfig | None = None
    coder: EndpointConfig | None = None
    critic: EndpointConfig | None = None


class CritiqueTarget(TargetConfig):
    """The target for `critique`: the eval suite is optional (code-only targets)."""

    suite: Path | None = None  # type: ignore[assignment]


class CritiqueSettings(Settings):
    """Settings for `critique`: no agent endpoint and no suite are required."""

    agents: CritiqueAgents = CritiqueAgents()  # type: ignore[assignment]
    target: CritiqueTarget


def read_candidate(target: Path, base: str, candidate: str) -> str:
    """The candidate's diff: a diff file, or a branch of the target compared with `base`.

    A branch is diffed by upgate's own git invocation: no external diff driver, no
    textconv, no configuration from the repository.
    """
    path = Path(candidate)
    if path.is_file():
        return path.read_text()
    proc = subprocess.run(
        ["git", "-c", "diff.noprefix=false", "-C", str(target), "diff", "--binary",
         "--no-ext-diff", "--no-textconv", "--no-color", "--src-prefix=a/", "--dst-prefix=b/",
         f"{base}...{candidate}", "--"],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "GIT_CONFIG_NOSYSTEM": "1",
             "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(target)},
    )
    if proc.returncode != 0:
        raise ConfigError(
            f"--candidate {candidate!r} is neither a diff file nor a branch of {target}: "
            f"{proc.stderr.strip()}"
        )
    return proc.stdout


def infer_kind(paths: tuple[str, ...], prompt_file: str | None, config_file: str | None
               ) -> ChangeKind:
    """A diff's kind: prompt or config when it touches only that file, else code."""
    if paths and set(paths) == {prompt_file}:
        return "prompt"
    if paths and set(paths) == {config_file}:
        return "config"
    return "code"


def critique_command(
    target: Annotated[Path | None, typer.Option(help="Target repository (default: config).")]
    = None,
    candidate: Annotated[str, typer.Option(help="A diff file, or a branch of the target.")]
    = "",
    suite: Annotated[Path | None, typer.Option(help="Suite folder (default: config).")] = None,
    hidden_tests: Annotated[Path | None, typer.Option(
        "--hidden-tests", help="The owner's tests kept outside the target (default: config).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the evidence packet JSON.")]
    = False,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
) -> None:
    """Run the critic alone on a candidate; exit 0 accept, 1 revise or reject, 2 error."""
    try:
        code = _critique(target, candidate, suite, hidden_tests, as_json, config)
    except UpgateError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _settings(config: Path | None, target: Path | None, suite: Path | None,
              hidden: Path | None) -> CritiqueSettings:
    settings = load_settings(config, CritiqueSettings)
    updates: dict[str, Path] = {}
    for key, value in (("path", target), ("suite", suite), ("hidden_tests", hidden)):
        if value is not None:
            updates[key] = value.resolve()
    if updates:
        settings = settings.model_copy(
            update={"target": settings.target.model_copy(update=updates)})
    t = settings.target
    if not (t.path / ".git").exists():
        raise ConfigError(f"--target {t.path} is not a git repository; pass the repository "
                          "whose base branch the candidate is compared with")
    if t.hidden_tests is not None and not t.hidden_tests.is_dir():
        raise ConfigError(f"hidden tests {t.hidden_tests} is not a folder; pass "
                          "--hidden-tests DIR or fix [target] hidden_tests")
    return settings


def _folder_hash(folder: Path | None) -> str | None:
    if folder is None:
        return None
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _critic_ref(settings: CritiqueSettings) -> ModelRef:
    prompt = load_prompt("critic")
    ep = settings.agents.critic
    return ModelRef(agent="critic", endpoint=ep.base_url if ep else "none",
                    model=ep.model if ep else "none", prompt=prompt.version_id,
                    prompt_hash=prompt.sha256)


def _context(settings: CritiqueSettings, manifest: TargetManifest, tree: Path,
             cycle_id: str, versions: dict[str, Any]) -> CriticContext:
    from upgate.agents.models import chat_model
    from upgate.app import target_sandbox_config
    from upgate.deploy.vllm import VllmAdmin
    from upgate.evals.harness import ChatChoiceHarness
    from upgate.evals.suite import load_suite
    from upgate.sandboxes.config import get_sandbox

    t = settings.target
    suite = load_suite(t.suite) if t.suite is not None else None
    box_cfg: list[Any] = []

    def sandbox(mounts: list[Mount]) -> Sandbox:
        if not box_cfg:  # resolved on first use: building an image takes a while
            box_cfg.append(target_sandbox_config(settings, manifest.sandbox_packages))
        return get_sandbox(box_cfg[0], mounts)

    ep = settings.agents.critic
    return CriticContext(
        suite=suite, manifest=manifest, policy=load_policy(settings.policy), target_tree=tree,
        sandbox=sandbox, harness=ChatChoiceHarness() if suite is not None else None,
        serving_url=settings.serving.openai_url,
        admin=(VllmAdmin(settings.serving.base_url)
               if suite is not None and manifest.model_alias else None),
        model=chat_model(ep) if ep is not None else None, made_by=_critic_ref(settings),
        retries=ep.output_retries if ep else 0, versions=versions, cycle_id=cycle_id,
        suite_path=t.suite, hidden_tests=t.hidden_tests,
    )


def _critique(target: Path | None, candidate: str, suite: Path | None, hidden: Path | None,
              as_json: bool, config: Path | None) -> int:
    if not candidate:
        raise ConfigError("--candidate is required: a diff file or a branch of the target")
    settings = _settings(config, target, suite, hidden)
    t = settings.target
    manifest = load_manifest(t.path)
    policy = load_policy(settings.policy)
    diff = read_candidate(t.path, t.base_branch, candidate)
    cycle_id = f"critique-{safe_cycle_id(Path(candidate).name)}"
    with tempfile.TemporaryDirectory(prefix="upgate-critique-") as tmp:
        tree = export_tree(t.path, t.base_branch, Path(tmp) / "tree")
        # The kind is read from the paths git applies, not from the diff's headers.
        paths = rederive(tree, diff).paths
        kind = infer_kind(paths, manifest.prompt_file, manifest.config_file)
        versions: dict[str, Any] = {"policy": policy.version_id, "target": manifest.name,
                                    "hidden_tests": _folder_hash(t.hidden_tests)}
        ctx = _context(settings, manifest, tree, cycle_id, versions)
        if ctx.suite is not None:
            versions.update(suite=ctx.suite.version_id, suite_hash=ctx.suite.content_hash)
        proposal = Proposal(
            id=f"{cycle_id}-p", kind=kind, target=manifest.name, recipe="external",
            rationale=f"external candidate {candidate}", expected_effect="(not stated)",
            risk="medium", made_by=ctx.made_by,
        )
        cand = Candidate(proposal_id=proposal.id, kind=kind, diff=diff, changed_paths=paths)
        verdict = critique(proposal, cand, ctx)
    packet = write_packet(settings.state_dir, cycle_id, verdict.evidence_hash,
                          verdict.evidence_json, verdict.evidence_markdown,
                          verdict.evidence_svg)
    open_ledger(settings.state_dir, settings.witness).append(
        cycle_id, "critique", verdict.decision,
        {"candidate_hash": cand.content_hash, "reasons": list(verdict.reasons),
         "evidence_hash": verdict.evidence_hash, "versions": versions})
    if as_json:
        print(json.dumps(json.loads(verdict.evidence_json), indent=2))
    else:
        colour = "green" if verdict.decision == "accept" else "red"
        console.print(f"verdict: [{colour}]{verdict.decision}[/{colour}]")
        for reason in verdict.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
        console.print(f"evidence: {escape(str(packet))} (and {packet.with_suffix('.md').name})",
                      highlight=False)
    return 0 if verdict.decision == "accept" else 1
