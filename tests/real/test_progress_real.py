"""Live progress on the real parts: a command in the real Docker sandbox prints progress
lines, and an SSE client of the real `upgate serve` process on loopback receives them while
the command still runs (it waits for a file the client writes only after it saw them)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from upgate.progress import MemoryProgress, reporter, reporting
from upgate.sandboxes.base import Mount
from upgate.sandboxes.config import DockerSandboxConfig, get_sandbox

from .conftest import VLLM_ROOT
from .serving import Served, served_cycles

pytestmark = pytest.mark.real

# Prints two progress lines, waits for the go file, then prints the last one.
SCRIPT = (
    'for i in 1 2; do echo "{\\"progress\\": \\"step\\", \\"done\\": $i, \\"total\\": 3, '
    '\\"detail\\": \\"<b>step</b> $i\\"}"; done; '
    "while [ ! -e /signal/go ]; do sleep 0.05; done; "
    'echo \'{"progress": "step", "done": 3, "total": 3, "detail": "last"}\''
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[Served]:
    # The service answers no question here: the model endpoint is only named in its config.
    with served_cycles(VLLM_ROOT, tmp_path_factory.mktemp("progress"), 1) as s:
        yield s


def test_a_docker_commands_progress_reaches_an_sse_client_while_it_runs(
        served: Served, tmp_path: Path) -> None:
    [cycle] = served.cycles
    board = served.runner().deps.progress_board  # the state database the service reads
    client = httpx.Client(base_url=served.url, timeout=120)
    assert client.post("/api/login", json={"name": "bob", "token": served.tokens["bob"]}
                       ).status_code == 200
    signal = tmp_path / "signal"
    signal.mkdir()
    signal.chmod(0o777)
    seen: list[dict[str, Any]] = []
    command_done = threading.Event()

    def listen() -> None:
        with client.stream("GET", f"/api/cycles/{cycle}/events") as stream:
            kind = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "progress":
                    seen.append(json.loads(line[5:]))
                    if seen[-1]["done"] == 2:
                        (signal / "go").write_text("go")
                    if seen[-1]["done"] == 3:
                        return
                if command_done.is_set() and not (signal / "go").exists():
                    return  # the command ended without the client's file: fail below

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    config = DockerSandboxConfig(default_timeout_s=120)
    with get_sandbox(config, [Mount(source=signal, target="/signal")]) as sandbox, \
            reporting(board, cycle):
        result = sandbox.exec(SCRIPT, timeout_s=120, on_output=reporter("implement").lines())
    command_done.set()
    listener.join(timeout=60)
    assert result.ok, result.summary()
    assert not listener.is_alive()
    assert [e["done"] for e in seen][-2:] == [2, 3]
    assert seen[0] | {"seq": 0} == {"cycle_id": cycle, "node": "implement", "kind": "step",
                                    "done": seen[0]["done"], "total": 3,
                                    "detail": f"<b>step</b> {seen[0]['done']}", "seq": 0}
    board.prune(cycle)


REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("UPGATE_VLLM_MODEL_DIR",
                                str(REPO / ".cache" / "models" / "smollm2-135m-instruct")))


def test_lora_training_in_the_train_sandbox_reports_epochs_steps_and_cpu(
        docker_engine: None, tmp_path: Path) -> None:
    """The recipe's training script in the real training image: its step and epoch lines
    become progress events as it prints them, and the command's CPU seconds are counted."""
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"no model at {MODEL_DIR}; run scripts/prepare_model.py --out {MODEL_DIR}")
    job = tmp_path / "job"
    job.mkdir()
    shutil.copy(REPO / "agents" / "recipes" / "lora_train.py", job / "lora_train.py")
    shutil.copy(REPO / "examples" / "suites" / "ticket-triage" / "visible.jsonl",
                job / "train.jsonl")
    shutil.copy(REPO / "examples" / "ticket-triage" / "triage" / "prompt.txt",
                job / "prompt.txt")
    sink = MemoryProgress()
    config = DockerSandboxConfig(image_kind="train", memory="6g", cpus=2.0, tmp_size="1g",
                                 workspace_size="1g")
    with get_sandbox(config, [Mount(source=MODEL_DIR, target="/model")]) as trainer, \
            reporting(sink, "c-train"):
        trainer.copy_in(job)
        result = trainer.exec(
            ["python3", "lora_train.py", "--model", "/model", "--train", "train.jsonl",
             "--prompt", "prompt.txt", "--labels", "billing,bug,account,feature",
             "--max-examples", "4", "--augment", "1", "--epochs", "2", "--batch-size", "4",
             "--rank", "4", "--alpha", "8", "--out", "out"],
            timeout_s=900, on_output=reporter("implement").lines())
    assert result.ok, result.summary(3000)
    got = [(e.kind, e.done, e.total) for e in sink.events]
    # 4 cases and one rewrite each: 8 examples, 2 steps of 4 per epoch, in order.
    steps = [(k, d, t) for k, d, t in got if k == "step"]
    assert steps == [("step", 1, 2), ("step", 2, 2)] * 2
    assert [g for g in got if g[0] == "epoch"] == [("epoch", 1, 2), ("epoch", 2, 2)]
    assert got.index(("epoch", 1, 2)) == 2  # epoch 1 ended after its 2 steps, before epoch 2's
    assert {e.node for e in sink.events} == {"implement"}
    assert result.cpu_s is not None and result.cpu_s > 0
    print(f"training: {result.duration_s:.1f} s wall, {result.cpu_s:.1f} s CPU")

