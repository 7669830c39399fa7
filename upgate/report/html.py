"""The rollout report as one self-contained HTML page: tables and inline SVG plots, no
script, nothing fetched from elsewhere. Every value from the ledger is escaped.

The page's only style is one fixed `<style>` block; `STYLE_CSP` allows exactly that block
(by its hash), so the page is served under a CSP without 'unsafe-inline'.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from html import escape
from typing import TypeVar

from upgate.report import format as fmt
from upgate.report.models import RolloutReport, Totals
from upgate.report.svg import Series, chart

T = TypeVar("T")

STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#1a202c;max-width:1100px}"
    "h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
    "table{border-collapse:collapse;font-size:12px;margin:8px 0}"
    "th,td{border:1px solid #cbd5e0;padding:3px 6px;text-align:left;vertical-align:top}"
    "th{background:#edf2f7}td.missing{color:#a0aec0}"
    ".plots{display:flex;flex-wrap:wrap;gap:12px}"
    ".note{color:#4a5568;font-size:12px}"
)
STYLE_CSP = "'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode() + "'"
"""The CSP source that allows the page's style block and nothing else."""


def _cell(value: str) -> str:
    cls = ' class="missing"' if value == fmt.MISSING else ""
    return f"<td{cls}>{escape(value)}</td>"


def _table(columns: Sequence[tuple[str, Callable[[T], str]]], rows: Sequence[T],
           first: Callable[[T], str] | None = None, first_name: str = "") -> str:
    head = (f"<th>{escape(first_name)}</th>" if first else "") + "".join(
        f"<th>{escape(name)}</th>" for name, _ in columns)
    body = "".join(
        "<tr>" + (_cell(first(row)) if first else "")
        + "".join(_cell(show(row)) for _, show in columns) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(columns) + bool(first)}" class="missing">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _percent(v: float) -> str:
    return f"{v * 100:.3g}%"


def _plots(report: RolloutReport) -> str:
    days = [d.day.isoformat() for d in report.days]
    deps = [d.version or d.cycle_id for d in report.deployments]
    ds, ps = report.days, report.deployments

    def by_day(*pairs: tuple[str, Callable[[Totals], float | None]]) -> list[Series]:
        return [(name, [get(d) for d in ds]) for name, get in pairs]

    plots = [
        chart("Acceptance and deploy rate per day", days, by_day(
            ("approved / decided", lambda t: t.acceptance_rate),
            ("deployed / proposed", lambda t: t.deploy_rate)), kind="line", top=1.0,
            tick=_percent),
        chart("Deployments and incidents per day", days, by_day(
            ("deployed", lambda t: t.deployed), ("incidents", lambda t: t.incidents),
            ("rollbacks", lambda t: t.rollbacks))),
        chart("Rollback success rate per day", days, by_day(
            ("rolled back / attempted", lambda t: t.rollback_success_rate)), kind="line",
            top=1.0, tick=_percent),
        chart("Time to roll back per day (median, s)", days, by_day(
            ("seconds", lambda t: t.time_to_rollback_s_median))),
        chart("Lead time, proposal to deploy, per day (median, s)", days, by_day(
            ("seconds", lambda t: t.lead_time_s_median))),
        chart("Error rate while baking per day", days, by_day(
            ("errors / requests", lambda t: t.bake_error_rate)), kind="line",
            tick=_percent),
        chart("Latency impact per deployment (new / previous)", deps, [
            ("p50 ratio", [d.latency.p50_ratio for d in ps]),
            ("p95 ratio", [d.latency.p95_ratio for d in ps])]),
        chart("Latency while baking per deployment (ms)", deps, [
            ("p50", [d.stability.p50_ms for d in ps]),
            ("p95", [d.stability.p95_ms for d in ps])]),
        chart("Error rate while baking per deployment", deps, [
            ("errors / requests", [d.stability.error_rate for d in ps])], tick=_percent),
        chart("Lead time per deployment (s)", deps, [
            ("proposal to deploy", [d.lead_time_s for d in ps])]),
    ]
    return '<div class="plots">' + "".join(plots) + "</div>"


def render_html(report: RolloutReport) -> str:
    """The whole page."""
    since = f", since {report.since.isoformat()}" if report.since else ""
    source = ("the ledger and the gateway's request log" if report.gateway
              else "the ledger (no gateway request log was found)")
    summary = "".join(f"<tr><th>{escape(label)}</th>{_cell(show(report.totals))}</tr>"
                      for label, show in fmt.SUMMARY)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>upgate: rollout metrics</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>Rollout metrics</h1>"
        f'<p class="note">Generated {escape(fmt.moment(report.generated_at))} UTC from '
        f"{escape(source)}: {report.ledger_entries} ledger entries{escape(since)}. "
        f"{escape(fmt.MISSING)} means no data, not zero.</p>"
        f"<h2>Summary</h2><table><tbody>{summary}</tbody></table>"
        f"<h2>Over time and per deployment</h2>{_plots(report)}"
        "<h2>Per day (UTC)</h2>"
        + _table(fmt.DAY_COLUMNS, report.days, lambda d: d.day.isoformat(), "day")
        + "<h2>Deployments</h2>" + _table(fmt.DEPLOYMENT_COLUMNS, report.deployments)
        + "<h2>Rollbacks</h2>" + _table(fmt.ROLLBACK_COLUMNS, report.rollbacks)
        + "</body></html>"
    )
