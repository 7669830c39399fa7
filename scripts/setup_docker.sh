#!/usr/bin/env bash
# Make sure a Docker engine answers (idempotent).
#
# If `docker info` already answers, nothing is done. Otherwise the engine is installed from
# Debian's packages (docker.io) when dockerd is missing, and started in the background with
# its log under .cache/logs/. Needs root for both steps.
#
# UPGATE_DOCKERD_ARGS (optional): extra dockerd arguments, word-split; with DOCKER_HOST it
# lets a second, private daemon be started (e.g. to test this script beside a running one).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="$ROOT/.cache/logs"
LOG="$LOG_DIR/dockerd.log"
PID_FILE="$ROOT/.cache/dockerd.pid"
WAIT_S="${UPGATE_DOCKER_WAIT_S:-60}"

log() { printf '[setup_docker] %s\n' "$*"; }
die() { printf '[setup_docker] ERROR: %s\n' "$*" >&2; exit 1; }
answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

if answers; then
    log "Docker engine answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))."
    exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
    die "no Docker engine answers and this is not root: start dockerd (or run this script as root)."
fi

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    command -v apt-get >/dev/null || die "dockerd is missing and apt-get is not available: install Docker, then re-run."
    log "installing docker.io (apt; about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q docker.io
fi

mkdir -p "$LOG_DIR"
pid=""
if [[ -f "$PID_FILE" ]]; then
    pid="$(cat "$PID_FILE")"
    # Our earlier dockerd may still be starting up: wait for it rather than start another.
    if ! kill -0 "$pid" 2>/dev/null || [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]]; then
        pid=""
    fi
fi
if [[ -z "$pid" ]]; then
    log "starting dockerd (log: $LOG)"
    printf -- '--- %s: setup_docker.sh starts dockerd\n' "$(date -Is)" >>"$LOG"
    # shellcheck disable=SC2086  # UPGATE_DOCKERD_ARGS is a word list by design
    setsid dockerd ${UPGATE_DOCKERD_ARGS:-} >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
else
    log "dockerd (pid $pid) is already starting; waiting for it"
fi

printf '[setup_docker] waiting for the engine'
for ((i = 0; i < WAIT_S; i++)); do
    if answers; then
        printf ' ready\n'
        log "Docker engine answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))."
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        printf '\n'
        tail -n 20 "$LOG" >&2 || true
        die "dockerd exited while starting; see $LOG"
    fi
    printf '.'
    sleep 1
done
printf '\n'
tail -n 20 "$LOG" >&2 || true
die "the Docker engine did not answer within ${WAIT_S}s; see $LOG"
