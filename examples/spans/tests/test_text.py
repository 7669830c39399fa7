"""Tests of the text form of spans."""

from __future__ import annotations

import pytest
from spans import format_spans, parse_spans


def test_parse_ranges_and_single_numbers() -> None:
    assert parse_spans("1-4, 7, 9-12") == [(1, 5), (7, 8), (9, 13)]


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a range"):
        parse_spans("1-x")


def test_format_round_trip() -> None:
    assert format_spans(parse_spans("3, 1-2, 8-9")) == "1-3,8-9"
