"""Under CI a skipped test fails, with its reason; an empty tier is not a success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skips import ci_is_set

REPO = Path(__file__).resolve().parents[2]

SAMPLE = '''
import pytest

def test_needs_a_part():
    pytest.skip("no widget engine answers")

@pytest.mark.skipif(True, reason="marker skip")
def test_marked():
    pass

@pytest.mark.xfail(reason="known")
def test_known():
    assert False

def test_fine():
    pass
'''


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skips", "-p", "no:cacheprovider",
         "-q", "-rA", str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )


def test_ci_is_read_as_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("true", True), ("1", True), ("yes", True), ("", False),
                            ("0", False), ("false", False), ("No", False)):
        monkeypatch.setenv("CI", value)
        assert ci_is_set() is expected, value
    monkeypatch.delenv("CI")
    assert not ci_is_set()


@pytest.mark.parametrize("ci", ["true"])
def test_under_ci_every_skip_fails_with_its_reason(tmp_path: Path, ci: str) -> None:
    out = run_pytest(tmp_path, ci)
    assert out.returncode == 1, out.stdout
    # A skip in the call fails the test; a skip in set-up (a marker, a fixture) errors it.
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out.stdout
    assert "skipped under CI, which counts as a failure: no widget engine answers" in out.stdout
    assert "marker skip" in out.stdout


@pytest.mark.parametrize("ci", [None, "0"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path, ci: str | None) -> None:
    out = run_pytest(tmp_path, ci)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in out.stdout


def test_an_empty_tier_fails_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text("X = 1\n")
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "pytest.sh"), str(tmp_path), "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        env={**os.environ, "UPGATE_VENV": str(Path(sys.executable).parents[1])},
    )
    assert out.returncode == 5, out.stdout + out.stderr
    assert "no tests collected" in out.stderr
    assert "this tier should have tests" in out.stderr
