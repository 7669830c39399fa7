"""Rollout metrics from a real ledger with known records: every metric's value, the empty
ledger, missing data shown as missing, the gateway's request log, and the HTML page."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from upgate.ledger import Ledger
from upgate.report import build_report
from upgate.report import format as fmt
from upgate.report.html import STYLE, render_html
from upgate.report.models import DeploymentMetrics, RolloutReport

from .report_sample import (
    DAY1,
    DAY2,
    EVIL,
    MANUAL,
    at,
    controlled_clock,
    put,
    sample_ledger,
    write_gateway,
)


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RolloutReport:
    ledger = sample_ledger(tmp_path, monkeypatch)
    try:
        return build_report(ledger, gateway_db=tmp_path / "gateway.db")  # no such file
    finally:
        ledger.close()


def by_cycle(report: RolloutReport) -> dict[str, DeploymentMetrics]:
    return {d.cycle_id: d for d in report.deployments}


def test_an_empty_ledger_has_counts_of_zero_and_every_rate_missing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    report = build_report(ledger)
    ledger.close()
    t = report.totals
    assert (t.proposed, t.decided, t.deployed, t.rollbacks, t.bake_requests) == (0, 0, 0, 0, 0)
    for rate in (t.acceptance_rate, t.deploy_rate, t.incident_rate, t.rollback_success_rate,
                 t.bake_error_rate, t.lead_time_s_median, t.time_to_rollback_s_median,
                 t.p50_ratio_median, t.regressions_per_deployment):
        assert rate is None  # missing, never 0 or 100%
    assert report.days == [] and report.deployments == [] and not report.gateway
    page = render_html(report)
    assert "no data" in page and "100.0%" not in page and "0.0%" not in page


def test_totals_over_the_sample(sample: RolloutReport) -> None:
    t = sample.totals
    assert (t.proposed, t.decided, t.approved, t.deployed) == (5, 5, 4, 4)
    assert t.acceptance_rate == pytest.approx(0.8) and t.deploy_rate == pytest.approx(0.8)
    # lead times 2400 (c1), 600 (c3), 1200 (c4), 1800 (c5)
    assert t.lead_time_s_median == pytest.approx(1500) and t.lead_time_s_max == 2400
    # bake windows: c1 40 req 1 err (steps), c3 8/2 (monitor), c4 10/5 (step), c5 8/0
    assert t.bake_requests == 66 and t.bake_error_rate == pytest.approx(8 / 66)
    assert t.p50_ratio_median == pytest.approx((1.1 + 3.0) / 2)
    assert t.p95_ratio_median == pytest.approx((1.1 + 4.5) / 2)
    assert (t.regressions, t.incidents) == (2, 3)
    assert t.incident_rate == pytest.approx(0.75)
    assert t.regressions_per_deployment == pytest.approx(0.5)
    assert t.rollbacks_per_deployment == pytest.approx(1.0)  # 4 attempts over 4 deployments
    assert (t.rollbacks, t.rollbacks_succeeded) == (4, 2)
    assert t.rollback_success_rate == pytest.approx(0.5)
    assert t.time_to_rollback_s_median == pytest.approx((12.5 + 30) / 2)
    assert t.time_to_rollback_s_max == pytest.approx(30)


def test_each_day_counts_what_happened_that_day(sample: RolloutReport) -> None:
    one, two = sample.days
    assert (one.day, two.day) == (DAY1.date(), DAY2.date())
    assert (one.proposed, one.decided, one.approved, one.deployed) == (3, 3, 2, 2)
    assert one.acceptance_rate == pytest.approx(2 / 3)
    assert (one.rollbacks, one.rollbacks_succeeded, one.rollback_success_rate) == (1, 0, 0.0)
    assert one.time_to_rollback_s_median is None  # nothing was rolled back: no time to show
    assert one.lead_time_s_median == pytest.approx(1500)  # 2400 and 600
    assert (two.proposed, two.decided, two.approved, two.deployed) == (2, 2, 2, 2)
    assert (two.rollbacks, two.rollbacks_succeeded) == (3, 2)
    assert two.incident_rate == pytest.approx(1.0)
    assert two.p95_ratio_median == pytest.approx(4.5)


def test_a_staged_rollout_is_measured_on_its_step_checks(sample: RolloutReport) -> None:
    c1 = by_cycle(sample)["c1"]
    assert c1.rollout == "promoted" and c1.rollout_steps_checked == 2
    assert c1.rollout_duration_s == 240.0
    s, lat = c1.stability, c1.latency
    assert (s.source, s.requests, s.errors, s.healthy) == ("rollout", 40, 1, True)
    assert s.error_rate == pytest.approx(0.025)
    assert (s.p50_ms, s.p95_ms) == (110, 220)  # the last (widest) step's window
    assert lat.previous_version == "triage@initial"
    assert lat.p50_ratio == pytest.approx(1.1) and lat.p95_ratio == pytest.approx(1.1)
    assert c1.lead_time_s == 2400 and not c1.incident


def test_a_deployment_with_no_rollout_is_measured_by_its_monitor(
        sample: RolloutReport) -> None:
    c5 = by_cycle(sample)["c5"]
    assert c5.rollout is None
    s, lat = c5.stability, c5.latency
    assert (s.source, s.requests, s.errors, s.error_rate, s.healthy) == (
        "monitor", 8, 0, 0.0, True)
    assert s.p50_ms is None and lat.p50_ratio is None  # the monitor measures no latency
    assert c5.previous_version == "triage-aaa"
    # Both manual rollbacks (their own cycle) count against the version they took down.
    assert c5.rollbacks == 2 and c5.regressions == 0 and c5.incident


def test_a_rollback_with_no_previous_version_is_not_a_success(sample: RolloutReport) -> None:
    c3 = by_cycle(sample)["c3"]
    assert c3.target == "git" and c3.version == "abcdef123456"
    assert c3.previous_version is None and c3.latency.p95_ratio is None
    assert (c3.regressions, c3.rollbacks) == (1, 1)
    [rb] = [r for r in sample.rollbacks if r.cycle_id == "c3"]
    assert rb.outcome == "not_restored" and not rb.succeeded
    assert rb.trigger == "monitor"  # the cycle graph's own rollback
    assert rb.from_version == "abcdef123456" and rb.to_version is None
    assert rb.duration_s == pytest.approx(30) and rb.duration_from == "timestamps"


def test_rollbacks_read_their_duration_from_the_record_or_the_timestamps(
        sample: RolloutReport) -> None:
    rollout, failed, manual = [r for r in sample.rollbacks if r.cycle_id != "c3"]
    assert (rollout.trigger, rollout.outcome, rollout.succeeded) == ("rollout", "rolled_back",
                                                                    True)
    assert rollout.duration_s == 12.5 and rollout.duration_from == "recorded"
    assert rollout.verified is True
    assert (failed.cycle_id, failed.outcome, failed.succeeded) == (MANUAL, "failed", False)
    assert failed.duration_s == pytest.approx(60) and failed.by == "carol"
    assert failed.reason == EVIL
    assert manual.duration_s == pytest.approx(30) and manual.duration_from == "timestamps"
    c4 = by_cycle(sample)["c4"]
    assert c4.rollout == "aborted" and c4.stability.healthy is False
    assert (c4.regressions, c4.rollbacks) == (1, 1)


def test_a_rollback_whose_verification_failed_is_not_a_success(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with controlled_clock(monkeypatch):
        put(ledger, at(DAY1, 8, 0), "rollback-triage-1", "rollback", "rolled_back", {
            "alias": "triage", "from_version": "b", "to_version": "a", "trigger": "manual",
            "verified": {"models_ok": True, "smoke_ok": False}})
        put(ledger, at(DAY1, 8, 1), "rollback-triage-2", "rollback", "rolled_back", {
            "alias": "triage", "status": "restored"})  # no times at all
    report = build_report(ledger)
    ledger.close()
    unverified, bare = report.rollbacks
    assert unverified.verified is False and not unverified.succeeded
    assert bare.succeeded and bare.duration_s is None and bare.trigger is None
    assert report.totals.rollback_success_rate == pytest.approx(0.5)
    assert report.totals.time_to_rollback_s_median is None  # missing, not 0 s


def test_ledger_text_reads_on_one_line_without_terminal_escapes() -> None:
    assert fmt.text("a\x1b]0;title\x07b\nc\rd") == "a ]0;title b c d"
    assert fmt.text("") == fmt.text(None) == "-"


def test_a_blue_green_switch_and_a_failed_rollback_read_from_their_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with controlled_clock(monkeypatch):
        put(ledger, at(DAY1, 8, 0), "c7", "propose", "proposal", {"proposal": "garbled"})
        put(ledger, at(DAY1, 8, 30), "c7", "bluegreen", "switched", {
            "alias": "triage", "from_version": "triage@initial", "to_version": "triage-ddd",
            "switch_s": 0.004, "generation": 3})
        put(ledger, at(DAY1, 9, 0), "c7", "rollback", "failed", {
            "alias": "triage", "from_version": "triage-ddd", "to_version": "triage@initial",
            "trigger": "bluegreen", "reason": "regression", "reason_failed": "blue is down",
            "duration_s": 2.0})
    report = build_report(ledger)
    ledger.close()
    [d] = report.deployments
    assert (d.version, d.previous_version, d.switch_s) == ("triage-ddd", "triage@initial", 0.004)
    assert d.alias == "triage" and d.target is None
    assert d.kind is None and d.lead_time_s == 1800 and d.rollbacks == 1 and d.incident
    [rb] = report.rollbacks
    assert rb.reason == "regression (failed: blue is down)" and not rb.succeeded
    assert report.totals.rollback_success_rate == 0.0  # one attempt, failed: a real 0%
    assert report.totals.time_to_rollback_s_median is None  # no successful rollback to time


def test_an_unchecked_monitor_leaves_stability_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with controlled_clock(monkeypatch):
        put(ledger, at(DAY1, 8, 0), "c9", "deploy", "deployed", {"deployment": {
            "target": "git", "deployment_id": "c9-x", "commit": "0" * 40}})
        put(ledger, at(DAY1, 8, 1), "c9", "monitor", "healthy", {"checked": False})
    report = build_report(ledger)
    ledger.close()
    [d] = report.deployments
    assert d.proposed_at is None and d.lead_time_s is None  # no proposal: no lead time
    assert d.stability.healthy is True and d.stability.requests is None
    assert d.stability.error_rate is None and report.totals.bake_error_rate is None
    assert report.totals.deploy_rate is None  # nothing was proposed


def test_the_gateway_log_measures_the_bake_window_when_it_has_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = sample_ledger(tmp_path, monkeypatch)
    write_gateway(tmp_path / "gateway.db")
    report = build_report(ledger, gateway_db=tmp_path / "gateway.db")
    ledger.close()
    assert report.gateway
    c4 = by_cycle(report)["c4"]
    s, lat = c4.stability, c4.latency
    # four requests in [09:21, 09:23), one 500; the 503 at 09:30 is after the abort
    assert (s.source, s.requests, s.errors, s.healthy) == ("gateway", 4, 1, False)
    assert (s.p50_ms, s.p95_ms) == (200, 300)
    assert (lat.previous_p50_ms, lat.previous_p95_ms) == (60, 70)
    assert lat.p50_ratio == pytest.approx(200 / 60) and lat.p95_ratio == pytest.approx(300 / 70)
    # c1's window has no samples in the log: its step checks still measure it
    assert by_cycle(report)["c1"].stability.source == "rollout"


def test_since_keeps_what_happened_on_or_after_that_day(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = sample_ledger(tmp_path, monkeypatch)
    report = build_report(ledger, since=date(2026, 11, 2))
    ledger.close()
    assert [d.day for d in report.days] == [DAY2.date()]
    assert [d.cycle_id for d in report.deployments] == ["c4", "c5"]
    assert report.totals.proposed == 2 and report.totals.rollbacks == 3


def test_the_html_page_escapes_ledger_text_and_needs_nothing_else(
        sample: RolloutReport) -> None:
    page = render_html(sample)
    assert "<script" not in page.lower() and EVIL not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<svg") == 10 and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert re.findall(r"<style>(.*?)</style>", page, re.S) == [STYLE]
    assert "style=" not in page  # no inline style attributes (the CSP allows the block only)
    # missing values read "-" in the tables and are drawn as "no data" in the plots
    assert 'class="missing">-</td>' in page and "no data</title>" in page


def test_a_plot_draws_a_measured_zero_and_marks_a_missing_value_apart() -> None:
    from upgate.report.svg import chart

    svg = chart('rate <b>"x"</b>', ["day <1>", "day 2"], [("errors & more", [0.0, None])])
    assert svg.count("<rect") == 2  # the zero's bar and the legend's swatch
    assert svg.count("no data</title>") == 1 and "errors &amp; more, day 2: no data" in svg
    assert "<b>" not in svg and "day &lt;1&gt;" in svg
    assert chart("empty", [], []).count("no data") == 1
