//! Stacks for `/jobmanager/thread-dump`: the coordinator's own threads.
//!
//! A process cannot ptrace itself, and the coordinator does not link the sampler: it runs the
//! sibling agent's one-shot CLI against its own pid, the way a person would:
//!
//! ```text
//!  GET /jobmanager/thread-dump
//!      │  flamegrid-agent sample --pid <coordinator pid> --samples 1 --max-depth 50 --format json
//!      ▼
//!  agent ── ptrace each coordinator thread once ──▶ samples as JSON on stdout
//!      │
//!      ▼
//!  the samples as Flink's ThreadDumpInfo ({"threadInfos": [...]}, `flamegraph::dump`)
//! ```
//!
//! Each thread is stopped for microseconds (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`, never left
//! stopped). `flamegrid-agent` is found like the demo's programs: next to the coordinator's
//! executable, then on `PATH` ([`crate::demo::find_sibling`]). One dump runs at a time, within
//! [`HELPER_TIMEOUT`]. Whenever the agent is not there, is refused by the kernel (with
//! `kernel.yama.ptrace_scope` ≥ 1 a child may not trace its parent without `CAP_SYS_PTRACE`)
//! or fails, the handler falls back to names and states from `/proc/self/task`.

use crate::flamegraph::THREAD_DUMP_MAX_DEPTH;
use crate::flamegraph::dump::thread_dump_info;
use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
use flamegrid_proto::SampleResponseBuilder;
use serde::Deserialize;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// How long the agent may take before the handler gives up on stacks.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read from the agent (bytes): far more than 50 frames of a few hundred threads.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Serializes dumps: one dump of the coordinator at a time is plenty.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What `flamegrid-agent sample --format json` prints (the fields used here).
#[derive(Debug, Deserialize)]
struct SampleOutput {
    pid: u32,
    start_ms: i64,
    end_ms: i64,
    samples: Vec<SampleLine>,
}

/// One sample of [`SampleOutput`]: a thread, its state and its frames, outermost first.
#[derive(Debug, Deserialize)]
struct SampleLine {
    tid: u32,
    thread: String,
    state: ThreadState,
    timestamp_ms: i64,
    truncated: bool,
    frames: Vec<Frame>,
}

/// Runs the agent against this process and returns its `ThreadDumpInfo`, or `None` when it
/// cannot run here or fails (the caller then falls back to names and states).
pub async fn dump_with_stacks() -> Option<Value> {
    let agent = crate::demo::find_sibling(crate::demo::AGENT_EXECUTABLE)?;
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut command = tokio::process::Command::new(&agent);
    command
        .arg("sample")
        .args(["--pid", &std::process::id().to_string()])
        .args([
            "--samples",
            "1",
            "--max-depth",
            &THREAD_DUMP_MAX_DEPTH.to_string(),
        ])
        .args(["--format", "json"]);
    crate::demo::clear_flamegrid_env(&mut command);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| tracing::warn!(error = %e, "cannot start the thread-dump agent"))
        .ok()?;
    let output = match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "thread-dump agent failed");
            return None;
        }
        Err(_) => {
            tracing::warn!("thread-dump agent timed out");
            return None;
        }
    };
    if !output.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&output.stderr).trim(), "thread-dump agent failed");
        return None;
    }
    if output.stdout.len() > MAX_ANSWER_BYTES {
        tracing::warn!(
            bytes = output.stdout.len(),
            "thread-dump agent answer too large"
        );
        return None;
    }
    let answer: SampleOutput = serde_json::from_slice(&output.stdout)
        .map_err(|e| tracing::warn!(error = %e, "thread-dump agent printed no samples"))
        .ok()?;
    serde_json::to_value(thread_dump(answer)).ok()
}

/// The agent's samples as Flink's `ThreadDumpInfo`, through the same conversion (and bounds)
/// as a dump answered by a remote agent.
fn thread_dump(answer: SampleOutput) -> crate::flamegraph::dump::ThreadDumpInfo {
    let mut set = SampleSetBuilder::new();
    for sample in answer.samples {
        let thread = SampledThread {
            pid: answer.pid,
            tid: sample.tid,
            name: sample.thread,
        };
        set.push(
            &thread,
            sample.timestamp_ms,
            sample.state,
            sample.frames,
            sample.truncated,
        );
    }
    let mut response = SampleResponseBuilder::new(0);
    response.add_subtask("coordinator", &set.finish());
    thread_dump_info(&response.finish(answer.start_ms, answer.end_ms))
}
