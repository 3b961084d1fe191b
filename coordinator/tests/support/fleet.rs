//! Job bodies for the registry's tests at size, and an agent played straight against a
//! [`Registry`] (no gRPC): registration, heartbeats, subtasks taken to RUNNING (included with
//! `#[path]`).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use flamegrid_coordinator::registry::{ExecutionState, Job, Registry};
use flamegrid_proto::v1;
use serde_json::{Value, json};

/// A job body: one vertex per entry of `parallelism`, subtasks spread over `agents` in turn
/// (the n-th subtask of the body, counted from 1, on `agents[n % agents.len()]`), each naming
/// pid `1000 + n % 50_000` (agents are not asked whether it exists until they heartbeat).
pub fn job_body(agents: &[String], parallelism: &[usize]) -> Value {
    let mut next = 0usize;
    let vertices: Vec<Value> = parallelism
        .iter()
        .enumerate()
        .map(|(v, &n)| {
            let subtasks: Vec<Value> = (0..n)
                .map(|_| {
                    next += 1;
                    json!({"taskmanager": agents[next % agents.len()], "pid": 1000 + next % 50_000})
                })
                .collect();
            json!({"name": format!("vertex {v}"), "parallelism": n, "subtasks": subtasks})
        })
        .collect();
    json!({"name": "fleet", "vertices": vertices})
}

/// Registers agent `id` directly with the registry.
pub fn register_agent(registry: &Registry, id: &str) {
    registry
        .register_taskmanager(v1::RegisterRequest {
            agent_id: id.into(),
            address: "http://127.0.0.1:7001".into(),
            host: None,
            pid: 1,
        })
        .unwrap();
}

pub fn beat(agent: &str, liveness: Vec<v1::SubtaskLiveness>) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        agent_id: agent.into(),
        liveness,
        metrics: Default::default(),
        free_memory: 1,
    }
}

/// Takes `agent`'s subtasks to RUNNING (watch list, then an "alive" report for each) and
/// returns the reports that keep them so.
pub fn run_all(registry: &Registry, agent: &str) -> Vec<v1::SubtaskLiveness> {
    let watch = registry.heartbeat(beat(agent, Vec::new())).unwrap().watch;
    let liveness: Vec<v1::SubtaskLiveness> = watch
        .iter()
        .map(|w| v1::SubtaskLiveness {
            subtask_key: w.subtask_key.clone(),
            alive: true,
            pid: match w.process {
                Some(v1::thread_selector::Process::Pid(pid)) => pid,
                _ => 0,
            },
            threads: 1,
            ..Default::default()
        })
        .collect();
    registry.heartbeat(beat(agent, liveness.clone())).unwrap();
    liveness
}

/// The execution states of `job`'s subtasks, in order.
pub fn states(job: &Job) -> Vec<ExecutionState> {
    job.runtime
        .subtasks
        .iter()
        .flatten()
        .map(|s| s.status)
        .collect()
}
