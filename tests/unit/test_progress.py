"""Progress of long steps: the board in the state database, the reporter, the publishers
(training lines from a sandbox, eval cases, image builds) and the event stream's `progress`
events of a step that is really running."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError

from upgate.evals.harness import ChatChoiceHarness
from upgate.evals.suite import Case
from upgate.evals.testing import FunctionClient
from upgate.progress import (
    FanOut,
    MemoryProgress,
    ProgressBoard,
    ProgressEvent,
    parse_progress_line,
    reporter,
    reporting,
)
from upgate.sandboxes import images
from upgate.sandboxes.config import FakeSandboxConfig, get_sandbox
from upgate.sandboxes.images import build_step
from upgate.store import Store

from .test_server_api import client_for, template, waiting  # noqa: F401


def event(kind: Any = "epoch", done: int = 1, **kw: Any) -> ProgressEvent:
    return ProgressEvent(cycle_id=kw.pop("cycle_id", "c1"), node=kw.pop("node", "implement"),
                         kind=kind, done=done, **kw)


def test_the_board_keeps_the_latest_event_of_each_step_readable_by_another_process(
        tmp_path: Path) -> None:
    writer = ProgressBoard(Store(tmp_path / "state.sqlite"))
    reader = ProgressBoard(Store(tmp_path / "state.sqlite"))  # another connection, as serve
    for done in (1, 2, 3):
        writer.publish(event("step", done, total=3))
    writer.publish(event("epoch", 1, total=2))
    writer.publish(event("case", 5, total=9, cycle_id="c2", node="critique"))
    latest = reader.since("c1")
    assert [(e.kind, e.done) for e in latest] == [("step", 3), ("epoch", 1)]
    assert latest[0].seq < latest[1].seq
    # Only what changed after a reader's last look comes back.
    writer.publish(event("step", 1, total=3))
    assert [(e.kind, e.done) for e in reader.since("c1", latest[-1].seq)] == [("step", 1)]
    # A cycle's rows go when it ends; sequence numbers never go back, even after a prune,
    # so a stream that remembers its last number does not miss the next event.
    last = reader.since("c1")[-1].seq
    writer.prune("c1")
    assert reader.since("c1") == []
    assert [e.cycle_id for e in reader.since("c2")] == ["c2"]
    writer.publish(event("epoch", 2))
    assert reader.since("c1", last)[0].seq > last


def test_events_are_bounded() -> None:
    with pytest.raises(ValidationError):
        event("nonsense")
    with pytest.raises(ValidationError):
        event(done=-1)
    with pytest.raises(ValidationError):
        event(detail="x" * 1000)


@pytest.mark.parametrize(("line", "parsed"), [
    ('{"event": "epoch", "epoch": 2, "epochs": 3, "loss": 0.5, "steps": 9}',
     ("epoch", 2, 3, "loss 0.5000")),
    ('{"event": "epoch", "epoch": 1, "loss": 0.5}', ("epoch", 1, None, "loss 0.5000")),
    ('{"event": "step", "epoch": 1, "step": 4, "steps": 10, "loss": 1.25}',
     ("step", 4, 10, "epoch 1, loss 1.2500")),
    ('{"progress": "case", "done": 3, "total": 7, "detail": "<b>x</b>"}',
     ("case", 3, 7, "<b>x</b>")),
    ('{"event": "done", "final_loss": 0.1}', None),
    ('{"event": "step", "step": true, "steps": 3}', None),
    ('{"event": "step", "step": -1, "steps": 3}', None),
    ('{"event": "epoch", "epoch": 99999999999999}', None),
    ('{"progress": "reboot", "done": 1}', None),
    ("not json {", None),
    ("[1, 2]", None),
    ("{" + " " * 5000 + "}", None),
])
def test_progress_lines_from_a_sandbox_are_parsed_strictly(line: str, parsed: Any) -> None:
    assert parse_progress_line(line) == parsed


def test_a_reporter_outside_a_cycle_does_nothing_and_inside_one_publishes() -> None:
    reporter("implement")("epoch", 1, 2)  # no cycle: nowhere to go, no error
    sink = MemoryProgress()
    with reporting(sink, "c9"):
        report = reporter("critique")
        report("case", 2, 4, detail="d" * 500)
    assert report.active
    [e] = sink.events
    assert (e.cycle_id, e.node, e.kind, e.done, e.total) == ("c9", "critique", "case", 2, 4)
    assert len(e.detail) == 160


def test_a_failing_sink_does_not_stop_the_others() -> None:
    class Broken:
        def publish(self, event: ProgressEvent) -> None:
            raise RuntimeError("disk full")

    sink = MemoryProgress()
    with reporting(FanOut([Broken(), sink]), "c1"):
        reporter("implement")("build", 1, 5)
    assert len(sink.events) == 1


def test_training_lines_reach_the_board_while_the_command_runs(tmp_path: Path) -> None:
    # A stand-in for the training script: it prints its step line, then waits until the
    # board (read through its own connection) shows that step. Only live delivery lets it
    # finish before its timeout.
    board = ProgressBoard(Store(tmp_path / "state.sqlite"))
    watcher = ProgressBoard(Store(tmp_path / "state.sqlite"))
    go = tmp_path / "go"
    others: list[str] = []
    with get_sandbox(FakeSandboxConfig()) as sandbox, reporting(board, "c1"):
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if any(e.kind == "step" for e in watcher.since("c1")):
                    go.write_text("go")
                    return
                done.wait(0.02)

        thread = threading.Thread(target=watch)
        thread.start()
        script = (
            'echo \'{"event": "step", "epoch": 1, "step": 1, "steps": 2, "loss": 0.9}\'; '
            'echo plain text; while [ ! -e "$GO" ]; do sleep 0.02; done; '
            'echo \'{"event": "epoch", "epoch": 1, "epochs": 1, "loss": 0.8}\''
        )
        result = sandbox.exec(script, env={"GO": str(go)}, timeout_s=60,
                              on_output=reporter("implement").lines(others.append))
        done.set()
        thread.join()
    assert result.ok, result.summary()
    assert others == ["plain text"]
    assert [(e.kind, e.done, e.total) for e in board.since("c1")] == [
        ("step", 1, 2), ("epoch", 1, 1)]


def test_the_eval_harness_reports_each_scored_case() -> None:
    cases = [Case(id=f"t{i}", input=f"ticket {i}", expected="billing", split="visible")
             for i in range(5)]
    harness = ChatChoiceHarness(lambda url, timeout: FunctionClient(lambda m: "billing"))
    sink = MemoryProgress()
    with reporting(sink, "c1"):
        harness.run(cases, base_url="http://127.0.0.1:9/v1", model="m", system_prompt="s",
                    few_shot=[], labels=("billing", "bug"), repeats=2, concurrency=3)
    assert sorted(e.done for e in sink.events) == list(range(1, 11))
    assert {(e.kind, e.total, e.node) for e in sink.events} == {("case", 10, "")}


def test_build_steps_are_read_from_the_engines_stream() -> None:
    assert build_step("Step 3/12 : RUN pip install x\n") == (3, 12, "RUN pip install x")
    assert build_step(" ---> Running in 1a2b\n") is None


def test_an_image_build_publishes_its_steps(tmp_path: Path) -> None:
    class Api:
        def build(self, **kwargs: Any) -> Iterator[dict[str, str]]:
            yield {"stream": "Step 1/2 : FROM base\n"}
            yield {"stream": " ---> 1a2b\n"}
            yield {"stream": "Step 2/2 : RUN pip install --no-index wheels/*\n"}
            yield {"stream": "Successfully built 3c4d\n"}

    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text("FROM base\n")
    (tmp_path / "wheels").mkdir()
    sink = MemoryProgress()
    with reporting(sink, "c1"):
        images._build_context(SimpleNamespace(api=Api()), dockerfile, "", tmp_path / "wheels",
                              "upgate-sandbox:test", {}, "sandbox")
    assert [(e.kind, e.done, e.total, e.detail) for e in sink.events] == [
        ("build", 1, 2, "sandbox: FROM base"),
        ("build", 2, 2, "sandbox: RUN pip install --no-index wheels/*")]


@contextmanager
def served_app(app: Any) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread, until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.02)  # waiting for the server to listen, not measuring anything
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_event_stream_sends_progress_of_a_step_running_in_a_sandbox(
        waiting: Any, tmp_path: Path) -> None:  # noqa: F811 (the shared fixture)
    """The SSE endpoint delivers `progress` events of a command still running in the fake
    sandbox: the command waits for a file the test writes only after the client read the
    progress event."""
    runner, cycle, tokens = waiting
    app = client_for(runner).app
    svc = app.state.upgate  # type: ignore[attr-defined]
    with svc.lock:
        svc.running.add(cycle)  # as if this process were driving it: the stream stays open
    go = tmp_path / "go"
    results: list[Any] = []

    def step() -> None:
        with get_sandbox(FakeSandboxConfig()) as sandbox, \
                reporting(runner.deps.progress_board, cycle):
            results.append(sandbox.exec(
                'for i in 1 2; do echo "{\\"progress\\": \\"case\\", \\"done\\": $i, '
                '\\"total\\": 4, \\"detail\\": \\"<img src=x onerror=alert(1)>\\"}"; done; '
                'while [ ! -e "$GO" ]; do sleep 0.02; done', env={"GO": str(go)},
                timeout_s=60, on_output=reporter("critique").lines()))
        with svc.lock:
            svc.running.discard(cycle)

    progress: list[dict[str, Any]] = []
    with served_app(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        res = http.post("/api/login", json={"name": "bob", "token": tokens["bob"]})
        assert res.status_code == 200, res.text
        worker = threading.Thread(target=step)
        worker.start()
        with http.stream("GET", f"/api/cycles/{cycle}/events") as stream:
            kind = ""
            for line in stream.iter_lines():
                if not worker.is_alive():
                    break  # the command ended (at its timeout) without the event: fail below
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "progress":
                    progress.append(json.loads(line[5:]))
                    if progress[-1]["done"] == 2:
                        go.write_text("go")
                        break
        worker.join(timeout=60)
    assert results and results[0].ok, results
    assert progress[-1] == {
        "cycle_id": cycle, "node": "critique", "kind": "case", "done": 2, "total": 4,
        "detail": "<img src=x onerror=alert(1)>", "seq": progress[-1]["seq"]}


def test_a_cycle_publishes_case_progress_per_node_and_its_rows_go_when_it_stops(
        waiting: Any) -> None:  # noqa: F811 (the shared fixture)
    runner, _, _ = waiting
    board = runner.deps.progress_board
    seen = MemoryProgress()
    runner.deps.progress = FanOut([board, seen])
    cycle = "c20990101-000000-abcdef"
    board.publish(event("epoch", 1, cycle_id=cycle))  # left by a crashed run, say
    state = runner.start("carol", cycle_id=cycle)
    assert state["outcome"] == "awaiting_approval"
    cases = [e for e in seen.events if e.kind == "case"]
    assert cases and {e.cycle_id for e in cases} == {cycle}
    assert {e.node for e in cases} <= {"observe", "critique", "monitor"}
    assert "critique" in {e.node for e in cases}
    assert all(e.total and 1 <= e.done <= e.total for e in cases)
    assert board.since(cycle) == []
