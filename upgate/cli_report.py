"""`upgate report`: rollout metrics from the ledger and the gateway's request log, as a
table, as JSON, or as a self-contained HTML page with plots."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from upgate.config import load_settings
from upgate.errors import ConfigError, UpgateError
from upgate.ledger import open_ledger
from upgate.report import format as fmt
from upgate.report.html import render_html
from upgate.report.metrics import build_report
from upgate.report.models import RolloutReport

T = TypeVar("T")
# Reports are wide and mostly piped or saved: lay tables out on 160 columns at least.
console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 160))
err = Console(stderr=True, soft_wrap=True)


def parse_since(value: str | None) -> date | None:
    """A `--since` day (YYYY-MM-DD, UTC)."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r} is not a day; write it as YYYY-MM-DD "
                          "(a UTC day, e.g. 2026-11-01)") from None


def print_report(report: RolloutReport, out: Console) -> None:
    """The report as tables (every ledger value shown as plain text, never as markup)."""
    since = f" since {report.since}" if report.since else ""
    out.print(Text(f"rollout metrics from {report.ledger_entries} ledger entries{since}"
                   + ("" if report.gateway else " (no gateway request log)")
                   + f"; {fmt.MISSING} = no data"), highlight=False)
    summary = Table("metric", "value", title="summary")
    for label, show in fmt.SUMMARY:
        summary.add_row(Text(label), Text(show(report.totals)))
    out.print(summary)
    if report.days:
        days = Table("day", *(name for name, _ in fmt.DAY_COLUMNS), title="per day (UTC)")
        for d in report.days:
            days.add_row(Text(d.day.isoformat()), *(Text(show(d)) for _, show in fmt.DAY_COLUMNS))
        out.print(days)
    if report.deployments:
        out.print(_table("deployments", fmt.DEPLOYMENT_COLUMNS, report.deployments))
    if report.rollbacks:
        out.print(_table("rollbacks", fmt.ROLLBACK_COLUMNS, report.rollbacks))


def _table(title: str, columns: Sequence[tuple[str, Callable[[T], str]]],
           rows: Sequence[T]) -> Table:
    table = Table(*(name for name, _ in columns), title=title)
    for row in rows:
        table.add_row(*(Text(show(row)) for _, show in columns))
    return table


def report_command(
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="upgate.toml to use.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a self-contained HTML page with plots to this file.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only what happened on or after this UTC day (YYYY-MM-DD).")] = None,
) -> None:
    """Rollout metrics: stability, rollbacks, latency impact, incidents, lead time,
    acceptance; per deployment and per day."""
    try:
        day = parse_since(since)
        settings = load_settings(config)
        ledger = open_ledger(settings.state_dir)
        try:
            report = build_report(ledger, gateway_db=settings.gateway_db, since=day)
        finally:
            ledger.close()
        if html is not None:
            try:
                html.write_text(render_html(report), encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot write {html}: {exc}; choose a writable path") \
                    from None
    except UpgateError as exc:
        err.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        print_report(report, console)
    if html is not None:
        err.print(Text(f"wrote {html}"), highlight=False)
