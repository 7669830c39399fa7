"""The coder: carries out a proposal on a copy of the target inside a sandbox.

Recipes apply bounded, reviewable transformations; the `edit` recipe lets the coder model
act through typed tool calls (list, read, write, apply a diff, run) for a bounded number of
steps. Whatever happens, the result is the sandbox's diff plus content-hashed artifacts.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from upgate.agents.recipes.catalog import PROMPT_VARIANTS
from upgate.agents.structured import call_structured
from upgate.config import TargetManifest
from upgate.errors import SandboxError
from upgate.evals.diffparse import parse_diff, touched_paths
from upgate.evals.gitdiff import tree_diff
from upgate.hashing import sha256_tree
from upgate.policy import UNPARSEABLE_PATH
from upgate.prompts import load_prompt
from upgate.records import Artifact, Candidate, ModelRef, Proposal
from upgate.sandboxes.base import ExecResult, Mount, Sandbox

log = logging.getLogger(__name__)

SandboxFactory = Callable[[list[Mount]], Sandbox]
"""Makes a (not yet started) sandbox with the given mounts."""

def changed_paths(diff: str) -> tuple[str, ...]:
    """Every path a diff touches (both sides of renames, quoted names included).

    An entry whose paths cannot be read counts as UNPARSEABLE_PATH, which every policy
    protects: a diff upgate cannot read is never waved through.
    """
    files = parse_diff(diff)
    paths = set(touched_paths(files))
    if any(not f.paths for f in files):
        paths.add(UNPARSEABLE_PATH)
    return tuple(sorted(paths))


def _host_diff(box: Sandbox, baseline: Path) -> str:
    """The workspace's diff, computed on the host by upgate's own git (never the sandbox's).

    Sandboxed code can write the workspace's `.git` (a `diff.external` driver, say); the
    files are copied out without it and diffed against the baseline tree here.
    """
    with tempfile.TemporaryDirectory(prefix="upgate-coder-") as tmp:
        out = Path(tmp) / "workspace"
        box.copy_out(".", out)
        return tree_diff(baseline, out)


@dataclass
class CoderContext:
    """What the coder may use: the target's public side only (never the hidden split)."""

    target_tree: Path
    manifest: TargetManifest
    visible_cases: list[dict[str, Any]]
    sandbox: SandboxFactory
    train_sandbox: SandboxFactory
    base_model_path: Path | None
    artifacts_dir: Path
    model: BaseChatModel
    made_by: ModelRef
    retries: int
    max_steps: int = 8


def implement(proposal: Proposal, ctx: CoderContext, feedback: str = "") -> Candidate:
    """Carry out a proposal and return the candidate."""
    log_lines: list[str] = []
    artifacts: list[Artifact] = []
    with ctx.sandbox([]) as box:
        box.copy_in(ctx.target_tree)
        if proposal.recipe == "few_shot":
            _few_shot(box, ctx, proposal, log_lines)
        elif proposal.recipe == "prompt_variant":
            _prompt_variant(box, ctx, proposal, log_lines)
        elif proposal.recipe == "lora_finetune":
            artifacts.append(_lora_finetune(box, ctx, proposal, log_lines))
        elif proposal.recipe == "edit":
            _edit_loop(box, ctx, proposal, feedback, log_lines)
        else:
            raise SandboxError(f"unknown recipe {proposal.recipe!r}")
        diff = _host_diff(box, ctx.target_tree)
    return Candidate(
        proposal_id=proposal.id,
        kind=proposal.kind,
        diff=diff,
        changed_paths=changed_paths(diff),
        artifacts=tuple(artifacts),
        log="\n".join(log_lines)[-8000:],
        made_by=ctx.made_by,
    )


def _require(value: str | None, what: str) -> str:
    if not value:
        raise SandboxError(f"the target manifest does not name its {what}; add it to "
                           "upgate-target.toml to use this recipe")
    return value


def _few_shot(box: Sandbox, ctx: CoderContext, p: Proposal, out: list[str]) -> None:
    config_file = _require(ctx.manifest.config_file, "[prompt] config_file")
    per_label = int(p.args.get("examples_per_label", 2))
    rng = random.Random(p.id)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for case in ctx.visible_cases:
        by_label.setdefault(str(case["expected"]), []).append(case)
    chosen: list[dict[str, str]] = []
    for label in sorted(by_label):
        for case in rng.sample(by_label[label], min(per_label, len(by_label[label]))):
            chosen.append({"input": str(case["input"]), "expected": label})
    rng.shuffle(chosen)
    config = json.loads(box.read_file(config_file))
    config["few_shot"] = chosen
    box.write_file(config_file, json.dumps(config, indent=2) + "\n")
    out.append(f"few_shot: {len(chosen)} visible examples written to {config_file}")


def _prompt_variant(box: Sandbox, ctx: CoderContext, p: Proposal, out: list[str]) -> None:
    prompt_file = _require(ctx.manifest.prompt_file, "[prompt] file")
    variant = str(p.args.get("variant", "definitions"))
    labels = ctx.manifest.labels
    examples: dict[str, str] = {}
    for case in ctx.visible_cases:
        examples.setdefault(str(case["expected"]), str(case["input"]))
    label_lines = "\n".join(f"- {lab}: e.g. \"{examples.get(lab, '')[:80]}\"" for lab in labels)
    text = PROMPT_VARIANTS[variant].format(labels=", ".join(labels), label_lines=label_lines)
    box.write_file(prompt_file, text + "\n")
    out.append(f"prompt_variant: wrote the {variant!r} template to {prompt_file}")


def _lora_finetune(box: Sandbox, ctx: CoderContext, p: Proposal, out: list[str]) -> Artifact:
    if ctx.base_model_path is None:
        raise SandboxError("serving.base_model_path is not set; the LoRA recipe needs the "
                           "base model folder (set it in upgate.toml under [serving])")
    prompt_file = _require(ctx.manifest.prompt_file, "[prompt] file")
    system_prompt = box.read_file(prompt_file)
    script = resources.files("upgate.agents.recipes").joinpath("lora_train.py").read_text()
    train = "\n".join(json.dumps(c) for c in ctx.visible_cases) + "\n"
    rank = int(p.args.get("rank", 16))
    mounts = [Mount(source=ctx.base_model_path, target="/model", read_only=True)]
    with ctx.train_sandbox(mounts) as trainer, tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "job"
        stage.mkdir()
        (stage / "lora_train.py").write_text(script)
        (stage / "train.jsonl").write_text(train)
        (stage / "prompt.txt").write_text(system_prompt)
        trainer.copy_in(stage)
        result = trainer.exec(
            [
                "python3", "lora_train.py", "--model", "/model", "--train", "train.jsonl",
                "--prompt", "prompt.txt", "--labels", ",".join(ctx.manifest.labels),
                "--rank", str(rank), "--alpha", str(2 * rank),
                "--epochs", str(p.args.get("epochs", 3)),
                "--lr", str(p.args.get("learning_rate", 5e-4)), "--seed", "0", "--out", "out",
            ],
            timeout_s=900,
        )
        out.append("lora_finetune: " + result.summary(3000))
        if not result.ok:
            raise SandboxError(f"LoRA training failed in the sandbox: {result.summary(1500)}")
        staged = Path(tmp) / "adapter"
        trainer.copy_out("out", staged)
        digest = sha256_tree(staged)
        final = ctx.artifacts_dir / "adapters" / digest
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(staged, final)
    alias = ctx.manifest.model_alias or "model"
    return Artifact(name=f"{alias}@{digest[:12]}", kind="adapter", path=str(final), sha256=digest)


class ToolCall(BaseModel):
    """One coder turn."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["list", "read", "write", "apply_diff", "run", "done"]
    path: str = Field(default=".", max_length=200)
    content: str = Field(default="", max_length=20000)
    command: str = Field(default="", max_length=500)


def _run_tool(box: Sandbox, call: ToolCall) -> str:
    try:
        if call.action == "list":
            return "\n".join(box.list_files(call.path or "."))[:4000]
        if call.action == "read":
            return box.read_file(call.path)[:8000]
        if call.action == "write":
            box.write_file(call.path, call.content)
            return f"wrote {len(call.content)} characters to {call.path}"
        if call.action == "apply_diff":
            res: ExecResult = box.apply_diff(call.content)
            return res.summary(2000)
        if call.action == "run":
            return box.exec(call.command, timeout_s=120).summary(4000)
    except SandboxError as exc:
        return f"error: {exc}"
    return ""


def _edit_loop(
    box: Sandbox, ctx: CoderContext, p: Proposal, feedback: str, out: list[str]
) -> None:
    prompt = load_prompt("coder")
    system = prompt.render(
        max_steps=str(ctx.max_steps), proposal=p.model_dump_json(indent=1),
        feedback=feedback or "none",
    )
    files = "\n".join(box.list_files("."))[:3000]
    history: list[BaseMessage] = [
        SystemMessage(content=system),
        HumanMessage(
            content=f"Files in the workspace:\n<data>\n{files}\n</data>\nYour first turn."
        ),
    ]
    for step in range(ctx.max_steps):
        call = call_structured(ctx.model, history, ToolCall, name="tool_call", retries=ctx.retries)
        what = call.command if call.action == "run" else call.path
        out.append(f"step {step + 1}: {call.action} {what}")
        if call.action == "done":
            break
        result = _run_tool(box, call)
        history.append(
            HumanMessage(content=f"Result of {call.action}:\n<data>\n{result}\n</data>\nNext.")
        )
