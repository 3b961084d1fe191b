#!/usr/bin/env bash
# End-to-end and REST benchmarks of flamegrid through a real coordinator and real agents
# (issue 6, items 3 and 4): time from the first flame graph request to the first graph against
# the sampling window, REST throughput under `wrk -t2 -c32 -d10s`, and resident memory.
#
# Usage: benches/e2e.sh [driver flags]
#   --rounds N          rounds of the default 100 x 50 ms window (default 5)
#   --short-rounds N    rounds of the short 20 x 10 ms window (default 9)
#   --wrk-rounds N      alternating wrk rounds per URL (default 3)
#   --wrk-duration D    wrk's -d (default 10s)
#   --no-flink          skip the Apache Flink 2.3 reference column
# Writes the Markdown report to stdout and to benches/e2e-report.md. A full run takes about
# seven minutes after the build (two of them for Flink). Needs `wrk` (Debian: apt-get install
# wrk); the Flink column also needs Java 17, python3 with pip and PyPI (first run only: the
# 330 MB download is cached, see benches/flink-reference.sh).
#
# The Flink reference (issue 6, item 5) runs first, in the same invocation: flink-reference.sh
# starts a local Flink 2.3 cluster, measures the same time to first graph, the same wrk load
# and the JVMs' memory, stops the cluster, and hands its figures to the driver, which puts them
# beside flamegrid's with ratios. When Flink cannot run (offline, no Java) the report says why
# and falls back to the figures quoted in issue 6.
#
# Every step (the two release builds, then the driver benches/src/bin/e2e/, which starts the
# coordinators, agents, workloads and wrk) runs in its own process group (job control,
# `set -m`); the EXIT trap kills the group of the step in flight, so nothing this script
# started outlives it, even when it is interrupted or the driver itself is killed.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
cmdline="$*"
report="$root/benches/e2e-report.md"

step_group=""
last_group=""
tmp_report=$(mktemp)
cleanup() {
    if [[ -n "$step_group" ]]; then
        kill -TERM -- "-$step_group" 2>/dev/null || true
        sleep 0.2
        kill -KILL -- "-$step_group" 2>/dev/null || true
    fi
    # A killed driver cannot remove its scratch directories (named after its pid).
    if [[ -n "$last_group" ]]; then
        rm -rf "${TMPDIR:-/tmp}"/flamegrid-e2e-*-"$last_group"-*
    fi
    rm -f "$tmp_report" "${flink_json:-}" "${flink_log:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs "$@" as a background job in its own process group and waits for it, so that a signal
# reaches the trap at once and cleanup can kill the whole group.
run_step() {
    local status=0
    set -m
    "$@" &
    step_group=$!
    last_group=$step_group
    set +m
    wait "$step_group" || status=$?
    step_group=""
    return "$status"
}

if ! command -v wrk >/dev/null; then
    echo "e2e.sh: wrk is missing (Debian: apt-get install wrk)" >&2
    exit 1
fi

echo "e2e.sh: building release binaries" >&2
run_step cargo build --release -p flamegrid-coordinator -p flamegrid-agent >&2
run_step cargo build --release -p flamegrid-benches --bin flamegrid-e2e >&2

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin_dir="${target_dir:-$root/target}/release"

# Flags for flink-reference.sh (the same round counts and wrk duration); --no-flink is ours.
driver_args=()
flink_args=()
with_flink=1
while (($#)); do
    case "$1" in
        --no-flink) with_flink=0; shift ;;
        --rounds | --wrk-rounds | --wrk-duration)
            flink_args+=("$1" "${2:-}")
            driver_args+=("$1" "${2:-}")
            shift $(($# >= 2 ? 2 : 1)) ;;
        *) driver_args+=("$1"); shift ;;
    esac
done
flink_json=$(mktemp)
flink_log=$(mktemp)
flink_flags=()
if ((with_flink)); then
    echo "e2e.sh: Apache Flink 2.3 reference (benches/flink-reference.sh)" >&2
    flink_status=0
    run_step "$root/benches/flink-reference.sh" "${flink_args[@]}" --results "$flink_json" \
        2> >(tee "$flink_log" >&2) >/dev/null || flink_status=$?
    if [[ $flink_status -eq 0 ]]; then
        flink_flags=(--flink-results "$flink_json")
    else
        reason=$(grep '^flink-reference.sh: ' "$flink_log" | tail -1 | sed 's/^flink-reference.sh: //')
        echo "e2e.sh: the Flink reference failed (exit $flink_status); going on without it" >&2
        flink_flags=(--flink-note "benches/flink-reference.sh failed (exit $flink_status): ${reason:-see its output}")
    fi
else
    flink_flags=(--flink-note "skipped (benches/e2e.sh --no-flink)")
fi

status=0
run_step "$bin_dir/flamegrid-e2e" \
    --bin-dir "$bin_dir" \
    --report "$tmp_report" \
    --command "benches/e2e.sh $cmdline" \
    "${flink_flags[@]}" \
    ${driver_args[@]+"${driver_args[@]}"} >/dev/null || status=$?
if [[ $status -ne 0 ]]; then
    echo "e2e.sh: the driver failed (exit $status)" >&2
    exit "$status"
fi
cp "$tmp_report" "$report"
cat "$report"
echo "e2e.sh: report written to benches/e2e-report.md" >&2
