"""`upgate rollback`: take a deployment back at any time, or put a named version back.

    upgate rollback CYCLE --as PERSON --reason TEXT
    upgate rollback --alias A --to VERSION --as PERSON --reason TEXT

The person proves their key and holds the operator or admin role: they run the system, and
a rollback only ever restores a version the ledger shows approved and deployed (or the one
such a deployment replaced), so it needs no new approval. Approvers judge candidates; they
do not operate what is served, and separating the two keeps one person from both choosing
and serving a version. The logic lives in `upgate.deploy.rollback`; this module only wires
it and prints. Exit 0: rolled back, or already restored; 1: nothing to restore, or a
failure (recorded); 2: refused before anything changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from upgate.errors import DeployError, UpgateError

if TYPE_CHECKING:
    from upgate.deploy.rollback import RollbackOutcome, RollbackParts
    from upgate.graphs.deps import Deps

ROLLBACK_ROLES = ("operator", "admin")
"""Who may roll back (see the module docstring for why approvers do not)."""

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
AsOpt = Annotated[str, typer.Option("--as", help="Who you are (a registered person).")]
KeyDirOpt = Annotated[Path | None, typer.Option(
    "--key-dir", help="Your private key folder (default $UPGATE_KEY_DIR, else "
    "~/.config/upgate/keys).")]


def rollback_parts(deps: Deps) -> RollbackParts:
    """What a rollback touches, from the run-scoped dependencies."""
    from upgate.deploy.rollback import RollbackParts
    from upgate.gateway.routes import RouteTable
    from upgate.notify.events import outbox_for

    settings = deps.settings
    db = settings.gateway_db
    routes = RouteTable(db) if db.exists() else None  # no gateway yet: nothing is routed

    def outbox(event: str, data: dict[str, Any]) -> Any:
        return outbox_for(settings.notify, deps.state_dir, "rollback", event, data)

    return RollbackParts(ledger=deps.ledger, store=deps.store, admin=deps.admin, routes=routes,
                         serving_url=settings.serving.openai_url,
                         git_deployer=lambda: deps.deployer("git"), outbox=outbox, now=deps.now,
                         deployer_of=deps.deployer)


def rollback_command(
    cycle: Annotated[str | None, typer.Argument(
        help="The cycle whose deployment to take back (see `upgate history`).")] = None,
    alias: Annotated[str | None, typer.Option(
        "--alias", help="A served alias to put back on an earlier version (with --to).")] = None,
    to: Annotated[str | None, typer.Option(
        "--to", help="The version to restore, e.g. triage-1a2b3c4d5e6f or triage@initial.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the ledger).")] = "",
    as_: AsOpt = "", key_dir: KeyDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Roll back a cycle's deployment, or an alias to a version, at any time; idempotent."""
    from upgate.cli import _identify, _runner, _settings, console, err
    from upgate.deploy.rollback import rollback_alias, rollback_cycle
    from upgate.graphs.runner import validate_cycle_id

    try:
        if (cycle is None) == (alias is None) or (alias is None) != (to is None):
            raise DeployError("say what to roll back: `upgate rollback CYCLE` or "
                              "`upgate rollback --alias A --to VERSION` (one of the two)")
        if not reason.strip():
            raise DeployError("--reason is required: say why, it is recorded in the ledger")
        if cycle is not None:
            validate_cycle_id(cycle)
        settings = _settings(config)
        runner = _runner(settings, for_cycles=False)
        person = as_ or settings.operator
        _identify(runner, person, key_dir, ROLLBACK_ROLES)
        parts = rollback_parts(runner.deps)
        with console.status("rolling back"):
            if cycle is not None:
                outcome: RollbackOutcome = rollback_cycle(parts, cycle, by=person,
                                                          reason=reason)
            else:
                assert alias is not None and to is not None
                outcome = rollback_alias(parts, alias, to, by=person, reason=reason)
    except UpgateError as exc:
        err.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False)
        raise typer.Exit(2) from None
    if outcome.status in ("rolled_back", "already_restored"):
        colour = "green" if outcome.status == "rolled_back" else "yellow"
        console.print(Text.assemble((outcome.status, colour), f": {outcome.message}"),
                      highlight=False)
        return
    err.print(Text.assemble((outcome.status, "red"), f": {outcome.message}"), highlight=False)
    raise typer.Exit(1)
