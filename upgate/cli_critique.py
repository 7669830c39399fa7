"""`upgate critique`: the critic alone, for operators, CI gates and audits.

Exit code 0 when the critic accepts, 1 when it asks for a revision or rejects, 2 on errors.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from upgate.agents.coder import changed_paths
from upgate.agents.critic import CriticContext, critique
from upgate.config import load_settings
from upgate.errors import ConfigError, UpgateError
from upgate.evidence_store import safe_cycle_id, write_packet
from upgate.graphs.lineage import model_ref, versions
from upgate.graphs.nodes import export_tree
from upgate.policy import ChangeKind
from upgate.records import Candidate, Proposal

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def read_candidate(target: Path, base: str, candidate: str) -> str:
    """The candidate's diff: a diff file, or a branch of the target compared with `base`."""
    path = Path(candidate)
    if path.is_file():
        return path.read_text()
    proc = subprocess.run(["git", "-C", str(target), "diff", "--binary", f"{base}...{candidate}"],
                          capture_output=True, text=True, check=False)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the evidence packet JSON.")]
    = False,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
) -> None:
    """Run the critic alone on a candidate; exit 0 accept, 1 revise or reject, 2 error."""
    try:
        code = _critique(target, candidate, suite, as_json, config)
    except UpgateError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _critique(target: Path | None, candidate: str, suite: Path | None, as_json: bool,
              config: Path | None) -> int:
    from upgate.app import build_deps

    if not candidate:
        raise ConfigError("--candidate is required: a diff file or a branch of the target")
    settings = load_settings(config)
    updates: dict[str, Path] = {}
    if target is not None:
        updates["path"] = target.resolve()
    if suite is not None:
        updates["suite"] = suite.resolve()
    if updates:
        settings = settings.model_copy(
            update={"target": settings.target.model_copy(update=updates)}
        )
    deps = build_deps(settings)
    diff = read_candidate(settings.target.path, settings.target.base_branch, candidate)
    paths = changed_paths(diff)
    kind = infer_kind(paths, deps.manifest.prompt_file, deps.manifest.config_file)
    cycle_id = f"critique-{safe_cycle_id(Path(candidate).name)}"
    proposal = Proposal(
        id=f"{cycle_id}-p", kind=kind, target=deps.manifest.name, recipe="external",
        rationale=f"external candidate {candidate}", expected_effect="(not stated)",
        risk="medium", made_by=model_ref(deps, "proposer"),
    )
    cand = Candidate(proposal_id=proposal.id, kind=kind, diff=diff, changed_paths=paths)
    with tempfile.TemporaryDirectory(prefix="upgate-critique-") as tmp:
        tree = export_tree(settings.target.path, settings.target.base_branch, Path(tmp))
        ctx = CriticContext(
            suite=deps.suite, manifest=deps.manifest, policy=deps.policy, target_tree=tree,
            sandbox=deps.sandbox, harness=deps.harness,
            serving_url=settings.serving.openai_url, admin=deps.admin, model=deps.critic,
            made_by=model_ref(deps, "critic"),
            retries=settings.agents.critic.output_retries, versions=versions(deps),
            cycle_id=cycle_id, suite_path=settings.target.suite,
        )
        verdict = critique(proposal, cand, ctx)
    packet = write_packet(settings.state_dir, cycle_id, verdict.evidence_hash,
                          verdict.evidence_json, verdict.evidence_markdown,
                          verdict.evidence_svg)
    deps.ledger.append(cycle_id, "critique", verdict.decision,
                       {"candidate_hash": cand.content_hash, "reasons": list(verdict.reasons),
                        "evidence_hash": verdict.evidence_hash, "versions": versions(deps)})
    if as_json:
        print(json.dumps(json.loads(verdict.evidence_json), indent=2))
    else:
        colour = "green" if verdict.decision == "accept" else "red"
        console.print(f"verdict: [{colour}]{verdict.decision}[/{colour}]")
        for reason in verdict.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
        console.print(f"evidence: {packet} (and {packet.with_suffix('.md').name})")
    return 0 if verdict.decision == "accept" else 1
