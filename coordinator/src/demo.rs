//! `flamegrid-coordinator --demo`: everything on one machine, in one command.
//!
//! The demo is the shortest path from a fresh clone to a live flame graph of real threads. Next
//! to the coordinator it starts, as child processes:
//!
//! 1. an agent, `flamegrid-agent run` (listening on a free loopback port and registering over
//!    real gRPC like any remote agent would);
//! 2. a small native pipeline program, `flamegrid-demo`, whose named threads compute through
//!    recognisable call chains, sleep, or wait on a condition variable;
//!
//! and registers a job through the same validation as `POST /jobs`, with one vertex per pipeline
//! stage (the layout `flamegrid-demo --vertices` prints), so the dashboard has something to show.
//!
//! Both programs are *sibling executables*: looked for next to the running
//! `flamegrid-coordinator` first (`target/release/`, an installed prefix, the container image),
//! then on `PATH` ([`find_sibling`]). The coordinator never links the agent or the sampler; it
//! talks to the demo's agent exactly as to any other.
//!
//! On Ctrl-C (or SIGTERM) it stops the agent (SIGTERM, so a run in flight releases every thread
//! it had stopped), then the workload. Both children are also killed when the demo's handle is
//! dropped (a start that failed half-way, an error of the coordinator), get SIGTERM from the
//! kernel when the coordinator dies without running any code (`PR_SET_PDEATHSIG`), and the
//! workload exits by itself when its stdin (held by the coordinator) closes.
//!
//! The registry is durable (`--data-dir`, `./flamegrid-data` by default), so the job a previous
//! `--demo` registered is still there after a restart, watching a workload that is gone: it
//! would show RUNNING until its agent is declared lost, then FAILED forever, next to the new
//! one. So before registering its job the demo cancels the jobs earlier demos left behind
//! ([`cancel_earlier_demo_jobs`]): same name and the same vertices and threads, i.e. jobs only
//! the demo registers. They stay listed, CANCELED, like any job a user canceled.

use crate::Coordinator;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The agent executable the demo starts.
pub const AGENT_EXECUTABLE: &str = "flamegrid-agent";

/// The demo workload executable (a binary of the `flamegrid-workloads` crate).
pub const WORKLOAD_EXECUTABLE: &str = "flamegrid-demo";

/// How long the agent has to register before the demo gives up.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the workload has to print its layout, or `ready`.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stopped agent has to exit after SIGTERM before it is killed: longer than the
/// agent's own grace for runs in flight (3 s).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Longest `flamegrid-demo --vertices` answer read (bytes); the real one is a few hundred.
const MAX_LAYOUT_BYTES: usize = 64 * 1024;

/// What the demo started; [`DemoHandle::stop`] takes it down again, dropping it kills both
/// children.
#[derive(Debug)]
pub struct DemoHandle {
    /// The demo job's id.
    pub job_id: String,
    /// The demo agent's id.
    pub agent_id: String,
    /// The workload's pid.
    pub workload_pid: u32,
    workload: Workload,
    agent: Child,
}

impl DemoHandle {
    /// Stops the agent (SIGTERM: it ends any run in flight, which releases every thread it had
    /// stopped, and exits), then kills the workload.
    pub async fn stop(mut self) {
        terminate(&mut self.agent, AGENT_STOP_GRACE).await;
        self.workload.kill().await;
    }
}

/// The running workload: its process (killed on drop) and its stdin, whose end tells it to exit.
#[derive(Debug)]
struct Workload {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Workload {
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An executable the demo needs is neither next to the coordinator nor on `PATH`.
    #[error(
        "cannot find {program} next to {next_to} or on PATH; build the three executables \
         together (`cargo build --release` in the source tree puts flamegrid-coordinator, \
         flamegrid-agent and flamegrid-demo in target/release/) or install {program} beside \
         flamegrid-coordinator"
    )]
    Missing {
        /// The executable's name.
        program: &'static str,
        /// The directory of the running coordinator.
        next_to: String,
    },
    /// A child program could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The program.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The workload misbehaved (no layout, no `ready`, an early exit).
    #[error("the demo workload {path}: {reason}")]
    Workload {
        /// The program.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The agent exited before it registered (its own message is on stderr above this one).
    #[error("the demo agent {path} exited before it registered ({status})")]
    AgentExited {
        /// The program.
        path: String,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The agent did not register in time.
    #[error("the demo agent did not register within {0:?}; is the registry port reachable?")]
    NotRegistered(Duration),
    /// The demo job was refused (a bug: the demo builds its own body).
    #[error("cannot register the demo job: {0}")]
    Job(String),
}

/// The name of the job the demo registers (and by which it recognises its earlier ones).
pub const DEMO_JOB_NAME: &str = "flamegrid-demo pipeline";

/// A vertex of the demo job, as `flamegrid-demo --vertices` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DemoVertex {
    /// The vertex name shown in the dashboard.
    pub name: String,
    /// One thread-name regex (matched whole) per subtask, in subtask-index order.
    pub subtask_thread_names: Vec<String>,
    /// Indexes of upstream vertices (the plan's edges).
    pub inputs: Vec<usize>,
}

/// Where the executable `name` is: next to the running executable first, then in each `PATH`
/// directory. `None` when it is in neither.
pub fn find_sibling(name: &str) -> Option<PathBuf> {
    let next_to = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    next_to
        .into_iter()
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// A regular file someone may execute.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// [`find_sibling`], or the error that says where it looked and how to get it.
fn require_sibling(program: &'static str) -> Result<PathBuf, DemoError> {
    find_sibling(program).ok_or_else(|| DemoError::Missing {
        program,
        next_to: std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.display().to_string()))
            .unwrap_or_else(|| "the coordinator".into()),
    })
}

/// Removes every `FLAMEGRID_*` variable from a sibling's environment. The coordinator's own
/// settings (its TLS files, `--demo` itself) are not the agent's, and the agent reads every flag
/// from `FLAMEGRID_<FLAG>` too: everything a sibling gets is on its command line.
pub fn clear_flamegrid_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLAMEGRID_") {
            command.env_remove(key);
        }
    }
}

/// Starts the demo next to a running coordinator.
pub async fn start(coordinator: &Coordinator) -> Result<DemoHandle, DemoError> {
    // Both executables first: a missing one fails before anything was started or changed.
    let agent_path = require_sibling(AGENT_EXECUTABLE)?;
    let workload_path = require_sibling(WORKLOAD_EXECUTABLE)?;
    let layout = demo_layout(&workload_path).await?;
    // Before the registry can declare their agent lost and fail them.
    cancel_earlier_demo_jobs(coordinator.registry(), &layout);
    let workload = start_workload(&workload_path).await?;
    let workload_pid = workload.child.id().unwrap_or_default();

    // An id of our choosing, so the demo knows which registration to wait for.
    let agent_id = format!("flamegrid-demo-agent-{}", std::process::id());
    let mut command = Command::new(&agent_path);
    command
        .arg("run")
        .args([
            "--coordinator",
            &format!("http://{}", coordinator.rpc_addr()),
        ])
        // Loopback only: the secure default needs no token or TLS there.
        .args(["--listen", "127.0.0.1:0"])
        .args(["--id", &agent_id]);
    // With `--token-file` the registry refuses agents without the token: the demo's agent
    // presents the same one (and requires it of the coordinator's calls).
    if let Some(token_file) = &coordinator.app_state().config.credentials.token_file {
        command.arg("--token-file").arg(token_file);
    }
    clear_flamegrid_env(&mut command);
    let mut agent = spawn_child(&mut command, &agent_path, Stdio::null(), Stdio::null())?;

    let registry = coordinator.registry();
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    while registry.taskmanager(&agent_id).is_err() {
        if let Ok(Some(status)) = agent.try_wait() {
            return Err(DemoError::AgentExited {
                path: agent_path.display().to_string(),
                status,
            });
        }
        if Instant::now() > deadline {
            return Err(DemoError::NotRegistered(REGISTRATION_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let body = demo_job_body(&layout, &agent_id, workload_pid);
    let job_id = registry
        .register_job(body.to_string().as_bytes())
        .map_err(|e| DemoError::Job(e.to_string()))?;
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
        agent,
    })
}

/// Asks the workload program for the demo job's layout (`flamegrid-demo --vertices`).
async fn demo_layout(path: &Path) -> Result<Vec<DemoVertex>, DemoError> {
    let failed = |reason: String| DemoError::Workload {
        path: path.display().to_string(),
        reason,
    };
    let mut command = Command::new(path);
    command.arg("--vertices");
    let child = spawn_child(&mut command, path, Stdio::null(), Stdio::piped())?;
    let output = tokio::time::timeout(WORKLOAD_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            failed(format!(
                "--vertices did not answer within {WORKLOAD_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| failed(format!("--vertices: {e}")))?;
    if !output.status.success() || output.stdout.len() > MAX_LAYOUT_BYTES {
        return Err(failed(format!(
            "--vertices failed ({}, {} bytes of output)",
            output.status,
            output.stdout.len()
        )));
    }
    let layout: Vec<DemoVertex> = serde_json::from_slice(&output.stdout)
        .map_err(|e| failed(format!("--vertices printed no layout: {e}")))?;
    if layout.is_empty() {
        return Err(failed("--vertices printed no vertex".into()));
    }
    Ok(layout)
}

/// Starts a sibling executable (`path`, as `command` describes it) as the demo's child: killed
/// with the coordinator ([`stop_with_parent`]) or when its handle is dropped, its stderr on
/// ours.
fn spawn_child(
    command: &mut Command,
    path: &Path,
    stdin: Stdio,
    stdout: Stdio,
) -> Result<Child, DemoError> {
    stop_with_parent(command);
    command
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            path: path.display().to_string(),
            source,
        })
}

/// Starts the pipeline and waits for its `ready` line (every thread started and named).
async fn start_workload(path: &Path) -> Result<Workload, DemoError> {
    let failed = |reason: String| DemoError::Workload {
        path: path.display().to_string(),
        reason,
    };
    let mut command = Command::new(path);
    let mut child = spawn_child(&mut command, path, Stdio::piped(), Stdio::piped())?;
    let stdin = child.stdin.take();
    let Some(stdout) = child.stdout.take() else {
        return Err(failed("no stdout".into()));
    };
    let mut line = String::new();
    let read = tokio::time::timeout(
        WORKLOAD_TIMEOUT,
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .map_err(|_| failed(format!("not ready within {WORKLOAD_TIMEOUT:?}")))?
    .map_err(|e| failed(e.to_string()))?;
    if read == 0 || line.trim() != "ready" {
        return Err(failed(format!(
            "printed {:?} instead of \"ready\"",
            line.trim()
        )));
    }
    Ok(Workload {
        child,
        _stdin: stdin,
    })
}

/// Makes the kernel send the child SIGTERM when the thread that started it ends, so even a
/// coordinator killed with SIGKILL (no destructor runs) takes its demo children with it. The
/// demo is started from the thread of `run`'s `block_on`, which lives as long as the process.
fn stop_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe.
    let parent = std::process::id();
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the signal was armed: nobody would send it.
            if u32::try_from(libc::getppid()) != Ok(parent) {
                return Err(std::io::Error::other("the coordinator is gone"));
            }
            Ok(())
        });
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill(2) on our own child, not yet reaped (`id()` is `None` once it is).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            tracing::warn!(%status, "demo agent stopped with an error");
        }
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("demo agent did not stop within {grace:?}; killing it");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Cancels, through the registry's public API, every job not yet ended that an earlier
/// `--demo` registered in this data directory (a job shaped like `layout`); returns their ids.
/// A job that already ended (FAILED because an earlier coordinator lost its demo agent) cannot
/// be canceled any more and is left as it is.
pub fn cancel_earlier_demo_jobs(
    registry: &crate::registry::Registry,
    layout: &[DemoVertex],
) -> Vec<String> {
    let mut canceled = Vec::new();
    for job in registry.jobs() {
        if !is_demo_job(&job.spec, layout) || job.runtime.status.is_terminal() {
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
fn is_demo_job(spec: &crate::registry::job::JobSpec, layout: &[DemoVertex]) -> bool {
    spec.name == DEMO_JOB_NAME
        && spec.vertices.len() == layout.len()
        && spec.vertices.iter().zip(layout).all(|(v, d)| {
            v.name == d.name
                && v.subtasks.len() == d.subtask_thread_names.len()
                && v.subtasks
                    .iter()
                    .zip(&d.subtask_thread_names)
                    .all(|(s, t)| s.thread_name.as_deref() == Some(t.as_str()))
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
fn demo_job_body(layout: &[DemoVertex], agent_id: &str, pid: u32) -> serde_json::Value {
    // The vertex layout comes from the demo program, so the two cannot drift apart.
    let vertices: Vec<serde_json::Value> = layout
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

    /// The layout as the demo program prints it (the same function builds `--vertices`).
    fn layout() -> Vec<DemoVertex> {
        let json = flamegrid_workloads::demo_vertices_json(flamegrid_workloads::demo_vertices());
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn demo_body_names_every_thread_once() {
        let body = demo_job_body(&layout(), "tm", 42);
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
        let layout = layout();
        let demo = demo_job_body(&layout, "tm", 42);
        assert!(is_demo_job(&parse(&demo), &layout));

        let mut renamed = demo.clone();
        renamed["name"] = "my pipeline".into();
        assert!(!is_demo_job(&parse(&renamed), &layout));

        let mut other_threads = demo.clone();
        other_threads["vertices"][0]["subtasks"][0]["thread_name"] = "worker-0".into();
        assert!(!is_demo_job(&parse(&other_threads), &layout));

        let user_job = serde_json::json!({ "name": DEMO_JOB_NAME, "vertices": [
            { "name": "map", "parallelism": 1, "subtasks": [{ "taskmanager": "tm", "pid": 42 }] }
        ]});
        assert!(!is_demo_job(&parse(&user_job), &layout));
    }
}
