"""Suites: loading, hashing, public views, and every loading error naming file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from upgate.errors import EvalError
from upgate.evals.suite import Suite, load_suite

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "suites" / "ticket-triage"

TOML = """
name = "tiny"
version = "3"
description = "two labels"
scorer = "exact_match"
harness = "chat_choice"
labels = ["billing", "bug"]
slices = ["billing", "bug", "short"]
"""


def _line(cid: str, text: str, expected: str, *slices: str) -> str:
    return json.dumps({"id": cid, "input": text, "expected": expected, "slices": list(slices)})


VISIBLE = [
    _line("v1", "I was charged twice this month", "billing", "billing", "short"),
    _line("v2", "The app crashes on start", "bug", "bug"),
]
HIDDEN = [_line("h1", "money taken two times, refund one please", "billing", "billing")]


def write_suite(
    root: Path,
    toml: str = TOML,
    visible: list[str] | None = None,
    hidden: list[str] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "suite.toml").write_text(toml, encoding="utf-8")
    (root / "visible.jsonl").write_text("\n".join(VISIBLE if visible is None else visible) + "\n")
    if hidden is not None or HIDDEN:
        (root / "hidden.jsonl").write_text("\n".join(HIDDEN if hidden is None else hidden) + "\n")
    return root


def test_loads_both_splits_in_file_order(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    assert [c.id for c in suite.cases] == ["v1", "v2", "h1"]
    assert [c.id for c in suite.split("visible")] == ["v1", "v2"]
    assert [c.id for c in suite.split("hidden")] == ["h1"]
    assert suite.cases[0].slices == ("billing", "short")
    assert suite.labels == ("billing", "bug")
    assert suite.version == "3"


def test_version_id_names_version_and_hash(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    assert suite.version_id == f"tiny@3+{suite.content_hash[:12]}"
    assert len(suite.content_hash) == 64


def test_hash_is_stable_and_covers_hidden_cases(tmp_path: Path) -> None:
    a = load_suite(write_suite(tmp_path / "a"))
    b = load_suite(write_suite(tmp_path / "b"))
    assert a.content_hash == b.content_hash
    changed_hidden = [_line("h1", "money taken two times, refund one please", "bug", "billing")]
    c = load_suite(write_suite(tmp_path / "c", hidden=changed_hidden))
    assert c.content_hash != a.content_hash
    dropped = load_suite(write_suite(tmp_path / "d", hidden=[]), require_hidden=False)
    assert dropped.content_hash != a.content_hash


def test_public_view_cannot_reach_hidden_cases(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    public = suite.public_view()
    assert all(c.split == "visible" for c in public.cases)
    assert public.split("hidden") == ()
    assert public.public_of == suite.version_id
    dumped = public.model_dump_json()
    assert "refund one please" not in dumped
    assert "h1" not in [c.id for c in public.cases]
    assert public.public_view() is public
    # A public view cannot be rebuilt with a hidden case smuggled in.
    with pytest.raises(ValueError, match="public view"):
        Suite(**{**public.model_dump(), "cases": suite.cases})


def test_split_rejects_unknown_name(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    with pytest.raises(EvalError, match="unknown split"):
        suite.split(cast(Any, "train"))


@pytest.mark.parametrize(
    ("visible", "hidden", "message"),
    [
        ([*VISIBLE, _line("v1", "dup", "bug")], None, r"visible\.jsonl:3: duplicate case id 'v1'"),
        (
            None,
            [_line("v2", "dup across files", "bug")],
            r"hidden\.jsonl:1: duplicate case id 'v2'",
        ),
        (
            [json.dumps({"id": "x", "input": "no expected"})],
            None,
            r"visible\.jsonl:1: missing fields \['expected'\]",
        ),
        (
            [json.dumps({"id": "x", "input": "a", "expected": "bug", "split": "hidden"})],
            None,
            r"visible\.jsonl:1: split 'hidden' does not match",
        ),
        (
            [json.dumps({"id": "x", "input": "a", "expected": "bug", "weight": 2})],
            None,
            r"visible\.jsonl:1: unknown fields \['weight'\]",
        ),
        (['{"id": "x", "input": "a", "expected": NaN}'], None, r"visible\.jsonl:1: not valid JSON"),
        (["{not json"], None, r"visible\.jsonl:1: not valid JSON"),
        (["[1, 2]"], None, r"visible\.jsonl:1: each line must be a JSON object"),
        (
            [_line("x", "a", "refund")],
            None,
            r"visible\.jsonl:1: expected 'refund' is not one of the labels",
        ),
        (
            [_line("x", "a", "bug", "bugz")],
            None,
            r"visible\.jsonl:1: slices \['bugz'\] are not declared",
        ),
        ([json.dumps({"id": "", "input": "a", "expected": "bug"})], None, r"visible\.jsonl:1: id"),
        (
            [json.dumps({"id": "x", "input": 5, "expected": "bug"})],
            None,
            r"visible\.jsonl:1: input",
        ),
    ],
)
def test_bad_cases_name_file_and_line(
    tmp_path: Path, visible: list[str] | None, hidden: list[str] | None, message: str
) -> None:
    with pytest.raises(EvalError, match=message):
        load_suite(write_suite(tmp_path, visible=visible, hidden=hidden))


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match=r"visible\.jsonl:3: not valid JSON"):
        load_suite(write_suite(tmp_path, visible=[VISIBLE[0], "", "{oops"]))


def test_empty_suite_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no cases"):
        load_suite(write_suite(tmp_path, visible=[], hidden=[]))


def test_missing_hidden_split_is_an_error_unless_allowed(tmp_path: Path) -> None:
    root = write_suite(tmp_path)
    (root / "hidden.jsonl").unlink()
    with pytest.raises(EvalError, match=r"hidden\.jsonl not found"):
        load_suite(root)
    assert len(load_suite(root, require_hidden=False).cases) == 2


@pytest.mark.parametrize(
    ("extra_toml", "message"),
    [
        ('\n[splits]\ntrain = "visible.jsonl"\n', "unknown split 'train'"),
        ('\n[splits]\nhidden = "../elsewhere.jsonl"\n', "must be a file name in the suite folder"),
        ("\nweights = 3\n", r"unknown keys \['weights'\]"),
    ],
)
def test_bad_suite_toml(tmp_path: Path, extra_toml: str, message: str) -> None:
    with pytest.raises(EvalError, match=message):
        load_suite(write_suite(tmp_path, toml=TOML + extra_toml))


def test_missing_toml_keys_and_files(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match=r"missing keys \['scorer'\]"):
        load_suite(write_suite(tmp_path / "a", toml=TOML.replace('scorer = "exact_match"', "")))
    with pytest.raises(EvalError, match=r"suite\.toml not found"):
        load_suite(tmp_path / "nowhere")
    with pytest.raises(EvalError, match="not valid TOML"):
        load_suite(write_suite(tmp_path / "b", toml="name = "))


def test_splits_table_names_the_files(tmp_path: Path) -> None:
    root = write_suite(tmp_path, toml=TOML + '\n[splits]\nhidden = "secret.jsonl"\n')
    (root / "hidden.jsonl").rename(root / "secret.jsonl")
    assert [c.id for c in load_suite(root).split("hidden")] == ["h1"]


def test_example_suite_loads() -> None:
    if not (EXAMPLE / "suite.toml").is_file():
        pytest.skip("the example suite is not in this checkout")
    suite = load_suite(EXAMPLE)
    assert suite.split("visible")
    assert suite.split("hidden")
    assert set(suite.labels) == {"billing", "bug", "account", "feature"}
    assert {c.expected for c in suite.cases} <= set(suite.labels)
