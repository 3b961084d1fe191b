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
# four minutes after the build. Needs `wrk` (Debian: apt-get install wrk).
#
# The driver (benches/src/bin/e2e.rs) starts every process itself and kills them when it
# ends. It runs here in its own process group (job control, `set -m`), and the EXIT trap
# kills that whole group, so the coordinator, agents, workloads and wrk are gone even if the
# driver is killed mid-run.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
report="$root/benches/e2e-report.md"

if ! command -v wrk >/dev/null; then
    echo "e2e.sh: wrk is missing (Debian: apt-get install wrk)" >&2
    exit 1
fi

echo "e2e.sh: building release binaries" >&2
cargo build --release -p flamegrid-coordinator -p flamegrid-agent >&2
cargo build --release -p flamegrid-benches --bin flamegrid-e2e >&2

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin_dir="${target_dir:-$root/target}/release"

driver_group=""
tmp_report=$(mktemp)
cleanup() {
    if [[ -n "$driver_group" ]]; then
        # The driver leads its own process group: everything it started is in it.
        kill -TERM -- "-$driver_group" 2>/dev/null || true
        sleep 0.2
        kill -KILL -- "-$driver_group" 2>/dev/null || true
    fi
    rm -f "$tmp_report"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set -m # background jobs get their own process group, whose id is $!
"$bin_dir/flamegrid-e2e" \
    --bin-dir "$bin_dir" \
    --report "$tmp_report" \
    --command "benches/e2e.sh $*" \
    "$@" >/dev/null &
driver_group=$!
set +m
status=0
wait "$driver_group" || status=$?
if [[ $status -ne 0 ]]; then
    echo "e2e.sh: the driver failed (exit $status)" >&2
    exit "$status"
fi
cp "$tmp_report" "$report"
cat "$report"
echo "e2e.sh: report written to benches/e2e-report.md" >&2
