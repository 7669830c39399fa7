"""Tests the owner of `spans` keeps outside the repository; only the critic runs them."""

from __future__ import annotations

import random

import pytest
from spans import contains, format_spans, merge, parse_spans, subtract, total_length


def _reference_merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    points = sorted({p for start, end in spans for p in range(start, end)})
    out: list[tuple[int, int]] = []
    for p in points:
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def test_merge_reverse_order() -> None:
    assert merge([(10, 12), (4, 8), (1, 3)]) == [(1, 3), (4, 8), (10, 12)]


def test_merge_unsorted_touching() -> None:
    assert merge([(3, 5), (1, 3)]) == [(1, 5)]


def test_merge_unsorted_nested() -> None:
    assert merge([(2, 3), (0, 10), (12, 14), (11, 13)]) == [(0, 10), (11, 14)]


def test_merge_negative_unsorted() -> None:
    assert merge([(0, 4), (-6, -2), (-3, 1)]) == [(-6, 4)]


def test_merge_does_not_modify_its_input() -> None:
    given = [(5, 9), (1, 6)]
    merge(given)
    assert given == [(5, 9), (1, 6)]


@pytest.mark.parametrize("seed", range(20))
def test_merge_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    spans = []
    for _ in range(rng.randint(0, 12)):
        start = rng.randint(-20, 20)
        spans.append((start, start + rng.randint(0, 6)))
    assert merge(spans) == _reference_merge(spans)


def test_total_length_unsorted() -> None:
    assert total_length([(6, 10), (0, 7)]) == 10


def test_contains_unsorted() -> None:
    assert contains([(8, 9), (0, 2)], 8)
    assert not contains([(8, 9), (0, 2)], 5)


def test_subtract_unsorted() -> None:
    assert subtract([(6, 10), (0, 7)], (2, 4)) == [(0, 2), (4, 10)]


def test_parse_unsorted_text() -> None:
    assert parse_spans("9-12, 1-4, 3-5") == [(1, 6), (9, 13)]


def test_format_unsorted() -> None:
    assert format_spans([(7, 8), (1, 3), (2, 5)]) == "1-4,7"


def test_merge_still_rejects_reversed_span() -> None:
    with pytest.raises(ValueError, match="ends before"):
        merge([(0, 1), (5, 1)])


def test_parse_empty_text() -> None:
    assert parse_spans(" , ") == []
