//! Cluster-wide resources: `/config` (what the dashboard needs to start), `/overview`, and the
//! coordinator's own face under `/jobmanager/...` (it plays Flink's JobManager).
//!
//! `/jobmanager/logs` is a fixed empty list: the coordinator logs to standard error, and no part
//! of a request is ever turned into a file path (Flink's CVE-2020-17519 was exactly that).

use super::error::ApiError;
use super::metrics::{MetricQuery, metric_values};
use super::shapes::{FLINK_VERSION, revision};
use super::state::AppState;
use crate::registry::JobStatus;
use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `GET /config`: the dashboard's settings.
pub async fn config(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "refresh-interval": state.config.refresh_interval_ms,
        "timezone-name": "Coordinated Universal Time",
        "timezone-offset": 0,
        "flink-version": FLINK_VERSION,
        "flink-revision": revision(),
        "features": {
            "web-submit": false,
            "web-cancel": !state.config.read_only,
            "web-rescale": false,
            "web-history": false,
        },
    }))
}

/// Slots in the cluster: (total, available), one slot per agent CPU core.
fn slots(state: &AppState) -> (usize, usize) {
    let assigned = state.registry.active_subtasks_per_taskmanager();
    state
        .registry
        .taskmanagers()
        .iter()
        .fold((0, 0), |(total, free), tm| {
            let n = tm.host.cpu_cores.max(1) as usize;
            (
                total + n,
                free + n.saturating_sub(assigned.get(&tm.id).copied().unwrap_or(0)),
            )
        })
}

fn job_counts(state: &AppState) -> BTreeMap<JobStatus, usize> {
    let mut counts = BTreeMap::new();
    for job in state.registry.jobs() {
        *counts.entry(job.runtime.status).or_insert(0) += 1;
    }
    counts
}

/// `GET /overview`.
pub async fn overview(State(state): State<AppState>) -> Json<Value> {
    let (total, free) = slots(&state);
    let counts = job_counts(&state);
    let count = |s: JobStatus| counts.get(&s).copied().unwrap_or(0);
    Json(json!({
        "taskmanagers": state.registry.taskmanagers().len(),
        "slots-total": total,
        "slots-available": free,
        "taskmanagers-blocked": 0,
        "slots-free-and-blocked": 0,
        "jobs-running": count(JobStatus::Running) + count(JobStatus::Initializing) + count(JobStatus::Created),
        "jobs-finished": count(JobStatus::Finished),
        "jobs-cancelled": count(JobStatus::Canceled),
        "jobs-failed": count(JobStatus::Failed),
        "flink-version": FLINK_VERSION,
        "flink-commit": revision(),
    }))
}

/// The coordinator's effective settings as Flink-style keys (never secrets: token files are
/// reported as configured or not, not by content).
fn config_entries(state: &AppState) -> Vec<(String, String)> {
    let c = &state.config;
    let mut entries = vec![
        ("rest.address".to_string(), c.rest_addr.ip().to_string()),
        ("rest.port".into(), c.rest_addr.port().to_string()),
        (
            "rest.flamegraph.enabled".into(),
            c.flamegraph_enabled.to_string(),
        ),
        (
            "rest.flamegraph.num-samples".into(),
            c.flamegraph_num_samples.to_string(),
        ),
        (
            "rest.flamegraph.delay-between-samples".into(),
            format!("{} ms", c.flamegraph_delay_ms),
        ),
        (
            "rest.flamegraph.stack-depth".into(),
            c.flamegraph_max_depth.to_string(),
        ),
        (
            "rest.flamegraph.refresh-interval".into(),
            format!("{} s", c.flamegraph_refresh_interval_s),
        ),
        (
            "rest.flamegraph.cleanup-interval".into(),
            format!("{} s", c.flamegraph_cleanup_interval_s),
        ),
        (
            "web.refresh-interval".into(),
            format!("{} ms", c.refresh_interval_ms),
        ),
        (
            "heartbeat.timeout".into(),
            format!("{} s", c.heartbeat_timeout_s),
        ),
        ("flamegrid.rpc-address".into(), c.rpc_addr.to_string()),
        (
            "flamegrid.data-dir".into(),
            c.data_dir.display().to_string(),
        ),
        (
            "flamegrid.flamegraph.rpc-grace".into(),
            format!("{} ms", c.flamegraph_rpc_grace_ms),
        ),
        (
            "flamegrid.flamegraph.history".into(),
            c.flamegraph_history.to_string(),
        ),
        (
            "flamegrid.token.enabled".into(),
            c.token_file.is_some().to_string(),
        ),
        (
            "flamegrid.tls.enabled".into(),
            c.tls_cert.is_some().to_string(),
        ),
        (
            "flamegrid.rest-token.enabled".into(),
            c.rest_token_file.is_some().to_string(),
        ),
        ("flamegrid.read-only".into(), c.read_only.to_string()),
        ("flamegrid.demo".into(), c.demo.to_string()),
    ];
    entries.sort();
    entries
}

/// `GET /jobmanager/config` (and `/jobs/:jobid/jobmanager/config`).
pub async fn jobmanager_config(State(state): State<AppState>) -> Json<Value> {
    let entries: Vec<Value> = config_entries(&state)
        .into_iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    Json(Value::Array(entries))
}

/// `GET /jobmanager/environment` (and `/jobs/:jobid/jobmanager/environment`): the process in
/// Flink's JVM-shaped block.
pub async fn jobmanager_environment() -> Json<Value> {
    let options: Vec<String> = std::env::args().skip(1).collect();
    Json(json!({
        "jvm": {
            "version": format!("flamegrid-coordinator {} (native, no JVM)", env!("CARGO_PKG_VERSION")),
            "arch": std::env::consts::ARCH,
            "options": options,
        },
        "classpath": [],
    }))
}

/// The coordinator process's own numbers from `/proc/self/status`.
fn process_status() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/self/status") {
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next().and_then(|v| v.parse::<f64>().ok()),
            ) {
                (Some("Threads:"), Some(n)) => {
                    out.insert("Status.Process.Threads.Count".into(), n);
                }
                (Some("VmRSS:"), Some(kib)) => {
                    out.insert("Status.Process.Memory.RSS".into(), kib * 1024.0);
                }
                _ => {}
            }
        }
    }
    out
}

/// `GET /jobmanager/metrics[?get=...]`: registry counts and the coordinator's own process.
pub async fn jobmanager_metrics(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let q = MetricQuery::parse(&query, false)?;
    let (total, free) = slots(&state);
    let counts = job_counts(&state);
    let mut metrics = process_status();
    metrics.insert(
        "numRegisteredTaskManagers".into(),
        state.registry.taskmanagers().len() as f64,
    );
    metrics.insert(
        "numRunningJobs".into(),
        counts.get(&JobStatus::Running).copied().unwrap_or(0) as f64,
    );
    metrics.insert("taskSlotsTotal".into(), total as f64);
    metrics.insert("taskSlotsAvailable".into(), free as f64);
    // Flame graph sampling runs started so far (lets tests and operators see coalescing work).
    metrics.insert(
        "flamegrid.flamegraph.runs".into(),
        state.flamegraphs.runs_started() as f64,
    );
    Ok(Json(metric_values(&metrics, &q)))
}

/// `GET /jobmanager/logs`: always empty (see the module docs).
pub async fn jobmanager_logs() -> Json<Value> {
    Json(json!({ "logs": [] }))
}

/// `GET /jobmanager/log`, `/jobmanager/stdout`, `/jobmanager/logs/:name`: no files to serve.
pub async fn no_log_file() -> ApiError {
    ApiError::not_found(
        "File not found. The flamegrid coordinator writes its log to standard error.",
    )
}

/// `GET /jobmanager/thread-dump`: the coordinator's threads with their stacks, sampled by a
/// helper process (see `self_dump.rs`); when the helper cannot run, names and states only.
pub async fn jobmanager_thread_dump() -> Json<Value> {
    if let Some(dump) = super::self_dump::dump_with_stacks().await {
        return Json(dump);
    }
    let mut threads = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let tid = entry.file_name().to_string_lossy().to_string();
            let base = entry.path();
            let name = std::fs::read_to_string(base.join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let state_letter = std::fs::read_to_string(base.join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.trim_start().chars().next())
                })
                .unwrap_or('?');
            let state = match state_letter {
                'R' => "RUNNABLE",
                'D' => "BLOCKED",
                'Z' | 'X' => "TERMINATED",
                _ => "WAITING",
            };
            threads.push((tid.parse::<u64>().unwrap_or(0), name, state));
        }
    }
    threads.sort();
    let infos: Vec<Value> = threads
        .into_iter()
        .map(|(tid, name, state)| {
            json!({"threadName": name, "stringifiedThreadInfo": format!("\"{name}\" Id={tid} {state}\n\n")})
        })
        .collect();
    Json(json!({ "threadInfos": infos }))
}
