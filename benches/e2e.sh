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
# Writes the Markdown report to stdout and to benches/e2e-report.md. A full run takes about
# five minutes after the build. Needs `wrk` (Debian: apt-get install wrk).
#
# Every step (the two release builds, then the driver benches/src/bin/e2e.rs, which starts the
# coordinators, agents, workloads and wrk) runs in its own process group (job control,
# `set -m`); the EXIT trap kills the group of the step in flight, so nothing this script
# started outlives it, even when it is interrupted or the driver itself is killed.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
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
    rm -f "$tmp_report"
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

status=0
run_step "$bin_dir/flamegrid-e2e" \
    --bin-dir "$bin_dir" \
    --report "$tmp_report" \
    --command "benches/e2e.sh $*" \
    "$@" >/dev/null || status=$?
if [[ $status -ne 0 ]]; then
    echo "e2e.sh: the driver failed (exit $status)" >&2
    exit "$status"
fi
cp "$tmp_report" "$report"
cat "$report"
echo "e2e.sh: report written to benches/e2e-report.md" >&2
