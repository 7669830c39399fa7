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

With --augment K (default 3) each case also yields K label-preserving rewrites, made by
deterministic code from the case itself (seeded by --seed): a greeting or a sign-off, a
plainer or more casual register, common synonyms, other numbers and names, a typo, lower
case. A model trained on one phrasing of each ticket learns the phrasing; trained on many,
it has to learn what the ticket is about.

Output: one JSON progress line per optimizer step ({"event": "step", "epoch", "step",
"steps", "loss"}) and per epoch ({"event": "epoch", "epoch", "epochs", ...}), the adapter
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

# The layers an adapter may change: attention alone, or attention and the MLP.
MODULES = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
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
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--augment", type=int, default=3, help="rewrites per case (0: none)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-examples", type=int, default=0, help="use the first N (0: all)")
    parser.add_argument("--max-length", type=int, default=512, help="longest chat in tokens")
    parser.add_argument("--modules", choices=sorted(MODULES), default="all",
                        help="layers the adapter changes: attention, or all linear layers")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--mix", type=int, default=1,
                        help="tickets per case joined from two cases of the same label")
    parser.add_argument("--top-layers", type=int, default=10,
                        help="adapt only the last N decoder layers (0: all); the backward "
                             "pass then stops at the first adapted layer")
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
        (0 <= args.augment <= 20, "--augment must lie in [0, 20]"),
        (args.max_length >= 8, "--max-length must be at least 8"),
        (0.0 <= args.weight_decay < 1.0, "--weight-decay must lie in [0, 1)"),
        (args.top_layers >= 0, "--top-layers must not be negative"),
        (0 <= args.mix <= 20, "--mix must lie in [0, 20]"),
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


# Label-preserving rewrites. Each is a plain function of (text, rng); none looks at the label.
GREETINGS = ("Hi,", "Hello,", "Hey there,", "Hi team,", "Good morning,", "Dear support,",
             "Quick question:", "Hello support team,", "Urgent:", "Hi again,")
SIGN_OFFS = ("Thanks!", "Thank you.", "Thanks in advance.", "Any help is appreciated.",
             "Regards, Chris", "Cheers", "Please get back to me soon.", "Best, Dana",
             "Thx", "Can you help?")
SYNONYMS: dict[str, tuple[str, ...]] = {
    "charged": ("billed", "debited"), "invoice": ("receipt", "bill"),
    "refund": ("reimbursement", "money back"), "subscription": ("plan", "membership"),
    "payment": ("transaction", "charge"), "credit card": ("card", "bank card"),
    "crashes": ("keeps crashing", "closes unexpectedly"), "error": ("an error", "error code"),
    "does not load": ("won't load", "fails to load"), "page": ("screen", "view"),
    "slow": ("sluggish", "laggy"), "blank screen": ("white page", "empty screen"),
    "log in": ("sign in", "login"), "password": ("login password", "passcode"),
    "account": ("profile", "user account"), "delete": ("remove", "close"),
    "locked": ("blocked", "locked out"), "email address": ("e-mail", "email"),
    "Please add": ("Could you add", "I'd love"), "It would be great if": ("It'd be nice if",
    "I wish"), "Could you add": ("Please build", "Can we get"), "would like": ("want",
    "would love"), "support": ("add support for", "offer"), "integration": ("connector",
    "sync"), "feature": ("option", "capability"), "Please": ("Pls", "Kindly"),
    "I need to": ("I have to", "I must"), "How do I": ("How can I", "What's the way to"),
    "does nothing": ("has no effect", "doesn't work"), "freezes": ("hangs", "locks up"),
}
COUNTS = ("7", "19", "42", "3", "60")
AMOUNTS = ("$15.00", "$64.90", "$199.00", "$4.50")
NAMES = ("Alex Kim", "Priya Shah", "Jonas Berg", "Chen Wei")


def _greet(text: str, rng: random.Random) -> str:
    head = text[:1].lower() + text[1:] if text[:2] not in ("I ", "I'") else text
    return f"{rng.choice(GREETINGS)} {head}"


def _sign_off(text: str, rng: random.Random) -> str:
    return f"{text} {rng.choice(SIGN_OFFS)}"


def _synonyms(text: str, rng: random.Random) -> str:
    for word in rng.sample(sorted(SYNONYMS), len(SYNONYMS)):
        if word in text:
            text = text.replace(word, rng.choice(SYNONYMS[word]), 1)
    return text


def _numbers_and_names(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i, word in enumerate(words):
        core = word.rstrip(".,?!")
        if core.isdigit():
            words[i] = rng.choice(COUNTS) + word[len(core):]
        elif core.startswith("$") and core[1:].replace(".", "").isdigit():
            words[i] = rng.choice(AMOUNTS) + word[len(core):]
    text = " ".join(words)
    for name in ("Maria Lopez", "Tom Becker", "Aiko Tanaka", "Sam Okafor"):
        text = text.replace(name, rng.choice(NAMES))
    return text


def _typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) > 5 and w.isalpha()]
    if long:
        i = rng.choice(long)
        j = rng.randrange(1, len(words[i]) - 2)
        w = words[i]
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def _casual(text: str, rng: random.Random) -> str:
    text = text.rstrip(".")
    return text.lower() if rng.random() < 0.5 else text[:1].lower() + text[1:]


def _one_sentence(text: str, rng: random.Random) -> str:
    parts = [p for p in text.replace("? ", "?|").replace(". ", ".|").split("|")
             if len(p.split()) >= 4]
    return rng.choice(parts) if len(parts) >= 2 else text


# In the order they apply: cut first, decorate last.
REWRITES = (_one_sentence, _synonyms, _numbers_and_names, _typo, _casual, _greet, _sign_off)


def _sentences(text: str) -> list[str]:
    return [p.strip() for p in text.replace("? ", "?|").replace(". ", ".|")
            .replace("! ", "!|").split("|") if p.strip()]


def mix(cases: list[tuple[str, str]], per_case: int, seed: int) -> list[tuple[str, str]]:
    """`per_case` new tickets per case: a sentence of it beside a sentence of another case
    with the same label, in either order (a ticket about one thing, worded two ways)."""
    rng = random.Random(seed + 1)
    by_label: dict[str, list[str]] = {}
    for text, label in cases:
        by_label.setdefault(label, []).append(text)
    out: list[tuple[str, str]] = []
    seen = {text for text, _ in cases}
    for text, label in cases:
        others = [t for t in by_label[label] if t != text]
        for _ in range(per_case if others else 0):
            parts = [rng.choice(_sentences(text)), rng.choice(_sentences(rng.choice(others)))]
            rng.shuffle(parts)
            new = " ".join(parts)
            if new not in seen:
                seen.add(new)
                out.append((new, label))
    return out


def augment(cases: list[tuple[str, str]], per_case: int, seed: int) -> list[tuple[str, str]]:
    """The cases, then `per_case` distinct rewrites of each (2-3 rewrites combined)."""
    rng = random.Random(seed)
    out = list(cases)
    seen = {text for text, _ in cases}
    for text, label in cases:
        made = 0
        for _attempt in range(per_case * 4):
            if made >= per_case:
                break
            new = text
            chosen = set(rng.sample(range(len(REWRITES)), rng.choice((2, 3))))
            for index in sorted(chosen):
                new = REWRITES[index](new, rng)
            new = " ".join(new.split())
            if new and new not in seen:
                seen.add(new)
                out.append((new, label))
                made += 1
    return out


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
    given = len(cases)
    cases = augment(cases, args.augment, args.seed) + mix(cases, args.mix, args.seed)

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
    layers = int(base.config.num_hidden_layers)
    if args.top_layers > layers:
        raise InputError(f"--top-layers {args.top_layers}: the model has {layers} layers")
    adapted = list(range(layers - args.top_layers, layers)) if args.top_layers else None
    lora = LoraConfig(
        layers_to_transform=adapted,
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(MODULES[args.modules]),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model: Any = get_peft_model(base, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    order_rng = random.Random(args.seed)
    bf16 = use_bf16(args.precision)

    final_loss = math.nan
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.monotonic()
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        total, steps = 0.0, 0
        per_epoch = math.ceil(len(order) / args.batch_size)
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
            emit({"event": "step", "epoch": epoch, "step": steps, "steps": per_epoch,
                  "loss": round(value, 6)})
        final_loss = total / steps
        emit(
            {
                "event": "epoch",
                "epoch": epoch,
                "epochs": args.epochs,
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
        "cases": given,
        "augmented": len(cases) - given,
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
            "augment": args.augment,
            "precision": "bf16" if bf16 else "fp32",
            "weight_decay": args.weight_decay,
            "top_layers": args.top_layers,
            "mix": args.mix,
            "target_modules": list(MODULES[args.modules]),
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
