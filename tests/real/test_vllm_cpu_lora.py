"""The cpu-lora vLLM plugin computes what vLLM's own CPU LoRA ops compute, and is loaded.

Runs in the vLLM venv (its torch and vLLM): vLLM's original ops, imported before the
plugin registers, against the plugin's grouped ones on batches shaped like serving's, with
one adapter, several, index -1, 4-D weights, a one-row broadcast and slices; the plugin
is what vLLM's plugin loader installs (and UPGATE_VLLM_GROUPED_LORA=0 keeps it out); the
running server's engine says it loaded it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("UPGATE_VLLM_VENV", REPO / ".cache" / "vllm-venv"))
LOG = REPO / ".cache" / "logs" / "vllm-server.log"

COMPARE = r'''
import torch
import vllm.lora.ops.torch_ops.lora_ops as ops
originals = {n: getattr(ops, n) for n in ("bgmv_expand", "bgmv_shrink", "bgmv_expand_slice")}
import upgate_vllm_cpu_lora as plugin

torch.manual_seed(0)
checked = 0
for tokens, n_loras, rank, hidden, indices_kind, four_d in [
    (424, 5, 16, 576, "one", False), (424, 5, 16, 576, "mixed", False),
    (37, 4, 8, 192, "minus_one", True), (1, 3, 16, 64, "mixed", False),
    (64, 2, 16, 1536, "mixed", True), (0, 2, 8, 32, "one", False),
]:
    if indices_kind == "one":
        idx = torch.full((tokens,), 2, dtype=torch.long)
    elif indices_kind == "mixed":
        idx = torch.randint(0, n_loras, (tokens,))
    else:
        idx = torch.randint(-1, n_loras, (tokens,))
    for op in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        if op == "bgmv_shrink":
            w = torch.randn(n_loras, rank, hidden)
            x = torch.randn(tokens, hidden)
            out_shape = (tokens, rank)
        else:
            w = torch.randn(n_loras, hidden, rank)
            x = torch.randn(tokens, rank)
            out_shape = (tokens, hidden + 8)  # model output padded wider than the adapter's
        if four_d:
            w = w.unsqueeze(1)
        for add in (True, False):
            base = torch.randn(*out_shape)
            a, b = base.clone(), base.clone()
            if op == "bgmv_shrink":
                originals[op](x, w, a, idx, 0.5)
                getattr(plugin, op)(x, w, b, idx, 0.5)
            elif op == "bgmv_expand":
                originals[op](x, w, a, idx, add)
                getattr(plugin, op)(x, w, b, idx, add)
            else:
                originals[op](x, w, a, idx, 4, hidden, add)
                getattr(plugin, op)(x, w, b, idx, 4, hidden, add)
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-5), (op, tokens, indices_kind, add)
            checked += 1
# The one-row broadcast of bgmv_expand (one sampled row into a wider output).
w = torch.randn(3, 64, 16); x = torch.randn(1, 16); idx = torch.tensor([1])
a, b = torch.zeros(4, 64), torch.zeros(4, 64)
originals["bgmv_expand"](x, w, a, idx, True); plugin.bgmv_expand(x, w, b, idx, True)
assert torch.allclose(a, b, atol=1e-5)
print("checked", checked + 1)
'''

REGISTERS = r'''
import vllm.lora.ops.torch_ops as package
import vllm.lora.ops.torch_ops.lora_ops as ops
from vllm.plugins import load_general_plugins
import upgate_vllm_cpu_lora as plugin
load_general_plugins()
assert ops.bgmv_shrink is plugin.bgmv_shrink and package.bgmv_expand is plugin.bgmv_expand
import vllm.lora.punica_wrapper.punica_cpu as punica
assert punica.bgmv_expand_slice is plugin.bgmv_expand_slice
print("registered")
'''


def _python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no vLLM venv at {VENV}; run scripts/setup_vllm.sh")
    return str(python)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_python(), "-c", code], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", **env})


def test_grouped_ops_compute_what_vllms_ops_compute() -> None:
    done = _run(COMPARE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked 37" in done.stdout


def test_the_plugin_replaces_the_ops_through_vllms_plugin_loader_and_can_be_turned_off() -> None:
    done = _run(REGISTERS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered" in done.stdout
    off = _run(REGISTERS, UPGATE_VLLM_GROUPED_LORA="0")
    assert off.returncode != 0 and "AssertionError" in off.stderr


def test_the_served_engine_loaded_the_plugin(vllm_root: str) -> None:
    """The running server (scripts/vllm_server.sh) says its engine uses the grouped ops."""
    text = LOG.read_text(errors="replace") if LOG.exists() else ""
    started = text.rfind("vllm_server.sh starts vLLM")
    assert started >= 0, f"no server start in {LOG}"
    assert "upgate cpu-lora plugin: LoRA ops grouped by adapter" in text[started:]
