#!/usr/bin/env bash
# The reference column of the benchmarks (issue 6, item 5): the same REST load and the same
# time-to-first-graph measured against a real Apache Flink 2.3 local cluster.
#
# Usage: benches/flink-reference.sh [--rounds N] [--wrk-rounds N] [--wrk-duration D]
#                                   [--results FILE]
#   --rounds N        first graphs to time, each on a never-sampled vertex (default 5)
#   --wrk-rounds N    alternating wrk rounds per URL (default 3)
#   --wrk-duration D  wrk's -d (default 10s)
#   --results FILE    also write the figures as JSON (read by benches/e2e.sh's driver)
# Prints a Markdown section on stdout; progress on stderr. Takes about 2 minutes after the
# first download. Not part of CI: it downloads 330 MB and runs two JVMs.
#
# What it does:
# 1. Fetches PyPI's `apache-flink-libraries` 2.3 wheel with pip (cached in
#    ${FLAMEGRID_FLINK_CACHE:-~/.cache/flamegrid-flink}, never inside the repository). The
#    wheel carries Flink's `lib/` (flink-dist and friends) and `bin/bash-java-utils.jar`, but
#    neither Flink's shell scripts nor a `conf/` nor the example jars; so this script does what
#    `bin/start-cluster.sh` would: writes a `config.yaml`, asks BashJavaUtils for the JVM
#    memory flags, and starts `StandaloneSessionClusterEntrypoint` (the JobManager, which
#    serves the REST API) and one `TaskManagerRunner`.
# 2. Compiles a tiny streaming job with `javac` against those jars and submits it over REST: a
#    never-ending number sequence through N+1 map stages (chaining disabled, so each is a job
#    vertex with its own task thread; each record costs a little CPU and 1 ms of sleep, so the
#    job runs at ~1,000 records/s and leaves the CPU to the measurement), into a discarding
#    sink. Parallelism 1: one subtask per vertex.
# 3. Measures, with the JobManager configured as `rest.flamegraph.enabled: true` and Flink's
#    default window (100 samples, 50 ms apart):
#    * time to first graph: poll `GET /jobs/J/vertices/V/flamegraph` every 5 ms from the first
#      request until `endTimestamp > 0`, once per never-sampled vertex;
#    * `wrk -t2 -c32 -d10s --latency` on the (now cached) flame graph of the first vertex and on
#      `/jobs/overview`, alternating, with the JobManager's CPU per second of each run, after
#      one untimed 3 s warm-up run per URL (the JIT's first seconds are not the steady state);
#    * VmRSS / VmHWM (`/proc/PID/status`) of both JVMs at rest and after the load.
# The EXIT trap kills both JVMs and removes the scratch directory, on success, failure and
# Ctrl-C alike.
set -euo pipefail

rounds=5
wrk_rounds=3
wrk_duration=10s
results=""
while (($#)); do
    case "$1" in
        --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
        --wrk-rounds) wrk_rounds=${2:?--wrk-rounds needs a value}; shift 2 ;;
        --wrk-duration) wrk_duration=${2:?--wrk-duration needs a value}; shift 2 ;;
        --results) results=${2:?--results needs a value}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "flink-reference.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$rounds" "$wrk_rounds"; do
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > 50)); then
        echo "flink-reference.sh: round counts must be 1..50, got '$n'" >&2
        exit 2
    fi
done

say() { echo "[flink-reference] $*" >&2; }
die() { echo "flink-reference.sh: $*" >&2; exit 1; }

for tool in java javac jar python3 wrk; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install openjdk-17-jdk-headless python3 python3-pip wrk)"
done
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
((${java_major:-0} >= 17)) || die "Flink 2.3 needs Java 17 or newer; 'java' is version ${java_major:-unknown}"

# ---- 1. the distribution, cached -------------------------------------------------------------
cache=${FLAMEGRID_FLINK_CACHE:-$HOME/.cache/flamegrid-flink}
mkdir -p "$cache/wheels"
wheel=$(ls "$cache"/wheels/apache_flink_libraries-2.3.*.whl 2>/dev/null | sort -V | tail -1 || true)
if [[ -z $wheel ]]; then
    say "downloading apache-flink-libraries 2.3 from PyPI (about 330 MB, cached in $cache)"
    if ! python3 -m pip download --quiet --no-deps --only-binary :all: \
        'apache-flink-libraries==2.3.*' -d "$cache/wheels" >&2; then
        die "could not download apache-flink-libraries 2.3 from PyPI (offline, or no pip?). Put the wheel into $cache/wheels/ by hand, or run without the Flink reference (benches/e2e.sh --no-flink)."
    fi
    wheel=$(ls "$cache"/wheels/apache_flink_libraries-2.3.*.whl 2>/dev/null | sort -V | tail -1 || true)
    [[ -n $wheel ]] || die "pip reported success but left no apache_flink_libraries-2.3.*.whl in $cache/wheels"
fi
version=$(basename "$wheel" | sed -n 's/^apache_flink_libraries-\([0-9.]*\)-.*/\1/p')
flink_home="$cache/flink-$version"
if [[ ! -f $flink_home/.complete ]]; then
    say "unpacking $(basename "$wheel")"
    rm -rf "$flink_home"
    python3 - "$wheel" "$flink_home" <<'PY'
import sys, zipfile, pathlib
wheel, home = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        for part in ("lib/", "bin/"):
            prefix = "pyflink/" + part
            if name.startswith(prefix) and not name.endswith("/"):
                target = home / part / name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
PY
    [[ -f $flink_home/bin/bash-java-utils.jar ]] || die "the wheel has no pyflink/bin/bash-java-utils.jar"
    ls "$flink_home"/lib/flink-dist-*.jar >/dev/null 2>&1 || die "the wheel has no pyflink/lib/flink-dist-*.jar"
    touch "$flink_home/.complete"
fi
classpath="$flink_home/lib/*"

# ---- 2. the cluster ------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/flamegrid-flink.XXXXXX")
jm_pid=""
tm_pid=""
stop_cluster() {
    local pid
    for pid in $tm_pid $jm_pid; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in $tm_pid $jm_pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in $tm_pid $jm_pid; do kill -KILL "$pid" 2>/dev/null || true; done
    jm_pid=""
    tm_pid=""
}
cleanup() {
    stop_cluster
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
rest_port=$(free_port)
rpc_port=$(free_port)
mkdir -p "$work/conf" "$work/log" "$work/job"
# Small memory settings (the defaults are 1600m / 1728m); everything on loopback.
cat >"$work/conf/config.yaml" <<EOF
jobmanager:
  bind-host: 127.0.0.1
  rpc:
    address: 127.0.0.1
    port: $rpc_port
  memory:
    process:
      size: 768m
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: 1
  memory:
    process:
      size: 1024m
rest:
  address: 127.0.0.1
  bind-address: 127.0.0.1
  port: $rest_port
  flamegraph:
    enabled: true
parallelism:
  default: 1
EOF
cat >"$work/conf/log4j.properties" <<'EOF'
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = MainAppender
appender.main.name = MainAppender
appender.main.type = File
appender.main.fileName = ${sys:log.file}
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c - %m%n
EOF
# What Flink's default config.yaml passes to every JVM on Java 17 (env.java.opts.all).
java_opens=(
    --add-exports=java.base/sun.net.util=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
    --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.net=ALL-UNNAMED
    --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens=java.base/java.text=ALL-UNNAMED
    --add-opens=java.base/java.time=ALL-UNNAMED
    --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

# BashJavaUtils prints two result lines: the JVM flags (-Xmx ...) and the derived memory
# settings (-D key=value ...) that the entry points require.
resource_params() {
    java -cp "$flink_home/bin/bash-java-utils.jar:$classpath" \
        org.apache.flink.runtime.util.bash.BashJavaUtils "$1" --configDir "$work/conf" \
        >"$work/log/$1.out" 2>&1 || die "BashJavaUtils $1 failed: $(tail -5 "$work/log/$1.out")"
    sed -n 's/^BASH_JAVA_UTILS_EXEC_RESULT://p' "$work/log/$1.out"
}
jm_params=$(resource_params GET_JM_RESOURCE_PARAMS)
tm_params=$(resource_params GET_TM_RESOURCE_PARAMS)
[[ $(wc -l <<<"$jm_params") -eq 2 && $(wc -l <<<"$tm_params") -eq 2 ]] ||
    die "unexpected BashJavaUtils output (see $work/log)"

# start_jvm ROLE JVM_FLAGS DYNAMIC_SETTINGS MAIN_CLASS: a background child in this script's
# process group (so whoever kills the group, e.g. e2e.sh's trap, kills the JVMs too); the
# trap here kills it by pid. A JVM is one process: killing it ends every thread it has.
start_jvm() {
    local role=$1 jvm_flags=$2 settings=$3 main=$4
    # shellcheck disable=SC2086 # the flags are word lists by design
    java $jvm_flags "${java_opens[@]}" -Dlog.file="$work/log/$role.log" \
        -Dlog4j.configurationFile="file:$work/conf/log4j.properties" \
        -cp "$classpath" "$main" --configDir "$work/conf" $settings \
        >"$work/log/$role.out" 2>&1 </dev/null &
    echo $!
}
say "starting a JobManager (REST on 127.0.0.1:$rest_port) and a TaskManager"
jm_pid=$(start_jvm jobmanager "$(sed -n 1p <<<"$jm_params")" "$(sed -n 2p <<<"$jm_params")" \
    org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint)
tm_pid=$(start_jvm taskmanager "$(sed -n 1p <<<"$tm_params")" "$(sed -n 2p <<<"$tm_params")" \
    org.apache.flink.runtime.taskexecutor.TaskManagerRunner)

# ---- 3. the job ----------------------------------------------------------------------------
stages=$((rounds + 1))
cat >"$work/job/FlamegridReferenceJob.java" <<'EOF'
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

/** A never-ending streaming job whose every stage is its own job vertex (flamegrid benches). */
public class FlamegridReferenceJob {
    /** A little CPU and 1 ms of sleep per record: the job idles along at ~1,000 records/s. */
    public static class Work implements MapFunction<Long, Long> {
        @Override
        public Long map(Long value) throws Exception {
            long x = value;
            for (int i = 0; i < 2000; i++) {
                x = x * 6364136223846793005L + 1442695040888963407L;
            }
            Thread.sleep(1);
            return x;
        }
    }

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String jar = args[2];
        int stages = Integer.parseInt(args[3]);
        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createRemoteEnvironment(host, port, jar);
        env.setParallelism(1);
        DataStream<Long> stream = env.fromSequence(0, Long.MAX_VALUE).name("Source: sequence");
        for (int i = 0; i < stages; i++) {
            stream = stream.map(new Work()).name("stage-" + i).disableChaining();
        }
        stream.sinkTo(new DiscardingSink<>()).name("Sink: discard").disableChaining();
        JobClient client = env.executeAsync("flamegrid-reference");
        System.out.println("jobid " + client.getJobID());
        System.exit(0);
    }
}
EOF
say "compiling the reference job"
(cd "$work/job" && javac -nowarn -cp "$classpath" FlamegridReferenceJob.java >"$work/log/javac.out" 2>&1 &&
    jar cf job.jar ./*.class) || die "compiling the job failed: $(tail -5 "$work/log/javac.out")"

# Everything from here on (waiting, submitting, measuring, the report) is one Python program:
# it reads the REST answers as JSON and times with a monotonic clock.
python3 - "$rest_port" "$jm_pid" "$tm_pid" "$work" "$classpath" "$stages" "$rounds" \
    "$wrk_rounds" "$wrk_duration" "${results:-}" "$version" <<'PY'
import json, os, re, statistics, subprocess, sys, time, urllib.request

(port, jm_pid, tm_pid, work, classpath, stages, rounds, wrk_rounds, wrk_duration, results,
 version) = sys.argv[1:]
stages, rounds, wrk_rounds = int(stages), int(rounds), int(wrk_rounds)
base = f"http://127.0.0.1:{port}"
HANG_GUARD = 180.0  # seconds: a broken cluster fails the run instead of hanging it
POLL = 0.005        # the 5 ms poll of flamegrid's JSON method

def say(msg):
    print(f"[flink-reference] {msg}", file=sys.stderr, flush=True)

def fail(msg):
    logs = os.path.join(work, "log")
    for name in ("jobmanager.out", "taskmanager.out", "jobmanager.log", "taskmanager.log"):
        path = os.path.join(logs, name)
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                tail = f.read()[-1500:]
            if tail.strip():
                print(f"--- {name} (tail) ---\n{tail}", file=sys.stderr)
    print(f"flink-reference.sh: {msg}", file=sys.stderr)
    sys.exit(1)

def alive(pid):
    return os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read()

def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.load(r)

def poll(what, check):
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        for pid, role in ((jm_pid, "JobManager"), (tm_pid, "TaskManager")):
            if not alive(pid):
                fail(f"the {role} exited while waiting for {what}")
        try:
            value = check()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    fail(f"timed out waiting for {what}")

def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024.0
    return fields

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

poll("the TaskManager to register", lambda: get("/overview")["taskmanagers"] >= 1)
say("cluster up; submitting the job")
jar = os.path.join(work, "job", "job.jar")
submit = subprocess.run(
    ["java", "--add-opens=java.base/java.util=ALL-UNNAMED",
     "--add-opens=java.base/java.lang=ALL-UNNAMED", "-cp", f"{classpath}:{jar}",
     "FlamegridReferenceJob", "127.0.0.1", port, jar, str(stages)],
    capture_output=True, text=True, timeout=HANG_GUARD)
m = re.search(r"jobid ([0-9a-f]{32})", submit.stdout)
if submit.returncode != 0 or not m:
    print(submit.stdout[-2000:], submit.stderr[-2000:], file=sys.stderr)
    fail("submitting the job failed")
job = m.group(1)

def all_running():
    d = get(f"/jobs/{job}")
    return d["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in d["vertices"]) and d
detail = poll("every vertex to be RUNNING", all_running)
vertices = [v["id"] for v in detail["vertices"] if v["name"].startswith("stage-")]
if len(vertices) < rounds:
    fail(f"expected {rounds} stage vertices, found {len(vertices)}")
memory_points = [("at rest (job running, no graph yet)", memory(jm_pid), memory(tm_pid))]

# ---- time to first graph -------------------------------------------------------------------
first = []
for i, vid in enumerate(vertices[:rounds]):
    url = f"/jobs/{job}/vertices/{vid}/flamegraph"
    start = time.monotonic()
    polls = 0
    while True:
        graph = get(url)
        polls += 1
        end = graph.get("endTimestamp", -3)
        if end > 0:
            ms = (time.monotonic() - start) * 1e3
            break
        if end == -2:
            fail(f"{url}: endTimestamp -2 (flame graphs disabled?)")
        if time.monotonic() - start > HANG_GUARD:
            fail(f"{url}: no graph after {HANG_GUARD} s")
        time.sleep(POLL)
    samples = (graph.get("data") or {}).get("value", 0)
    first.append({"ms": ms, "samples": samples, "polls": polls})
    say(f"first graph {i + 1}/{rounds}: {ms:.0f} ms, {samples} samples")
memory_points.append(("after the first graphs", memory(jm_pid), memory(tm_pid)))

# ---- REST load ------------------------------------------------------------------------------
wrk_re = {
    "rps": re.compile(r"Requests/sec:\s+([\d.]+)"),
    "requests": re.compile(r"(\d+) requests in"),
    "non_2xx": re.compile(r"Non-2xx or 3xx responses:\s+(\d+)"),
    "p50": re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.M),
    "p99": re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.M),
    "errors": re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"),
}
def to_ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

def run_wrk(path):
    url = base + path
    cpu_before, start = cpu_seconds(jm_pid), time.monotonic()
    out = subprocess.run(["wrk", "-t2", "-c32", "-d", wrk_duration, "--latency", url],
                         capture_output=True, text=True, timeout=HANG_GUARD)
    wall = time.monotonic() - start
    cores = (cpu_seconds(jm_pid) - cpu_before) / wall
    text = out.stdout
    rps = wrk_re["rps"].search(text)
    if out.returncode != 0 or not rps:
        fail(f"wrk on {url} failed:\n{text}\n{out.stderr}")
    run = {"rps": float(rps.group(1)), "jm_cores": cores,
           "requests": int(wrk_re["requests"].search(text).group(1)),
           "non_2xx": int(m.group(1)) if (m := wrk_re["non_2xx"].search(text)) else 0,
           "socket_errors": sum(map(int, m.groups())) if (m := wrk_re["errors"].search(text)) else 0}
    for q in ("p50", "p99"):
        m = wrk_re[q].search(text)
        run[q + "_ms"] = to_ms(*m.groups()) if m else float("nan")
    return run

urls = {"flamegraph": f"/jobs/{job}/vertices/{vertices[0]}/flamegraph", "overview": "/jobs/overview"}
sizes = {}
for kind, path in urls.items():
    with urllib.request.urlopen(base + path, timeout=30) as r:
        sizes[kind] = len(r.read())
# One untimed 3 s run per URL first: the JVM compiles the handlers' hot paths (JIT) during
# its first seconds of load, and a steady state is what the comparison is about.
for kind, path in urls.items():
    subprocess.run(["wrk", "-t2", "-c32", "-d", "3s", base + path], capture_output=True,
                   timeout=HANG_GUARD)
wrk = {kind: [] for kind in urls}
for r in range(wrk_rounds):
    order = list(urls) if r % 2 == 0 else list(reversed(list(urls)))
    line = []
    for kind in order:
        run = run_wrk(urls[kind])
        wrk[kind].append(run)
        line.append(f"{kind} {run['rps']:.0f} req/s")
    say(f"wrk round {r + 1}/{wrk_rounds}: " + "; ".join(line))
memory_points.append(("after the wrk load", memory(jm_pid), memory(tm_pid)))

# ---- results --------------------------------------------------------------------------------
med = statistics.median
def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]
out = {
    "flink_version": version,
    "java": subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0],
    "load_average_end": load(),
    "window": {"samples": 100, "delay_ms": 50},
    "first_graph_ms": [f["ms"] for f in first],
    "first_graph_samples": [f["samples"] for f in first],
    "wrk_duration": wrk_duration,
    "wrk": wrk,
    "response_bytes": sizes,
    "memory": [{"label": label, "jobmanager": jm, "taskmanager": tm}
               for label, jm, tm in memory_points],
}
if results:
    with open(results, "w") as f:
        json.dump(out, f, indent=1)

p = print
p(f"## Apache Flink {version} reference (`benches/flink-reference.sh`)\n")
p(f"A local cluster from PyPI's `apache-flink-libraries` {version} on {out['java']}: one "
  "JobManager (768 MiB process size) and one TaskManager (1024 MiB, 1 slot), "
  "`rest.flamegraph.enabled: true`, Flink's default window of 100 samples × 50 ms. The job: "
  f"a number sequence through {stages} map stages (chaining disabled: one vertex and task thread "
  "each, parallelism 1) into a discarding sink, ~1,000 records/s. wrk ran after an untimed 3 s "
  "warm-up per URL (JIT). "
  f"1-minute load average at the end: {out['load_average_end']}.\n")
times = out["first_graph_ms"]
p("| measurement | median | min–max | rounds |")
p("|---|---:|---:|---:|")
p(f"| first graph, 1 subtask, poll every 5 ms until `endTimestamp > 0` | {med(times):.1f} ms | "
  f"{min(times):.1f}–{max(times):.1f} ms | {len(times)} |")
for kind, label in (("flamegraph", "cached flame graph (JSON, "
                     f"{sizes['flamegraph']} bytes)"), ("overview", "`/jobs/overview` "
                     f"({sizes['overview']} bytes)")):
    runs = wrk[kind]
    rps = [r["rps"] for r in runs]
    p(f"| wrk -t2 -c32 -d{wrk_duration}: {label} | {med(rps):.0f} req/s "
      f"(p50 {med([r['p50_ms'] for r in runs]):.2f} ms, p99 {med([r['p99_ms'] for r in runs]):.2f} ms, "
      f"JobManager {med([r['jm_cores'] for r in runs]):.2f} cores) | {min(rps):.0f}–{max(rps):.0f} req/s | {len(runs)} |")
p("\n| moment | JobManager VmRSS | VmHWM | TaskManager VmRSS | VmHWM |")
p("|---|---:|---:|---:|---:|")
for label, jm, tm in memory_points:
    p(f"| {label} | {jm['VmRSS']:.1f} MiB | {jm['VmHWM']:.1f} MiB | {tm['VmRSS']:.1f} MiB | {tm['VmHWM']:.1f} MiB |")
PY
