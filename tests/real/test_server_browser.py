"""The chat page in a real browser (Debian's Chromium driven by Playwright) against the real
service process on loopback: log in, read a waiting cycle as a conversation, ask the real
model a question, approve and see the deploy; the requester refused; markup in a reason
shown as text; a stale page refused.

Screenshots go to $UPGATE_SCREENSHOTS when set (`UPGATE_SCREENSHOTS=docs` refreshes the
README's), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.server import decisions
from upgate.server.ask import NOT_IN_PACKET
from upgate.server.keys import service_signer

from .serving import Served, fake_sandbox_allowed, served_cycles

pytestmark = pytest.mark.real
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-quic"]
WAIT_MS = 480_000  # the real model answers on a shared CPU (a 20-token reply took 50 s under load)


@pytest.fixture(scope="module")
def served(vllm_root: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_cycles(vllm_root, tmp_path_factory.mktemp("page"), 4) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no chromium on PATH (install it with `make browser`)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def snap(page: object, folder: Path, name: str, focus: str) -> None:
    """A screenshot of the viewport with `focus` scrolled into view."""
    page.locator(focus).first.scroll_into_view_if_needed()  # type: ignore[attr-defined]
    page.screenshot(path=str(folder / name))  # type: ignore[attr-defined]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("UPGATE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_cycle(browser: object, served: Served, name: str, cycle: str) -> object:
    """A fresh browser context logged in as `name`, showing `cycle`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    # Script errors and CSP violations (an expected 401 before login is neither).
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text)
            if "Content Security Policy" in m.text else None)
    page.goto(served.url + "/")
    page.fill("#login-name", name)
    page.fill("#login-token", served.tokens[name])
    page.click("#login-button")
    page.wait_for_selector("#whoami:not([hidden])")
    page.click(f"#inbox li[data-cycle='{cycle}']")
    page.wait_for_selector("#messages .msg")
    page.wait_for_function("document.querySelector('img.plot') && "
                           "document.querySelector('img.plot').naturalWidth > 0")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def test_log_in_read_ask_and_approve_then_see_the_deploy(browser: object, served: Served,
                                                         shots: Path) -> None:
    cycle = served.cycles[0]
    page = open_cycle(browser, served, "bob", cycle)
    text = page.inner_text("#messages")  # type: ignore[attr-defined]
    assert "I propose few_shot" in text and "split" in text and "hidden" in text
    assert "diff --git a/triage/config.json" in page.inner_text("pre.diff")  # type: ignore[attr-defined]
    assert page.locator("table.slices tr").count() > 4  # type: ignore[attr-defined]
    assert "policy" in page.inner_text("#messages")  # type: ignore[attr-defined]  # lineage
    page.screenshot(path=str(shots / "chat-conversation.png"), full_page=True)  # type: ignore[attr-defined]

    page.fill("#question", "How did the score on the hidden split change?")  # type: ignore[attr-defined]
    page.click("#ask-button")  # type: ignore[attr-defined]
    answer = page.wait_for_selector(".msg.answer", timeout=WAIT_MS)  # type: ignore[attr-defined]
    assert answer is not None
    cites = [c.inner_text() for c in page.query_selector_all(".msg.answer .cite")]  # type: ignore[attr-defined]
    note = page.inner_text(".msg.answer .note")  # type: ignore[attr-defined]
    if cites:  # a citation comes with the cited section's own text from the packet
        assert f"packet section: {cites[0]}" in page.inner_text(".msg.answer details summary")  # type: ignore[attr-defined]
        assert f"Cites the packet's {cites[0]} section" in note
    else:
        assert note == NOT_IN_PACKET
    snap(page, shots, "chat-answer.png", ".msg.answer")

    page.click("#approve")  # type: ignore[attr-defined]
    page.wait_for_selector("#decision-result.done", timeout=WAIT_MS)  # type: ignore[attr-defined]
    result = page.inner_text("#decision-result")  # type: ignore[attr-defined]
    assert f"outcome deployed, deployed upgate/{cycle}" in result
    page.wait_for_function("document.getElementById('live').innerText.includes('record: deployed')")  # type: ignore[attr-defined]
    snap(page, shots, "chat-approved.png", "#live")
    branches = subprocess.run(["git", "-C", str(served.root / "target"), "branch"],
                              capture_output=True, text=True, check=True).stdout
    assert f"upgate/{cycle}" in branches
    events = [(e.node, e.event) for e in served.runner().deps.ledger.entries(cycle)]
    assert ("chat", "question") in events and ("chat", "answer") in events
    assert ("approve", "approve") in events and events[-1] == ("record", "deployed")
    assert not page.errors  # type: ignore[attr-defined]


def test_the_requesters_approval_is_refused_on_the_page(browser: object, served: Served,
                                                        shots: Path) -> None:
    cycle = served.cycles[1]
    page = open_cycle(browser, served, "carol", cycle)  # carol requested it
    page.click("#approve")  # type: ignore[attr-defined]
    page.wait_for_selector("#decision-result.refused")  # type: ignore[attr-defined]
    assert "carol requested this change and cannot approve it" in page.inner_text(  # type: ignore[attr-defined]
        "#decision-result")
    snap(page, shots, "chat-requester-refused.png", "#decision-result")
    assert served.runner().pending(cycle) is not None


def test_a_reason_with_markup_or_script_is_shown_as_plain_text(browser: object,
                                                               served: Served,
                                                               shots: Path) -> None:
    cycle = served.cycles[2]
    page = open_cycle(browser, served, "bob", cycle)
    title = page.title()  # type: ignore[attr-defined]
    reason = ("<img src=x onerror=\"document.title='pwned'\">"
              "<script>document.title='pwned'</script><b>bold</b>")
    page.fill("#reason", reason)  # type: ignore[attr-defined]
    page.click("#reject")  # type: ignore[attr-defined]
    page.wait_for_selector("#decision-result.done", timeout=WAIT_MS)  # type: ignore[attr-defined]
    assert page.inner_text("#cycle-reason") == f"rejected by bob: {reason}"  # type: ignore[attr-defined]
    for sel in ("#cycle-reason img", "#cycle-reason script", "#cycle-reason b",
                "#timeline img", "#timeline b"):
        assert page.locator(sel).count() == 0, sel  # type: ignore[attr-defined]
    page.reload()  # type: ignore[attr-defined]
    page.wait_for_selector("#messages .msg")  # type: ignore[attr-defined]
    assert page.inner_text("#cycle-reason") == f"rejected by bob: {reason}"  # type: ignore[attr-defined]
    assert page.title() == title != "pwned"  # type: ignore[attr-defined]
    snap(page, shots, "chat-markup-as-text.png", "#cycle-title")


def test_a_stale_page_is_refused_then_the_new_packet_is_approved(browser: object,
                                                                 served: Served,
                                                                 shots: Path) -> None:
    cycle = served.cycles[3]
    page = open_cycle(browser, served, "bob", cycle)
    shown = page.inner_text("#evidence-hash")  # type: ignore[attr-defined]
    # Meanwhile someone requests changes: the cycle is rebuilt and critiqued again.
    runner = served.runner()
    service = service_signer(runner, "approvals", served.root / "keys")
    with fake_sandbox_allowed():
        decisions.decide(runner, cycle, action="request_changes", person="bob",
                         reason="fewer examples", evidence_hash=shown, signer=service)
    fresh = runner.pending(cycle)
    assert fresh is not None and fresh["evidence_hash"] != shown
    page.click("#approve")  # type: ignore[attr-defined]
    page.wait_for_selector("#decision-result.refused")  # type: ignore[attr-defined]
    assert "changed since this page was loaded" in page.inner_text("#decision-result")  # type: ignore[attr-defined]
    snap(page, shots, "chat-stale-refused.png", "#decision-result")
    assert runner.pending(cycle) is not None
    page.reload()  # type: ignore[attr-defined]
    page.wait_for_selector("#messages .msg")  # type: ignore[attr-defined]
    assert page.inner_text("#evidence-hash") == fresh["evidence_hash"]  # type: ignore[attr-defined]
    page.click("#approve")  # type: ignore[attr-defined]
    page.wait_for_selector("#decision-result.done", timeout=WAIT_MS)  # type: ignore[attr-defined]
    assert "outcome deployed" in page.inner_text("#decision-result")  # type: ignore[attr-defined]
