"""Small inline SVG charts (bars or lines over labelled points), with no script and no
style sheet of their own, so a page can embed them under a strict CSP and offline.

A missing value is drawn as a grey dash marked "no data", never as a bar of height 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Literal

WIDTH, HEIGHT = 520, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 48, 56
GRID = 5
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1")

Series = tuple[str, Sequence[float | None]]


def _nice_top(value: float) -> float:
    """A round axis maximum at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):  # a fifth of each is round too
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _attr(value: str) -> str:
    return escape(value, quote=True)


def chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
          kind: Literal["bar", "line"] = "bar",
          tick: Callable[[float], str] = lambda v: f"{v:g}",
          top: float | None = None) -> str:
    """An SVG chart: one group of bars (or one line) per series over `labels`."""
    present = [v for _, values in series for v in values if v is not None]
    y_top = top if top is not None else _nice_top(max(present, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(labels), 1)
    slot = plot_w / n

    def y(v: float) -> float:
        return TOP + plot_h - (min(v, y_top) / y_top) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{_attr(title)}">',
           f"<title>{escape(title)}</title>",
           f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold" '
           f'font-family="sans-serif">{escape(title)}</text>']
    for i in range(GRID + 1):  # grid and y ticks
        v = y_top * i / GRID
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y(v) + 4:.1f}" font-size="10" '
                   f'text-anchor="end" font-family="sans-serif">{escape(tick(v))}</text>')
    every = max(1, math.ceil(n / 12))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + slot * (i + 0.5)
            out.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" '
                       f'text-anchor="end" font-family="sans-serif" transform="rotate(-30 '
                       f'{x:.1f} {HEIGHT - BOTTOM + 14})">{escape(_short(label))}</text>')
    for s, (name, values) in enumerate(series):
        colour = COLOURS[s % len(COLOURS)]
        out.extend(_bars(values, labels, name, s, len(series), slot, y, colour)
                   if kind == "bar" else _line(values, labels, name, slot, y, colour))
        x = LEFT + 150 * s  # the legend: one row under the title
        out.append(f'<rect x="{x}" y="26" width="10" height="8" fill="{colour}"/><text '
                   f'x="{x + 14}" y="34" font-size="10" font-family="sans-serif">'
                   f'{escape(_short(name, 26))}</text>')
    if not labels:
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" font-size="12" '
                   'text-anchor="middle" fill="#888" font-family="sans-serif">no data</text>')
    out.append("</svg>")
    return "".join(out)


def _short(label: str, size: int = 14) -> str:
    return label if len(label) <= size else label[: size - 1] + "…"


def _missing(x: float, baseline: float, what: str) -> str:
    return (f'<g><title>{escape(what)}: no data</title><line x1="{x - 4:.1f}" '
            f'x2="{x + 4:.1f}" y1="{baseline - 2:.1f}" y2="{baseline - 2:.1f}" stroke="#999" '
            'stroke-width="2"/></g>')


def _bars(values: Sequence[float | None], labels: Sequence[str], name: str, index: int,
          count: int, slot: float, y: Callable[[float], float], colour: str) -> list[str]:
    width = slot * 0.8 / count
    out = []
    for i, v in enumerate(values):
        x = LEFT + slot * i + slot * 0.1 + width * index
        what = f"{name}, {labels[i]}"
        if v is None:
            out.append(_missing(x + width / 2, y(0), what))
            continue
        top = min(y(v), y(0) - 1.5)  # a measured 0 still shows, unlike a missing value
        out.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" '
                   f'height="{y(0) - top:.1f}" fill="{colour}"><title>'
                   f'{escape(what)}: {v:g}</title></rect>')
    return out


def _line(values: Sequence[float | None], labels: Sequence[str], name: str, slot: float,
          y: Callable[[float], float], colour: str) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    for i, v in enumerate([*values, None]):
        if v is None:  # a gap ends the run: missing points are not joined across
            if len(run) > 1:
                out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                           f'points="{" ".join(run)}"/>')
            run = []
            if i < len(values):
                out.append(_missing(LEFT + slot * (i + 0.5), y(0), f"{name}, {labels[i]}"))
            continue
        x = LEFT + slot * (i + 0.5)
        run.append(f"{x:.1f},{y(v):.1f}")
        out.append(f'<circle cx="{x:.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>'
                   f'{escape(name)}, {escape(labels[i])}: {v:g}</title></circle>')
    return out
