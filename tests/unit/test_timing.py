"""Phases of a step and independent calls run at once."""

from __future__ import annotations

import contextvars
import threading

import pytest

from upgate.timing import Stopwatch, concurrently

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_calls_run_at_once_in_the_callers_context_and_keep_their_order() -> None:
    _who.set("cycle-1")
    barrier = threading.Barrier(3, timeout=10)  # each call waits for the others: at once

    def call(n: int) -> tuple[int, str]:
        barrier.wait()
        return n, _who.get()

    assert concurrently(lambda: call(0), lambda: call(1), lambda: call(2)) == [
        (0, "cycle-1"), (1, "cycle-1"), (2, "cycle-1")]


def test_an_error_in_one_call_is_raised_after_the_others_finish() -> None:
    finished: list[int] = []

    def slow() -> int:
        threading.Event().wait(0.2)
        finished.append(1)
        return 1

    def broken() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        concurrently(broken, slow)
    assert finished == [1]


def test_a_phase_entered_twice_adds_up_and_counts_when_it_raises() -> None:
    watch = Stopwatch()
    with watch.phase("a"):
        pass
    with pytest.raises(RuntimeError), watch.phase("b"):
        raise RuntimeError
    with watch.phase("a"):
        pass
    assert list(watch.seconds) == ["a", "b"]
    assert all(v >= 0 for v in watch.rounded().values())
