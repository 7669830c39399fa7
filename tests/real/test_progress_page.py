"""The chat page in Chromium shows live progress (a bar per long step, its detail as text)
and a cycle's time and cost, against the real service process on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.progress import reporter, reporting

from .conftest import VLLM_ROOT
from .serving import Served, served_cycles
from .test_server_browser import browser, open_cycle, shots, snap  # noqa: F401 (fixtures)

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # The page asks the model nothing here: the endpoint is only named in the config.
    with served_cycles(VLLM_ROOT, tmp_path_factory.mktemp("progress-page"), 1) as s:
        yield s


def test_the_page_shows_a_bar_per_long_step_and_the_cycles_time_and_cost(
        browser: object, served: Served, shots: Path) -> None:  # noqa: F811
    """In Chromium: progress published by another process appears as a bar per step, its
    detail as text; the cycle's time and cost are on the page."""
    [cycle] = served.cycles
    board = served.runner().deps.progress_board
    page = open_cycle(browser, served, "bob", cycle)
    cost = page.inner_text(".msg.cost")  # type: ignore[attr-defined]
    assert "Wall time per node" in cost and "critique" in cost and "sandbox CPU time" in cost
    with reporting(board, cycle):
        reporter("implement")("epoch", 1, 2, detail="loss 0.4123")
        reporter("implement")("step", 3, 8, detail="<img src=x onerror=alert(1)> epoch 1")
        reporter("critique")("case", 17, 40, detail="smollm2")
    try:
        page.wait_for_selector(  # type: ignore[attr-defined]
            "#progress .bar[data-key='critique/case'] progress[value='17']")
        step = page.locator("#progress .bar[data-key='implement/step']")  # type: ignore[attr-defined]
        assert step.locator("progress").get_attribute("max") == "8"
        assert step.locator(".count").inner_text() == "3/8 <img src=x onerror=alert(1)> epoch 1"
        assert page.locator("#progress img").count() == 0  # type: ignore[attr-defined]
        snap(page, shots, "chat-progress.png", "#progress")
        assert not page.errors  # type: ignore[attr-defined]
    finally:
        board.prune(cycle)
