"""The terminal's view of long steps: bars on a TTY, plain lines elsewhere, and the CLI's
batch showing the eval cases of its cycles."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from upgate.progress import MemoryProgress, ProgressEvent, reporter, reporting
from upgate.progress_view import TerminalProgress, terminal_progress

from .test_cli import _clean_env, invoke, text  # noqa: F401 (an autouse fixture)
from .test_cli_batch import scripted_runner  # noqa: F401 (a fixture)


def event(kind: Any, done: int, total: int | None, detail: str = "",
          node: str = "implement") -> ProgressEvent:
    return ProgressEvent(cycle_id="c1", node=node, kind=kind, done=done, total=total,
                         detail=detail)


def test_without_a_terminal_a_few_plain_lines_and_markup_stays_text() -> None:
    out = io.StringIO()
    view = TerminalProgress(Console(file=out, force_terminal=False, width=200))
    for step in range(1, 9):
        view.publish(event("step", step, 8, "[red]loss[/red] 0.5"))
    view.publish(event("epoch", 1, 2, "loss 0.4"))
    lines = out.getvalue().splitlines()
    assert [line.split()[3] for line in lines] == ["2/8", "4/8", "6/8", "8/8", "1/2"]
    assert "[red]loss[/red] 0.5" in lines[0]  # shown as written, not read as markup
    assert lines[-1].strip() == "… implement epoch 1/2 loss 0.4"


def test_on_a_terminal_a_bar_per_step_until_its_node_ends() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    board = MemoryProgress()
    runner = SimpleNamespace(deps=SimpleNamespace(progress=None, progress_board=board))
    with terminal_progress(runner, console, status="running") as view:  # type: ignore[arg-type]
        with reporting(runner.deps.progress, "c1"):
            reporter("implement")("epoch", 1, 2)
            reporter("implement")("step", 3, 10)
            reporter("critique")("case", 5, 40)
        assert view.bar is not None
        bars = {t.description: (t.completed, t.total) for t in view.bar.tasks}
        assert bars == {"running": (0, None), "implement: epoch": (1, 2),
                        "implement: step": (3, 10), "critique: case": (5, 40)}
        view.node_done("implement")
        assert [t.description for t in view.bar.tasks] == ["running", "critique: case"]
    # The board still got every event, and the runner's sink is as it was.
    assert len(board.events) == 3
    assert runner.deps.progress is None


@pytest.mark.usefixtures("scripted_runner")
def test_upgate_batch_shows_the_eval_cases_of_its_cycles(workdir: Path) -> None:
    result = invoke(workdir / "upgate.toml", "option", "batch", "--max-cycles", "1")
    assert result.exit_code == 0, result.output
    cases = re.findall(r"… observe case (\d+)/(\d+)", text(result))
    assert cases, text(result)
    assert cases[-1][0] == cases[-1][1]  # the last line of a step is its end
    # The eval cases were shown before the node's own line (while they ran).
    assert text(result).index("… observe case") < text(result).index("✓ observe")
