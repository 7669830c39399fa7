"""`upgate batch`, `upgate batch resume` and `upgate stop`: autonomy people can follow and halt.

`upgate batch` runs cycles until a threshold of the policy pauses it; `upgate stop` stops a
running batch at once (from any shell); a paused or stopped batch continues only when a
person runs `upgate batch resume --reason`. Every one of these is in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from upgate.errors import UpgateError
from upgate.progress_view import bar_columns, terminal_progress

if TYPE_CHECKING:
    from upgate.graphs.batch import BatchReport
    from upgate.graphs.runner import Runner
    from upgate.ledger import Entry

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
AsOpt = Annotated[str, typer.Option("--as", help="Who you are (a registered person).")]
KeyDirOpt = Annotated[Path | None, typer.Option(
    "--key-dir", help="Your private key folder (default $UPGATE_KEY_DIR, else "
    "~/.config/upgate/keys).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the ledger).")]
MaxCyclesOpt = Annotated[int, typer.Option(min=1, help="Stop after this many new cycles.")]

batch_app = typer.Typer(
    help="Run cycles autonomously until a pause threshold of the policy is reached.",
    invoke_without_command=True,
)


@contextmanager
def _errors() -> Iterator[None]:
    from upgate.cli import err

    try:
        yield
    except UpgateError as exc:
        err.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False)
        raise typer.Exit(2) from None


def _open(config: Path | None, as_: str, key_dir: Path | None,
          roles: tuple[str, ...]) -> tuple[Runner, str]:
    """The runner, and the caller once they proved their key and one of `roles`."""
    from upgate.cli import _identify, _runner, _settings

    settings = _settings(config)
    runner = _runner(settings)
    person = as_ or settings.operator
    _identify(runner, person, key_dir, roles)
    return runner, person


def _run_with_bar(runner: Runner, total: int, go: Any) -> BatchReport:
    """The batch under a cycles bar, with a bar per long step inside it (on a terminal)."""
    from upgate.cli import _and_close_bars, _finish, console
    from upgate.notify.worker import delivering

    deps = runner.deps
    with delivering(deps.state_dir, deps.settings.notify), \
            Progress(*bar_columns(), console=console, transient=False) as bar:
        task = bar.add_task("cycles", total=total, detail="")

        def on_cycle(state: Any) -> None:
            _finish(state, runner)
            bar.advance(task)

        with terminal_progress(runner, console, bar=bar) as steps:
            report: BatchReport = go(_and_close_bars(steps), on_cycle)
    return report


def curve_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """Per cycle: outcome, the served version's hidden-split score after it, its cost (wall
    time, tokens, sandbox wall and CPU seconds)."""
    table = Table(title=title)
    for name in ("cycle", "outcome", "served (hidden)", "time s", "tokens", "sandbox s",
                 "sandbox CPU s"):
        table.add_column(name)
    for cycle_id, c in rows:
        score = c.get("served_hidden_score")
        cpu = c.get("sandbox_cpu_s")  # absent from records made before CPU was counted
        table.add_row(cycle_id, str(c.get("outcome", "")),
                      "" if score is None else f"{score:.3f}", f"{c.get('wall_s', 0.0):.1f}",
                      str(c.get("tokens", 0)), f"{c.get('sandbox_s', 0.0):.1f}",
                      "" if cpu is None else f"{cpu:.1f}")
    return table


def print_report(report: BatchReport) -> None:
    """The batch's learning curve and why it stopped."""
    from upgate.cli import console

    table = curve_table(f"batch {report.batch_id}: served version, cycle by cycle",
                        [(c["cycle_id"], c) for c in report.curve])
    console.print(table)
    colour = "green" if report.pause is None else "yellow"
    console.print(Text.assemble(f"\nbatch: {len(report.cycles)} cycle(s), ",
                                (report.stopped_because, colour)), highlight=False)


@batch_app.callback()
def batch(
    ctx: typer.Context, config: ConfigOpt = None, as_: AsOpt = "", key_dir: KeyDirOpt = None,
    max_cycles: MaxCyclesOpt = 5,
    max_pending: Annotated[int | None, typer.Option(
        min=1, help="Pause when this many approvals wait (default: the policy's).")] = None,
    pause_after_failures: Annotated[int | None, typer.Option(
        min=1, help="Pause after this many setbacks in a row (default: the policy's).")] = None,
) -> None:
    """Run cycles autonomously until a pause threshold is reached."""
    if ctx.invoked_subcommand is not None:
        return
    from upgate.cli import console

    with _errors():
        runner, requester = _open(config, as_, key_dir, ("operator",))
        console.print(f"[bold]upgate batch[/bold] on {runner.deps.manifest.name} for "
                      f"{requester} (policy {runner.deps.policy.version_id})")
        report = _run_with_bar(runner, max_cycles, lambda progress, on_cycle: runner.batch(
            requester, max_cycles=max_cycles, max_pending=max_pending,
            pause_after_failures=pause_after_failures, progress=progress, on_cycle=on_cycle))
    print_report(report)


@batch_app.command("resume")
def batch_resume(
    reason: ReasonOpt, as_: AsOpt = "", key_dir: KeyDirOpt = None, max_cycles: MaxCyclesOpt = 5,
    batch_id: Annotated[str | None, typer.Option(
        "--batch", help="Which held batch (default: the latest).")] = None,
    config: ConfigOpt = None,
) -> None:
    """A person resumes a paused or stopped batch (recorded with the reason)."""
    from upgate.graphs.batch import resume_batch

    with _errors():
        runner, person = _open(config, as_, key_dir, ("operator", "admin"))
        report = _run_with_bar(runner, max_cycles, lambda progress, on_cycle: resume_batch(
            runner, person, reason, max_cycles=max_cycles, batch_id=batch_id,
            progress=progress, on_cycle=on_cycle))
    print_report(report)


def stop_command(
    reason: ReasonOpt, as_: AsOpt = "", key_dir: KeyDirOpt = None,
    batch_id: Annotated[str | None, typer.Option(
        "--batch", help="Which running batch (default: every one).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Stop running batches at once: kill their sandboxes, keep their checkpoints."""
    from upgate.cli import console
    from upgate.graphs.batch import press_stop

    with _errors():
        # Anyone who may run, approve or administer may stop: stopping is always safe.
        runner, person = _open(config, as_, key_dir, ("operator", "approver", "admin"))
        flagged = press_stop(runner, person, reason, batch_id)
    if not flagged:
        console.print("no batch is running")
        return
    for b in flagged:
        console.print(f"stop pressed on batch {b['batch_id']} by {person}: "
                      f"{b['sandboxes_killed']} sandbox(es) killed; it stops before its next "
                      "step. Resume with `upgate batch resume --reason '...'`", highlight=False)


def print_held(runner: Runner) -> bool:
    """List paused and stopped batches (for the inbox); True when there are any."""
    from upgate.batches import Board
    from upgate.cli import console

    held = Board(runner.deps.store).held()
    if not held:
        return False
    console.print("[bold]batches waiting for a person[/bold]")
    for b in held:
        p = b["pause"] or {}
        console.print(f"  {b['batch_id']} {b['status']}: {p.get('detail', '')} (threshold "
                      f"{p.get('threshold', '')}: {p.get('observed', '')} against "
                      f"{p.get('limit', '')}). Next: {p.get('next_step', '')}", highlight=False)
    return True


def print_curve(entries: list[Entry]) -> None:
    """The learning curve for `upgate history`: per batch cycle, the served version's
    hidden-split score after it and what it cost (nothing when no batch ran)."""
    from upgate.cli import console

    costs = [e for e in entries if e.node == "autonomy" and e.event == "cycle_cost"]
    if not costs:
        return
    table = curve_table("learning curve (batch cycles)",
                        [(e.cycle_id, e.payload) for e in costs])
    console.print(table)
