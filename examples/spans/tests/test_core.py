"""Tests of span arithmetic."""

from __future__ import annotations

import pytest
from spans import contains, merge, subtract, total_length


def test_merge_joins_overlapping_sorted_spans() -> None:
    assert merge([(1, 4), (3, 6), (8, 10)]) == [(1, 6), (8, 10)]


def test_merge_joins_touching_spans() -> None:
    assert merge([(1, 3), (3, 5)]) == [(1, 5)]


def test_merge_drops_empty_spans() -> None:
    assert merge([(2, 2), (4, 6)]) == [(4, 6)]


def test_merge_rejects_reversed_span() -> None:
    with pytest.raises(ValueError, match="ends before"):
        merge([(5, 1)])


def test_merge_unsorted_input() -> None:
    assert merge([(5, 9), (1, 6)]) == [(1, 9)]


def test_total_length_counts_overlap_once() -> None:
    assert total_length([(0, 5), (3, 8)]) == 8


def test_contains_half_open() -> None:
    assert contains([(1, 3)], 1)
    assert not contains([(1, 3)], 3)


def test_subtract_splits_a_span() -> None:
    assert subtract([(0, 10)], (3, 5)) == [(0, 3), (5, 10)]
