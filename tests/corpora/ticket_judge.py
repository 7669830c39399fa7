"""The ticket-triage corpus, part 4: judging a case with the critic."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from upgate.agents.critic import CriticContext, critique
from upgate.agents.critic_tests import SideRun
from upgate.agents.testing import ScriptedChatModel, scripted
from upgate.config import load_manifest
from upgate.deploy.vllm import VllmAdmin
from upgate.evals.harness import ChatChoiceHarness
from upgate.evals.suite import load_suite
from upgate.policy import ChangeKind, KindRule, Policy, load_policy
from upgate.records import Verdict
from upgate.sandboxes.base import WORKSPACE, ExecResult, Mount, OnOutput, Sandbox
from upgate.sandboxes.config import (
    get_sandbox,
)

from ..conftest import EXAMPLE_SUITE
from .ticket_base import (
    _MADE_BY,
    BUNDLED_POLICY,
    PROBES,
    REVIEW_APPROVES,
    AnySandboxConfig,
    CorpusCase,
    CorpusOracle,
    FakeAdmin,
    OracleSpec,
    Workspace,
)

# --- judging -------------------------------------------------------------------------------


def bundled_policy() -> Policy:
    """examples/policy.toml, the policy the bundled example runs under."""
    return load_policy(BUNDLED_POLICY)


def bare_policy(*, checks: tuple[str, ...] | None = None) -> Policy:
    """The bundled thresholds with no protected paths (only those no policy can lift)."""
    base = bundled_policy()
    rule = KindRule() if checks is None else KindRule(checks=cast(Any, checks))
    kinds: dict[ChangeKind, KindRule] = {k: rule for k in ("code", "prompt", "config", "model")}
    return Policy(name="bare", version="1", approvers=base.approvers, protected_paths=(),
                  kinds=kinds, thresholds=base.thresholds, content_hash="bare")


def critic_model(review: str = REVIEW_APPROVES, probes: str = PROBES) -> ScriptedChatModel:
    """A scripted critic model: replies for schema names 'review' and 'probes'."""
    return scripted({"review": review, "probes": probes})


class BaselineMemo(Sandbox):
    """Wraps a sandbox; the baseline's test run (no diff applied) is answered from a memo.

    The baseline tree is the same for every case of a workspace and its test result only
    feeds the evidence, never the decision, so the unit tier runs it once per command
    instead of once per case. Everything else goes to the wrapped sandbox.
    """

    def __init__(self, inner: Sandbox, memo: dict[str, ExecResult], test_command: str) -> None:
        self.inner, self.memo, self.test_command = inner, memo, test_command
        self.patched = False

    def start(self) -> None:
        """Start the wrapped sandbox."""
        self.inner.start()

    def stop(self) -> None:
        """Stop the wrapped sandbox."""
        self.inner.stop()

    def exec(self, command: list[str] | str, *, timeout_s: float = 60.0,
             cwd: str = WORKSPACE, env: dict[str, str] | None = None,
             on_output: OnOutput | None = None) -> ExecResult:
        """Run a command; the baseline's test command runs once per memo."""
        if self.patched or command != self.test_command:
            return self.inner.exec(command, timeout_s=timeout_s, cwd=cwd, env=env,
                                   on_output=on_output)
        if command not in self.memo:
            self.memo[command] = self.inner.exec(command, timeout_s=timeout_s, cwd=cwd, env=env)
        return self.memo[command]

    def apply_diff(self, patch: str) -> ExecResult:
        """Apply a diff in the wrapped sandbox; from now on nothing is memoized."""
        self.patched = True
        return self.inner.apply_diff(patch)

    def read_file(self, path: str) -> str:
        """Read from the wrapped sandbox."""
        return self.inner.read_file(path)

    def write_file(self, path: str, content: str) -> None:
        """Write in the wrapped sandbox (a write also ends memoizing)."""
        self.patched = True
        self.inner.write_file(path, content)

    def list_files(self, path: str = ".") -> list[str]:
        """List files of the wrapped sandbox."""
        return self.inner.list_files(path)

    def copy_in(self, source: Path) -> None:
        """Copy a tree into the wrapped sandbox."""
        self.inner.copy_in(source)

    def copy_out(self, path: str, dest: Path) -> None:
        """Copy out of the wrapped sandbox."""
        self.inner.copy_out(path, dest)

    def diff(self) -> str:
        """The wrapped sandbox's diff."""
        return self.inner.diff()

    def reset(self) -> None:
        """Reset the wrapped sandbox."""
        self.inner.reset()

    def describe(self) -> str:
        """The wrapped sandbox's description."""
        return self.inner.describe()


_BASELINE_RUNS: dict[int, dict[str, SideRun]] = {}
"""The critic's own baseline memo, one per `memo` dict a caller keeps (see `judge`)."""


@dataclass
class Judged:
    """A verdict and what the stand-in parts saw while it was made."""

    verdict: Verdict
    oracle: CorpusOracle
    admin: FakeAdmin
    model: ScriptedChatModel


def judge(case: CorpusCase, ws: Workspace, *, policy: Policy, sandbox: AnySandboxConfig,
          model: ScriptedChatModel | None = None, oracle: OracleSpec | None = None,
          test_timeout_s: float = 300.0, memo: dict[str, ExecResult] | None = None) -> Judged:
    """Run the critic on one corpus case; the eval endpoint is a CorpusOracle.

    `memo` (a dict kept across calls on one workspace) lets the baseline's test run happen
    once instead of once per case; see `BaselineMemo`.
    """
    suite_dir = case.suite_dir or ws.suite
    if case.suite_dir is not None:  # undo an earlier run's tampering
        shutil.copytree(EXAMPLE_SUITE, suite_dir, dirs_exist_ok=True)
    suite = load_suite(suite_dir)
    client = CorpusOracle(oracle or case.oracle)
    admin = FakeAdmin()
    model = model or critic_model()

    manifest = load_manifest(ws.target)

    def make_sandbox(mounts: list[Mount]) -> Sandbox:
        box = get_sandbox(sandbox, mounts)
        return box if memo is None else BaselineMemo(box, memo, manifest.test_command)

    ctx = CriticContext(
        suite=suite, manifest=manifest, policy=policy, target_tree=ws.target,
        sandbox=make_sandbox, harness=ChatChoiceHarness(client_factory=lambda url, t: client),
        serving_url="http://127.0.0.1:9/v1", admin=cast(VllmAdmin, admin), model=model,
        made_by=_MADE_BY, retries=0,
        versions={"policy": policy.version_id, "suite": suite.version_id,
                  "suite_hash": suite.content_hash},
        cycle_id=f"corpus-{case.name}", suite_path=suite_dir, test_timeout_s=test_timeout_s,
        baseline_memo=_BASELINE_RUNS.setdefault(id(memo), {}) if memo is not None else None,
    )
    verdict = critique(case.proposal, case.candidate, ctx)
    return Judged(verdict=verdict, oracle=client, admin=admin, model=model)


def reason_tags(reasons: Iterable[str]) -> set[str]:
    """Name the check behind each reason: 'tests', 'eval_gain', 'detector:NAME', ..."""
    tags: set[str] = set()
    for reason in reasons:
        if reason.startswith("detector "):
            tags.add("detector:" + reason.split()[1].rstrip(":"))
        elif reason.startswith("the diff touches protected paths"):
            # Today an oversized diff is reported inside this reason, as one more "path".
            items = reason.split(": ", 1)[1].split(", ")
            if any("max_diff_lines" in i for i in items):
                tags.add("max_diff_lines")
            if any("max_diff_lines" not in i for i in items):
                tags.add("policy_protected")
        elif "max_diff_lines" in reason:
            tags.add("max_diff_lines")
        elif reason.startswith("the target's tests fail"):
            tags.add("tests")
        elif reason.startswith("no gain"):
            tags.add("eval_gain")
        elif reason.startswith("regressed slices"):
            tags.add("non_regression")
        elif reason.startswith("the candidate is less robust"):
            tags.add("adversarial_probes")
    return tags
