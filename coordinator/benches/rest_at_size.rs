//! What the REST answers about a large job cost (issue 15, "Flink's limits"), through a real
//! coordinator started in this process and real HTTP on loopback, so the time includes routing,
//! the registry, building the answer, JSON and the transfer.
//!
//! The fleet: 1,000 agents and one job of 100,000 subtasks (10 vertices of 10,000, each agent
//! running 10 subtasks of every vertex), all RUNNING.
//!
//! * `rest/vertex_details_10000`: `GET /jobs/:jobid/vertices/:vertexid` (goal: ≤ 50 ms).
//! * `rest/subtasktimes_10000`: `GET /jobs/:jobid/vertices/:vertexid/subtasktimes`.
//! * `rest/job_details_100000`: `GET /jobs/:jobid`.
//! * `rest/jobs_overview`: `GET /jobs/overview`.
//! * `rest/taskmanagers_1000`: `GET /taskmanagers`.
//! * `rest/taskmanager_details`: `GET /taskmanagers/:tmid`.
//!
//! Run with `cargo bench -p flamegrid-coordinator --bench rest_at_size`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a bench fails
mod support;

use clap::Parser;
use criterion::{Criterion, criterion_group, criterion_main};
use flamegrid_coordinator::config::CoordinatorConfig;
use flamegrid_proto::v1;
use serde_json::json;
use std::hint::black_box;
use support::{agent_id, register_agents};

const AGENTS: usize = 1_000;
const VERTICES: usize = 10;
const PARALLELISM: usize = 10_000;

fn rest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::parse_from([
        "flamegrid-coordinator",
        "--rest-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--heartbeat-timeout-s",
        "3600",
    ]);
    let coordinator = rt.block_on(flamegrid_coordinator::start(config)).unwrap();
    let registry = coordinator.registry().clone();
    register_agents(&registry, AGENTS);
    let vertices: Vec<_> = (0..VERTICES)
        .map(|v| {
            let subtasks: Vec<_> = (0..PARALLELISM)
                .map(|s| json!({"taskmanager": agent_id(s % AGENTS), "pid": 1000 + s % AGENTS}))
                .collect();
            json!({"name": format!("vertex {v}"), "parallelism": PARALLELISM, "subtasks": subtasks})
        })
        .collect();
    let body = json!({"name": "fleet", "vertices": vertices}).to_string();
    let job = registry.register_job(body.as_bytes()).unwrap();
    for a in 0..AGENTS {
        let beat = |liveness| v1::HeartbeatRequest {
            agent_id: agent_id(a),
            liveness,
            metrics: Default::default(),
            free_memory: 1,
        };
        let watch = registry.heartbeat(beat(Vec::new())).unwrap().watch;
        let liveness = watch
            .iter()
            .map(|w| v1::SubtaskLiveness {
                subtask_key: w.subtask_key.clone(),
                alive: true,
                pid: 1000 + a as u32,
                threads: 1,
                failure: 0,
            })
            .collect();
        registry.heartbeat(beat(liveness)).unwrap();
    }
    let vertex = registry.job(&job).unwrap().spec.vertices[0].id.clone();
    let base = format!("http://{}", coordinator.rest_addr());
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(format!("{base}{path}"));
        rt.block_on(async move {
            let answer = request.send().await.unwrap();
            assert!(answer.status().is_success(), "{}", answer.status());
            answer.bytes().await.unwrap()
        })
    };
    eprintln!(
        "vertex details of {PARALLELISM} subtasks: {} bytes of JSON",
        get(format!("/jobs/{job}/vertices/{vertex}")).len()
    );

    let mut group = c.benchmark_group("rest");
    group.sample_size(20);
    for (name, path) in [
        (
            "vertex_details_10000",
            format!("/jobs/{job}/vertices/{vertex}"),
        ),
        (
            "subtasktimes_10000",
            format!("/jobs/{job}/vertices/{vertex}/subtasktimes"),
        ),
        ("job_details_100000", format!("/jobs/{job}")),
        ("jobs_overview", "/jobs/overview".to_string()),
        ("taskmanagers_1000", "/taskmanagers".to_string()),
        (
            "taskmanager_details",
            format!("/taskmanagers/{}", agent_id(7)),
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| black_box(get(path.clone()))));
    }
    group.finish();
    rt.block_on(coordinator.shutdown()).unwrap();
}

criterion_group!(benches, rest);
criterion_main!(benches);
