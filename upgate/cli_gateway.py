"""`upgate gateway serve|routes|set`: the entry point clients call, and its route table.

`serve` runs the gateway (see `upgate.gateway.app`); it needs only a route table and a
default upstream, so `--db` and `--upstream` let it run with no upgate.toml. `routes` prints
an alias's versions and weights. `set` is an operator's tool: it replaces an alias's routes
at once, among versions the ledger shows approved for the alias only, and records who did
it in the ledger.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from upgate.cli_batch import _errors  # the same error printing as the other commands
from upgate.config import Settings, load_settings
from upgate.errors import ConfigError
from upgate.gateway.routes import Backend, RouteTable
from upgate.ledger import Ledger
from upgate.store import Store

gateway_app = typer.Typer(
    help="The entry point clients call: one OpenAI-compatible address that splits each "
    "alias's traffic between versions by weight.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
DbOpt = Annotated[Path | None, typer.Option(
    "--db", help="The route table (default: [gateway] db, else gateway.db in the state folder).")]

_BACKEND = re.compile(r"^(?P<version>[^=]+)=(?P<model>[^@]+(?:@[^@]+)*?)@"
                      r"(?P<url>https?://.+):(?P<weight>\d+)$")


def _settings_for(config: Path | None, missing: str) -> Settings:
    """The settings, or an error saying which flags make them unnecessary."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or pass {missing} to run without one)") from None


def _table(config: Path | None, db: Path | None) -> RouteTable:
    if db is None:
        db = _settings_for(config, "--db").gateway_db
    return RouteTable(db)


def parse_backend(spec: str) -> Backend:
    """`VERSION=MODEL@URL:WEIGHT` as a backend, or an error showing the expected shape."""
    match = _BACKEND.match(spec.strip())
    if match is None:
        raise ConfigError(
            f"backend {spec!r} is not VERSION=MODEL@URL:WEIGHT, e.g. "
            "triage-1a2b3c4d5e6f=triage-1a2b3c4d5e6f@http://127.0.0.1:8011/v1:20")
    try:
        return Backend(version=match["version"], model=match["model"],
                       base_url=match["url"], weight=int(match["weight"]))
    except ValueError as exc:
        raise ConfigError(f"backend {spec!r}: {exc}") from None


def routes_table(alias: str, backends: list[Backend]) -> Table:
    """An alias's versions with their weights and traffic shares."""
    total = sum(b.weight for b in backends) or 1
    table = Table(title=f"routes of {alias}")
    for name in ("version", "model", "server", "weight", "share"):
        table.add_column(name)
    for b in backends:
        table.add_row(*(Text(str(v)) for v in (
            b.version, b.model, b.base_url, b.weight, f"{100 * b.weight / total:.1f}%")))
    return table


@gateway_app.command("serve")
def serve_command(
    config: ConfigOpt = None, db: DbOpt = None,
    upstream: Annotated[str | None, typer.Option(
        help="OpenAI root (…/v1) for models that are not routed (default: [serving] "
        "base_url + /v1).")] = None,
    host: Annotated[str | None, typer.Option(
        help="Listen address (default [gateway] host: loopback).")] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Listen port (default [gateway] port: 8012).")] = None,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for a backend's answer before a 504.")] = 300.0,
) -> None:
    """Run the gateway: clients send OpenAI requests here, `model` naming an alias."""
    from upgate.cli import console, err
    from upgate.gateway.app import GatewaySettings, serve
    from upgate.server.app import is_loopback

    with _errors():
        settings = None
        if db is None or upstream is None or host is None or port is None:
            try:
                settings = load_settings(config)
            except ConfigError as exc:
                if db is None or upstream is None:
                    raise ConfigError(f"{exc} (or pass --db and --upstream to run without "
                                      "one)") from None
        db = db or (settings.gateway_db if settings else None)
        upstream = upstream or (settings.serving.openai_url if settings else None)
        host = host or (settings.gateway.host if settings else "127.0.0.1")
        port = port or (settings.gateway.port if settings else 8012)
        assert db is not None and upstream is not None  # both checked just above
        table = RouteTable(db)
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] listening on {host}, not loopback: the gateway "
                  "has no authentication of its own", highlight=False)
    console.print(f"upgate gateway on http://{host}:{port}/v1 (routes: {db}; default "
                  f"upstream: {upstream})", highlight=False, markup=False)
    serve(table, GatewaySettings(upstream=upstream, read_timeout_s=timeout), host=host,
          port=port)


@gateway_app.command("routes")
def routes_command(
    alias: Annotated[str | None, typer.Argument(help="The alias (default: every one).")] = None,
    config: ConfigOpt = None, db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print an alias's versions, weights and the latest route change."""
    from upgate.cli import console

    with _errors():
        table = _table(config, db)
    try:
        aliases = [alias] if alias else table.aliases()
        shown: dict[str, Any] = {a: [b.model_dump() for b in table.routes(a)] for a in aliases}
        changes: dict[str, Any] = {a: next(reversed(table.changes(a)), None)
                                   for a in aliases}
    finally:
        table.close()
    if as_json:
        typer.echo(json.dumps({"routes": shown, "last_change": changes}, indent=2))
        return
    if not aliases:
        console.print("no alias is routed: every model passes through to the default upstream")
    for a in aliases:
        if not shown[a]:
            console.print(Text(f"{a} is not routed (it passes through to the default "
                               "upstream)"))
            continue
        console.print(routes_table(a, [Backend(**b) for b in shown[a]]))
        last = changes[a]
        if last:
            console.print(Text(f"generation {last['generation']}: {last['reason']}"))


@gateway_app.command("set")
def set_command(
    alias: Annotated[str, typer.Argument(help="The alias clients name in `model`.")],
    backends: Annotated[list[str], typer.Argument(
        help="VERSION=MODEL@URL:WEIGHT, once per version (weights need not sum to 100).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "",
    as_: Annotated[str, typer.Option("--as", help="Who you are (a registered person).")] = "",
    key_dir: Annotated[Path | None, typer.Option(
        "--key-dir", help="Your private key folder (default $UPGATE_KEY_DIR, else "
        "~/.config/upgate/keys).")] = None,
    config: ConfigOpt = None, db: DbOpt = None,
) -> None:
    """Replace an alias's routes at once (operator or admin); recorded in the ledger."""
    from upgate.cli import console

    with _errors():
        parsed = [parse_backend(spec) for spec in backends]
        settings = load_settings(config)
        person = as_ or settings.operator
        generation = _set_recorded(settings, person, key_dir, alias, parsed, reason,
                                   db or settings.gateway_db)
    console.print(Text(f"{alias}: generation {generation}, set by {person}"))
    console.print(routes_table(alias, parsed))


def check_approved_backends(ledger: Ledger, store: Store, alias: str,
                            backends: list[Backend], serving_url: str) -> None:
    """Refuse routes to anything the ledger does not show approved for `alias`.

    Sending an alias's traffic to a version is a served-model swap, so an operator may only
    route to versions that were deployed for the alias after a recorded approval (or that
    such a deployment replaced), served under their own name by the configured vLLM server.
    Anything else goes through a cycle and its human approval.
    """
    from upgate.deploy.reconcile import ledger_versions

    approved, _ = ledger_versions(ledger, alias, store)
    for b in backends:
        if b.version not in approved:
            known = ", ".join(sorted(approved)) or "none yet"
            raise ConfigError(
                f"{b.version!r} was never deployed for {alias} after a recorded approval, so "
                f"no traffic may go to it; nothing changed. Approved versions: {known}")
        if b.model != b.version or b.base_url != serving_url.rstrip("/"):
            raise ConfigError(
                f"{b.version} is served as model {b.version!r} by {serving_url}; a route to "
                f"{b.model!r} at {b.base_url} could serve something else. Nothing changed")


def _set_recorded(settings: Settings, person: str, key_dir: Path | None, alias: str,
                  backends: list[Backend], reason: str, db: Path) -> int:
    """Check the person's key and role, set the routes, record the change in the ledger."""
    from upgate.admin import replay
    from upgate.approvals import prove_identity
    from upgate.identity import default_key_dir, load_signer, person_key_id
    from upgate.ledger import open_ledger

    store = Store(settings.state_dir / "state.sqlite")
    ledger = open_ledger(settings.state_dir, settings.witness)
    table = RouteTable(db)
    try:
        signer = load_signer(person_key_id(person), key_dir or default_key_dir())
        prove_identity(replay(store, ledger).keyring(), person, signer,
                       role=("operator", "admin"))
        check_approved_backends(ledger, store, alias, backends, settings.serving.openai_url)
        generation = table.set_routes(alias, backends,
                                      reason=f"set by {person}: {reason or 'no reason given'}")
        ledger.append("admin", "gateway", "routes_set", {
            "alias": alias, "backends": [b.model_dump() for b in backends],
            "generation": generation, "by": person, "reason": reason})
        return generation
    finally:
        table.close()
        ledger.close()
        store.close()
