//! Exports end to end: a coordinator (in this process, real HTTP and gRPC on loopback), a real
//! `flamegrid-agent run` process, and the C workload whose spinner threads have a known hot
//! function. The pprof file is opened by the real `go tool pprof` (Debian's `golang-go`) and
//! decoded with prost; the speedscope file is validated against speedscope's published schema
//! (vendored in `tests/data/`, see its README). Both are compared with the JSON view of the same
//! run.
//!
//! Every child process (agent, workload, pprof) is waited for or killed when its guard drops.
//! Nothing here asserts on time: waits are polls with a generous hang guard.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_proto::pprof::Profile;
use flamegrid_workloads::Workload;
use prost::Message;
use serde_json::{Value, json};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use support::{TestCoordinator, graph, running_job, spinners_and_sleeper, start_agent, temp_dir};

/// Samples per run: enough for every thread to show, short enough to be quick. The refresh
/// interval is long so that every request of a test is answered from the same run (the exports
/// are compared with the JSON view of that run). Heartbeats may lapse for long.
const FLAGS: &[&str] = &[
    "--flamegraph-num-samples",
    "20",
    "--flamegraph-delay-ms",
    "10",
    "--flamegraph-refresh-interval-s",
    "3600",
    "--flamegraph-rpc-grace-ms",
    "2000",
    "--heartbeat-timeout-s",
    "120",
];

/// The sampling interval of [`FLAGS`] in nanoseconds: what one sample weighs in the exports.
const INTERVAL_NS: i64 = 10_000_000;

/// A job with a spinning vertex (subtask i = thread `spin-i`) and a sleeping one, on `tm`.
fn job(tm: &str, pid: u32) -> Value {
    json!({
        "name": "exports-e2e",
        "vertices": [
            {"name": "Source: spin", "parallelism": 2, "subtasks": [
                {"taskmanager": tm, "pid": pid, "thread_name": "spin-0"},
                {"taskmanager": tm, "pid": pid, "thread_name": "spin-1"}]},
            {"name": "Sink: sleep", "parallelism": 1, "inputs": [0], "subtasks": [
                {"taskmanager": tm, "pid": pid, "thread_name": "sleep-0"}]}
        ]
    })
}

/// GET → (status, content type, content disposition, body bytes).
async fn fetch(c: &TestCoordinator, path: &str) -> (u16, String, String, Vec<u8>) {
    let response = c.http.get(c.url(path)).send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (status, content_type, disposition) = (
        response.status().as_u16(),
        header("content-type"),
        header("content-disposition"),
    );
    let body = response.bytes().await.unwrap().to_vec();
    (status, content_type, disposition, body)
}

/// Fetches a `.pb.gz` export, checks the headers, returns the gzipped bytes and the decoded
/// profile.
async fn fetch_pprof(c: &TestCoordinator, path: &str) -> (Vec<u8>, Profile) {
    let (status, content_type, disposition, gz) = fetch(c, path).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&gz));
    assert_eq!(content_type, "application/octet-stream");
    assert!(
        disposition.starts_with("attachment; filename=\"flamegrid-")
            && disposition.ends_with(".pb.gz\""),
        "{disposition}"
    );
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .expect("the body is gzip");
    let profile = Profile::decode(&raw[..]).expect("the body is a pprof Profile");
    (gz, profile)
}

/// Fetches a `.speedscope.json` export, checks the headers and validates it against
/// speedscope's schema.
async fn fetch_speedscope(c: &TestCoordinator, path: &str) -> Value {
    let (status, content_type, disposition, body) = fetch(c, path).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(
        disposition.starts_with("attachment; filename=\"flamegrid-")
            && disposition.ends_with(".speedscope.json\""),
        "{disposition}"
    );
    let file: Value = serde_json::from_slice(&body).unwrap();
    assert_valid_speedscope(&file);
    file
}

/// Validates `file` against speedscope's published schema (`tests/data/`).
fn assert_valid_speedscope(file: &Value) {
    let errors = speedscope_schema_errors(file);
    assert!(errors.is_empty(), "not a valid speedscope file: {errors:?}");
    // The schema's file type does not tie sample and weight counts together; speedscope does.
    for p in file["profiles"].as_array().unwrap() {
        assert_eq!(
            p["samples"].as_array().unwrap().len(),
            p["weights"].as_array().unwrap().len()
        );
    }
}

/// What speedscope's published schema (`tests/data/`) finds wrong with `file`.
fn speedscope_schema_errors(file: &Value) -> Vec<String> {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = SCHEMA.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/speedscope-file-format-schema.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).expect("speedscope's schema compiles")
    });
    validator
        .iter_errors(file)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The total weight of a speedscope file, in samples.
fn speedscope_samples(file: &Value) -> i64 {
    let ns: i64 = file["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["weights"].as_array().unwrap())
        .map(|w| w.as_i64().unwrap())
        .sum();
    assert_eq!(ns % INTERVAL_NS, 0, "weights are whole intervals");
    ns / INTERVAL_NS
}

fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

fn comments(p: &Profile) -> Vec<&str> {
    p.comment.iter().map(|&c| string(p, c)).collect()
}

/// Samples (the `samples/count` value) in a decoded profile.
fn pprof_samples(p: &Profile) -> i64 {
    p.sample.iter().map(|s| s.value[0]).sum()
}

/// `go`, or a panic that says how to install it (`.ci/run` installs Debian's golang-go).
fn go() -> Command {
    let found = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`go` not found: these tests open the export in the real `go tool pprof`. \
         Install Debian's golang-go (`sudo apt-get install golang-go`)"
    );
    Command::new("go")
}

/// Runs `go tool pprof <args> <file>` and returns its standard output.
fn go_pprof(args: &[&str], file: &Path, home: &Path) -> String {
    let child = go()
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        // pprof keeps state under $HOME/pprof and never needs the network for a local file.
        .env("HOME", home)
        .env("PPROF_TMPDIR", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "go tool pprof {args:?} failed: {stderr}\n{stdout}"
    );
    // The profile's mapping says its frames are symbolized: pprof looks for no binary.
    assert!(
        !stderr.contains("binary"),
        "go tool pprof {args:?}: {stderr}"
    );
    stdout
}

/// The function names of `go tool pprof -top` output, in order (heaviest flat first).
fn top_functions(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            // "      20   100%   100%         20   100%  spin_inner"
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 6).then(|| cols[5..].join(" "))
        })
        .collect()
}

#[ignore = "slow tier (browser, load, kill loops): cargo test --workspace -- --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pprof_opens_in_go_pprof_with_the_spinners_leaf_on_top() {
    let c = TestCoordinator::start(FLAGS).await;
    let tm = "a0000000000000000000000000000011";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let chains = Workload::CFramePointers.chains();
    let hot = chains.spin[chains.spin.len() - 1];
    let (jobid, v) = running_job(&c, &job(tm, w.pid())).await;
    let base = format!("/jobs/{jobid}/vertices/{}", v[0]);
    let json = graph(&c, &format!("{base}/flamegraph?type=on_cpu")).await;
    let root_value = json["data"]["value"].as_i64().unwrap();

    // Decoded with prost: pprof's rules, the same run and the same samples as the JSON view.
    let (gz, profile) = fetch_pprof(&c, &format!("{base}/flamegraph.pb.gz?type=on_cpu")).await;
    assert_eq!(profile.string_table[0], "");
    assert!(profile.function.iter().all(|f| f.id != 0));
    assert!(profile.location.iter().all(|l| l.id != 0));
    assert_eq!(
        profile.time_nanos,
        json["endTimestamp"].as_i64().unwrap() * 1_000_000,
        "the JSON view's run"
    );
    assert_eq!(profile.period, INTERVAL_NS);
    assert_eq!(pprof_samples(&profile), root_value);
    for s in &profile.sample {
        assert_eq!(
            s.value[1],
            s.value[0] * INTERVAL_NS,
            "wall = count × interval"
        );
    }

    // The real pprof: the spinners' leaf is the top function by flat samples.
    let dir = temp_dir("pprof");
    let file = dir.path().join("spin.pb.gz");
    std::fs::write(&file, &gz).unwrap();
    let top = go_pprof(&["-top", "-sample_index=samples"], &file, dir.path());
    let functions = top_functions(&top);
    assert_eq!(functions.first().map(String::as_str), Some(hot), "{top}");
    // pprof adds the samples up to the JSON view's root value.
    assert!(top.contains(&format!("of {root_value} total")), "{top}");
    let raw = go_pprof(&["-raw"], &file, dir.path());
    assert!(raw.contains("samples/count") && raw.contains(hot), "{raw}");
    // Labels: thread, subtask and task manager of every sample.
    let tags = go_pprof(&["-tags"], &file, dir.path());
    for expected in [
        "thread",
        "spin-0",
        "spin-1",
        "subtask",
        "taskmanager",
        tm,
        "state",
    ] {
        assert!(tags.contains(expected), "{expected} not in -tags:\n{tags}");
    }
    // Every sample's stack, leaf first, as pprof prints it.
    let traces = go_pprof(&["-traces"], &file, dir.path());
    assert!(traces.contains(hot), "{traces}");

    // One subtask: only its thread, its share of the run.
    let (_, one) = fetch_pprof(
        &c,
        &format!("{base}/flamegraph.pb.gz?type=on_cpu&subtaskindex=1"),
    )
    .await;
    let one_json = c
        .get_ok(&format!("{base}/flamegraph?type=on_cpu&subtaskindex=1"))
        .await;
    assert_eq!(
        pprof_samples(&one),
        one_json["data"]["value"].as_i64().unwrap()
    );
    let threads: Vec<&str> = one
        .sample
        .iter()
        .flat_map(|s| &s.label)
        .filter(|l| string(&one, l.key) == "thread")
        .map(|l| string(&one, l.str))
        .collect();
    assert!(
        !threads.is_empty() && threads.iter().all(|t| *t == "spin-1"),
        "{threads:?}"
    );

    // OFF_CPU of the spinning vertex: (almost) nothing, but still a profile pprof opens.
    let (gz_off, off) = fetch_pprof(&c, &format!("{base}/flamegraph.pb.gz?type=off_cpu")).await;
    let off_json = c.get_ok(&format!("{base}/flamegraph?type=OFF_CPU")).await;
    assert_eq!(
        pprof_samples(&off),
        off_json["data"]["value"].as_i64().unwrap()
    );
    let off_file = dir.path().join("off.pb.gz");
    std::fs::write(&off_file, &gz_off).unwrap();
    go_pprof(&["-top"], &off_file, dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedscope_file_validates_and_matches_the_json_view() {
    let c = TestCoordinator::start(FLAGS).await;
    let tm = "a0000000000000000000000000000012";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let chains = Workload::CFramePointers.chains();
    let (jobid, v) = running_job(&c, &job(tm, w.pid())).await;

    for (vertex, ty) in [(&v[0], "on_cpu"), (&v[1], "off_cpu"), (&v[0], "full")] {
        let base = format!("/jobs/{jobid}/vertices/{vertex}");
        let json = graph(&c, &format!("{base}/flamegraph?type={ty}")).await;
        let file =
            fetch_speedscope(&c, &format!("{base}/flamegraph.speedscope.json?type={ty}")).await;
        assert_eq!(
            speedscope_samples(&file),
            json["data"]["value"].as_i64().unwrap(),
            "{ty}: {file}"
        );
        assert_eq!(
            file["$schema"],
            "https://www.speedscope.app/file-format-schema.json"
        );
        assert!(file["exporter"].as_str().unwrap().starts_with("flamegrid "));
        let profiles = file["profiles"].as_array().unwrap();
        let parallelism = if vertex == &v[0] { 2 } else { 1 };
        assert_eq!(profiles.len(), parallelism, "one profile per subtask");
        for (i, p) in profiles.iter().enumerate() {
            let name = p["name"].as_str().unwrap();
            assert!(name.starts_with(&format!("subtask {i} on {tm}")), "{name}");
            assert_eq!(p["unit"], "nanoseconds");
        }
    }

    // Root first: the spin chain reads outermost → innermost in some sample.
    let base = format!("/jobs/{jobid}/vertices/{}", v[0]);
    let file = fetch_speedscope(
        &c,
        &format!("{base}/flamegraph.speedscope.json?type=ON_CPU"),
    )
    .await;
    let frames: Vec<&str> = file["shared"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut unique = frames.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), frames.len(), "one shared frame per name");
    let has_chain = file["profiles"].as_array().unwrap().iter().any(|p| {
        p["samples"].as_array().unwrap().iter().any(|s| {
            let names: Vec<&str> = s
                .as_array()
                .unwrap()
                .iter()
                .map(|i| frames[i.as_u64().unwrap() as usize])
                .collect();
            names.windows(chains.spin.len()).any(|w| w == chains.spin)
        })
    });
    assert!(
        has_chain,
        "spin chain {:?} root first in {file}",
        chains.spin
    );

    // The schema is really applied: a file without weights, or with a made-up unit, fails.
    let mut broken = file.clone();
    broken["profiles"][0]
        .as_object_mut()
        .unwrap()
        .remove("weights");
    assert!(!speedscope_schema_errors(&broken).is_empty());
    let mut broken = file.clone();
    broken["profiles"][0]["unit"] = json!("samples");
    assert!(!speedscope_schema_errors(&broken).is_empty());

    // One subtask: one profile.
    let one = fetch_speedscope(
        &c,
        &format!("{base}/flamegraph.speedscope.json?subtaskindex=1"),
    )
    .await;
    assert_eq!(one["profiles"].as_array().unwrap().len(), 1);
    assert!(
        one["profiles"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("subtask 1 ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_missing_graphs_answer_like_the_flame_graph() {
    let c = TestCoordinator::start(FLAGS).await;
    let tm = "a0000000000000000000000000000013";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let (jobid, v) = running_job(&c, &job(tm, w.pid())).await;
    let base = format!("/jobs/{jobid}/vertices/{}", v[0]);
    let unknown = "0123456789abcdef0123456789abcdef";

    for ext in ["pb.gz", "speedscope.json"] {
        for (path, status, message) in [
            (
                format!("{base}/flamegraph.{ext}?type=cpu"),
                400,
                "Cannot resolve query parameter (type)",
            ),
            (
                format!("{base}/flamegraph.{ext}?subtaskindex=-1"),
                400,
                "Cannot resolve query parameter (subtaskindex)",
            ),
            (
                format!("/jobs/nothex/vertices/{}/flamegraph.{ext}", v[0]),
                400,
                "Cannot resolve path parameter (jobid)",
            ),
            (
                format!("{base}/flamegraph.{ext}?subtaskindex=2"),
                404,
                "Invalid subtask index for vertex",
            ),
            (
                format!("/jobs/{unknown}/vertices/{}/flamegraph.{ext}", v[0]),
                404,
                "not found",
            ),
            (
                format!("/jobs/{jobid}/vertices/{unknown}/flamegraph.{ext}"),
                404,
                "No vertex with ID",
            ),
            (
                format!("/v1{base}/flamegraph.{ext}?type=bogus"),
                400,
                "(type)",
            ),
        ] {
            // The same status and message as the flame graph path itself.
            let json_path = path.replace(&format!("flamegraph.{ext}"), "flamegraph");
            let (json_status, json_body) = c.get(&json_path).await;
            let (got, body) = c.get(&path).await;
            assert_eq!(got, status, "{path}: {body}");
            assert_eq!(
                (got, &body),
                (json_status, &json_body),
                "{path} vs {json_path}"
            );
            assert!(
                body["errors"][0].as_str().unwrap().contains(message),
                "{path}: {body}"
            );
        }
    }

    // A canceled job's vertex is terminated: a valid, empty export that says so.
    assert_eq!(c.patch(&format!("/jobs/{jobid}")).await.0, 202);
    let (gz, profile) = fetch_pprof(&c, &format!("{base}/flamegraph.pb.gz")).await;
    assert!(profile.sample.is_empty());
    assert!(
        comments(&profile).iter().any(|c| c.contains("terminated")),
        "{:?}",
        comments(&profile)
    );
    let dir = temp_dir("pprof-empty");
    let file = dir.path().join("terminated.pb.gz");
    std::fs::write(&file, &gz).unwrap();
    let said = go_pprof(&["-comments"], &file, dir.path());
    assert!(said.contains("terminated"), "{said}");
    let file = fetch_speedscope(&c, &format!("{base}/flamegraph.speedscope.json")).await;
    assert!(
        file["profiles"][0]["name"]
            .as_str()
            .unwrap()
            .contains("terminated"),
        "{file}"
    );

    // Switched off: -2 in JSON; the exports are valid files saying so; bad ids still 400.
    let off = TestCoordinator::start(&["--flamegraph-enabled", "false"]).await;
    let (_, profile) = fetch_pprof(
        &off,
        &format!("/jobs/{unknown}/vertices/{unknown}/flamegraph.pb.gz"),
    )
    .await;
    assert!(comments(&profile).iter().any(|c| c.contains("disabled")));
    let file = fetch_speedscope(
        &off,
        &format!("/jobs/{unknown}/vertices/{unknown}/flamegraph.speedscope.json?type=off_cpu"),
    )
    .await;
    assert!(
        file["name"].as_str().unwrap().contains("disabled"),
        "{file}"
    );
    assert_eq!(
        off.get(&format!("/jobs/{unknown}/vertices/xyz/flamegraph.pb.gz"))
            .await
            .0,
        400
    );
}
