#!/usr/bin/env bash
# Run upgate's gateway: the one OpenAI-compatible address clients call (`upgate gateway serve`).
#
#   scripts/gateway.sh start    start the gateway in the background (idempotent)
#   scripts/gateway.sh wait     poll GET /health until it answers (UPGATE_GATEWAY_WAIT_S, 60 s)
#   scripts/gateway.sh status   say whether it answers (exit 0) or not (exit 1)
#   scripts/gateway.sh stop     stop the gateway this script started
#
# Port: UPGATE_GATEWAY_PORT (8012). Route table and default upstream: UPGATE_GATEWAY_DB and
# UPGATE_GATEWAY_UPSTREAM when set; else from upgate.toml ($UPGATE_CONFIG or ./upgate.toml)
# when there is one ([gateway] db, [serving] base_url); else .cache/gateway.db and the local
# vLLM server ($UPGATE_VLLM_URL, http://127.0.0.1:8011/v1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${UPGATE_PYTHON:-$ROOT/.venv/bin/python}"
HOST="127.0.0.1"
PORT="${UPGATE_GATEWAY_PORT:-8012}"
URL="http://$HOST:$PORT"
PID_FILE="$ROOT/.cache/gateway-$PORT.pid"
LOG_DIR="$ROOT/.cache/logs"
LOG="$LOG_DIR/gateway.log"
WAIT_S="${UPGATE_GATEWAY_WAIT_S:-60}"

log() { printf '[gateway] %s\n' "$*"; }
die() { printf '[gateway] ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/service_lib.sh
source "$ROOT/scripts/service_lib.sh"

healthy() { http_ok "$URL/health"; }

# The pid of the process this script started, if it still runs; empty otherwise.
gateway_pid() { running_pid "$PID_FILE" 'gateway serve'; }

cmd_start() {
    if healthy; then
        log "already answering at $URL; nothing to do"
        return 0
    fi
    local pid
    pid="$(gateway_pid)"
    if [[ -n "$pid" ]]; then
        log "already starting (pid $pid); 'scripts/gateway.sh wait' waits for it"
        return 0
    fi
    [[ -x "$PY" ]] || die "no project venv at $ROOT/.venv; run 'make venv' first."
    local args=(gateway serve --host "$HOST" --port "$PORT")
    local db="${UPGATE_GATEWAY_DB:-}" upstream="${UPGATE_GATEWAY_UPSTREAM:-}"
    if [[ -z "${UPGATE_CONFIG:-}" && ! -f "$PWD/upgate.toml" ]]; then
        db="${db:-$ROOT/.cache/gateway.db}"
        upstream="${upstream:-${UPGATE_VLLM_URL:-http://127.0.0.1:8011/v1}}"
    fi
    [[ -n "$db" ]] && args+=(--db "$db")
    [[ -n "$upstream" ]] && args+=(--upstream "$upstream")

    mkdir -p "$LOG_DIR"
    printf -- '--- %s: gateway.sh starts the gateway on %s\n' "$(date -Is)" "$URL" >>"$LOG"
    log "starting the gateway on $URL (log: $LOG)"
    setsid "$PY" -m upgate.cli "${args[@]}" >>"$LOG" 2>&1 </dev/null &
    echo "$!" >"$PID_FILE"
    log "started (pid $!)"
}

cmd_wait() {
    local start=$SECONDS pid
    printf '[gateway] waiting for %s/health ' "$URL"
    while ((SECONDS - start < WAIT_S)); do
        if healthy; then
            printf ' ready after %ss\n' "$((SECONDS - start))"
            return 0
        fi
        pid="$(gateway_pid)"
        if [[ -z "$pid" ]]; then
            printf '\n'
            tail -n 20 "$LOG" >&2 2>/dev/null || true
            die "no gateway is running (it exited, or was never started); see $LOG"
        fi
        printf '.'
        sleep 1
    done
    printf '\n'
    tail -n 20 "$LOG" >&2 2>/dev/null || true
    die "the gateway did not answer within ${WAIT_S}s; see $LOG"
}

cmd_status() {
    local pid
    pid="$(gateway_pid)"
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

cmd_stop() {
    local pid
    pid="$(gateway_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PID_FILE"
        if healthy; then
            log "a gateway answers at $URL but this script did not start it; leaving it alone"
        else
            log "not running"
        fi
        return 0
    fi
    log "stopping the gateway (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    wait) cmd_wait ;;
    *) echo "usage: $0 start|stop|status|wait" >&2; exit 2 ;;
esac
