"""`upgate rollout status|resume CYCLE`: where a cycle's staged rollout stands, and how to
continue one whose process died.

`status` reads the ledger (every step, its judgement, the ending) and the route table (the
alias's weights now). `resume` continues the cycle from its checkpoint, as `upgate resume`
does; the rollout node then re-applies the last recorded step's routes, records
`rollout/resumed` and carries on from that step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from upgate.cli_batch import _errors  # the same error printing as the other commands
from upgate.errors import UpgateError
from upgate.ledger import Entry, Ledger

rollout_app = typer.Typer(
    help="Staged rollouts of served versions through the gateway.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
CycleArg = Annotated[str, typer.Argument(help="The cycle whose rollout to show or resume.")]


class RolloutNotFoundError(UpgateError, LookupError):
    """The cycle has no rollout recorded."""


def rollout_records(ledger: Ledger, cycle_id: str) -> list[Entry]:
    """The cycle's rollout records and the rollback its abort made, oldest first."""
    entries = [e for e in ledger.entries(cycle_id)
               if e.node == "rollout" or (e.node == "rollback"
                                          and e.payload.get("trigger") == "rollout")]
    if not any(e.event == "started" for e in entries):
        raise RolloutNotFoundError(
            f"cycle {cycle_id} has no rollout recorded (its policy has [rollout] enabled = "
            f"false, or it has not reached deploy); `upgate history {cycle_id}` shows it")
    return entries


def _summary(entry: Entry) -> str:
    p = entry.payload
    if entry.event == "step":
        return f"step {p['step']}: {p['percent']}% to {p['version_name']}"
    if entry.event == "step_checked":
        new, stable = p["new"], p["stable"]
        verdict = "healthy" if p["healthy"] else "; ".join(p["breaches"])
        return (f"step {p['step']}: new {new['requests']} req, {new['error_rate']:.3f} err; "
                f"stable {stable['requests']} req; suite {p['suite']['new']} vs "
                f"{p['suite']['stable']}: {verdict}")
    if entry.event == "aborted":
        return f"aborted, back on {p.get('restored_version')}: {'; '.join(p['breaches'])}"
    if entry.event == "resumed":
        return f"resumed at step {p['from_step']} (route generation {p['generation']})"
    if entry.event == "started":
        return (f"{p['alias']}: {p['stable_version']} -> {p['new_version']}, steps "
                f"{p['steps']}, bake {p['bake_s']} s")
    return ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("lineage", "verified"))


def ended(entries: list[Entry]) -> str | None:
    """'promoted' or 'aborted' once the rollout ended, else None."""
    return next((e.event for e in entries
                 if e.node == "rollout" and e.event in ("promoted", "aborted")), None)


@rollout_app.command("status")
def status_command(cycle: CycleArg, config: ConfigOpt = None) -> None:
    """A cycle's rollout: each step and its judgement, the ending, the routes now."""
    from upgate.cli import console
    from upgate.cli_gateway import routes_table
    from upgate.config import load_settings
    from upgate.gateway.routes import RouteTable
    from upgate.graphs.runner import validate_cycle_id
    from upgate.ledger import open_ledger

    with _errors():
        settings = load_settings(config)
        entries = rollout_records(open_ledger(settings.state_dir, settings.witness),
                                  validate_cycle_id(cycle))
        table = Table(title=f"rollout of {cycle}")
        for name in ("at", "record", "detail"):
            table.add_column(name)
        for e in entries:
            table.add_row(Text(e.at[:19]), Text(f"{e.node}/{e.event}"), Text(_summary(e)))
        console.print(table)
        alias = str(entries[0].payload["alias"])
        console.print(routes_table(alias, RouteTable(settings.gateway_db).routes(alias)))
        end = ended(entries)
        console.print(f"state: {end}" if end else "state: in progress (if its process died: "
                      f"`upgate rollout resume {cycle}`)", highlight=False, markup=False)


@rollout_app.command("resume")
def resume_command(cycle: CycleArg, config: ConfigOpt = None) -> None:
    """Continue a cycle whose rollout did not end (its process died): the last recorded
    step's routes are put back, then the rollout goes on from that step."""
    from upgate.cli import _finish, _progress, _runner, _settings, console
    from upgate.graphs.runner import validate_cycle_id

    with _errors():
        cycle_id = validate_cycle_id(cycle)
        runner = _runner(_settings(config))
        done = ended(rollout_records(runner.deps.ledger, cycle_id))
        if done is not None:
            console.print(f"{cycle_id}: its rollout already ended ({done}); nothing to resume")
            return
        with console.status(f"resuming the rollout of {cycle_id}"):
            state = runner.resume(cycle_id, progress=_progress)
        _finish(state, runner)
