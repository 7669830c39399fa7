#!/usr/bin/env bash
# Make sure bubblewrap (bwrap) is installed and can create its namespaces (idempotent).
#
# The local sandbox backend runs commands under bwrap, and its contract tests are part of
# the fast tier: without it they could only skip. Installs Debian's bubblewrap when bwrap
# is missing (needs root), then probes it the way the backend uses it.
set -euo pipefail

log() { printf '[setup_bwrap] %s\n' "$*"; }
die() { printf '[setup_bwrap] ERROR: %s\n' "$*" >&2; exit 1; }

if ! command -v bwrap >/dev/null; then
    [[ "$(id -u)" == 0 ]] || die "bwrap is missing and this is not root: apt-get install bubblewrap, then re-run."
    command -v apt-get >/dev/null || die "bwrap is missing and apt-get is not available: install bubblewrap, then re-run."
    log "installing bubblewrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }
fi

probe=(bwrap --unshare-all --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib
       --symlink usr/lib64 /lib64 -- /bin/true)
if ! err="$("${probe[@]}" 2>&1)"; then
    die "bwrap is installed but cannot create its namespaces here: $err"
fi
log "bubblewrap works ($(bwrap --version))"
