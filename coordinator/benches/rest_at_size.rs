//! What the REST answers about a large job cost (issue 15, "Flink's limits"), through a real
//! coordinator started in this process and real HTTP on loopback, so the time includes routing,
//! the registry, building the answer, JSON and the transfer.
//!
//! The fleet: 1,000 agents; one job of 100,000 subtasks (10 vertices of 10,000, each agent
//! running 10 subtasks of every vertex); one job of one vertex at Flink's maximum parallelism,
//! 32,768; and [`SMALL_JOBS`] jobs of 10 subtasks, as a busy session cluster has: all RUNNING.
//!
//! * `rest/vertex_details_10000`: `GET /jobs/:jobid/vertices/:vertexid` (goal: ≤ 50 ms).
//! * `rest/vertex_details_32768`: the same for the vertex of 32,768 subtasks.
//! * `rest/subtasktimes_10000`: `GET /jobs/:jobid/vertices/:vertexid/subtasktimes`.
//! * `rest/job_details_100000`: `GET /jobs/:jobid`.
//! * `rest/jobs_overview_1002_jobs`: `GET /jobs/overview` (1,002 jobs, 132,768 + 10,020
//!   subtasks).
//! * `rest/taskmanagers_1000`: `GET /taskmanagers`.
//! * `rest/taskmanager_details`: `GET /taskmanagers/:tmid`.
//! * `rest/register_job_100000`: `POST /jobs` of a job of 100,000 subtasks (validation, the
//!   store's durable insert, the index); each registered job is cancelled and expired outside
//!   the measured time, so the registry keeps its size.
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
/// Flink's maximum parallelism of a vertex.
const MAX_PARALLELISM: usize = 32_768;
/// Jobs of 10 subtasks beside the large ones, for `/jobs/overview`.
const SMALL_JOBS: usize = 1_000;

/// A `POST /jobs` body: one vertex per entry of `parallelisms`, subtask `s` on agent
/// `s % AGENTS`.
fn job_body(name: &str, parallelisms: &[usize]) -> String {
    let vertices: Vec<_> = parallelisms
        .iter()
        .enumerate()
        .map(|(v, &parallelism)| {
            let subtasks: Vec<_> = (0..parallelism)
                .map(|s| json!({"taskmanager": agent_id(s % AGENTS), "pid": 1000 + s % AGENTS}))
                .collect();
            json!({"name": format!("vertex {v}"), "parallelism": parallelism, "subtasks": subtasks})
        })
        .collect();
    json!({"name": name, "vertices": vertices}).to_string()
}

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
        // The jobs `register_job_100000` registers and cancels are removed at once.
        "--job-retention-max",
        "0",
    ]);
    let coordinator = rt.block_on(flamegrid_coordinator::start(config)).unwrap();
    let registry = coordinator.registry().clone();
    register_agents(&registry, AGENTS);
    let body = job_body("fleet", &[PARALLELISM; VERTICES]);
    let job = registry.register_job(body.as_bytes()).unwrap();
    let wide = registry
        .register_job(job_body("wide", &[MAX_PARALLELISM]).as_bytes())
        .unwrap();
    for j in 0..SMALL_JOBS {
        registry
            .register_job(job_body(&format!("small {j}"), &[10]).as_bytes())
            .unwrap();
    }
    // The jobs' start: every agent's first heartbeat moves its subtasks to INITIALIZING, the
    // second (all alive) to RUNNING. The time spent in the registry is printed: each of these
    // heartbeats changes subtask states of jobs of up to 100,000 subtasks.
    let mut starting = std::time::Duration::ZERO;
    for a in 0..AGENTS {
        let beat = |liveness| v1::HeartbeatRequest {
            agent_id: agent_id(a),
            liveness,
            metrics: Default::default(),
            free_memory: 1,
        };
        let started = std::time::Instant::now();
        let watch = registry.heartbeat(beat(Vec::new())).unwrap().watch;
        starting += started.elapsed();
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
        let started = std::time::Instant::now();
        registry.heartbeat(beat(liveness)).unwrap();
        starting += started.elapsed();
    }
    eprintln!(
        "the jobs' start: {} heartbeats that change subtask states took {:.1} ms in the registry",
        2 * AGENTS,
        starting.as_secs_f64() * 1e3
    );
    let vertex = registry.job(&job).unwrap().spec.vertices[0].id.clone();
    let wide_vertex = registry.job(&wide).unwrap().spec.vertices[0].id.clone();
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
        "POST /jobs of 100,000 subtasks: {} bytes of JSON",
        body.len()
    );
    for (path, what) in [
        (
            format!("/jobs/{job}/vertices/{vertex}"),
            "vertex details of 10,000 subtasks",
        ),
        (
            format!("/jobs/{wide}/vertices/{wide_vertex}"),
            "vertex details of 32,768 subtasks",
        ),
        (format!("/jobs/{job}"), "job details of 100,000 subtasks"),
        ("/jobs/overview".to_string(), "the overview of 1,002 jobs"),
        ("/taskmanagers".to_string(), "1,000 task managers"),
    ] {
        eprintln!("{what}: {} bytes of JSON", get(path).len());
    }

    let mut group = c.benchmark_group("rest");
    group.sample_size(20);
    for (name, path) in [
        (
            "vertex_details_10000",
            format!("/jobs/{job}/vertices/{vertex}"),
        ),
        (
            "vertex_details_32768",
            format!("/jobs/{wide}/vertices/{wide_vertex}"),
        ),
        (
            "subtasktimes_10000",
            format!("/jobs/{job}/vertices/{vertex}/subtasktimes"),
        ),
        ("job_details_100000", format!("/jobs/{job}")),
        ("jobs_overview_1002_jobs", "/jobs/overview".to_string()),
        ("taskmanagers_1000", "/taskmanagers".to_string()),
        (
            "taskmanager_details",
            format!("/taskmanagers/{}", agent_id(7)),
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| black_box(get(path.clone()))));
    }
    group.sample_size(10);
    group.bench_function("register_job_100000", |b| {
        b.iter_custom(|iters| {
            let mut measured = std::time::Duration::ZERO;
            for _ in 0..iters {
                let request = http
                    .post(format!("{base}/jobs"))
                    .header("content-type", "application/json")
                    .body(body.clone());
                let started = std::time::Instant::now();
                let answer: serde_json::Value = rt.block_on(async move {
                    let answer = request.send().await.unwrap();
                    assert_eq!(answer.status(), 202);
                    answer.json().await.unwrap()
                });
                measured += started.elapsed();
                let id = answer["jobid"].as_str().unwrap();
                registry.cancel_job(id).unwrap();
                // The coordinator's own expiry may have removed it already.
                registry.expire_jobs().unwrap();
                assert!(registry.job(id).is_err(), "job {id} was not expired");
            }
            measured
        })
    });
    group.finish();
    rt.block_on(coordinator.shutdown()).unwrap();
}

criterion_group!(benches, rest);
criterion_main!(benches);
