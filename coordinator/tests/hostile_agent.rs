//! Issue 12, finding 2: an agent can never crash the coordinator.
//!
//! Fake agents speak the real gRPC contract: each is a tonic `Sampling` server in this test,
//! registered with a real coordinator through the real `Registry` service (as `TestAgent`), and
//! watching a real process so its subtasks become RUNNING. Subtask 0 of each job is answered
//! honestly (`main;work`); subtask 1 with something no honest agent sends: a stack two million
//! frames deep, indexes out of range, megabyte names over a huge string table, hundreds of
//! thousands of distinct stacks, more samples than the coordinator takes from one answer, and
//! entries for subtasks nobody asked for. Before the fix the first of these aborted the whole
//! coordinator (tokio worker stack overflow in the recursive tree build).
//!
//! What the coordinator does instead (DESIGN.md: "a stack cut at the depth limit keeps its
//! innermost frames under a `[truncated]` node"): a deep stack is cut on receipt at
//! `--flamegraph-max-depth` and drawn under `[truncated]`; a subtask whose answer does not hold
//! together, or is larger than the coordinator takes, is listed in `missing`; entries for
//! subtasks that were not asked for are ignored. And it keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
use flamegrid_proto::SampleResponseBuilder;
use flamegrid_proto::v1::{self, sampling_server::Sampling, sampling_server::SamplingServer};
use serde_json::{Value, json};
use support::*;

const MAX_DEPTH: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hostile {
    /// One stack of two million frames (plus `deep_leaf` innermost).
    Deep,
    /// A sample naming frame and thread indexes past their tables.
    BadIndexes,
    /// A 20 MB string table, and a frame named by a 5 MB string.
    HugeStrings,
    /// 200,000 distinct stacks.
    ManyStacks,
    /// 1.1 million samples with empty stacks: more than one answer may hold.
    OverBudget,
    /// Entries for subtasks of another job and of an index nobody asked for, and a second
    /// entry for subtask 0.
    Strangers,
}

#[derive(Clone)]
struct FakeAgent(Hostile);

fn honest(b: &mut SampleResponseBuilder, key: &str) {
    let t = SampledThread {
        pid: 1,
        tid: 1,
        name: "honest".into(),
    };
    let mut s = SampleSetBuilder::new();
    s.push(
        &t,
        1,
        ThreadState::Runnable,
        [Frame::named("main"), Frame::named("work")],
        false,
    );
    b.add_subtask(key, &s.finish());
}

/// Appends `name` to the answer's strings and a frame naming it; returns the frame's index.
fn frame(resp: &mut v1::SampleResponse, name: String) -> u32 {
    resp.strings.push(name);
    resp.frames.push(v1::Frame {
        name: (resp.strings.len() - 1) as u32,
        module: 0,
        inlined: false,
    });
    (resp.frames.len() - 1) as u32
}

fn one_thread() -> Vec<v1::Thread> {
    vec![v1::Thread {
        pid: 1,
        tid: 2,
        name: 0,
    }]
}

fn sample(stack: Vec<u32>) -> v1::Sample {
    v1::Sample {
        thread: 0,
        timestamp_ms: 1,
        state: v1::ThreadState::Runnable as i32,
        stack,
        truncated: false,
    }
}

fn hostile_subtask(mode: Hostile, resp: &mut v1::SampleResponse, key: &str) {
    let mut sub = v1::SubtaskSamples {
        subtask_key: key.to_string(),
        threads: one_thread(),
        ..Default::default()
    };
    match mode {
        Hostile::Deep => {
            let outer = frame(resp, "deep_outer".into());
            let leaf = frame(resp, "deep_leaf".into());
            let mut stack = vec![outer; 2_000_000];
            stack.push(leaf);
            sub.samples.push(sample(stack));
        }
        Hostile::BadIndexes => {
            let f = frame(resp, "fine".into());
            sub.samples.push(sample(vec![f, u32::MAX]));
            sub.samples.push(v1::Sample {
                thread: 7,
                ..sample(vec![f])
            });
        }
        Hostile::HugeStrings => {
            for i in 0..20_000 {
                resp.strings.push(format!("{i:01000}"));
            }
            let huge = frame(resp, "h".repeat(5 << 20));
            sub.samples.push(sample(vec![huge]));
        }
        Hostile::ManyStacks => {
            let root = frame(resp, "many".into());
            for i in 0..200_000 {
                let f = frame(resp, format!("s{i}"));
                sub.samples.push(sample(vec![root, f]));
            }
        }
        Hostile::OverBudget => {
            sub.samples = vec![sample(Vec::new()); 1_100_000];
        }
        Hostile::Strangers => {
            let f = frame(resp, "stranger".into());
            sub.samples.push(sample(vec![f]));
            let (job_vertex, _) = key.rsplit_once('/').unwrap_or((key, ""));
            for other in [
                format!("{}/{}/0", "0".repeat(32), "0".repeat(32)),
                format!("{job_vertex}/7"),
                format!("{job_vertex}/0"),
            ] {
                resp.subtasks.push(v1::SubtaskSamples {
                    subtask_key: other,
                    ..sub.clone()
                });
            }
        }
    }
    resp.subtasks.push(sub);
}

#[tonic::async_trait]
impl Sampling for FakeAgent {
    async fn sample(
        &self,
        request: tonic::Request<v1::SampleRequest>,
    ) -> Result<tonic::Response<v1::SampleResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut b = SampleResponseBuilder::new(req.request_id);
        let mut hostile_keys = Vec::new();
        for sel in &req.selectors {
            if sel.subtask_key.ends_with("/0") {
                honest(&mut b, &sel.subtask_key);
            } else {
                hostile_keys.push(sel.subtask_key.clone());
            }
        }
        let mut resp = b.finish(1, 2);
        for key in hostile_keys {
            hostile_subtask(self.0, &mut resp, &key);
        }
        Ok(tonic::Response::new(resp))
    }

    async fn thread_dump(
        &self,
        _: tonic::Request<v1::ThreadDumpRequest>,
    ) -> Result<tonic::Response<v1::SampleResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not a thread-dump test"))
    }
}

/// Starts a fake agent on loopback; it serves until the test's runtime ends.
async fn fake_agent(mode: Hostile) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SamplingServer::new(FakeAgent(mode)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Registers a fake agent for `mode` and a job of two subtasks on it (watching `pid`), and
/// heartbeats until both are RUNNING; returns the vertex's flame graph path.
async fn hostile_job(c: &TestCoordinator, mode: Hostile, pid: u32) -> String {
    let id = format!("hostile-{mode:?}").to_lowercase();
    let mut agent = TestAgent::connect(&c.rpc, &id).await;
    agent.address = fake_agent(mode).await;
    agent.register().await;
    let subtask = json!({"taskmanager": id, "pid": pid});
    let jobid = c
        .register_job(&json!({"name": format!("{mode:?}"), "vertices": [
            {"name": "v", "parallelism": 2, "subtasks": [subtask, subtask]}]}))
        .await;
    agent.heartbeat().await; // the watch list: INITIALIZING
    agent.heartbeat().await; // alive: RUNNING
    let job = c.get_ok(&format!("/jobs/{jobid}")).await;
    let vid = job["vertices"][0]["id"].as_str().unwrap().to_string();
    format!("/jobs/{jobid}/vertices/{vid}")
}

/// Nodes on the longest path of a JSON flame graph, walked without recursion.
fn depth(node: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(node, 1)];
    while let Some((n, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(children(n).iter().map(|c| (c, d + 1)));
    }
    deepest
}

fn missing(graph: &Value) -> Vec<u64> {
    graph["missing"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agents_cannot_crash_the_coordinator_and_it_keeps_serving() {
    let depth_flag = MAX_DEPTH.to_string();
    let c = TestCoordinator::start(&[
        "--flamegraph-max-depth",
        &depth_flag,
        "--flamegraph-num-samples",
        "1",
        "--flamegraph-delay-ms",
        "1",
    ])
    .await;
    let target = sleeper();

    // Two million frames: cut on receipt, innermost frames kept under [truncated].
    let path = hostile_job(&c, Hostile::Deep, target.pid()).await;
    let graph = support::graph(&c, &format!("{path}/flamegraph")).await;
    let data = &graph["data"];
    assert!(missing(&graph).is_empty(), "{}", graph["missing"]);
    assert!(
        depth(data) <= MAX_DEPTH + 2,
        "root + [truncated] + {MAX_DEPTH} frames, got {}",
        depth(data)
    );
    assert!(
        has_chain(data, &["root", "[truncated]", "deep_outer"]),
        "cut under [truncated]"
    );
    assert!(
        has_chain(data, &["deep_outer", "deep_leaf"]),
        "innermost kept"
    );
    assert!(has_chain(data, &["root", "main", "work"]), "honest subtask");
    for view in ["flamegraph.svg", "flamegraph.folded"] {
        let response = c
            .http
            .get(c.url(&format!("{path}/{view}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{view}");
        let text = response.text().await.unwrap();
        assert!(text.contains("deep_leaf"), "{view}");
    }

    // Indexes past their tables: that subtask is missing, the rest is drawn.
    let path = hostile_job(&c, Hostile::BadIndexes, target.pid()).await;
    let graph = support::graph(&c, &format!("{path}/flamegraph")).await;
    assert_eq!(missing(&graph), [1]);
    assert!(has_chain(&graph["data"], &["root", "main", "work"]));

    // A 20 MB string table and a 5 MB name: the name is cut, the graph drawn.
    let path = hostile_job(&c, Hostile::HugeStrings, target.pid()).await;
    let graph = support::graph(&c, &format!("{path}/flamegraph")).await;
    assert!(missing(&graph).is_empty(), "{}", graph["missing"]);
    let longest = children(&graph["data"])
        .iter()
        .map(|c| c["name"].as_str().unwrap().len())
        .max()
        .unwrap();
    assert!(
        (1000..=4096).contains(&longest),
        "name cut to {longest} bytes"
    );

    // 200,000 distinct stacks: all counted.
    let path = hostile_job(&c, Hostile::ManyStacks, target.pid()).await;
    let graph = support::graph(&c, &format!("{path}/flamegraph")).await;
    assert_eq!(graph["data"]["value"], 200_001);

    // Over a million samples in one answer: refused, that subtask missing.
    let path = hostile_job(&c, Hostile::OverBudget, target.pid()).await;
    let graph = support::graph(&c, &format!("{path}/flamegraph")).await;
    assert_eq!(missing(&graph), [1]);
    assert_eq!(graph["data"]["value"], 1);

    // Answers for subtasks nobody asked for (another job's, index 7, subtask 0 again): ignored.
    let path = hostile_job(&c, Hostile::Strangers, target.pid()).await;
    let graph = support::graph(&c, &format!("{path}/flamegraph")).await;
    assert!(missing(&graph).is_empty(), "{}", graph["missing"]);
    assert_eq!(
        graph["data"]["value"], 2,
        "one sample each of subtasks 0 and 1"
    );
    assert!(has_chain(&graph["data"], &["root", "main", "work"]));

    // Still serving.
    assert_eq!(c.get("/overview").await.0, 200);
    assert_eq!(
        c.get_ok("/taskmanagers").await["taskmanagers"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
}
