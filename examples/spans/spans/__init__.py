"""Half-open integer spans `(start, end)`: merge, subtract, measure, parse and format."""

from spans.core import Span, contains, merge, subtract, total_length
from spans.text import format_spans, parse_spans

__all__ = ["Span", "contains", "format_spans", "merge", "parse_spans", "subtract",
           "total_length"]
