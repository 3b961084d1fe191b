//! Stacks for `/jobmanager/thread-dump`: the coordinator's own threads.
//!
//! A process cannot ptrace itself, so the coordinator starts a short-lived helper: its own
//! executable again, with [`HELPER_ENV`] set to the coordinator's pid. The helper samples every
//! thread of that pid once with the agent's sampler (each thread stopped for microseconds,
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, never left stopped), prints Flink's `ThreadDumpInfo`
//! JSON on stdout and exits.
//!
//! ```text
//!  GET /jobmanager/thread-dump
//!      │  spawn /proc/self/exe with FLAMEGRID_INTERNAL_SELF_DUMP_PID=<pid>
//!      ▼
//!  helper ── ptrace each coordinator thread once ──▶ {"threadInfos": [...]} on stdout
//! ```
//!
//! The helper runs only when the executable is the `flamegrid-coordinator` binary (not, say, a
//! test harness that embeds the library), one at a time, within [`HELPER_TIMEOUT`]. Whenever it
//! cannot run or fails, the handler falls back to names and states from `/proc/self/task`.

use crate::flamegraph::dump::thread_dump_info;
use flamegrid_agent::sampler::{Sampler, SamplerOptions};
use flamegrid_agent::selection::{AccessPolicy, ThreadSelector};
use flamegrid_proto::SampleResponseBuilder;
use serde_json::Value;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

/// Set (to the pid to dump) when the coordinator's executable runs as the thread-dump helper.
pub const HELPER_ENV: &str = "FLAMEGRID_INTERNAL_SELF_DUMP_PID";

/// How long the helper may take before the handler gives up on stacks.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames per thread (Flink's `cluster.thread-dump.stacktrace-max-depth` default).
const MAX_DEPTH: u32 = 50;

/// Serializes helpers: one dump of the coordinator at a time is plenty.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The helper's whole life: sample `pid_text`'s threads once, print the dump, exit.
pub fn helper_main(pid_text: &str) -> ExitCode {
    let Ok(pid) = pid_text.trim().parse::<u32>() else {
        eprintln!("flamegrid-coordinator: {HELPER_ENV} must be a pid, got {pid_text:?}");
        return ExitCode::FAILURE;
    };
    let sampler = match Sampler::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flamegrid-coordinator: thread-dump helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = SamplerOptions {
        num_samples: 1,
        max_depth: MAX_DEPTH,
        ..SamplerOptions::default()
    };
    let run = sampler.sample(
        &[("coordinator".to_string(), ThreadSelector::pid(pid))],
        &AccessPolicy::own_user(),
        &options,
    );
    let mut response = SampleResponseBuilder::new(0);
    for (key, result) in &run.subtasks {
        match result {
            Ok(set) => response.add_subtask(key, set),
            Err(e) => {
                eprintln!("flamegrid-coordinator: thread-dump helper: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let dump = thread_dump_info(&response.finish(run.start_ms, run.end_ms));
    match serde_json::to_string(&dump) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flamegrid-coordinator: thread-dump helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the helper against this process and returns its `ThreadDumpInfo`, or `None` when it
/// cannot run here or fails (the caller then falls back to names and states).
pub async fn dump_with_stacks() -> Option<Value> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name()?.to_str()? != "flamegrid-coordinator" {
        return None;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let child = tokio::process::Command::new(&exe)
        .env(HELPER_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| tracing::warn!(error = %e, "cannot start the thread-dump helper"))
        .ok()?;
    let output = match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "thread-dump helper failed");
            return None;
        }
        Err(_) => {
            tracing::warn!("thread-dump helper timed out");
            return None;
        }
    };
    if !output.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&output.stderr).trim(), "thread-dump helper failed");
        return None;
    }
    let dump: Value = serde_json::from_slice(&output.stdout).ok()?;
    dump.get("threadInfos")?.as_array()?;
    Some(dump)
}
