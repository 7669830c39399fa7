"""Fine-tune a LoRA adapter that answers a label for a text, formatted as the target asks.

A standalone script: it runs inside the training sandbox (no network, upgate not installed),
so it uses only the standard library, torch, transformers and peft. Example:

    python lora_train.py --model /model --train visible.jsonl --prompt prompt.txt \
        --labels billing,bug,account,feature --out adapter

Each training case is a JSON line with "input" and "expected". It becomes one chat: the
system prompt (the file's text, stripped), the input as the user message, and the label as
the assistant's reply. The prompt side is rendered by the model's chat template with the
generation prompt and tokenized without added special tokens, exactly as vLLM renders a chat
request; the reply is the label's tokens and the end-of-turn token, which is what vLLM's
guided choice makes the model generate. Only the reply tokens carry loss.

Output: one JSON line per epoch on stdout ({"event": "epoch", ...}), the adapter
(adapter_config.json, adapter_model.safetensors) in --out, then one summary JSON line
({"event": "done", ...}). Exit status 2 for bad input, 1 when training diverges.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
IGNORE_INDEX = -100


class InputError(Exception):
    """The training input is unusable; the message says what to fix."""


@dataclass(frozen=True)
class Example:
    """One tokenized chat: prompt ids, then answer ids that carry the loss."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description="Train a LoRA adapter for label answers.")
    parser.add_argument("--model", type=Path, required=True, help="base model folder (read-only)")
    parser.add_argument("--train", type=Path, required=True, help="JSONL cases: input, expected")
    parser.add_argument("--prompt", type=Path, required=True, help="system prompt text file")
    parser.add_argument("--labels", required=True, help="comma-separated allowed labels")
    parser.add_argument("--out", type=Path, required=True, help="folder for the adapter")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-examples", type=int, default=0, help="use the first N (0: all)")
    parser.add_argument("--max-length", type=int, default=512, help="longest chat in tokens")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="compute precision; the adapter is saved in float32 either way",
    )
    args = parser.parse_args(argv)
    checks = [
        (args.rank >= 1, "--rank must be at least 1"),
        (args.alpha > 0, "--alpha must be positive"),
        (0.0 <= args.dropout < 1.0, "--dropout must lie in [0, 1)"),
        (args.epochs >= 1, "--epochs must be at least 1"),
        (0 < args.lr < 1, "--lr must lie in (0, 1)"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.max_examples >= 0, "--max-examples must not be negative"),
        (args.max_length >= 8, "--max-length must be at least 8"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def parse_labels(text: str) -> list[str]:
    """Split and check the comma-separated label list."""
    labels = [label.strip() for label in text.split(",")]
    if len(labels) < 2 or any(not label for label in labels) or len(set(labels)) != len(labels):
        raise InputError(f"--labels {text!r}: give at least two distinct, non-empty labels")
    return labels


def read_cases(path: Path, labels: list[str], limit: int) -> list[tuple[str, str]]:
    """Read (input, expected) pairs from a JSONL file and check every label."""
    cases: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path.name} line {number} is not JSON: {exc}") from exc
        if not isinstance(case, dict):
            raise InputError(f"{path.name} line {number} must be a JSON object")
        text, expected = case.get("input"), case.get("expected")
        if not isinstance(text, str) or not text:
            raise InputError(f"{path.name} line {number}: 'input' must be a non-empty string")
        if expected not in labels:
            raise InputError(
                f"{path.name} line {number}: 'expected' {expected!r} is not in {labels}"
            )
        cases.append((text, str(expected)))
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise InputError(f"{path.name} holds no cases; give JSON lines with input and expected")
    return cases


def read_prompt(path: Path) -> str:
    """Read the system prompt as the target does: the file's text, stripped."""
    prompt = path.read_text(encoding="utf-8").strip()
    if not prompt:
        raise InputError(f"{path.name} is empty; give the target's system prompt")
    return prompt


def end_of_turn_id(tokenizer: Any) -> int:
    """The id of the token that ends an assistant turn (vLLM stops generating on it)."""
    token_id = tokenizer.eos_token_id
    if not isinstance(token_id, int):
        raise InputError("the tokenizer has no end-of-sequence token; use an instruct model")
    return token_id


def encode(tokenizer: Any, prompt: str, text: str, label: str) -> Example:
    """Tokenize one chat as vLLM would serve it, the label as the reply."""
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(rendered, str):
        raise InputError("the model's chat template did not render text; check the model folder")
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    return Example(
        prompt_ids=tuple(int(i) for i in prompt_ids),
        answer_ids=(*(int(i) for i in answer_ids), end_of_turn_id(tokenizer)),
    )


def check_template(tokenizer: Any, prompt: str, label: str) -> None:
    """Refuse a chat template whose assistant turn is not generation prompt + reply + end."""
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "x"}]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": label}], tokenize=False
    )
    eos = tokenizer.eos_token
    rendered = isinstance(full, str) and isinstance(head, str) and isinstance(eos, str)
    if not (rendered and full.startswith(head + label + eos)):
        raise InputError(
            "the chat template does not render a reply as generation prompt + text + "
            f"{eos!r}; this script cannot match how the model is served"
        )


def collate(batch: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; labels keep only the answer tokens."""
    import torch

    width = max(len(e.prompt_ids) + len(e.answer_ids) for e in batch)
    ids, mask, labels = [], [], []
    for e in batch:
        seq = list(e.prompt_ids + e.answer_ids)
        pad = width - len(seq)
        ids.append(seq + [pad_id] * pad)
        mask.append([1] * len(seq) + [0] * pad)
        labels.append(
            [IGNORE_INDEX] * len(e.prompt_ids) + list(e.answer_ids) + [IGNORE_INDEX] * pad
        )
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }


def shared_prefix(examples: list[Example]) -> tuple[int, ...]:
    """The prompt tokens every example starts with (the system prompt's chat turn).

    At least one prompt token stays out of it: the last one predicts the first answer token.
    """
    limit = min(len(e.prompt_ids) for e in examples) - 1
    first = examples[0].prompt_ids
    length = 0
    while length < limit and all(e.prompt_ids[length] == first[length] for e in examples):
        length += 1
    return first[:length]


def answer_loss(model: Any, batch: dict[str, Any], prefix: tuple[int, ...]) -> Any:
    """Mean cross-entropy over the answer tokens (position t predicts token t+1).

    The batch holds each chat without the shared prefix. The prefix runs once and its keys
    and values are repeated for every row: causal attention makes that exactly the per-chat
    result, for about a third of the compute. The output layer runs only on the positions
    that predict an answer token (with a 49k-token vocabulary, the rest would be waste).
    """
    import torch

    causal = model.get_base_model()
    decoder = causal.get_decoder()
    rows, width = batch["input_ids"].shape
    cache = None
    mask = batch["attention_mask"]
    positions = torch.arange(len(prefix), len(prefix) + width).unsqueeze(0).expand(rows, -1)
    if prefix:
        cache = decoder(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        cache.batch_repeat_interleave(rows)
        mask = torch.cat([torch.ones(rows, len(prefix), dtype=mask.dtype), mask], dim=1)
    hidden = decoder(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal.get_output_embeddings()(hidden[:, :-1, :][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def use_bf16(precision: str) -> bool:
    """Whether to compute in bfloat16: asked for, or "auto" on a CPU with native bf16."""
    if precision != "auto":
        return precision == "bf16"
    import torch

    try:
        # bf16 is faster where the CPU has it (AMX, AVX512-BF16) and far slower where not
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def emit(event: dict[str, Any]) -> None:
    """Print one JSON line and flush, so a reader sees progress as it happens."""
    print(json.dumps(event, sort_keys=True), flush=True)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train the adapter, save it, and return the summary."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    labels = parse_labels(args.labels)
    prompt = read_prompt(args.prompt)
    cases = read_cases(args.train, labels, args.max_examples)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer: Any = AutoTokenizer.from_pretrained(str(args.model))
    check_template(tokenizer, prompt, labels[0])
    examples = [encode(tokenizer, prompt, text, label) for text, label in cases]
    fits = [len(e.prompt_ids) + len(e.answer_ids) <= args.max_length for e in examples]
    too_long = fits.count(False)
    examples = [e for e, ok in zip(examples, fits, strict=True) if ok]
    if not examples:
        raise InputError(f"every case is longer than --max-length {args.max_length} tokens")
    prefix = shared_prefix(examples)
    suffixes = [Example(e.prompt_ids[len(prefix) :], e.answer_ids) for e in examples]
    pad_id = tokenizer.pad_token_id
    if not isinstance(pad_id, int):
        pad_id = end_of_turn_id(tokenizer)

    base: Any = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(TARGET_MODULES),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model: Any = get_peft_model(base, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    order_rng = random.Random(args.seed)
    bf16 = use_bf16(args.precision)

    final_loss = math.nan
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.monotonic()
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        total, steps = 0.0, 0
        for start in range(0, len(order), args.batch_size):
            batch = collate([suffixes[i] for i in order[start : start + args.batch_size]], pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = answer_loss(model, batch, prefix)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {epoch}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value
            steps += 1
        final_loss = total / steps
        emit(
            {
                "event": "epoch",
                "epoch": epoch,
                "loss": round(final_loss, 6),
                "steps": steps,
                "seconds": round(time.monotonic() - epoch_start, 2),
            }
        )

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    # peft also writes a model-card README; the adapter is the two files vLLM reads
    (args.out / "README.md").unlink(missing_ok=True)
    return {
        "event": "done",
        "adapter_dir": str(args.out),
        "files": sorted(p.name for p in args.out.iterdir()),
        "examples": len(examples),
        "skipped_too_long": too_long,
        "shared_prefix_tokens": len(prefix),
        "epochs": args.epochs,
        "final_loss": round(final_loss, 6),
        "train_sha256": hashlib.sha256(args.train.read_bytes()).hexdigest(),
        "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "hyperparameters": {
            "rank": args.rank,
            "alpha": args.alpha,
            "dropout": args.dropout,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "precision": "bf16" if bf16 else "fp32",
            "target_modules": list(TARGET_MODULES),
        },
        "seconds": round(time.monotonic() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    # Before torch loads OpenMP: its default busy-waiting turns each of the thousands of
    # parallel regions in a step into a wait for a descheduled thread whenever another
    # process shares the cores (measured here: 10x slower steps). Passive waiting does not.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        summary = train(args)
    except (InputError, OSError) as exc:
        print(f"lora_train: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"lora_train: {exc}", file=sys.stderr)
        return 1
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
