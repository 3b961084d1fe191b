//! `flamegrid-coordinator --demo`: everything on one machine, in one command.
//!
//! The demo is the shortest path from a fresh clone to a live flame graph of real threads. Next
//! to the coordinator it starts:
//!
//! 1. an agent, in-process (the same code as `flamegrid-agent run`, listening on a free loopback
//!    port and registering over real gRPC like any remote agent would);
//! 2. a small native pipeline program (`flamegrid-demo`, built by the workloads crate) whose named
//!    threads compute through recognisable call chains, sleep, or wait on a condition variable;
//! 3. a job registered through the same validation as `POST /jobs`, with one vertex per pipeline
//!    stage, so the dashboard has something to show.
//!
//! On Ctrl-C (or SIGTERM) it stops the agent, the coordinator and the workload, in that order,
//! so no sampled thread is ever left behind.
//!
//! The registry is durable (`--data-dir`, `./flamegrid-data` by default), so the job a previous
//! `--demo` registered is still there after a restart, watching a workload that is gone: it
//! would show RUNNING until its agent is declared lost, then FAILED forever, next to the new
//! one. So before registering its job the demo cancels the jobs earlier demos left behind
//! ([`cancel_earlier_demo_jobs`]): same name and the same vertices and threads, i.e. jobs only
//! the demo registers. They stay listed, CANCELED, like any job a user canceled.

use crate::Coordinator;
use flamegrid_workloads::{Mix, RunningWorkload, Workload};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the in-process agent has to register before the demo gives up.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(20);

/// What the demo started; [`DemoHandle::stop`] takes it down again.
#[derive(Debug)]
pub struct DemoHandle {
    /// The demo job's id.
    pub job_id: String,
    /// The in-process agent's id.
    pub agent_id: String,
    /// The workload's pid.
    pub workload_pid: u32,
    workload: RunningWorkload,
    agent_stop: oneshot::Sender<()>,
    agent: flamegrid_agent::cli::run::RunningAgent,
}

impl DemoHandle {
    /// Stops the agent (ending any run in flight, which releases every thread it had stopped),
    /// then kills the workload.
    pub async fn stop(self) {
        let _ = self.agent_stop.send(());
        if let Err(e) = self.agent.wait().await {
            tracing::warn!(error = %e, "demo agent stopped with an error");
        }
        drop(self.workload);
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The workload program could not be started.
    #[error("cannot start the demo workload {path}: {source}")]
    Workload {
        /// The program.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The in-process agent could not start.
    #[error("cannot start the demo agent: {0:#}")]
    Agent(anyhow::Error),
    /// The agent did not register in time.
    #[error("the demo agent did not register within {0:?}; is the registry port reachable?")]
    NotRegistered(Duration),
    /// The demo job was refused (a bug: the demo builds its own body).
    #[error("cannot register the demo job: {0}")]
    Job(String),
}

/// The name of the job the demo registers (and by which it recognises its earlier ones).
pub const DEMO_JOB_NAME: &str = "flamegrid-demo pipeline";

/// Starts the demo next to a running coordinator.
pub async fn start(coordinator: &Coordinator) -> Result<DemoHandle, DemoError> {
    // First, before the registry can declare their agent lost and fail them.
    cancel_earlier_demo_jobs(coordinator.registry());
    let workload =
        flamegrid_workloads::spawn(Workload::Demo, &Mix::default()).map_err(|source| {
            DemoError::Workload {
                path: Workload::Demo.path().display().to_string(),
                source,
            }
        })?;
    let workload_pid = workload.pid();

    let mut args =
        flamegrid_agent::cli::run::RunArgs::new(format!("http://{}", coordinator.rpc_addr()));
    args.listen = ([127, 0, 0, 1], 0).into();
    // With `--token-file` the registry refuses agents without the token: the demo's agent
    // presents the same one (and requires it of the coordinator's calls).
    args.credentials.token_file = coordinator
        .app_state()
        .config
        .credentials
        .token_file
        .clone();
    let (agent_stop, stop_rx) = oneshot::channel::<()>();
    let agent = flamegrid_agent::cli::run::serve(args, async move {
        let _ = stop_rx.await;
    })
    .await
    .map_err(DemoError::Agent)?;
    let agent_id = agent.agent_id.clone();

    let registry = coordinator.registry();
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    while registry.taskmanager(&agent_id).is_err() {
        if Instant::now() > deadline {
            let _ = agent_stop.send(());
            return Err(DemoError::NotRegistered(REGISTRATION_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let body = demo_job_body(&agent_id, workload_pid);
    let job_id = match registry.register_job(body.to_string().as_bytes()) {
        Ok(id) => id,
        Err(e) => {
            let _ = agent_stop.send(());
            return Err(DemoError::Job(e.to_string()));
        }
    };
    // The agent learns which threads to watch from its next heartbeat's answer and reports them
    // alive in the one after; until then no subtask is RUNNING and nothing can be sampled. Wait
    // for that (a few seconds) so the first flame graph request starts a run at once.
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    while !all_running(registry, &job_id) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(DemoHandle {
        job_id,
        agent_id,
        workload_pid,
        workload,
        agent_stop,
        agent,
    })
}

/// Cancels, through the registry's public API, every job not yet ended that an earlier
/// `--demo` registered in this data directory; returns their ids. A job that already ended
/// (FAILED because an earlier coordinator lost its demo agent) cannot be canceled any more and is
/// left as it is.
pub fn cancel_earlier_demo_jobs(registry: &crate::registry::Registry) -> Vec<String> {
    let mut canceled = Vec::new();
    for job in registry.jobs() {
        if !is_demo_job(&job.spec) || job.runtime.status.is_terminal() {
            continue;
        }
        match registry.cancel_job(&job.spec.id) {
            Ok(()) => {
                tracing::info!(job = %job.spec.id, "canceled the job of an earlier demo");
                canceled.push(job.spec.id);
            }
            Err(e) => {
                tracing::warn!(job = %job.spec.id, error = %e, "cannot cancel the job of an earlier demo");
            }
        }
    }
    canceled
}

/// True for a job shaped exactly like the one [`demo_job_body`] registers: its name, and the
/// demo's vertices with the demo's thread names. A user's job that merely shares the name is
/// not touched.
fn is_demo_job(spec: &crate::registry::job::JobSpec) -> bool {
    let demo = flamegrid_workloads::demo_vertices();
    spec.name == DEMO_JOB_NAME
        && spec.vertices.len() == demo.len()
        && spec.vertices.iter().zip(demo).all(|(v, d)| {
            v.name == d.name
                && v.subtasks.len() == d.subtask_thread_names.len()
                && v.subtasks
                    .iter()
                    .zip(d.subtask_thread_names)
                    .all(|(s, t)| s.thread_name.as_deref() == Some(*t))
        })
}

/// True once every subtask of the job is RUNNING.
fn all_running(registry: &crate::registry::Registry, job_id: &str) -> bool {
    registry.job(job_id).is_ok_and(|job| {
        job.runtime
            .subtasks
            .iter()
            .flatten()
            .all(|s| s.status == crate::registry::ExecutionState::Running)
    })
}

/// The `POST /jobs` body of the demo job.
fn demo_job_body(agent_id: &str, pid: u32) -> serde_json::Value {
    // The vertex layout lives with the demo program, so the two cannot drift apart.
    let vertices: Vec<serde_json::Value> = flamegrid_workloads::demo_vertices()
        .iter()
        .map(|v| {
            let subtasks: Vec<serde_json::Value> = v
                .subtask_thread_names
                .iter()
                .map(|t| serde_json::json!({ "taskmanager": agent_id, "pid": pid, "thread_name": t }))
                .collect();
            serde_json::json!({
                "name": v.name,
                "parallelism": subtasks.len(),
                "inputs": v.inputs,
                "subtasks": subtasks,
            })
        })
        .collect();
    serde_json::json!({ "name": DEMO_JOB_NAME, "vertices": vertices })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_body_names_every_thread_once() {
        let body = demo_job_body("tm", 42);
        let vertices = body["vertices"].as_array().map(Vec::len);
        assert_eq!(vertices, Some(flamegrid_workloads::demo_vertices().len()));
        assert_eq!(body["vertices"][2]["subtasks"][1]["thread_name"], "sink-1");
        assert_eq!(body["vertices"][1]["inputs"][0], 0);
    }

    #[test]
    fn only_jobs_shaped_like_the_demos_count_as_earlier_demo_jobs() {
        let parse = |body: &serde_json::Value| {
            crate::registry::validate::parse_job(body.to_string().as_bytes(), &|_| true).unwrap()
        };
        let demo = demo_job_body("tm", 42);
        assert!(is_demo_job(&parse(&demo)));

        let mut renamed = demo.clone();
        renamed["name"] = "my pipeline".into();
        assert!(!is_demo_job(&parse(&renamed)));

        let mut other_threads = demo.clone();
        other_threads["vertices"][0]["subtasks"][0]["thread_name"] = "worker-0".into();
        assert!(!is_demo_job(&parse(&other_threads)));

        let user_job = serde_json::json!({ "name": DEMO_JOB_NAME, "vertices": [
            { "name": "map", "parallelism": 1, "subtasks": [{ "taskmanager": "tm", "pid": 42 }] }
        ]});
        assert!(!is_demo_job(&parse(&user_job)));
    }
}
