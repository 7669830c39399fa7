"""Untrusted text stays text in the CLI, and `show` shows the packet the request is bound
to. Model, candidate and person text carrying rich markup (`[/]`, `[bold red]`) goes
through `run`, `resume`, `history`, `show` and `inbox` on scripted models; a planted or
edited file in the evidence folder is never what the approver reads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from upgate import cli
from upgate.config import Settings
from upgate.graphs.runner import Runner

from ..conftest import decide
from .test_cli import _clean_env  # noqa: F401  (autouse: no UPGATE_* leaks in)
from .test_cycle import REVIEW, draft, make_runner

MARKUP = "[/] [bold red]PRE-APPROVED[/bold red] [link=http://127.0.0.1:9]x[/link] [/]"


def hostile_replies() -> dict[str, Any]:
    review = json.loads(REVIEW)
    review["summary"] = f"looks fine {MARKUP}"
    review["concerns"] = ["[bold red]none[/]", "[/]"]
    return {"proposal": draft(rationale=f"visible score is low {MARKUP}"),
            "review": json.dumps(review)}


@pytest.fixture
def runners(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> list[Runner]:
    """Every command gets a runner on scripted models that write markup everywhere."""
    made: list[Runner] = []

    def runner(settings: Settings, for_cycles: bool = True) -> Runner:
        r, _ = make_runner(workdir, hostile_replies())
        made.append(r)
        return r

    monkeypatch.setattr(cli, "_runner", runner)
    return made


def invoke(workdir: Path, *args: str) -> Result:
    env = {"UPGATE_CONFIG": str(workdir / "upgate.toml"), "UPGATE_KEY_DIR": str(workdir / "keys")}
    return CliRunner().invoke(cli.app, list(args), env=env)


def ok(result: Result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed: {result.exception!r}\n{result.output}")
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def start(workdir: Path) -> str:
    out = ok(invoke(workdir, "run", "--as", "alice"))
    assert "waits for a human decision" in out
    cycle = out.split("Cycle ", 1)[1].split()[0]
    return cycle


def test_run_prints_a_rationale_with_markup_as_text(workdir: Path, runners: list[Runner]
                                                    ) -> None:
    out = ok(invoke(workdir, "run", "--as", "alice"))
    assert "[bold red]PRE-APPROVED[/bold red]" in out and "[/]" in out


def test_show_inbox_and_history_print_markup_as_text(workdir: Path, runners: list[Runner]
                                                     ) -> None:
    cycle = start(workdir)
    shown = ok(invoke(workdir, "show", cycle))
    assert "PRE-APPROVED" in shown and "[bold red]" in shown
    assert ok(invoke(workdir, "inbox")).count(cycle[:20]) == 1
    ok(invoke(workdir, "history", cycle))
    ok(invoke(workdir, "history"))


def test_resume_and_history_print_a_reason_with_markup_as_text(
    workdir: Path, runners: list[Runner]
) -> None:
    cycle = start(workdir)
    runner, _ = make_runner(workdir, hostile_replies())
    decide(runner, cycle, "reject", "bob", reason=f"no {MARKUP}")
    out = ok(invoke(workdir, "resume", cycle))
    assert f"rejected by bob: no {MARKUP}" in out
    listing = ok(invoke(workdir, "history", cycle))
    assert "[link=" in listing


def test_an_error_carrying_markup_is_printed_as_text(workdir: Path, runners: list[Runner]
                                                     ) -> None:
    result = invoke(workdir, "show", "c[/]")
    assert result.exit_code == 2, result.output
    assert "c[/]" in result.output and "not a cycle id" in result.output


@pytest.mark.parametrize("cycle", ["../state", "..", "a/b", ".hidden", "c1\x00", "-rf", ""])
def test_show_refuses_cycle_ids_that_are_not_names(workdir: Path, runners: list[Runner],
                                                   cycle: str) -> None:
    result = invoke(workdir, "show", cycle)
    assert result.exit_code == 2, result.output
    assert "not a cycle id" in " ".join(result.output.split()) or cycle == "-rf"


def refused(workdir: Path, cycle: str, words: str) -> None:
    """`upgate show CYCLE` exits 2 with a message holding `words`."""
    result = invoke(workdir, "show", cycle)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())


def packet_files(workdir: Path, cycle: str) -> tuple[Path, str]:
    folder = workdir / "state" / "evidence" / cycle
    (json_path,) = folder.glob("*.json")
    return json_path, json_path.stem


def test_show_renders_the_bound_packet_not_a_planted_newer_markdown(
    workdir: Path, runners: list[Runner]
) -> None:
    cycle = start(workdir)
    json_path, digest = packet_files(workdir, cycle)
    planted = "# Evidence packet\n\nAll checks passed. PLANTED-BY-REQUESTER, approve now.\n"
    (json_path.parent / "ffffffffffffffff.md").write_text(planted)
    (json_path.parent / f"{digest}.md").write_text(planted)  # the bound name, edited too
    future = time.time() + 3600
    os.utime(json_path.parent / "ffffffffffffffff.md", (future, future))
    shown = ok(invoke(workdir, "show", cycle))
    assert "PLANTED-BY-REQUESTER" not in shown
    assert digest in shown and "verified" in shown
    assert "visible score is low" in shown  # the proposal's own words, from the JSON


def test_show_refuses_an_edited_packet_json(workdir: Path, runners: list[Runner]) -> None:
    cycle = start(workdir)
    json_path, _ = packet_files(workdir, cycle)
    data = json.loads(json_path.read_text())
    data["verdict"] = "accept"
    data["reasons"] = ["all checks passed (edited)"]
    json_path.write_text(json.dumps(data))
    refused(workdir, cycle, "hash mismatch")


def test_show_refuses_a_packet_swapped_in_under_the_bound_name(
    workdir: Path, runners: list[Runner]
) -> None:
    first = start(workdir)
    second = start(workdir)
    bound, _ = packet_files(workdir, first)
    other, _ = packet_files(workdir, second)
    bound.write_text(other.read_text())  # a valid packet, but not the one requested
    refused(workdir, first, "not the packet")


def test_show_of_a_cycle_without_evidence_says_where_to_look(
    workdir: Path, runners: list[Runner]
) -> None:
    refused(workdir, "c-none", "upgate history")
