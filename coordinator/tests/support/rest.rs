//! Shared by the coordinator's integration tests (included with `#[path]`): a coordinator started
//! in-process on port 0, a registry client that plays an agent over real gRPC, real child
//! processes to watch, and polling. Everything a test starts is stopped when it is dropped.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use clap::Parser;
use flamegrid_coordinator::Coordinator;
use flamegrid_coordinator::config::CoordinatorConfig;
use flamegrid_proto::v1;
use flamegrid_proto::v1::registry_client::RegistryClient;
use flamegrid_workloads::{Mix, RunningWorkload, Workload};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tonic::transport::Channel;

// Not every test crate that includes this module uses every re-export.
#[allow(unused_imports)]
pub use flamegrid_testkit::{KillOnDrop, TerminateOnDrop, free_port, poll, temp_dir, wait_for};

/// A real process to register as a subtask: `sleep` for a long time.
pub fn sleeper() -> KillOnDrop {
    KillOnDrop(
        Command::new("sleep")
            .arg("100000")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A coordinator configuration for tests: loopback port 0, a temp data dir, extra flags.
pub fn config(data_dir: &Path, extra: &[&str]) -> CoordinatorConfig {
    let mut args = vec![
        "flamegrid-coordinator".to_string(),
        "--rest-addr".into(),
        "127.0.0.1:0".into(),
        "--rpc-addr".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    CoordinatorConfig::parse_from(args)
}

/// A coordinator running in this test's runtime, plus an HTTP client for it.
pub struct TestCoordinator {
    pub coordinator: Option<Coordinator>,
    pub http: reqwest::Client,
    pub base: String,
    pub rpc: String,
    pub _dir: tempfile::TempDir,
}

impl TestCoordinator {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = temp_dir("coord");
        let coordinator = flamegrid_coordinator::start(config(dir.path(), extra))
            .await
            .unwrap();
        let base = format!("http://{}", coordinator.rest_addr());
        let rpc = format!("http://{}", coordinator.rpc_addr());
        TestCoordinator {
            coordinator: Some(coordinator),
            http: reqwest::Client::new(),
            base,
            rpc,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET → (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.http.get(self.url(path))).await
    }

    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// PATCH as Flink's REST client sends it: `Content-Type: application/json` (writes take
    /// nothing else) and no body.
    pub async fn patch(&self, path: &str) -> (u16, Value) {
        send(
            self.http
                .patch(self.url(path))
                .header("content-type", "application/json"),
        )
        .await
    }

    pub async fn register_job(&self, body: &Value) -> String {
        let (status, answer) = self.post("/jobs", body).await;
        assert_eq!(status, 202, "{answer}");
        answer["jobid"].as_str().unwrap().to_string()
    }

    pub async fn stop(&mut self) {
        if let Some(c) = self.coordinator.take() {
            c.shutdown().await.unwrap();
        }
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(json!({"raw": text}))
    };
    (status, body)
}

/// Plays an agent against the registry over real gRPC: registers, heartbeats, and reports the
/// liveness of the processes it is told to watch by looking at `/proc` like the agent does.
pub struct TestAgent {
    pub id: String,
    pub address: String,
    client: RegistryClient<Channel>,
    token: Option<String>,
    /// The last watch list.
    pub watch: Vec<v1::ThreadSelector>,
    /// Keys reported dead regardless of `/proc` (to simulate vanished threads).
    pub force_dead: Vec<String>,
}

impl TestAgent {
    pub async fn connect(rpc: &str, id: &str) -> Self {
        Self::connect_with_token(rpc, id, None).await
    }

    pub async fn connect_with_token(rpc: &str, id: &str, token: Option<&str>) -> Self {
        let client = RegistryClient::connect(rpc.to_string()).await.unwrap();
        TestAgent {
            id: id.to_string(),
            address: "http://127.0.0.1:6122".to_string(),
            client,
            token: token.map(String::from),
            watch: Vec::new(),
            force_dead: Vec::new(),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    }

    pub async fn try_register(&mut self) -> Result<v1::RegisterResponse, tonic::Status> {
        let req = self.request(v1::RegisterRequest {
            agent_id: self.id.clone(),
            address: self.address.clone(),
            host: Some(v1::HostInfo {
                hostname: "test-host".into(),
                cpu_cores: 4,
                physical_memory: 8 << 30,
                free_memory: 2 << 30,
                os: "Linux".into(),
                kernel: "6.1".into(),
                agent_version: "0.1.0".into(),
            }),
            pid: std::process::id(),
        });
        self.client.register(req).await.map(|r| r.into_inner())
    }

    pub async fn register(&mut self) -> v1::RegisterResponse {
        self.try_register().await.unwrap()
    }

    /// One heartbeat reporting on the previous watch list; remembers the new one.
    pub async fn heartbeat(&mut self) -> v1::HeartbeatResponse {
        let liveness = self
            .watch
            .iter()
            .map(|sel| {
                let pid = match &sel.process {
                    Some(v1::thread_selector::Process::Pid(p)) => *p,
                    _ => 0,
                };
                let alive = pid != 0
                    && Path::new(&format!("/proc/{pid}")).exists()
                    && !self.force_dead.contains(&sel.subtask_key);
                v1::SubtaskLiveness {
                    subtask_key: sel.subtask_key.clone(),
                    alive,
                    pid,
                    threads: u32::from(alive),
                    // What a real agent says of a process it does not find.
                    failure: if alive {
                        v1::SubtaskFailure::Unspecified
                    } else {
                        v1::SubtaskFailure::ProcessNotFound
                    } as i32,
                }
            })
            .collect();
        let req = self.request(v1::HeartbeatRequest {
            agent_id: self.id.clone(),
            liveness,
            metrics: HashMap::from([
                ("System.CPU.Usage".to_string(), 12.5),
                ("System.Load.1".to_string(), 0.5),
            ]),
            free_memory: 1 << 30,
        });
        let answer = self.client.heartbeat(req).await.unwrap().into_inner();
        self.watch = answer.watch.clone();
        answer
    }
}

/// A two-vertex job on one task manager: a source of `parallelism` subtasks on `pid` (by thread
/// name) and a sink on `pid` (all threads).
pub fn two_vertex_job(tm: &str, pid: u32) -> Value {
    json!({
        "name": "test-pipeline",
        "vertices": [
            {"name": "Source: spinner", "parallelism": 2, "subtasks": [
                {"taskmanager": tm, "pid": pid, "thread_name": "sleep"},
                {"taskmanager": tm, "pid": pid, "tids": [pid]}]},
            {"name": "Sink: <sleeper>", "parallelism": 1, "inputs": [0], "subtasks": [
                {"taskmanager": tm, "pid": pid}]}
        ]
    })
}

/// Asserts `value` is an object with exactly these keys (order-free), each of the given JSON
/// type: `s` string, `i` integer, `f` number, `b` bool, `a` array, `o` object, `n` null.
pub fn assert_shape(what: &str, value: &Value, keys: &[(&str, char)]) {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {value}"));
    for (key, ty) in keys {
        let v = obj
            .get(*key)
            .unwrap_or_else(|| panic!("{what}: missing key {key:?} in {value}"));
        let ok = match ty {
            's' => v.is_string(),
            'i' => v.is_i64() || v.is_u64(),
            'f' => v.is_number(),
            'b' => v.is_boolean(),
            'a' => v.is_array(),
            'o' => v.is_object(),
            'n' => v.is_null(),
            _ => unreachable!(),
        };
        assert!(ok, "{what}: key {key:?} should be of type {ty}, is {v}");
    }
    let expected: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    for key in obj.keys() {
        assert!(
            expected.contains(&key.as_str()),
            "{what}: unexpected key {key:?}"
        );
    }
}

/// Asserts a map of every execution state (upper-case) to an integer.
pub fn assert_state_counts(what: &str, value: &Value) {
    let keys = [
        "CREATED",
        "SCHEDULED",
        "DEPLOYING",
        "RUNNING",
        "FINISHED",
        "CANCELING",
        "CANCELED",
        "FAILED",
        "RECONCILING",
        "INITIALIZING",
    ];
    let shape: Vec<(&str, char)> = keys.iter().map(|k| (*k, 'i')).collect();
    assert_shape(what, value, &shape);
}

// ---- flame graphs end to end: a real agent binary, a workload, a running job -----------------

/// The `flamegrid-agent` binary of this build (see [`flamegrid_testkit::executable`]).
pub fn agent_binary() -> PathBuf {
    flamegrid_testkit::executable("flamegrid-agent")
}

/// A real agent process with a chosen id, registered with `c`'s registry.
pub async fn start_agent(c: &TestCoordinator, id: &str) -> KillOnDrop {
    let child = Command::new(agent_binary())
        .args([
            "run",
            "--coordinator",
            &c.rpc,
            "--listen",
            "127.0.0.1:0",
            "--id",
            id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = KillOnDrop(child);
    poll(&format!("agent {id} to register"), || async {
        (c.get(&format!("/taskmanagers/{id}")).await.0 == 200).then_some(())
    })
    .await;
    agent
}

/// Two spinners and one sleeper of the C workload (frame pointers: the simplest unwinding).
pub fn spinners_and_sleeper() -> RunningWorkload {
    let mix = Mix {
        spin: 2,
        sleep: 1,
        ..Mix::default()
    };
    flamegrid_workloads::spawn(Workload::CFramePointers, &mix).unwrap()
}

/// Registers the job and waits until every subtask is RUNNING; returns (job id, vertex ids).
pub async fn running_job(c: &TestCoordinator, body: &Value) -> (String, Vec<String>) {
    let jobid = c.register_job(body).await;
    let vertices: Vec<String> = c.get_ok(&format!("/jobs/{jobid}")).await["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    for vid in &vertices {
        poll("every subtask RUNNING", || async {
            let v = c.get_ok(&format!("/jobs/{jobid}/vertices/{vid}")).await;
            all_subtasks_running(&v).then_some(())
        })
        .await;
    }
    (jobid, vertices)
}

/// Whether every subtask of a vertex details body (`/jobs/:jobid/vertices/:vertexid`) is
/// RUNNING.
pub fn all_subtasks_running(vertex: &Value) -> bool {
    vertex["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "RUNNING")
}

/// Polls the JSON endpoint until a graph (not a sentinel) is there.
pub async fn graph(c: &TestCoordinator, path: &str) -> Value {
    poll(&format!("a flame graph at {path}"), || async {
        let body = c.get_ok(path).await;
        (body["endTimestamp"].as_i64().unwrap() > 0).then_some(body)
    })
    .await
}

/// Polls the JSON endpoint (each poll starting a run when none is in flight) until `accept`
/// takes a graph; returns it.
pub async fn graph_where(
    c: &TestCoordinator,
    path: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    poll(&format!("a matching flame graph at {path}"), || async {
        let body = c.get_ok(path).await;
        (body["endTimestamp"].as_i64().unwrap() > 0 && accept(&body)).then_some(body)
    })
    .await
}

/// True when `chain` appears in the tree as consecutive nodes (parent → child), anywhere.
pub fn has_chain(node: &Value, chain: &[&str]) -> bool {
    fn follows(node: &Value, chain: &[&str]) -> bool {
        match chain.split_first() {
            None => true,
            Some((first, rest)) => {
                node["name"] == *first
                    && (rest.is_empty() || children(node).iter().any(|c| follows(c, rest)))
            }
        }
    }
    follows(node, chain) || children(node).iter().any(|c| has_chain(c, chain))
}

pub fn children(node: &Value) -> &Vec<Value> {
    node["children"].as_array().unwrap()
}

/// Sampling runs a real agent served that delivered, read from its `/metrics`
/// (`flamegrid_agent_sampling_runs_total{outcome="ok"}`): how tests count runs at the agent.
pub async fn agent_ok_runs(metrics_url: &str) -> u64 {
    agent_sample(
        metrics_url,
        "flamegrid_agent_sampling_runs_total{outcome=\"ok\"}",
    )
    .await as u64
}

/// The value of the sample `series` (name and labels, as written) of a real agent's `/metrics`.
pub async fn agent_sample(metrics_url: &str, series: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {series} in the agent's metrics:\n{text}"))
}

// ---- real processes: a coordinator binary, an agent with /metrics ----------------------------

/// A real `flamegrid-coordinator` process (see [`spawn_coordinator`]): its REST and gRPC URLs.
pub struct CoordinatorProcess {
    pub child: KillOnDrop,
    pub rest: String,
    pub rpc: String,
}

/// Starts the coordinator binary on loopback port 0 with `--data-dir data_dir` and `extra`
/// flags, and waits for it to print its addresses; stdout is drained afterwards so the child
/// never blocks on a full pipe. Killed (SIGKILL) when dropped.
pub fn spawn_coordinator(data_dir: &Path, extra: &[&str]) -> CoordinatorProcess {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(flamegrid_testkit::executable("flamegrid-coordinator"))
        .args(["--rest-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let (mut rest, mut rpc) = (None, None);
    while rest.is_none() || rpc.is_none() {
        let line = lines
            .next()
            .expect("the coordinator printed its addresses")
            .unwrap();
        if let Some(url) = line.strip_prefix("flamegrid dashboard: ") {
            rest = Some(url.trim_end_matches('/').to_string());
        } else if let Some(url) = line.strip_prefix("flamegrid registry (gRPC): ") {
            rpc = Some(url.to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    CoordinatorProcess {
        child,
        rest: rest.unwrap(),
        rpc: rpc.unwrap(),
    }
}

impl CoordinatorProcess {
    /// `POST /jobs` of `body` (asserts 202): the new job's id.
    pub async fn register_job(&self, body: &Value) -> String {
        let (status, answer) = send(
            reqwest::Client::new()
                .post(format!("{}/jobs", self.rest))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        answer["jobid"].as_str().unwrap().to_string()
    }

    /// The id of job `id`'s first vertex.
    pub async fn first_vertex(&self, id: &str) -> String {
        let (status, job) =
            send(reqwest::Client::new().get(format!("{}/jobs/{id}", self.rest))).await;
        assert_eq!(status, 200, "{job}");
        job["vertices"][0]["id"].as_str().unwrap().to_string()
    }

    /// Cancels job `id` as Flink's client does (`PATCH`, JSON content type, no body; asserts 202).
    pub async fn cancel_job(&self, id: &str) {
        let (status, answer) = send(
            reqwest::Client::new()
                .patch(format!("{}/jobs/{id}", self.rest))
                .header("content-type", "application/json"),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }
}

/// A real agent with `/metrics` (see [`spawn_metrics_agent`]).
pub struct MetricsAgent {
    pub process: KillOnDrop,
    /// Its Sampling service, `http://127.0.0.1:port`.
    pub address: String,
    /// Its `/metrics` URL.
    pub metrics: String,
}

impl MetricsAgent {
    /// Sampling runs it served that delivered ([`agent_ok_runs`]).
    pub async fn ok_runs(&self) -> u64 {
        agent_ok_runs(&self.metrics).await
    }
}

/// Starts `flamegrid-agent run --coordinator coordinators --id id` on loopback ports with
/// `--metrics-listen`; does not wait for it to register (the caller polls where it looks).
pub fn spawn_metrics_agent(coordinators: &str, id: &str) -> MetricsAgent {
    let (port, metrics_port) = (free_port(), free_port());
    let process = KillOnDrop(
        Command::new(agent_binary())
            .args(["run", "--coordinator", coordinators, "--id", id])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            // Warnings and errors reach the test's output: an agent that cannot start (a port
            // taken meanwhile) says so instead of a silent wait for its registration.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    MetricsAgent {
        process,
        address: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
    }
}
