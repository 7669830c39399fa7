"""vLLM general plugin: LoRA on the CPU backend computed once per adapter, not per token.

vLLM's CPU LoRA ops (`vllm.lora.ops.torch_ops`, vLLM 0.32) gather a copy of an adapter's
weight matrix for every token of the batch (`lora_b_weights[lora_indices_tensor]`) before
an einsum, so each LoRA layer of a forward pass moves tokens x rank x hidden floats. On a
small CPU this made a model served under a LoRA alias answer about half as fast as the same
base model. The ops here compute the same products grouped by adapter: one matrix product
per adapter present in the batch (almost always one), the same output layout, the same
handling of the padding rows and of index -1 (Python indexing, as vLLM's own ops do).

It loads in every vLLM process through the `vllm.general_plugins` entry point and changes
nothing unless the platform is the CPU and the functions it replaces still have the
signatures it was checked against (otherwise it says so and leaves vLLM's ops in place).
UPGATE_VLLM_GROUPED_LORA=0 turns it off. tests/real/test_vllm_cpu_lora.py checks the
products against vLLM's own ops; benchmarks/bench_lora_ops.py times both.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from typing import Any

# A child of "vllm": its lines go where vLLM's own log lines go.
log = logging.getLogger("vllm.plugins.upgate_cpu_lora")

# The ops replaced, with the parameters of the vLLM versions they were checked against.
SIGNATURES = {
    "bgmv_expand": ["inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor",
                    "add_inputs"],
    "bgmv_shrink": ["inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor",
                    "scaling"],
    "bgmv_expand_slice": ["inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor",
                          "slice_offset", "slice_size", "add_inputs"],
}
PUNICA_MODULE = "vllm.lora.punica_wrapper.punica_cpu"


def grouped_products(inputs: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """Row t of the result is inputs[t] @ weights[indices[t]].T, one product per adapter."""
    import torch

    w = weights.squeeze(dim=1) if weights.dim() == 4 else weights
    x = inputs.to(dtype=dtype)
    if indices.numel() == 0:
        return x.new_zeros((0, w.shape[1]))
    first = int(indices[0])
    if bool((indices == first).all()):
        return x @ w[first].to(dtype=dtype).t()
    out = x.new_empty((x.shape[0], w.shape[1]))
    for index in torch.unique(indices).tolist():
        rows = (indices == index).nonzero(as_tuple=True)[0]
        out[rows] = x[rows] @ w[index].to(dtype=dtype).t()
    return out


def bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any,
                lora_indices_tensor: Any, add_inputs: bool = True) -> None:
    """vLLM's `bgmv_expand`, grouped by adapter."""
    outputs = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad their outputs differently.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_shrink(inputs: Any, lora_b_weights: Any, output_tensor: Any,
                lora_indices_tensor: Any, scaling: float = 1.0) -> None:
    """vLLM's `bgmv_shrink`, grouped by adapter."""
    outputs = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any,
                      lora_indices_tensor: Any, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    """vLLM's `bgmv_expand_slice`, grouped by adapter."""
    outputs = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


REPLACEMENTS = {"bgmv_expand": bgmv_expand, "bgmv_shrink": bgmv_shrink,
                "bgmv_expand_slice": bgmv_expand_slice}


def register() -> None:
    """Replace the CPU LoRA ops where it is safe to; a no-op anywhere else."""
    if os.environ.get("UPGATE_VLLM_GROUPED_LORA", "1") == "0":
        return
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        import vllm.lora.ops.torch_ops as package
        import vllm.lora.ops.torch_ops.lora_ops as ops
    except ImportError as exc:  # a vLLM without these modules: leave it as it is
        log.warning("upgate cpu-lora plugin: not applied (%s)", exc)
        return
    for name, params in SIGNATURES.items():
        original = getattr(ops, name, None)
        if original is REPLACEMENTS[name]:
            continue  # already applied in this process
        if original is None or list(inspect.signature(original).parameters) != params:
            log.warning("upgate cpu-lora plugin: not applied (vllm's %s changed)", name)
            return
    modules = [ops, package]
    punica = sys.modules.get(PUNICA_MODULE)
    if punica is not None:  # imported already: its names were bound to the old ops
        modules.append(punica)
    for module in modules:
        for name, new in REPLACEMENTS.items():
            if hasattr(module, name):
                setattr(module, name, new)
    log.info("upgate cpu-lora plugin: LoRA ops grouped by adapter (pid %d)", os.getpid())
