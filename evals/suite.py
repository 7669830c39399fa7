"""Eval suites: versioned, content-hashed sets of cases with a visible and a hidden split.

A suite lives in a folder:

    suite.toml      name, version, description, scorer, harness, labels, slices,
                    [scorer_options], [splits] (split name -> file; default <split>.jsonl)
    visible.jsonl   one case a line: {"id", "input", "expected", "slices": [...]}
    hidden.jsonl    the same; never shown to a proposer or coder

When `slices` is declared, every case's slices must be among them (a typo would otherwise
make a silent one-case slice).

The content hash covers every field of every case, hidden ones included, so any edit to the
suite (a changed label, a dropped hidden case) changes `version_id`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from upgate.errors import EvalError

log = logging.getLogger(__name__)

Split = Literal["visible", "hidden"]
SPLITS: tuple[Split, ...] = ("visible", "hidden")
Expected = str | float | dict[str, Any] | None
ScorerOption = str | float | int | bool | list[str] | dict[str, Any]

_CASE_KEYS = frozenset({"id", "input", "expected", "slices"})
_SUITE_KEYS = frozenset(
    {
        "name",
        "version",
        "description",
        "scorer",
        "harness",
        "labels",
        "slices",
        "scorer_options",
        "splits",
    }
)


class Case(BaseModel):
    """One eval case: an input, what a good answer is, and the slices it belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    input: str
    expected: Expected
    slices: tuple[str, ...] = ()
    split: Split


class Suite(BaseModel):
    """A named, versioned set of cases with the scorer and harness that judge them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    scorer: str = Field(min_length=1)
    harness: str = Field(min_length=1)
    labels: tuple[str, ...] = ()
    slices: tuple[str, ...] = ()
    scorer_options: dict[str, ScorerOption] = Field(default_factory=dict)
    cases: tuple[Case, ...]
    # Set only on a public view: the version id of the full suite it was cut from, so a
    # proposer's evidence can cite the suite without any hidden content travelling with it.
    public_of: str | None = None

    @field_validator("cases")
    @classmethod
    def _unique_ids(cls, cases: tuple[Case, ...]) -> tuple[Case, ...]:
        seen: set[str] = set()
        for case in cases:
            if case.id in seen:
                raise ValueError(f"duplicate case id {case.id!r}")
            seen.add(case.id)
        return cases

    @model_validator(mode="after")
    def _public_view_has_no_hidden(self) -> Suite:
        if self.public_of is not None and any(c.split == "hidden" for c in self.cases):
            raise ValueError("a public view must not hold hidden cases")
        return self

    def canonical_json(self) -> str:
        """The canonical serialisation the content hash is taken over."""
        return json.dumps(
            self.model_dump(mode="json"),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    @property
    def content_hash(self) -> str:
        """sha256 (hex) of the canonical serialisation, hidden cases included."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    @property
    def version_id(self) -> str:
        """`name@version+hash12`: what decisions and ledger entries cite."""
        return f"{self.name}@{self.version}+{self.content_hash[:12]}"

    def split(self, which: Split) -> tuple[Case, ...]:
        """The cases of one split, in file order."""
        if which not in SPLITS:
            raise EvalError(f"unknown split {which!r}; use one of {list(SPLITS)}")
        return tuple(c for c in self.cases if c.split == which)

    def public_view(self) -> Suite:
        """A copy holding only the visible cases: all a proposer or coder may ever see."""
        if self.public_of is not None:
            return self
        return Suite(
            name=self.name,
            version=self.version,
            description=self.description,
            scorer=self.scorer,
            harness=self.harness,
            labels=self.labels,
            slices=self.slices,
            scorer_options=self.scorer_options,
            cases=self.split("visible"),
            public_of=self.version_id,
        )

    def slice_names(self) -> tuple[str, ...]:
        """Every slice name used by any case, sorted."""
        return tuple(sorted({s for c in self.cases for s in c.slices}))


def load_suite(path: Path, *, require_hidden: bool = True) -> Suite:
    """Read a suite folder (suite.toml, visible.jsonl, hidden.jsonl) and check it."""
    folder = Path(path)
    toml_path = folder / "suite.toml"
    if not toml_path.is_file():
        raise EvalError(f"{toml_path} not found; a suite folder needs suite.toml")
    try:
        meta = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{toml_path}: not valid TOML ({exc}); fix the file") from exc
    unknown = sorted(set(meta) - _SUITE_KEYS)
    if unknown:
        raise EvalError(f"{toml_path}: unknown keys {unknown}; allowed: {sorted(_SUITE_KEYS)}")
    missing = sorted({"name", "version", "scorer", "harness"} - set(meta))
    if missing:
        raise EvalError(f"{toml_path}: missing keys {missing}; add them")
    version = meta["version"]
    if isinstance(version, bool) or not isinstance(version, str | int | float):
        raise EvalError(f"{toml_path}: 'version' must be a string or a number")
    labels = tuple(meta.get("labels", ()))
    declared = tuple(meta.get("slices", ()))
    files = _split_files(toml_path, meta.get("splits", {}))

    cases: list[Case] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        jsonl = folder / files.get(split, f"{split}.jsonl")
        if not jsonl.is_file():
            if split == "hidden" and not require_hidden:
                log.warning("%s has no hidden split; overfitting cannot be checked", folder)
                continue
            raise EvalError(f"{jsonl} not found; a suite needs {split}.jsonl")
        for case, where in _read_cases(jsonl, split, labels, declared):
            if case.id in seen:
                raise EvalError(
                    f"{where}: duplicate case id {case.id!r} (first at {seen[case.id]})"
                )
            seen[case.id] = where
            cases.append(case)
    if not cases:
        raise EvalError(f"{folder}: the suite has no cases; add lines to visible.jsonl")

    try:
        suite = Suite(
            name=meta["name"],
            version=str(version),
            description=meta.get("description", ""),
            scorer=meta["scorer"],
            harness=meta["harness"],
            labels=labels,
            slices=declared,
            scorer_options=meta.get("scorer_options", {}),
            cases=tuple(cases),
        )
    except ValidationError as exc:
        raise EvalError(f"{toml_path}: {_first_error(exc)}") from exc
    log.info("loaded suite %s (%d cases)", suite.version_id, len(suite.cases))
    return suite


def _split_files(toml_path: Path, table: Any) -> dict[str, str]:
    """The [splits] table: split name -> a file name inside the suite folder."""
    if not isinstance(table, dict):
        raise EvalError(f'{toml_path}: [splits] must be a table of split = "file.jsonl"')
    for name, file in table.items():
        if name not in SPLITS:
            raise EvalError(f"{toml_path}: unknown split {name!r} in [splits]; use {list(SPLITS)}")
        # The file must sit in the suite folder: a path could point a split at anything.
        if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
            raise EvalError(f"{toml_path}: [splits].{name} must be a file name in the suite folder")
    return dict(table)


def _read_cases(
    path: Path, split: Split, labels: tuple[str, ...], declared: tuple[str, ...]
) -> list[tuple[Case, str]]:
    """Parse one jsonl split; every error names the file and line."""
    out: list[tuple[Case, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path}: not UTF-8 text ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            # NaN/Infinity are not JSON; a suite must not smuggle them in as expectations.
            raw = json.loads(line, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise EvalError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise EvalError(f"{where}: each line must be a JSON object")
        line_split = raw.pop("split", split)
        if line_split != split:
            raise EvalError(
                f"{where}: split {line_split!r} does not match the file; "
                f"a case's split is the file it is in ({split})"
            )
        unknown = sorted(set(raw) - _CASE_KEYS)
        if unknown:
            raise EvalError(f"{where}: unknown fields {unknown}; allowed: {sorted(_CASE_KEYS)}")
        missing = sorted({"id", "input", "expected"} - set(raw))
        if missing:
            raise EvalError(f"{where}: missing fields {missing}")
        try:
            case = Case(split=split, **raw)
        except ValidationError as exc:
            raise EvalError(f"{where}: {_first_error(exc)}") from exc
        if labels and isinstance(case.expected, str) and case.expected not in labels:
            raise EvalError(
                f"{where}: expected {case.expected!r} is not one of the labels {list(labels)}"
            )
        unknown_slices = sorted(set(case.slices) - set(declared)) if declared else []
        if unknown_slices:
            raise EvalError(
                f"{where}: slices {unknown_slices} are not declared in suite.toml {list(declared)}"
            )
        out.append((case, where))
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])
