"""Trusted test runs for the critic: the baseline's tests, upgate's runner config, JUnit out.

One sandbox per side (baseline, candidate): copy the baseline tree in, apply the canonical
diff, run the manifest's setup, then restore every test file, conftest, runner
configuration and packaging file from the baseline (and delete such files the baseline
does not have), so the candidate's copy of them never runs. pytest then starts from a
configuration upgate writes outside the workspace (`-c`, `--rootdir`, `--confcutdir`,
`PYTHONSAFEPATH=1`, plugin autoload off, no cache provider) and writes its JUnit report
outside the workspace. Hidden tests are written into the sandbox only after that run, and
the tests the candidate added only after both.
Other runners run the manifest's `test_command` with `UPGATE_JUNIT` naming where their
JUnit report must go.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from upgate.agents.critic_plain import run_plain
from upgate.config import TargetManifest
from upgate.evals.codescope import CodeScope, runner_sensitive
from upgate.evals.plainrun import PlainReport
from upgate.evals.testruns import TestReport, parse_junit
from upgate.sandboxes.base import Mount, Sandbox

log = logging.getLogger(__name__)

HIDDEN_DIR = "_upgate_hidden"
"""Where hidden tests are written in the workspace, after the visible run."""
_METADATA_KEEP = (".egg-info/", ".dist-info/")
_MAX_TEXT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TestPlan:
    """What a trusted run needs, all read on the host before any candidate code runs."""

    __test__ = False

    manifest: TargetManifest
    scope: CodeScope
    baseline_files: Mapping[str, str]
    """Runner-sensitive files of the baseline (tests, conftests, config), path -> text."""
    hidden: Mapping[str, str] = field(default_factory=dict)
    """Hidden test files, relative path -> text."""
    baseline_paths: frozenset[str] = frozenset()
    """Every file of the baseline (binary ones too): only files it lacks count as stray."""
    timeout_s: float = 600.0

    @property
    def pytest(self) -> bool:
        """Whether the manifest's runner is pytest (then upgate starts it itself)."""
        return "pytest" in shlex.split(self.manifest.test_command)[:4] or any(
            w.endswith("pytest") for w in shlex.split(self.manifest.test_command)[:3])

    def visible_paths(self) -> list[str]:
        """What pytest collects: the paths `test_command` names, else the test folders."""
        words = shlex.split(self.manifest.test_command)
        after = words[next((i for i, w in enumerate(words) if w.endswith("pytest")), 0) + 1:]
        named = [w.rstrip("/") for w in after if not w.startswith("-") and any(
            p == w.rstrip("/") or p.startswith(w.rstrip("/") + "/")
            for p in self.baseline_files)]
        if named:
            return named
        tops = {p.split("/", 1)[0] for p in self.baseline_files}
        return [t for t in self.scope.tests if t.strip("/") in tops] or ["."]


@dataclass(frozen=True)
class SideRun:
    """One side's reports: the visible tests, the hidden ones, the candidate's added ones."""

    visible: TestReport
    hidden: TestReport | None = None
    extra: TestReport | None = None
    log: str = ""
    plain: PlainReport | None = None
    """The visible and hidden tests run again without pytest (`critic_plain`)."""


def read_baseline_files(tree: Path, scope: CodeScope) -> dict[str, str]:
    """Every runner-sensitive text file of the baseline tree."""
    found: dict[str, str] = {}
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree).as_posix()
        if ".git" in rel.split("/") or not path.is_file() or path.is_symlink():
            continue
        if runner_sensitive(rel, scope) and path.stat().st_size <= _MAX_TEXT_BYTES:
            try:
                found[rel] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    return found


def read_hidden(folder: Path) -> dict[str, str]:
    """The hidden test files (text) of a folder, relative path -> text."""
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".txt",
                                                                           ".json", ".ini")}


def _restore(box: Sandbox, plan: TestPlan) -> None:
    known = plan.baseline_paths or frozenset(plan.baseline_files)
    stray = [f for f in box.list_files()
             if runner_sensitive(f, plan.scope) and f not in known
             and not any(k in f + "/" for k in _METADATA_KEEP)]
    if stray:
        box.exec(["rm", "-rf", "--", *stray], timeout_s=60)
    for path, text in plan.baseline_files.items():
        box.write_file(path, text)


def _runner(plan: TestPlan, paths: list[str], tmp: str) -> str:
    report = f"{tmp}/report.xml"
    if not plan.pytest:
        return (f"mkdir -p {tmp} && UPGATE_JUNIT={report} && export UPGATE_JUNIT && "
                f"{plan.manifest.test_command}")
    pythonpath = '"$PWD:$PWD/src"'
    args = " ".join(shlex.quote(p) for p in paths)
    return (
        f"mkdir -p {tmp} && printf '[pytest]\\n' > {tmp}/pytest.ini && "
        f"PYTHONSAFEPATH=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONDONTWRITEBYTECODE=1 "
        f"PYTHONPATH={pythonpath} PYTEST_ADDOPTS= PYTEST_PLUGINS= "
        f"python3 -m pytest -c {tmp}/pytest.ini --rootdir \"$PWD\" --confcutdir \"$PWD\" "
        f"-p no:cacheprovider -q -o junit_family=xunit1 --junitxml={report} {args}"
    )


def _run(box: Sandbox, plan: TestPlan, paths: list[str]) -> TestReport:
    tmp = f"/tmp/upgate-run-{secrets.token_hex(8)}"  # noqa: S108 (inside the sandbox)
    result = box.exec(_runner(plan, paths, tmp), timeout_s=plan.timeout_s)
    if result.timed_out or result.limits_hit:
        return TestReport(exit_code=result.exit_code or 1,
                          problem=f"the test run hit a limit: {result.summary(300)}")
    read = box.exec(["sh", "-c", f"cat {tmp}/report.xml; rc=$?; rm -rf {tmp}; exit $rc"],
                    timeout_s=60)
    if not read.ok or not read.stdout.strip():
        where = "" if plan.pytest else " (write it to the path in $UPGATE_JUNIT)"
        return TestReport(exit_code=result.exit_code,
                          problem=f"no JUnit report{where}; {result.summary(300)}")
    report = parse_junit(read.stdout, result.exit_code)
    return dataclasses.replace(report, output=result.summary(3000))


def run_side(
    sandbox: Callable[[list[Mount]], Sandbox], tree: Path, diff: str | None, plan: TestPlan,
    *, visible: bool = True, hidden: bool = True, extra: Mapping[str, str] | None = None,
) -> SideRun:
    """Baseline (`diff` None) or candidate: trusted visible run, then hidden, then extra."""
    with sandbox([]) as box:
        box.copy_in(tree)
        if diff:
            applied = box.apply_diff(diff)
            if not applied.ok:
                return SideRun(visible=TestReport(
                    exit_code=applied.exit_code or 1, ran=False,
                    problem="the diff does not apply: " + applied.summary(500)))
        if plan.manifest.sandbox_setup:
            setup = box.exec(plan.manifest.sandbox_setup, timeout_s=plan.timeout_s)
            if not setup.ok:
                return SideRun(visible=TestReport(
                    exit_code=setup.exit_code or 1, ran=False,
                    problem="the setup failed: " + setup.summary(500)))
        _restore(box, plan)
        vis = _run(box, plan, plan.visible_paths()) if visible else TestReport(ran=False)
        hid: TestReport | None = None
        if hidden and plan.hidden and plan.pytest:
            for rel, text in plan.hidden.items():
                box.write_file(f"{HIDDEN_DIR}/{rel}", text)
            # Hidden tests' output (their code, their messages) never leaves the critic.
            hid = _run(box, plan, [HIDDEN_DIR])
            hid = dataclasses.replace(hid, output="", problem=(
                "no usable report from the hidden tests" if hid.problem else ""))
        plain = (run_plain(box, [*plan.visible_paths(), *([HIDDEN_DIR] if hid else [])],
                           plan.scope.source, plan.timeout_s)
                 if visible and plan.pytest else None)
        ext: TestReport | None = None
        if extra:
            for rel, text in extra.items():
                box.write_file(rel, text)
            ext = _run(box, plan, sorted(extra))
    return SideRun(visible=vis, hidden=hid, extra=ext, plain=plain)
