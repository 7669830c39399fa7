"""Operations on lists of half-open spans `(start, end)` with `start <= end`."""

from __future__ import annotations

Span = tuple[int, int]


def _check(spans: list[Span]) -> None:
    for start, end in spans:
        if start > end:
            raise ValueError(f"span ({start}, {end}) ends before it starts")


def merge(spans: list[Span]) -> list[Span]:
    """The smallest sorted list of disjoint spans covering the same points.

    Spans that overlap or touch (`(1, 3)` and `(3, 5)`) are joined; empty spans vanish.
    """
    _check(spans)
    out: list[Span] = []
    for start, end in spans:
        if start == end:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def total_length(spans: list[Span]) -> int:
    """How many integer points the spans cover together (overlaps counted once)."""
    return sum(end - start for start, end in merge(spans))


def contains(spans: list[Span], point: int) -> bool:
    """Whether `point` lies in one of the spans (start included, end excluded)."""
    return any(start <= point < end for start, end in merge(spans))


def subtract(spans: list[Span], cut: Span) -> list[Span]:
    """The spans with every point of `cut` removed, merged."""
    _check([cut])
    lo, hi = cut
    out: list[Span] = []
    for start, end in merge(spans):
        if end <= lo or start >= hi:
            out.append((start, end))
            continue
        if start < lo:
            out.append((start, lo))
        if end > hi:
            out.append((hi, end))
    return out
