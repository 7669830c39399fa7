#!/usr/bin/env bash
# Run pytest from the project venv, for one test tier.
#
# Every tier `make test` runs should have tests, so "no tests collected" (pytest's exit 5)
# is a failure here, with a line that says so: a wrong path, marker or conftest must not
# pass as a green, empty tier. Every other exit code passes through unchanged.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${UPGATE_VENV:-$ROOT/.venv}/bin/python"

"$PY" -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "[pytest] ERROR: no tests collected for: $*; this tier should have tests" \
        "(check the path, the -m marker expression and the conftest)" >&2
fi
exit "$rc"
