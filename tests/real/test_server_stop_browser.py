"""The chat page's stop button in a real browser (Chromium driven by Playwright) against the
real service process: an approver stops a running batch with a reason; the ledger records
who, why and channel "chat"; the batch is flagged and the page says so."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.batches import Board
from upgate.store import Store

from .serving import serve, waiting_cycles

pytestmark = pytest.mark.real
sync_api = pytest.importorskip("playwright.sync_api")

BATCH = "b20260101-000000-abcdef"


@pytest.fixture
def page(vllm_root: str, tmp_path: Path) -> Iterator[tuple[object, Path]]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no chromium on PATH (install it with `make browser`)")
    tokens, _ = waiting_cycles(tmp_path, vllm_root, 0)
    store = Store(tmp_path / "state" / "state.sqlite")
    Board(store).begin(BATCH, "alice")  # a batch this (live) test process runs
    store.close()
    with serve(tmp_path, tokens, []) as served, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        pg = browser.new_page()
        pg.goto(served.url + "/")
        pg.fill("#login-name", "bob")
        pg.fill("#login-token", tokens["bob"])
        pg.click("#login-button")
        pg.wait_for_selector("#whoami:not([hidden])")
        yield pg, tmp_path
        browser.close()


def test_an_approver_stops_a_running_batch_from_the_page(page: tuple[object, Path]) -> None:
    pg, root = page
    pg.wait_for_selector(f"#batches li[data-batch='{BATCH}']")  # type: ignore[attr-defined]
    assert "running" in pg.inner_text("#batches")  # type: ignore[attr-defined]
    pg.fill("#stop-reason", "the eval suite is being rebuilt")  # type: ignore[attr-defined]
    pg.click("#stop-button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#stop-result:has-text('stop pressed')")  # type: ignore[attr-defined]
    assert f"stop pressed on {BATCH} by bob" in pg.inner_text("#stop-result")  # type: ignore[attr-defined]
    store = Store(root / "state" / "state.sqlite")
    try:
        assert Board(store).stop_requested(BATCH) == ("bob", "the eval suite is being rebuilt")
    finally:
        store.close()
    from upgate.ledger import open_ledger

    ledger = open_ledger(root / "state")
    (pressed,) = [e.payload for e in ledger.entries(BATCH) if e.event == "pressed"]
    assert (pressed["by"], pressed["channel"]) == ("bob", "chat")
