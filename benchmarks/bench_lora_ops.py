"""LoRA ops on the CPU: vLLM's per-token gather against the cpu-lora plugin's grouped ops.

Times one LoRA layer pass (shrink then expand, as vLLM's CPU punica wrapper calls them) on
batches shaped like the example's serving (SmolLM2-135M: hidden 576; rank 16; 4 adapter
slots), with every token on one adapter (the usual case: a batch for one alias) and with
tokens spread over several, and prints the ratio grouped / vLLM's in the same run.
Runs with the vLLM venv's python (it needs vLLM and torch):

    .cache/vllm-venv/bin/python benchmarks/bench_lora_ops.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import vllm.lora.ops.torch_ops.lora_ops as ops

ORIGINAL = {name: getattr(ops, name) for name in ("bgmv_shrink", "bgmv_expand")}
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vllm_plugins" / "cpu_lora"))
import upgate_vllm_cpu_lora as plugin  # noqa: E402


def layer(shrink, expand, x, a, b, idx, hidden: int, rank: int) -> None:
    """One LoRA layer: x @ A.T into the rank buffer, then @ B.T added to the output."""
    buffer = torch.zeros(x.shape[0], rank)
    out = torch.zeros(x.shape[0], hidden)
    shrink(x, a, buffer, idx, 1.0)
    expand(buffer, b, out, idx, True)


def timed(repeat: int, *call) -> float:
    layer(*call)  # warm-up
    started = time.perf_counter()
    for _ in range(repeat):
        layer(*call)
    return (time.perf_counter() - started) / repeat


def main() -> int:
    """Time both on each batch shape; print a table with ratios."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    hidden, rank, slots = 576, 16, 4
    a = torch.randn(slots, 1, rank, hidden)
    b = torch.randn(slots, 1, hidden, rank)
    print(f"torch threads: {torch.get_num_threads()}; one LoRA layer (shrink + expand), "
          f"hidden {hidden}, rank {rank}, {slots} adapter slots")
    print(f"  {'batch':<34}{'vLLM ms':>9}{'grouped ms':>12}{'ratio':>8}")
    for tokens, spread in ((8, 1), (424, 1), (424, 2), (2048, 1), (2048, 4)):
        idx = torch.randint(0, spread, (tokens,)) if spread > 1 else torch.zeros(tokens,
                                                                                dtype=torch.long)
        x = torch.randn(tokens, hidden)
        base = timed(args.repeat, ORIGINAL["bgmv_shrink"], ORIGINAL["bgmv_expand"],
                     x, a, b, idx, hidden, rank)
        mine = timed(args.repeat, plugin.bgmv_shrink, plugin.bgmv_expand,
                     x, a, b, idx, hidden, rank)
        label = f"{tokens} tokens on {spread} adapter(s)"
        print(f"  {label:<34}{base * 1e3:>9.2f}{mine * 1e3:>12.2f}{mine / base:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
