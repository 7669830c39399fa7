"""The code critic's parts: git-derived paths, JUnit outcomes, scope, serving, decisions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from upgate.agents.critic_code import check, decide, protected_hits, reasons
from upgate.agents.serving import RecordingServing, VllmCandidateServing, candidate_name
from upgate.errors import EvalError
from upgate.evals.codescope import (
    CodeScope,
    behaves_under_test,
    changed_tests,
    default_scope,
    scope_violations,
)
from upgate.evals.gitdiff import rederive, tree_diff
from upgate.evals.testruns import TestReport, compare_runs, exit_code_disagrees, parse_junit
from upgate.records import Artifact

SCOPE = CodeScope(source=("pkg",), tests=("tests",))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / ".upgate").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text("def f():\n    return 1\n")
    (root / "tests" / "test_core.py").write_text(
        "from pkg.core import f\n\n\ndef test_f():\n    assert f() == 1\n")
    (root / ".upgate" / "secret.key").write_text("k\n")
    return root


def _edit(tree: Path, path: str, old: str, new: str) -> str:
    """The diff of replacing `old` by `new` in one file, as upgate's git writes it."""
    work = tree.parent / "edited"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(tree, work)
    text = (work / path).read_text()
    assert old in text
    (work / path).write_text(text.replace(old, new))
    return tree_diff(tree, work)


def _patch(path: str, old: str, new: str, src: str = "a/", dst: str = "b/") -> str:
    return (f"diff --git {src}{path} {dst}{path}\n--- {src}{path}\n+++ {dst}{path}\n"
            f"@@ -1 +1 @@\n-{old}\n+{new}\n")


# --- git-derived paths ---------------------------------------------------------------------


def test_x_y_prefixes_show_the_path_git_apply_writes(tree: Path) -> None:
    """The issue-7 attack: the headers say x/.upgate/..., git apply -p1 writes .upgate/..."""
    trusted = rederive(tree, _patch(".upgate/secret.key", "k", "pwned", "x/", "y/"))
    assert trusted.paths == (".upgate/secret.key",)
    assert protected_hits(trusted.paths, [".upgate/**"]) == [".upgate/secret.key"]
    # The canonical diff is written by upgate's git with a/ b/ prefixes.
    assert "diff --git a/.upgate/secret.key b/.upgate/secret.key" in trusted.diff


def test_renames_show_both_paths_and_symlinks_and_binaries_are_marked(tree: Path,
                                                                      tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(tree), str(repo)], check=True)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "b"],
                   check=True)
    subprocess.run([*git, "mv", "tests/test_core.py", "tests/test_moved.py"], check=True)
    (repo / "pkg" / "link").symlink_to("../.upgate/secret.key")
    (repo / "pkg" / "blob.bin").write_bytes(b"\x00\x01\x02")
    subprocess.run([*git, "add", "-A"], check=True)
    patch = subprocess.run([*git, "diff", "--cached", "--binary", "-M"], capture_output=True,
                           text=True, check=True).stdout
    changes = {c.path: c for c in rederive(tree, patch).changes}
    assert changes["tests/test_core.py"].status == "deleted"
    assert changes["tests/test_moved.py"].status == "added"
    assert changes["pkg/link"].symlink
    assert changes["pkg/blob.bin"].binary


def test_a_patch_that_does_not_apply_is_a_value(tree: Path) -> None:
    trusted = rederive(tree, _patch("pkg/core.py", "no such line", "x"))
    assert not trusted.applied
    assert trusted.error


def test_tree_diff_ignores_the_workspace_git_config(tree: Path, tmp_path: Path) -> None:
    """A `diff.external` driver planted in the workspace's .git never runs."""
    work = tmp_path / "work"
    subprocess.run(["cp", "-r", str(tree), str(work)], check=True)
    (work / ".git").mkdir()
    marker = tmp_path / "ran"
    (work / ".git" / "config").write_text(f"[diff]\n\texternal = touch {marker}\n")
    (work / ".gitattributes").write_text("* diff=evil\n")
    (work / "pkg" / "core.py").write_text("def f():\n    return 2\n")
    diff = tree_diff(tree, work)
    assert "+    return 2" in diff
    assert not marker.exists()


# --- JUnit ---------------------------------------------------------------------------------

JUNIT = """<?xml version="1.0"?><testsuites><testsuite>
<testcase classname="tests.test_a" name="test_ok"/>
<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>
<testcase classname="tests.test_a" name="test_err"><error message="x"/></testcase>
<testcase classname="tests.test_a" name="test_skip"><skipped message="x"/></testcase>
</testsuite></testsuites>"""


def test_junit_outcomes() -> None:
    report = parse_junit(JUNIT, exit_code=1)
    assert report.outcomes == {"tests.test_a::test_ok": "passed",
                               "tests.test_a::test_bad": "failed",
                               "tests.test_a::test_err": "error",
                               "tests.test_a::test_skip": "skipped"}
    assert exit_code_disagrees(report) is None


def test_entity_expansion_in_a_report_is_refused() -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><testsuite><testcase classname="&b;" '
            'name="t"/></testsuite>')
    report = parse_junit(bomb, exit_code=0)
    assert report.problem and not report.outcomes


def test_an_exit_code_that_disagrees_with_the_report_is_tampering() -> None:
    assert "exit code 0" in str(exit_code_disagrees(parse_junit(JUNIT, exit_code=0)))
    green = parse_junit('<testsuite><testcase classname="c" name="t"/></testsuite>', 3)
    assert "exit code 3" in str(exit_code_disagrees(green))
    assert exit_code_disagrees(parse_junit("<testsuite/>", 0)) is not None


def test_per_test_comparison() -> None:
    base = TestReport(outcomes={"a": "failed", "b": "passed", "c": "passed", "d": "passed",
                                "e": "error", "f": "passed"})
    cand = TestReport(outcomes={"a": "passed", "b": "passed", "c": "skipped", "d": "error",
                                "e": "failed"})
    delta = compare_runs(base, cand)
    assert delta.fail_to_pass == ("a",)
    assert delta.pass_to_pass == ("b",)
    assert delta.regressions == ("c: passed -> skipped", "d: passed -> error",
                                 "f: passed -> missing")
    assert delta.still_failing == ("e",)


# --- scope ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "text", "reason"), [
    ("conftest.py", "x = 1\n", "test-runner configuration"),
    ("pkg/pytest.ini", "[pytest]\n", "test-runner configuration"),
    ("pkg/sub/setup.cfg", "[x]\n", "packaging metadata"),
    ("pkg/x.pth", "import os\n", "test-runner configuration"),
    ("pkg.egg-info/PKG-INFO", "Name: pkg\n", "packaging metadata"),
    ("pkg/__pycache__/core.cpython-311.pyc", "x", "bytecode or cache"),
    ("helper.py", "x = 1\n", "new root-level module"),
    ("docs/x.md", "x\n", "outside the source paths"),
    ("tests/conftest.py", "x = 1\n", "test-runner configuration"),
    ("pkg/_pytest/hook.py", "x = 1\n", "test-runner configuration"),
])
def test_out_of_scope_paths_block_with_a_named_reason(tree: Path, path: str, text: str,
                                                      reason: str) -> None:
    lines = text.splitlines()
    patch = (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
             f"@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{ln}\n" for ln in lines))
    finding = scope_violations(rederive(tree, patch), SCOPE, {})
    assert finding.triggered and finding.severity == "block"
    assert reason in finding.evidence


def test_new_tests_and_added_test_functions_are_in_scope(tree: Path) -> None:
    before = (tree / "tests" / "test_core.py").read_text()
    add_fn = ("diff --git a/tests/test_core.py b/tests/test_core.py\n--- a/tests/test_core.py\n"
              "+++ b/tests/test_core.py\n@@ -5,0 +6,4 @@ def test_f():\n+\n+\n"
              "+def test_g():\n+    assert f() == 1\n")
    trusted = rederive(tree, add_fn)
    assert trusted.applied, trusted.error
    assert not scope_violations(trusted, SCOPE, {"tests/test_core.py": before}).triggered
    edit = rederive(tree, _edit(tree, "tests/test_core.py", "assert f() == 1",
                                "assert f() == 1 or True"))
    assert edit.applied, edit.error
    assert scope_violations(edit, SCOPE, {"tests/test_core.py": before}).triggered


def test_changed_tests_sees_a_decorator_added_to_an_existing_test() -> None:
    before = "import pytest\n\ndef test_a():\n    assert 1\n"
    after = "import pytest\n\n@pytest.mark.skip\ndef test_a():\n    assert 1\n"
    assert changed_tests(before, after) == ["test_a"]
    assert changed_tests(before, before + "\ndef test_b():\n    assert 2\n") == []
    assert changed_tests(before, "def (") == ["(does not parse)"]


@pytest.mark.parametrize("line", [
    'if "pytest" in sys.modules:', 'if os.environ.get("PYTEST_CURRENT_TEST"):',
    "for frame in inspect.stack():", "caller = sys._getframe(1)",
    'if os.getenv("CI"):', "atexit.register(lambda: None)",
    'mod = importlib.import_module("py" + "test")',
    'for root, _dirs, names in os.walk("."):', 'src = Path("tests").rglob("*.py")',
    "text = linecache.getline(name, 3)", 'if os.path.exists("_upgate_hidden"):',
])
def test_code_that_can_tell_it_is_under_test_is_a_finding(tree: Path, line: str) -> None:
    patch = ("diff --git a/pkg/core.py b/pkg/core.py\n--- a/pkg/core.py\n+++ b/pkg/core.py\n"
             f"@@ -1,2 +1,3 @@\n def f():\n+    {line}\n     return 1\n")
    trusted = rederive(tree, patch)
    assert trusted.applied, trusted.error
    assert behaves_under_test(trusted, SCOPE).triggered


def test_plain_code_and_tests_that_name_pytest_are_no_finding(tree: Path) -> None:
    code = rederive(tree, _edit(tree, "pkg/core.py", "def f():", "def f():  # noqa: D103"))
    assert code.applied and code.paths == ("pkg/core.py",)
    assert not behaves_under_test(code, SCOPE).triggered
    test = rederive(tree, _edit(tree, "tests/test_core.py", "from pkg.core import f",
                                "import pytest\nfrom pkg.core import f"))
    assert test.applied and test.paths == ("tests/test_core.py",)
    assert not behaves_under_test(test, SCOPE).triggered


def test_default_scope_is_the_package_folders_and_src() -> None:
    scope = default_scope(["pkg/__init__.py", "src/x/__init__.py", "tests/test_a.py",
                           "setup.py", "docs/index.md"])
    assert scope.source == ("pkg", "src")
    assert scope.tests == ("tests",)


# --- decisions and serving -----------------------------------------------------------------


def test_the_decision_is_computed_from_typed_checks() -> None:
    ok = check("a", True, "block", "fine")
    revise = check("b", False, "revise", "slower", "needs work")
    block = check("c", False, "block", "bad", "detector c: bad")
    info = check("d", False, "info", "noted")
    assert decide([ok, info]) == "accept"
    assert decide([ok, revise, info]) == "revise"
    assert decide([revise, block]) == "reject"
    assert reasons([ok, revise, block, info]) == ["needs work", "detector c: bad"]


def test_protected_paths_match_case_insensitively_in_one_place() -> None:
    assert protected_hits(["Tests/x.py", "EVALS/a"], ["tests/**", "evals/**"]) == [
        "Tests/x.py", "EVALS/a"]


class _Admin:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def ensure_loaded(self, name: str, path: Path, *, expected_sha256: str) -> None:
        self.calls.append(("load", name))

    def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))


def test_candidates_are_served_under_candidate_names_never_the_alias(tmp_path: Path) -> None:
    adapter = Artifact(name="a", kind="adapter", path=str(tmp_path), sha256="ab" * 32)
    admin = _Admin()
    with VllmCandidateServing(admin, "triage").serve(adapter) as name:
        assert name == candidate_name(adapter) == "upgate-candidate-abababababab"
    assert admin.calls == [("load", name), ("unload", name)]
    with pytest.raises(EvalError, match="live alias"), VllmCandidateServing(
            admin, "upgate-candidate-abababababab").serve(adapter):
        pass
    double = RecordingServing()
    with double.serve(adapter):
        pass
    assert double.calls == [("load", name), ("unload", name)]


def test_the_trusted_run_collects_what_the_test_command_names(tree: Path) -> None:
    from upgate.agents.critic_tests import TestPlan, read_baseline_files
    from upgate.config import TargetManifest

    files = read_baseline_files(tree, SCOPE)
    (tree / "tests" / "slow").mkdir()
    plan = TestPlan(manifest=TargetManifest(name="t", test_command="python3 -m pytest -q tests"),
                    scope=SCOPE, baseline_files=files)
    assert plan.pytest and plan.visible_paths() == ["tests"]
    named = TestPlan(manifest=TargetManifest(
        name="t", test_command="python3 -m pytest -q -k 'not x' tests/test_core.py"),
        scope=SCOPE, baseline_files=files)
    assert named.visible_paths() == ["tests/test_core.py"]
    other = TestPlan(manifest=TargetManifest(name="t", test_command="make check"),
                     scope=SCOPE, baseline_files=files)
    assert not other.pytest


def test_restoring_keeps_binary_test_fixtures_and_drops_a_planted_conftest(tree: Path) -> None:
    """Stray files are those the baseline lacks; its binary fixtures stay in place."""
    from upgate.agents.critic_tests import TestPlan, read_baseline_files, run_side
    from upgate.config import TargetManifest
    from upgate.sandboxes.base import Mount, Sandbox
    from upgate.sandboxes.config import FakeSandboxConfig, get_sandbox

    (tree / "tests" / "blob.bin").write_bytes(b"\xff\xfe\x00")
    (tree / "tests" / "test_blob.py").write_text(
        "from pathlib import Path\n\n\ndef test_blob():\n"
        "    assert (Path(__file__).parent / 'blob.bin').read_bytes() == b'\\xff\\xfe\\x00'\n")
    planted = tree.parent / "planted"
    shutil.copytree(tree, planted)
    (planted / "tests" / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture(autouse=True)\ndef boom():\n    raise SystemExit(3)\n")
    diff = tree_diff(tree, planted)
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    plan = TestPlan(manifest=TargetManifest(name="t", test_command="python3 -m pytest tests"),
                    scope=SCOPE, baseline_files=read_baseline_files(tree, SCOPE),
                    baseline_paths=frozenset(files), timeout_s=120)

    def box(mounts: list[Mount]) -> Sandbox:
        return get_sandbox(FakeSandboxConfig(), mounts)

    run = run_side(box, tree, diff, plan, hidden=False)
    assert run.visible.outcomes == {"tests.test_blob::test_blob": "passed",
                                    "tests.test_core::test_f": "passed"}, run.visible
