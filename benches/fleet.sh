#!/usr/bin/env bash
# A simulated fleet against one real coordinator (issue 15): for 1, 10, 100 and 1,000 agents
# and one vertex of 1,000 and of 10,000 subtasks, the time to a refreshed flame graph against
# the window (20 x 50 ms), the coordinator's own time after the last answer, the dispatch
# spread, the coordinator's CPU (during runs, and idle with heartbeats only) and memory across
# runs, and whether every sample was kept. A vertex over the coordinator's parallelism cap is
# reported as "over the cap", not as a failure.
#
# Usage: benches/fleet.sh [--quick] [driver flags]
#   --quick            1 and 100 agents x 1,000 subtasks, 3 runs, 5 s idle (a few minutes)
#   --agents N,...     numbers of simulated agents (default 1,10,100,1000)
#   --subtasks S,...   parallelisms of the one vertex (default 1000,10000)
#   --runs N           refreshed graphs per configuration (default 5)
#   --samples N --delay-ms MS --depth F --breadth B --pool P --idle-s S
#   --coordinator-arg=ARG   an extra coordinator flag (repeatable)
# `flamegrid-fleet --help` explains every flag. Writes the Markdown table to stdout and to
# benches/fleet-report.md.
#
# Builds the release coordinator and the simulator only. The simulator (benches/src/bin/fleet/)
# starts one coordinator per configuration on a scratch directory (removed at the end) and
# raises its own open file limit to the hard limit, which the coordinator inherits: 1,000
# agents are 1,000 listeners and some 3,000 connections. Like e2e.sh, every step runs in its
# own process group, killed by the EXIT trap, so nothing outlives the script.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
report="$root/benches/fleet-report.md"

step_group=""
last_group=""
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
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

driver_args=()
for arg in "$@"; do
    if [[ "$arg" == "--quick" ]]; then
        driver_args+=(--agents 1,100 --subtasks 1000 --runs 3 --idle-s 5)
    else
        driver_args+=("$arg")
    fi
done

echo "fleet.sh: building the release coordinator and simulator" >&2
# One invocation for both, so features unify the same way every time (no rebuild of shared
# dependencies between the two).
run_step cargo build --release -p flamegrid-coordinator -p flamegrid-benches \
    --bin flamegrid-coordinator --bin flamegrid-fleet >&2

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin_dir="${target_dir:-$root/target}/release"

# Let the simulator raise its soft limit as far as the hard limit allows.
ulimit -Hn >/dev/null
echo "fleet.sh: open file limit $(ulimit -Sn) (hard $(ulimit -Hn))" >&2

run_step "$bin_dir/flamegrid-fleet" --bin-dir "$bin_dir" --report "$report" \
    ${driver_args[@]+"${driver_args[@]}"}
