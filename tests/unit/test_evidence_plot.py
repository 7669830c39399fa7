"""The evidence packet's plot: one dot and interval per slice, valid SVG, escaped names."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from upgate.evals.evidence import delta_plot_svg
from upgate.evals.harness import CaseResult
from upgate.evals.stats import compare


def _results(scores: list[float], slices: list[str]) -> list[CaseResult]:
    return [CaseResult(case_id=f"c{i}", split="visible" if i % 2 else "hidden",
                       slices=(s,), output="x", score=v, latency_s=0.1)
            for i, (v, s) in enumerate(zip(scores, slices, strict=True))]


def test_plot_has_a_row_per_slice_and_is_valid_svg() -> None:
    slices = ["billing", "bug", "<script>", "bug"] * 5
    base = _results([0.0, 1.0, 0.0, 1.0] * 5, slices)
    cand = _results([1.0, 0.0, 1.0, 1.0] * 5, slices)
    svg = delta_plot_svg(compare(base, cand, n_boot=200))
    root = ET.fromstring(svg)  # noqa: S314 (our own output, not untrusted XML)
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    # overall + 2 splits + 3 slices
    assert len(circles) == 6
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert delta_plot_svg(None) == ""
