#!/usr/bin/env bash
# Build the local base image for upgate's sandboxes without any container registry.
#
# Idempotent: does nothing when the image already exists. Otherwise bootstraps a minimal
# Debian bookworm (python3, python3-venv, git) with debootstrap, from the mirror this
# machine's apt sources already use, and imports it into Docker.
#
# Where a registry is reachable you can skip this and build from a public base instead:
#   python -m upgate.sandboxes.images build --base-image python:3.11-slim-bookworm
set -euo pipefail

IMAGE="${UPGATE_BASE_IMAGE:-upgate-sandbox-base:bookworm}"
SUITE="bookworm"
PACKAGES="python3,python3-venv,git,ca-certificates"

if ! docker info >/dev/null 2>&1; then
    echo "error: no Docker engine answers; start one (e.g. 'dockerd &') and rerun" >&2
    exit 1
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE already exists; nothing to do"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: debootstrap is missing; install it (apt-get install debootstrap) and rerun" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

# The Debian mirror this machine already uses: the URIs of the deb822 entry whose suites
# include bookworm (not the security archive), else the first matching sources.list line.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk -v suite="$SUITE" '
            BEGIN { RS=""; FS="\n" }
            {
                uris=""; suites=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                }
                n = split(suites, s, /[ \t]+/)
                for (j = 1; j <= n; j++) {
                    if (s[j] == suite && uris !~ /security/) {
                        split(uris, u, /[ \t]+/); print u[1]; exit
                    }
                }
            }' "$f"
    done
    if [ -e /etc/apt/sources.list ]; then
        awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /security/ {
            for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == suite) { print $i; exit } }
        }' /etc/apt/sources.list
    fi
}

MIRROR="${UPGATE_DEBIAN_MIRROR:-$(find_mirror | head -n 1)}"
if [ -z "$MIRROR" ]; then
    echo "error: no Debian $SUITE mirror found in the apt sources; set UPGATE_DEBIAN_MIRROR" >&2
    exit 1
fi

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT

echo "bootstrapping $SUITE into a temporary folder (about a minute)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"
# Shrink the image: package lists and caches are not needed at run time.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE"
echo "built $IMAGE"
