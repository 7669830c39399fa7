#!/usr/bin/env bash
# `make test`: the set-up stages, then lint, the unit tier and the real tier, each timed,
# with a table of seconds per stage (and its budget) at the end, also when a stage fails.
#
#   scripts/test_stages.sh [STAGE ...]    default: every stage below, in order
#
# A set-up stage that fails stops the run (nothing after it could work); a failing check
# (lint, unit, real) does not stop the next check, so one run reports every failure. The
# exit status is the first failure's, or 0.
#
# Budgets: `make test` must fit CI's hard limit of 30 minutes on a fresh machine, set-up
# included. Each stage has a share (seconds, below; UPGATE_BUDGET_<STAGE>=S overrides one);
# a stage over its share is marked in the table, so a tier that grows is seen before the
# total runs out. UPGATE_STRICT_BUDGET=1 makes an overrun of the total a failure.
# The table is also written to .cache/logs/test-timings.txt.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAKE_CMD="${MAKE:-make}"
TABLE="$ROOT/.cache/logs/test-timings.txt"
TOTAL_BUDGET_S="${UPGATE_BUDGET_TOTAL:-1800}"

# name:make-target:kind:budget-seconds (a fresh machine on 2 cores; measured: venv 30,
# vllm 150, lint 15, unit 290-310, real 845; images about 180 and apt about a minute when
# nothing is cached). The shares add up to the 30 minutes: a new tier (browser, gateway, notification tests) gets its seconds by
# taking them from another, or its slow tests go to `make test-full` (marker `full`).
STAGES=(
    "venv:venv:setup:90"
    "bwrap:bwrap:setup:30"
    "docker:docker:setup:90"
    "images:images:setup:210"
    "vllm:vllm:setup:180"
    "browser:browser:setup:60"
    "lint:lint:check:30"
    "unit:test-unit:check:300"
    "real:test-real:check:810"
)

wanted=("$@")
names=() secs=() results=() budgets=()
first_rc=0
started_all=$SECONDS
t0=$SECONDS

budget_of() {
    local name="$1" default="$2" var
    var="UPGATE_BUDGET_$(tr '[:lower:]-' '[:upper:]_' <<<"$name")"
    echo "${!var:-$default}"
}

print_table() {
    local i total=$((SECONDS - started_all)) mark
    if ((${#secs[@]} < ${#names[@]})); then  # interrupted inside a stage
        secs+=("$((SECONDS - t0))") results+=("stopped")
    fi
    {
        printf '\n==> make test: seconds per stage\n'
        printf '  %-8s %-8s %8s %8s\n' stage result seconds budget
        for i in "${!names[@]}"; do
            mark=""
            if [[ "${secs[$i]}" != - ]] && ((secs[i] > budgets[i])); then mark="  over budget"; fi
            printf '  %-8s %-8s %8s %8s%s\n' "${names[$i]}" "${results[$i]}" "${secs[$i]}" \
                "${budgets[$i]}" "$mark"
        done
        mark=""
        if ((total > TOTAL_BUDGET_S)); then mark="  over the ${TOTAL_BUDGET_S}s limit"; fi
        printf '  %-8s %-8s %8s %8s%s\n' total "$( ((first_rc == 0)) && echo ok || echo FAILED)" \
            "$total" "$TOTAL_BUDGET_S" "$mark"
    } | tee "$TABLE.tmp"
    mkdir -p "$(dirname "$TABLE")" && mv -f "$TABLE.tmp" "$TABLE" 2>/dev/null || rm -f "$TABLE.tmp"
    if [[ "${UPGATE_STRICT_BUDGET:-}" == 1 ]] && ((total > TOTAL_BUDGET_S)) && ((first_rc == 0)); then
        echo "[test] ERROR: make test took ${total}s, over the ${TOTAL_BUDGET_S}s budget" >&2
        first_rc=1
    fi
}

# An interrupted run still shows what it got through.
on_exit() {
    trap - EXIT
    print_table
    exit "$first_rc"
}
trap on_exit EXIT
trap '((first_rc)) || first_rc=130; exit' INT TERM

stop_setup=0
for spec in "${STAGES[@]}"; do
    IFS=: read -r name target kind budget <<<"$spec"
    if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
    names+=("$name")
    budgets+=("$(budget_of "$name" "$budget")")
    if ((stop_setup)); then
        secs+=("-") results+=("not run")
        continue
    fi
    t0=$SECONDS
    "$MAKE_CMD" --no-print-directory -C "$ROOT" "$target"
    rc=$?
    secs+=("$((SECONDS - t0))")
    if ((rc == 0)); then
        results+=("ok")
    else
        results+=("FAILED")
        ((first_rc)) || first_rc=$rc
        if [[ "$kind" == setup ]]; then stop_setup=1; fi
    fi
done
