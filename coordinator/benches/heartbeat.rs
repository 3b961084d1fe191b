//! What one agent heartbeat costs the coordinator's registry at fleet scale (issue 15,
//! "Heartbeats that cost microseconds").
//!
//! The fleet: 1,000 agents watching 10 subtasks each, placed in two jobs of 5,000 subtasks (5
//! vertices of 1,000; every agent has one subtask in each vertex), registered through the real
//! `Registry` API on a real store in a temporary directory. Each heartbeat carries the agent's
//! 10 liveness reports and a dozen host metrics, like `flamegrid-agent` sends, and the
//! registry answers with the agent's watch list. Agents take turns, as a fleet would.
//!
//! * `heartbeat/steady`: nothing changed since the last beat (the common case: every subtask
//!   still RUNNING with the same pid and thread count).
//! * `heartbeat/one_change`: one of the agent's subtasks reports a different thread count, so
//!   one subtask of a 5,000-subtask job changes; the change must reach the store.
//!
//! * `heartbeat_postgres/round_then_flush`: the same fleet on the shared PostgreSQL store of
//!   replicated coordinators (issue 16): every agent heartbeats once with one change, then one
//!   flush and one sync, as the flusher does every 500 ms. After it, the rows written are
//!   printed: the replica vouches for agents that stay with it (one row of its own per flush),
//!   so their heartbeats write no task manager row at all. Runs only when
//!   `FLAMEGRID_TEST_POSTGRES_URL` names a server (a scratch database is created and dropped).
//!
//! Run with `cargo bench -p flamegrid-coordinator --bench heartbeat`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a bench fails
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use flamegrid_coordinator::database::Database;
use flamegrid_coordinator::registry::postgres::PgStore;
use flamegrid_coordinator::registry::{JobRetention, Registry};
use flamegrid_proto::v1;
use serde_json::json;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;
use support::{agent_id, register_agents};

const AGENTS: usize = 1_000;
const JOBS: usize = 2;
const VERTICES_PER_JOB: usize = 5;

/// One simulated agent: its id and the liveness reports of its watched subtasks.
struct Agent {
    id: String,
    liveness: Vec<v1::SubtaskLiveness>,
}

fn metrics() -> HashMap<String, f64> {
    [
        "System.CPU.Usage",
        "System.CPU.Load1min",
        "System.CPU.Load5min",
        "System.CPU.Load15min",
        "System.Memory.Free",
        "System.Memory.Used",
        "System.Memory.Available",
        "System.Network.eth0.ReceiveRate",
        "System.Network.eth0.SendRate",
        "Status.Agent.Threads",
        "Status.Agent.RSS",
        "Status.Agent.CPU",
    ]
    .iter()
    .enumerate()
    .map(|(i, name)| (name.to_string(), i as f64 * 1.5))
    .collect()
}

/// A registry holding the fleet, every subtask RUNNING; its directory lives as long as it.
fn fleet() -> (tempfile::TempDir, Registry, Vec<Agent>) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path(), Duration::from_secs(3600)).unwrap();
    let agents = populate(&registry);
    (dir, registry, agents)
}

/// Registers the fleet's agents and jobs with `registry` and takes every subtask to RUNNING.
fn populate(registry: &Registry) -> Vec<Agent> {
    register_agents(registry, AGENTS);
    for j in 0..JOBS {
        let vertices: Vec<_> = (0..VERTICES_PER_JOB)
            .map(|v| {
                let subtasks: Vec<_> = (0..AGENTS)
                    .map(|a| json!({"taskmanager": agent_id(a), "pid": 1000 + a}))
                    .collect();
                json!({"name": format!("vertex {v}"), "parallelism": AGENTS, "subtasks": subtasks})
            })
            .collect();
        let body = json!({"name": format!("job {j}"), "vertices": vertices});
        registry.register_job(body.to_string().as_bytes()).unwrap();
    }
    let mut agents = Vec::with_capacity(AGENTS);
    for a in 0..AGENTS {
        let id = agent_id(a);
        let answer = registry.heartbeat(beat(&id, Vec::new())).unwrap();
        let liveness: Vec<v1::SubtaskLiveness> = answer
            .watch
            .iter()
            .map(|w| v1::SubtaskLiveness {
                subtask_key: w.subtask_key.clone(),
                alive: true,
                pid: 1000 + a as u32,
                threads: 1,
                failure: 0,
            })
            .collect();
        assert_eq!(liveness.len(), JOBS * VERTICES_PER_JOB);
        // INITIALIZING → RUNNING.
        registry.heartbeat(beat(&id, liveness.clone())).unwrap();
        agents.push(Agent { id, liveness });
    }
    agents
}

fn beat(agent: &str, liveness: Vec<v1::SubtaskLiveness>) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        agent_id: agent.to_string(),
        liveness,
        metrics: metrics(),
        free_memory: 1 << 30,
    }
}

fn heartbeat(c: &mut Criterion) {
    let (_dir, registry, mut agents) = fleet();
    let mut group = c.benchmark_group("heartbeat");
    group.sample_size(50);

    let mut turn = 0usize;
    group.bench_function("steady", |b| {
        b.iter_batched(
            || {
                turn = (turn + 1) % AGENTS;
                let agent = &agents[turn];
                beat(&agent.id, agent.liveness.clone())
            },
            |req| black_box(registry.heartbeat(req).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });

    let mut turn = 0usize;
    group.bench_function("one_change", |b| {
        b.iter_batched(
            || {
                turn = (turn + 1) % AGENTS;
                let agent = &mut agents[turn];
                // Alternate one subtask's thread count between 1 and 2: a change every time.
                let report = &mut agent.liveness[turn % (JOBS * VERTICES_PER_JOB)];
                report.threads = 3 - report.threads;
                beat(&agent.id, agent.liveness.clone())
            },
            |req| black_box(registry.heartbeat(req).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn heartbeat_postgres(c: &mut Criterion) {
    let Some(db) = flamegrid_testkit::postgres::scratch_database("bench_heartbeat") else {
        return;
    };
    // The default heartbeat timeout (30 s): the agents registered here stay vouched for here.
    let registry = Registry::open_with_store(
        Box::new(PgStore::new(Database::connect(&db.url).unwrap())),
        Duration::from_secs(30),
        JobRetention::default(),
    )
    .unwrap();
    let mut agents = populate(&registry);
    registry.flush().unwrap();
    let before = registry.store_writes();
    let mut group = c.benchmark_group("heartbeat_postgres");
    group.sample_size(10);
    let mut rounds = 0u64;
    group.bench_function("round_then_flush", |b| {
        b.iter(|| {
            rounds += 1;
            for (a, agent) in agents.iter_mut().enumerate() {
                let report = &mut agent.liveness[a % (JOBS * VERTICES_PER_JOB)];
                report.threads = 3 - report.threads;
                black_box(
                    registry
                        .heartbeat(beat(&agent.id, agent.liveness.clone()))
                        .unwrap(),
                );
            }
            black_box(registry.flush().unwrap());
            black_box(registry.sync().unwrap());
        })
    });
    group.finish();
    let after = registry.store_writes();
    let beats = rounds * AGENTS as u64;
    let (tm_rows, job_rows) = (
        after.taskmanager_rows - before.taskmanager_rows,
        after.job_rows - before.job_rows,
    );
    println!(
        "heartbeat_postgres: {beats} heartbeats ({rounds} rounds of {AGENTS} agents) wrote \
         {tm_rows} task manager rows and {job_rows} job rows: {:.1} rows per 1,000 heartbeats \
         (plus this replica's own row, once per flush: {rounds})",
        (tm_rows + job_rows) as f64 * 1000.0 / beats.max(1) as f64,
    );
}

criterion_group!(benches, heartbeat, heartbeat_postgres);
criterion_main!(benches);
