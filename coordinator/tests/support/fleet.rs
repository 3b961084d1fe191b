//! Job bodies for the registry's tests at size (included with `#[path]`).
#![allow(dead_code)]

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
