//! Cluster-wide resources: `/config` (what the dashboard needs to start), `/overview`, and the
//! coordinator's own face under `/jobmanager/...` (it plays Flink's JobManager).
//!
//! `/jobmanager/logs` is a fixed empty list: the coordinator logs to standard error, and no part
//! of a request is ever turned into a file path (Flink's CVE-2020-17519 was exactly that).

use super::error::{ApiError, ErrorBody};
use super::metrics::{MetricParams, MetricQuery, MetricValue, metric_values};
use super::shapes::{FLINK_VERSION, revision};
use super::state::AppState;
use crate::registry::JobStatus;
use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each declared once by its handler's `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(config))
        .routes(routes!(overview))
        .routes(routes!(jobmanager_config))
        .routes(routes!(jobmanager_environment))
        .routes(routes!(jobmanager_metrics))
        .routes(routes!(jobmanager_logs))
        .routes(routes!(no_named_log_file))
        .routes(routes!(no_log_file))
        .routes(routes!(no_stdout_file))
        .routes(routes!(jobmanager_thread_dump))
}

/// `/config`: what Flink's dashboard reads before anything else.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct DashboardConfig {
    /// How often the dashboard polls, in milliseconds.
    pub refresh_interval: u64,
    /// Always UTC.
    pub timezone_name: String,
    /// Always 0.
    pub timezone_offset: i64,
    /// The Flink REST dialect followed.
    pub flink_version: String,
    /// Names flamegrid.
    pub flink_revision: String,
    /// Which dashboard features are on.
    pub features: DashboardFeatures,
}

/// The dashboard's feature switches: only cancelling is ever on (unless `--read-only`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct DashboardFeatures {
    /// Jar submission: never.
    pub web_submit: bool,
    /// Cancelling jobs: unless read-only.
    pub web_cancel: bool,
    /// Rescaling: never.
    pub web_rescale: bool,
    /// The history server: never.
    pub web_history: bool,
}

/// `GET /config`: the dashboard's settings.
#[utoipa::path(get, path = "/config", tag = "cluster",
    responses((status = 200, description = "The dashboard's settings", body = DashboardConfig)))]
pub async fn config(State(state): State<AppState>) -> Json<DashboardConfig> {
    Json(DashboardConfig {
        refresh_interval: state.config.refresh_interval_ms,
        timezone_name: "Coordinated Universal Time".into(),
        timezone_offset: 0,
        flink_version: FLINK_VERSION.into(),
        flink_revision: revision(),
        features: DashboardFeatures {
            web_submit: false,
            web_cancel: !state.config.read_only,
            web_rescale: false,
            web_history: false,
        },
    })
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
    state.registry.with_jobs(|jobs| {
        let mut counts = BTreeMap::new();
        for job in jobs {
            *counts.entry(job.runtime.status).or_insert(0) += 1;
        }
        counts
    })
}

/// Jobs that have not reached a globally terminal state: Flink's `jobs-running` (and its
/// `numRunningJobs` gauge) counts "running or pending" jobs, so a FAILING job still counts.
fn running_or_pending(counts: &BTreeMap<JobStatus, usize>) -> usize {
    counts
        .iter()
        .filter(|(status, _)| !status.is_terminal())
        .map(|(_, n)| n)
        .sum()
}

/// `/overview`: Flink's ClusterOverviewWithVersion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterOverview {
    /// Registered agents.
    pub taskmanagers: usize,
    /// One slot per agent CPU core.
    pub slots_total: usize,
    /// Slots not occupied by a subtask that is not terminal.
    pub slots_available: usize,
    /// Always 0.
    pub taskmanagers_blocked: usize,
    /// Always 0.
    pub slots_free_and_blocked: usize,
    /// Jobs not yet globally terminal (RUNNING, FAILING, ...), as Flink counts them.
    pub jobs_running: usize,
    /// Jobs FINISHED.
    pub jobs_finished: usize,
    /// Jobs CANCELED.
    pub jobs_cancelled: usize,
    /// Jobs FAILED.
    pub jobs_failed: usize,
    /// The Flink REST dialect followed.
    pub flink_version: String,
    /// Names flamegrid.
    pub flink_commit: String,
}

/// `GET /overview`.
#[utoipa::path(get, path = "/overview", tag = "cluster",
    responses((status = 200, description = "Task managers, slots and jobs per state", body = ClusterOverview)))]
pub async fn overview(State(state): State<AppState>) -> Json<ClusterOverview> {
    let (total, free) = slots(&state);
    let counts = job_counts(&state);
    let count = |s: JobStatus| counts.get(&s).copied().unwrap_or(0);
    Json(ClusterOverview {
        taskmanagers: state.registry.taskmanagers().len(),
        slots_total: total,
        slots_available: free,
        taskmanagers_blocked: 0,
        slots_free_and_blocked: 0,
        jobs_running: running_or_pending(&counts),
        jobs_finished: count(JobStatus::Finished),
        jobs_cancelled: count(JobStatus::Canceled),
        jobs_failed: count(JobStatus::Failed),
        flink_version: FLINK_VERSION.into(),
        flink_commit: revision(),
    })
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
            c.credentials.token_file.is_some().to_string(),
        ),
        (
            "flamegrid.tls.enabled".into(),
            c.credentials.tls_cert.is_some().to_string(),
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

/// One effective setting, as Flink lists its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ConfigEntry {
    /// Flink-style key (`rest.port`, `flamegrid.read-only`).
    pub key: String,
    /// The value as text.
    pub value: String,
}

/// `GET /jobmanager/config` (and `/jobs/:jobid/jobmanager/config`).
#[utoipa::path(get, path = "/jobmanager/config", tag = "cluster",
    responses((status = 200, description = "Effective settings (never secrets)", body = Vec<ConfigEntry>)))]
pub async fn jobmanager_config(State(state): State<AppState>) -> Json<Vec<ConfigEntry>> {
    Json(
        config_entries(&state)
            .into_iter()
            .map(|(key, value)| ConfigEntry { key, value })
            .collect(),
    )
}

/// `/jobmanager/environment`: the coordinator process in Flink's JVM-shaped block, plus the
/// host it runs on under an extra key Flink clients ignore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Environment {
    /// The process.
    pub jvm: ProcessInfo,
    /// Always empty (no JVM).
    pub classpath: Vec<String>,
    /// flamegrid's addition: the coordinator's host and pid, the same facts an agent
    /// registers for its own host (`/taskmanagers/:id` shows those).
    pub host: HostEnvironment,
}

/// The coordinator's host, read when asked (free memory changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostEnvironment {
    /// The host's name.
    pub hostname: String,
    /// The coordinator's process id on that host.
    pub pid: u32,
    /// Operating system, e.g. "Debian GNU/Linux 12".
    pub os: String,
    /// Kernel release, e.g. "6.1.0-18-amd64".
    pub kernel: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// Bytes of RAM.
    pub physical_memory: u64,
    /// Bytes of RAM still available.
    pub free_memory: u64,
}

impl HostEnvironment {
    /// Reads the facts now, with the probe the agents use, so that a coordinator and an agent
    /// on the same host report the same values.
    pub fn read() -> Self {
        let facts = flamegrid_proto::host::HostProbe::new().host_info();
        HostEnvironment {
            hostname: facts.hostname,
            pid: std::process::id(),
            os: facts.os,
            kernel: facts.kernel,
            cpu_cores: facts.cpu_cores,
            physical_memory: facts.physical_memory,
            free_memory: facts.free_memory,
        }
    }
}

/// Flink's `jvm` block, filled with the native process's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProcessInfo {
    /// The coordinator's name and version.
    pub version: String,
    /// CPU architecture.
    pub arch: String,
    /// Command-line arguments.
    pub options: Vec<String>,
}

/// `GET /jobmanager/environment` (and `/jobs/:jobid/jobmanager/environment`): the process in
/// Flink's JVM-shaped block, and its host under `host`.
#[utoipa::path(get, path = "/jobmanager/environment", tag = "cluster",
    responses((status = 200, description = "The coordinator process", body = Environment)))]
pub async fn jobmanager_environment() -> Json<Environment> {
    Json(Environment {
        jvm: ProcessInfo {
            version: format!(
                "flamegrid-coordinator {} (native, no JVM)",
                env!("CARGO_PKG_VERSION")
            ),
            arch: std::env::consts::ARCH.into(),
            options: std::env::args().skip(1).collect(),
        },
        classpath: Vec::new(),
        host: HostEnvironment::read(),
    })
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
#[utoipa::path(get, path = "/jobmanager/metrics", tag = "cluster",
    params(MetricParams),
    responses(
        (status = 200, description = "Metric ids, or their values with `get`", body = Vec<MetricValue>),
    ))]
pub async fn jobmanager_metrics(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    let q = MetricQuery::parse(&query, false)?;
    let (total, free) = slots(&state);
    let counts = job_counts(&state);
    let mut metrics = process_status();
    metrics.insert(
        "numRegisteredTaskManagers".into(),
        state.registry.taskmanagers().len() as f64,
    );
    metrics.insert("numRunningJobs".into(), running_or_pending(&counts) as f64);
    metrics.insert("taskSlotsTotal".into(), total as f64);
    metrics.insert("taskSlotsAvailable".into(), free as f64);
    // Flame graph sampling runs started so far (lets tests and operators see coalescing work).
    metrics.insert(
        "flamegrid.flamegraph.runs".into(),
        state.flamegraphs.runs_started() as f64,
    );
    Ok(Json(metric_values(&metrics, &q)))
}

/// Flink's list of log files; always empty in flamegrid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LogList {
    /// The log files (none: flamegrid logs to standard error).
    pub logs: Vec<LogFile>,
}

/// One log file in Flink's list (never produced by flamegrid; described for clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LogFile {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// `GET /jobmanager/logs`: always empty (see the module docs).
#[utoipa::path(get, path = "/jobmanager/logs", tag = "cluster",
    responses((status = 200, description = "Always empty", body = LogList)))]
pub async fn jobmanager_logs() -> Json<LogList> {
    Json(LogList { logs: Vec::new() })
}

/// `GET /jobmanager/log`, `/jobmanager/stdout`, `/jobmanager/logs/:name`: no files to serve.
#[utoipa::path(get, path = "/jobmanager/log", tag = "cluster",
    responses((status = 404, description = "The coordinator keeps no log files", body = ErrorBody)))]
pub async fn no_log_file() -> ApiError {
    ApiError::not_found(
        "File not found. The flamegrid coordinator writes its log to standard error.",
    )
}

/// `GET /jobmanager/stdout` (same answer as [`no_log_file`]; listed for `/openapi.json`).
#[utoipa::path(get, path = "/jobmanager/stdout", tag = "cluster",
    responses((status = 404, description = "The coordinator keeps no log files", body = ErrorBody)))]
pub async fn no_stdout_file() -> ApiError {
    no_log_file().await
}

/// `GET /jobmanager/logs/:name` (same answer as [`no_log_file`]; listed for `/openapi.json`).
#[utoipa::path(get, path = "/jobmanager/logs/{name}", tag = "cluster",
    params(("name" = String, Path, description = "A log file name (none exist)")),
    responses((status = 404, description = "The coordinator keeps no log files", body = ErrorBody)))]
pub async fn no_named_log_file() -> ApiError {
    no_log_file().await
}

/// Flink's `ThreadDumpInfo`: one entry per thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadDump {
    /// The threads, ordered by id.
    pub thread_infos: Vec<ThreadDumpEntry>,
}

/// One thread of a [`ThreadDump`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadDumpEntry {
    /// The thread's name.
    pub thread_name: String,
    /// A jstack-like text block: header line, then the stack.
    pub stringified_thread_info: String,
}

/// `GET /jobmanager/thread-dump`: the coordinator's threads with their stacks, sampled by a
/// helper process (see `self_dump.rs`); when the helper cannot run, names and states only.
#[utoipa::path(get, path = "/jobmanager/thread-dump", tag = "cluster",
    responses((status = 200, description = "The coordinator's threads", body = ThreadDump)))]
pub async fn jobmanager_thread_dump() -> Json<ThreadDump> {
    // The helper's answer is re-read into the typed shape, so what is served is exactly what
    // `/openapi.json` describes; an answer that does not fit falls back to names and states.
    if let Some(dump) = super::self_dump::dump_with_stacks().await
        && let Ok(dump) = serde_json::from_value::<ThreadDump>(dump)
    {
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
    let thread_infos = threads
        .into_iter()
        .map(|(tid, name, state)| ThreadDumpEntry {
            stringified_thread_info: format!("\"{name}\" Id={tid} {state}\n\n"),
            thread_name: name,
        })
        .collect();
    Json(ThreadDump { thread_infos })
}
