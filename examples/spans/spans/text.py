"""Spans as text: "1-4,7-9" (inclusive ends, as people write page ranges)."""

from __future__ import annotations

from spans.core import Span, merge


def parse_spans(text: str) -> list[Span]:
    """Parse "1-4, 7, 9-12" into merged half-open spans; raise ValueError on bad text."""
    spans: list[Span] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise ValueError(f"not a range: {part!r} (write e.g. '3-7' or '5')") from None
        if hi < lo:
            raise ValueError(f"range {part!r} ends before it starts")
        spans.append((lo, hi + 1))
    return merge(spans)


def format_spans(spans: list[Span]) -> str:
    """The inverse of `parse_spans`: merged spans as "1-4,7,9-12"."""
    parts = []
    for start, end in merge(spans):
        last = end - 1
        parts.append(str(start) if last == start else f"{start}-{last}")
    return ",".join(parts)
