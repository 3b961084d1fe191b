#!/usr/bin/env bash
# Fuzzes a live coordinator with schemathesis, driven by the coordinator's own /openapi.json.
#
# What it does, on a fresh Debian machine (run as root, from anywhere):
#   1. makes a Python venv under target/ and installs schemathesis (pinned: its CLI flags changed
#      between 3.x and 4.x; this script uses 4.x's);
#   2. builds and starts `flamegrid-coordinator --demo` (coordinator + in-process agent + demo
#      workload + a registered job) on loopback ports the kernel picks;
#   3. writes a schemathesis config that feeds the real job, vertex and task manager ids into the
#      path parameters part of the time (so the id paths answer with data, not only 400/404);
#   4. runs `schemathesis run` with the checks `not_a_server_error` (no 5xx) and
#      `response_schema_conformance` (every answer fits the schema of its documented status),
#      bounded by --max-examples and --max-time;
#   5. prints how many cases ran, stops the coordinator (trap, also on failure) and exits
#      non-zero when schemathesis found a failure.
#
# Knobs (environment): SCHEMATHESIS_MAX_EXAMPLES (default 15 per operation),
# SCHEMATHESIS_MAX_TIME (default 120 s), SCHEMATHESIS_SEED (default: random; printed).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-15}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-120}
SEED=${SCHEMATHESIS_SEED:-$RANDOM}
VENV="$PWD/target/schemathesis-venv"

# --- 1. schemathesis -------------------------------------------------------------------------
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 needs its venv module from a separate package.
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/schemathesis" --version

# --- 2. the coordinator ----------------------------------------------------------------------
cargo build -q -p flamegrid-coordinator
WORK=$(mktemp -d)
COORDINATOR_PID=""
cleanup() {
    if [ -n "$COORDINATOR_PID" ] && kill -0 "$COORDINATOR_PID" 2>/dev/null; then
        # SIGTERM: the coordinator stops its agent and the demo workload before exiting.
        kill -TERM "$COORDINATOR_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$COORDINATOR_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$COORDINATOR_PID" 2>/dev/null || true
        wait "$COORDINATOR_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

target/debug/flamegrid-coordinator --demo \
    --rest-addr 127.0.0.1:0 --rpc-addr 127.0.0.1:0 --data-dir "$WORK/data" \
    >"$WORK/coordinator.out" 2>"$WORK/coordinator.err" &
COORDINATOR_PID=$!

BASE="" JOB=""
for _ in $(seq 1 600); do
    BASE=$(sed -n 's|^flamegrid dashboard: \(http://[^/]*\)/$|\1|p' "$WORK/coordinator.out")
    JOB=$(sed -n 's|^flamegrid demo job: .*/#/jobs/\([0-9a-f]*\)$|\1|p' "$WORK/coordinator.out")
    [ -n "$BASE" ] && [ -n "$JOB" ] && break
    if ! kill -0 "$COORDINATOR_PID" 2>/dev/null; then
        echo "schemathesis.sh: the coordinator exited early:" >&2
        tail -20 "$WORK/coordinator.err" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$BASE" ] || [ -z "$JOB" ]; then
    echo "schemathesis.sh: the demo did not come up" >&2
    tail -20 "$WORK/coordinator.err" >&2
    exit 1
fi
echo "coordinator at $BASE, demo job $JOB"

# --- 3. real ids for the path parameters ------------------------------------------------------
python3 - "$BASE" "$JOB" >"$WORK/schemathesis.toml" <<'PY'
import json, sys, urllib.request

base, job = sys.argv[1], sys.argv[2]
get = lambda p: json.load(urllib.request.urlopen(base + p, timeout=30))
vertices = [v["id"] for v in get(f"/jobs/{job}")["vertices"]]
tms = [t["id"] for t in get("/taskmanagers")["taskmanagers"]]
q = lambda values: ", ".join(json.dumps(str(v)) for v in values)
print(f"""
[dictionaries.jobids]
values = [{q([job])}]
[dictionaries.vertexids]
values = [{q(vertices)}]
[dictionaries.tmids]
values = [{q(tms)}]
[dictionaries.subtaskindexes]
values = ["0", "1"]

[parameters]
"path.jobid" = {{ dictionary = "jobids", probability = 0.6 }}
"path.vertexid" = {{ dictionary = "vertexids", probability = 0.6 }}
"path.tmid" = {{ dictionary = "tmids", probability = 0.6 }}
"path.subtaskindex" = {{ dictionary = "subtaskindexes", probability = 0.5 }}
""")
PY

# --- 4. fuzz ----------------------------------------------------------------------------------
echo "schemathesis: max $MAX_EXAMPLES examples per operation, at most ${MAX_TIME}s, seed $SEED"
status=0
# Run from the scratch dir: schemathesis keeps a cache (.schemathesis/) in its working directory.
(cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.json" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --seed "$SEED" \
    --workers 2 \
    --request-timeout 30 \
    --report ndjson --report-ndjson-path "$WORK/events.ndjson") \
    || status=$?

# --- 5. figures -------------------------------------------------------------------------------
# Kept for a look after the run (every request and answer).
cp "$WORK/events.ndjson" target/schemathesis-events.ndjson 2>/dev/null || true
python3 - "$WORK/events.ndjson" <<'PY' || true
import json, sys

cases = 0
for line in open(sys.argv[1], encoding="utf-8"):
    event = json.loads(line)
    for name, body in event.items():
        # Every finished scenario records the test cases it ran.
        if name == "ScenarioFinished":
            cases += len(body.get("recorder", {}).get("cases", {}))
print(f"schemathesis cases run: {cases}")
PY
if [ "$status" -ne 0 ]; then
    echo "schemathesis.sh: schemathesis reported failures (exit $status)" >&2
    echo "--- coordinator stderr (last 30 lines) ---" >&2
    tail -30 "$WORK/coordinator.err" >&2
fi
exit "$status"
