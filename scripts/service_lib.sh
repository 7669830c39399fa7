# shellcheck shell=bash
# Helpers shared by the scripts that run upgate's local services in the background
# (scripts/vllm_server.sh, scripts/gateway.sh). Sourced, not run.

# Whether GET $1 answers 200 within 3 s. python3 rather than curl: curl is not on every
# fresh machine, python3 is.
http_ok() {
    python3 - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

# The pid recorded in pid file $1, if that process still runs and its command line
# contains $2 (so a reused pid is never taken for the service); empty otherwise.
running_pid() {
    [[ -f "$1" ]] || return 0
    local pid
    pid="$(cat "$1")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"; then
        echo "$pid"
    fi
}
