"""`upgate bluegreen ...`: the servers a blue/green switch started, and reaping old blues.

A switch leaves blue warm for the policy's rollback window and a detached reaper to stop
it afterwards; `reap` does the same on demand (after a reboot, say, or from a timer), and
`list` shows every server upgate knows of and when each may stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from upgate.config import load_settings
from upgate.deploy.bluegreen import BlueGreenParts, bluegreen_parts
from upgate.deploy.bluegreen_reaper import reap_expired
from upgate.errors import UpgateError
from upgate.ledger import open_ledger
from upgate.policy import load_policy

bluegreen_app = typer.Typer(help="Blue/green servers: list them, stop expired blues.",
                            no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]


@contextmanager
def _parts(config: Path | None) -> Iterator[BlueGreenParts]:
    """The state folder's blue/green parts; an UpgateError becomes its message, exit 2."""
    try:
        settings = load_settings(config)
        ledger = open_ledger(settings.state_dir, settings.witness)
    except UpgateError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        yield bluegreen_parts(settings, load_policy(settings.policy).rollout.rollback_window_s,
                              ledger)
    except UpgateError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    finally:
        ledger.close()


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else "-"


@bluegreen_app.command("list")
def list_servers(config: ConfigOpt = None) -> None:
    """Every server a blue/green switch knows of: version, address, state, stop time."""
    with _parts(config) as parts:
        rows = parts.servers.all()
        for row in rows:
            weight = next((str(b.weight) for b in parts.routes.routes(row.alias)
                           if b.version == row.version), "unrouted")
            console.print(f"{row.alias} {row.version} {row.base_url} "
                          f"started by {'upgate' if row.managed else 'someone else'}, "
                          f"{row.status}, weight {weight}, stops at {_when(row.stop_after)}",
                          highlight=False)
    if not rows:
        console.print("no blue/green servers recorded")


@bluegreen_app.command("reap")
def reap(config: ConfigOpt = None) -> None:
    """Stop every blue whose rollback window has passed and that carries no traffic."""
    with _parts(config) as parts:
        stopped = reap_expired(parts.servers, parts.routes, parts.record)
    for item in stopped:
        console.print(f"stopped {item['version_name']} of {item['alias']} at "
                      f"{item['base_url']}", highlight=False)
    if not stopped:
        console.print("no blue is due to stop")
