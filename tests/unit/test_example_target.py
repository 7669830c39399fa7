"""The bundled example target (ticket-triage) and its eval suite are sound and kept apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "examples" / "ticket-triage"
SUITE = ROOT / "examples" / "suites" / "ticket-triage"
LABELS = ["billing", "bug", "account", "feature"]


def read_cases(name: str) -> list[dict[str, Any]]:
    """Parse one split of the suite, one JSON object a line."""
    lines = (SUITE / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def normalise(text: str) -> str:
    """Lower-case and collapse whitespace, so a copy with other spacing is still found."""
    return " ".join(text.lower().split())


def test_target_tests_pass_in_a_clean_copy(tmp_path: Path) -> None:
    copy = tmp_path / "ticket-triage"
    shutil.copytree(TARGET, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


def test_target_has_no_git_folder() -> None:
    assert not (TARGET / ".git").exists()


def test_manifest_names_files_that_exist() -> None:
    manifest = tomllib.loads((TARGET / "upgate-target.toml").read_text(encoding="utf-8"))
    assert manifest["target"]["name"] == "ticket-triage"
    assert manifest["target"]["test_command"]
    assert manifest["model"]["alias"] == "triage"
    assert (TARGET / manifest["prompt"]["file"]).is_file()
    config = json.loads((TARGET / manifest["prompt"]["config_file"]).read_text(encoding="utf-8"))
    assert config["model"] == manifest["model"]["alias"]
    assert manifest["prompt"]["labels"] == LABELS
    assert "lora_finetune" in manifest["recipes"]["allowed"]
    assert (SUITE.parent / manifest["eval"]["suite"]).is_dir()


def test_suite_manifest_parses_and_names_its_splits() -> None:
    suite = tomllib.loads((SUITE / "suite.toml").read_text(encoding="utf-8"))
    assert suite["name"] == "ticket-triage"
    assert suite["scorer"] == "exact_match"
    assert suite["harness"] == "chat_choice"
    assert suite["labels"] == LABELS
    assert set(LABELS) <= set(suite["slices"])
    assert set(suite["splits"]) == {"visible", "hidden"}
    for file in suite["splits"].values():
        assert (SUITE / file).is_file()


@pytest.mark.parametrize(("name", "least"), [("visible.jsonl", 80), ("hidden.jsonl", 32)])
def test_split_cases_are_well_formed_and_balanced(name: str, least: int) -> None:
    cases = read_cases(name)
    assert len(cases) >= least
    slices = set(tomllib.loads((SUITE / "suite.toml").read_text(encoding="utf-8"))["slices"])
    for case in cases:
        assert set(case) == {"id", "input", "expected", "slices"}, case
        assert case["expected"] in LABELS, case
        assert case["input"].strip(), case
        assert case["expected"] in case["slices"], case
        assert set(case["slices"]) <= slices, case
    assert len({c["id"] for c in cases}) == len(cases)
    assert len({normalise(c["input"]) for c in cases}) == len(cases)
    counts = Counter(c["expected"] for c in cases)
    assert set(counts) == set(LABELS)
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_visible_split_is_what_its_generator_writes(tmp_path: Path) -> None:
    copy = tmp_path / "suite"
    shutil.copytree(SUITE, copy)
    (copy / "visible.jsonl").unlink()
    subprocess.run(
        [sys.executable, str(copy / "generate_visible.py")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (copy / "visible.jsonl").read_bytes() == (SUITE / "visible.jsonl").read_bytes()


def test_hidden_and_visible_splits_are_disjoint() -> None:
    visible, hidden = read_cases("visible.jsonl"), read_cases("hidden.jsonl")
    assert not {c["id"] for c in visible} & {c["id"] for c in hidden}
    visible_texts = [normalise(c["input"]) for c in visible]
    for case in hidden:
        text = normalise(case["input"])
        assert not any(text in v or v in text for v in visible_texts), case["id"]


def test_no_hidden_text_appears_in_the_target() -> None:
    hidden = [normalise(c["input"]) for c in read_cases("hidden.jsonl")]
    files = [p for p in TARGET.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for path in files:
        content = normalise(path.read_text(encoding="utf-8"))
        for text in hidden:
            assert text not in content, f"hidden case text found in {path.relative_to(ROOT)}"


def test_suite_lives_outside_the_target() -> None:
    assert not list(TARGET.rglob("*.jsonl"))
    assert TARGET not in SUITE.parents
