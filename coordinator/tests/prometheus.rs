//! `/metrics` in Prometheus' text format, on the coordinator and on the agent, scraped over real
//! HTTP before and after a real flame graph run: a coordinator in this process, a real
//! `flamegrid-agent run --metrics-listen` sampling a real workload.
//!
//! Every line of both texts must be a valid sample or comment of the text format (parsed by
//! `flamegrid_proto::prometheus::parse_line`), every family must have its `# HELP` and `# TYPE`,
//! and the counters must have moved with the run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_proto::prometheus::parse_line;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use support::{
    TestCoordinator, graph, poll, running_job, spawn_metrics_agent, spinners_and_sleeper,
};

/// Parsed exposition: every sample by `name{labels}` (labels sorted), and the families typed.
struct Scrape {
    samples: BTreeMap<String, f64>,
    typed: BTreeSet<String>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {:?}", self.samples.keys()))
    }
}

/// Fetches `url`, checks the content type, parses every line.
async fn scrape(url: &str) -> Scrape {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{url}: {content_type}"
    );
    let text = response.text().await.unwrap();
    let (mut samples, mut typed, mut helped) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
        }
        let parsed = parse_line(line).unwrap_or_else(|e| panic!("{url}: {e}\n{text}"));
        if let Some((name, mut labels, value)) = parsed {
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let key = if labels.is_empty() {
                name.clone()
            } else {
                format!("{name}{{{}}}", labels.join(","))
            };
            // Every sample belongs to a family announced before it.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(&name);
            assert!(
                typed.contains(family),
                "{url}: {name} has no # TYPE before it"
            );
            assert!(samples.insert(key.clone(), value).is_none(), "{key} twice");
        }
    }
    assert_eq!(typed, helped, "{url}: every family has # HELP and # TYPE");
    Scrape { samples, typed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_metrics_endpoints_parse_and_count_a_real_run() {
    let c = TestCoordinator::start(&[
        "--flamegraph-num-samples",
        "10",
        "--flamegraph-delay-ms",
        "10",
    ])
    .await;
    let agent = spawn_metrics_agent(&c.rpc, "metrics-agent");
    poll("the agent to register", || async {
        (c.get("/taskmanagers/metrics-agent").await.0 == 200).then_some(())
    })
    .await;
    let agent_url = agent.metrics.clone();

    // Before any run: nothing counted yet, one agent, no job.
    let before = scrape(&c.url("/metrics")).await;
    assert_eq!(
        before.get("flamegrid_coordinator_flamegraph_runs_started_total"),
        0.0
    );
    assert_eq!(
        before.get("flamegrid_coordinator_flamegraph_run_duration_seconds_count"),
        0.0
    );
    assert_eq!(before.get("flamegrid_coordinator_agents"), 1.0);
    for timing in ["dispatch_spread", "after_answers"] {
        assert_eq!(
            before.get(&format!(
                "flamegrid_coordinator_flamegraph_last_run_{timing}_seconds"
            )),
            0.0
        );
    }
    assert!(before.get("flamegrid_coordinator_heartbeat_lag_max_seconds") >= 0.0);
    let agent_before = scrape(&agent_url).await;
    assert_eq!(agent_before.get("flamegrid_agent_samples_total"), 0.0);
    assert_eq!(
        agent_before.get("flamegrid_agent_sampling_runs_total{outcome=\"ok\"}"),
        0.0
    );

    // A real run: two spinners and a sleeper of a C workload, one vertex of three subtasks.
    let workload = spinners_and_sleeper();
    let pid = workload.pid();
    let subtasks: Vec<_> = ["spin-0", "spin-1", "sleep-0"]
        .iter()
        .map(|t| json!({"taskmanager": "metrics-agent", "pid": pid, "thread_name": t}))
        .collect();
    let body = json!({"name": "metrics", "vertices": [
        {"name": "Source: work", "parallelism": 3, "subtasks": subtasks}]});
    let (job, vertices) = running_job(&c, &body).await;
    let graph = graph(
        &c,
        &format!("/jobs/{job}/vertices/{}/flamegraph", vertices[0]),
    )
    .await;
    let sampled = graph["data"]["value"].as_u64().unwrap();
    assert!(sampled > 0);

    // The graph is served as soon as it is stored; the run's counters are set just after.
    let after = poll("the run's counters", || async {
        let m = scrape(&c.url("/metrics")).await;
        (m.get("flamegrid_coordinator_flamegraph_last_run_after_answers_seconds") > 0.0)
            .then_some(m)
    })
    .await;
    assert!(after.get("flamegrid_coordinator_flamegraph_runs_started_total") >= 1.0);
    assert!(after.get("flamegrid_coordinator_flamegraph_runs_completed_total") >= 1.0);
    assert!(after.get("flamegrid_coordinator_flamegraph_run_duration_seconds_count") >= 1.0);
    assert!(after.get("flamegrid_coordinator_flamegraph_run_duration_seconds_sum") > 0.0);
    assert!(
        after.get("flamegrid_coordinator_flamegraph_run_duration_seconds_bucket{le=\"+Inf\"}")
            >= 1.0
    );
    assert!(after.get("flamegrid_coordinator_flamegraph_cache_bytes") > 0.0);
    // The last run's own timing: taking in the last answer and storing the graph took some
    // time, less than the whole run; one agent, so one request: no spread.
    let run_total = after.get("flamegrid_coordinator_flamegraph_run_duration_seconds_sum");
    let after_answers =
        after.get("flamegrid_coordinator_flamegraph_last_run_after_answers_seconds");
    assert!(after_answers < run_total, "{after_answers} of {run_total}");
    assert_eq!(
        after.get("flamegrid_coordinator_flamegraph_last_run_dispatch_spread_seconds"),
        0.0
    );
    assert_eq!(
        after.get("flamegrid_coordinator_jobs{status=\"RUNNING\"}"),
        1.0
    );
    assert_eq!(
        after.get("flamegrid_coordinator_subtasks{state=\"RUNNING\"}"),
        3.0
    );
    assert!(
        after
            .typed
            .contains("flamegrid_coordinator_heartbeat_lag_avg_seconds")
    );
    // Reads are open and served under /v1 like every path.
    let v1 = scrape(&c.url("/v1/metrics")).await;
    assert_eq!(v1.get("flamegrid_coordinator_agents"), 1.0);

    let agent_after = scrape(&agent_url).await;
    let ok = agent_after.get("flamegrid_agent_sampling_runs_total{outcome=\"ok\"}");
    assert!(ok >= 1.0, "{ok}");
    let samples = agent_after.get("flamegrid_agent_samples_total");
    assert!(samples >= sampled as f64, "{samples} < {sampled}");
    // Counted, but how many depends on the backend: every sample with ptrace; with perf
    // events only a thread asleep since before the run, once, and none when the sleeper
    // wakes during the run (its stack then comes from the perf ring).
    assert!(agent_after.get("flamegrid_agent_ptrace_stops_total") >= 0.0);
    assert!(
        agent_after
            .typed
            .contains("flamegrid_agent_ptrace_stops_total")
    );
    assert_eq!(
        agent_after.get("flamegrid_agent_sampling_run_duration_seconds_count"),
        ok
    );
    assert_eq!(
        agent_after.get("flamegrid_agent_sampling_runs_in_flight"),
        0.0
    );

    // The agent's listener serves only GET /metrics.
    let client = reqwest::Client::new();
    let other = client
        .get(agent_url.replace("/metrics", "/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let post = client.post(&agent_url).body("x").send().await.unwrap();
    assert_eq!(post.status(), 405);
    drop(agent);
    drop(workload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_database_store_and_pool_are_on_metrics() {
    let Some(db) = flamegrid_testkit::postgres::scratch_database("metrics_pool") else {
        return;
    };
    let c = TestCoordinator::start(&["--database-url", &db.url, "--database-pool-size", "4"]).await;
    // Before any flush: no row written yet, and the pool as configured.
    let before = scrape(&c.url("/metrics")).await;
    assert_eq!(
        before.get("flamegrid_coordinator_store_rows_written_total{table=\"jobs\"}"),
        0.0
    );
    assert_eq!(
        before.get("flamegrid_coordinator_database_pool_max_connections"),
        4.0
    );
    assert!(before.get("flamegrid_coordinator_database_pool_open_connections") >= 1.0);
    assert!(before.get("flamegrid_coordinator_database_pool_in_use_connections") <= 4.0);
    assert!(before.get("flamegrid_coordinator_database_pool_waiting") >= 0.0);

    // An agent's heartbeat makes a job's subtasks RUNNING: the flush writes its row.
    let worker = support::sleeper();
    let mut agent = support::TestAgent::connect(&c.rpc, "pool-agent").await;
    agent.register().await;
    c.register_job(&support::two_vertex_job("pool-agent", worker.pid()))
        .await;
    agent.heartbeat().await;
    agent.heartbeat().await;
    poll("a job row written by the flush", || async {
        let after = scrape(&c.url("/metrics")).await;
        (after.get("flamegrid_coordinator_store_rows_written_total{table=\"jobs\"}") > 0.0)
            .then_some(())
    })
    .await;
    let plain = TestCoordinator::start(&[]).await;
    let without = scrape(&plain.url("/metrics")).await;
    assert!(
        !without
            .typed
            .contains("flamegrid_coordinator_database_pool_open_connections")
    );
    assert!(
        without
            .typed
            .contains("flamegrid_coordinator_store_rows_written_total")
    );
    drop(worker);
}
