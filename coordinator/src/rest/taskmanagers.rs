//! `/taskmanagers...`: the registered agents in Flink's TaskManagerInfo shape.
//!
//! Mapping of Flink's fields onto an agent:
//! * `id` is the agent id, `path` its advertised gRPC address, `dataPort` that address's port,
//!   `timeSinceLastHeartbeat` the epoch-ms time of its last heartbeat (Flink's naming, not ours).
//! * Slots: one per CPU core (`slotsNumber`); `freeSlots` is cores minus the subtasks placed on
//!   it that are not terminal (never below 0). `assignedTasks` is that subtask count.
//! * `hardware` is the host as the agent reported it; JVM memory fields are 0 (no JVM).
//! * Extra keys Flink does not have (its clients ignore unknown keys): `hostname`, `os`,
//!   `kernel` and `agentVersion`, the host facts the agent registered with.
//!
//! The thread dump (`/taskmanagers/:tmid/thread-dump`) is served by `rest/flamegraph.rs`.

// The fields of these shapes are Flink's JSON keys, named and ordered as in flink-rest.md §7;
// each struct's doc says which answer it is, so the fields go without a doc of their own.
#![allow(missing_docs)]

use super::cluster::LogList;
use super::error::{ApiError, ErrorBody, TaskManagerErrors};
use super::metrics::{
    AggregatedMetric, MetricParams, MetricQuery, MetricValue, TaskManagersMetricParams, aggregate,
    metric_values,
};
use super::params::{TaskManagerPath, query_lists};
use super::state::AppState;
use crate::registry::TaskManager;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each declared once by its handler's `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(aggregated_metrics))
        .routes(routes!(details))
        .routes(routes!(metrics))
        .routes(routes!(logs))
        .routes(routes!(no_named_log_file))
        .routes(routes!(no_log_file))
        .routes(routes!(no_stdout_file))
}

/// Flink's ResourceProfileInfo: CPU cores (slots) and memory (0: no JVM).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Cores.
    pub cpu_cores: f64,
    /// 0.
    pub task_heap_memory: u64,
    /// 0.
    pub task_off_heap_memory: u64,
    /// 0.
    pub managed_memory: u64,
    /// 0.
    pub network_memory: u64,
    /// Always `{}`.
    pub extended_resources: super::jobs::EmptyObject,
}

fn resource(cpu_cores: f64) -> Resource {
    Resource {
        cpu_cores,
        task_heap_memory: 0,
        task_off_heap_memory: 0,
        managed_memory: 0,
        network_memory: 0,
        extended_resources: super::jobs::EmptyObject {},
    }
}

/// The host as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hardware {
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// Bytes of RAM.
    pub physical_memory: u64,
    /// Bytes of RAM free at the last heartbeat.
    pub free_memory: u64,
    /// 0.
    pub managed_memory: u64,
}

/// Flink's memory configuration: zeros except the host's RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryConfiguration {
    /// 0.
    pub framework_heap: u64,
    /// 0.
    pub task_heap: u64,
    /// 0.
    pub framework_off_heap: u64,
    /// 0.
    pub task_off_heap: u64,
    /// 0.
    pub network_memory: u64,
    /// 0.
    pub managed_memory: u64,
    /// 0.
    pub jvm_metaspace: u64,
    /// 0.
    pub jvm_overhead: u64,
    /// 0.
    pub total_flink_memory: u64,
    /// The host's RAM.
    pub total_process_memory: u64,
}

/// One TaskManagerInfo: a registered agent.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerInfo {
    /// Agent id.
    pub id: String,
    /// The agent's advertised gRPC address.
    pub path: String,
    /// That address's port, -1 if none.
    pub data_port: i64,
    /// -1.
    pub jmx_port: i64,
    /// Epoch ms of its last heartbeat (Flink's name).
    pub time_since_last_heartbeat: i64,
    /// One per CPU core.
    pub slots_number: usize,
    /// Cores minus active subtasks placed on it.
    pub free_slots: usize,
    /// Active subtasks placed on it.
    pub assigned_tasks: usize,
    /// All slots.
    pub total_resource: Resource,
    /// Free slots.
    pub free_resource: Resource,
    /// The host.
    pub hardware: Hardware,
    /// Zeros.
    pub memory_configuration: MemoryConfiguration,
    /// flamegrid's addition: the agent host's name, as it registered (Flink has no such key;
    /// Flink clients ignore unknown keys, and flamegrid's dashboard shows it).
    pub hostname: String,
    /// flamegrid's addition: the agent host's operating system, e.g. "Debian GNU/Linux 12".
    pub os: String,
    /// flamegrid's addition: the agent host's kernel release, e.g. "6.1.0-18-amd64".
    pub kernel: String,
    /// flamegrid's addition: the agent's version, to spot agents left behind by an upgrade.
    pub agent_version: String,
}

/// One TaskManagerInfo.
fn info(tm: &TaskManager, assigned: usize) -> TaskManagerInfo {
    let slots = tm.host.cpu_cores.max(1) as usize;
    let free = slots.saturating_sub(assigned);
    TaskManagerInfo {
        id: tm.id.clone(),
        path: tm.address.clone(),
        data_port: tm.data_port(),
        jmx_port: -1,
        time_since_last_heartbeat: tm.last_heartbeat_ms,
        slots_number: slots,
        free_slots: free,
        assigned_tasks: assigned,
        total_resource: resource(slots as f64),
        free_resource: resource(free as f64),
        hardware: Hardware {
            cpu_cores: tm.host.cpu_cores,
            physical_memory: tm.host.physical_memory,
            free_memory: tm.host.free_memory,
            managed_memory: 0,
        },
        memory_configuration: MemoryConfiguration {
            framework_heap: 0,
            task_heap: 0,
            framework_off_heap: 0,
            task_off_heap: 0,
            network_memory: 0,
            managed_memory: 0,
            jvm_metaspace: 0,
            jvm_overhead: 0,
            total_flink_memory: 0,
            total_process_memory: tm.host.physical_memory,
        },
        hostname: tm.host.hostname.clone(),
        os: tm.host.os.clone(),
        kernel: tm.host.kernel.clone(),
        agent_version: tm.host.agent_version.clone(),
    }
}

/// `GET /taskmanagers`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TaskManagerList {
    /// Every registered agent.
    pub taskmanagers: Vec<TaskManagerInfo>,
}

/// `GET /taskmanagers`.
#[utoipa::path(get, path = "/taskmanagers", tag = "taskmanagers",
    responses((status = 200, description = "The registered agents", body = TaskManagerList)))]
pub async fn list(State(state): State<AppState>) -> Json<TaskManagerList> {
    let assigned = state.registry.active_subtasks_per_taskmanager();
    let taskmanagers = state
        .registry
        .taskmanagers()
        .iter()
        .map(|tm| info(tm, assigned.get(&tm.id).copied().unwrap_or(0)))
        .collect();
    Json(TaskManagerList { taskmanagers })
}

/// Slots a job occupies on one task manager.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocatedSlot {
    /// Job id.
    pub job_id: String,
    /// One core per active subtask.
    pub resource: Resource,
    /// Active subtasks of the job on it.
    pub assigned_tasks: usize,
}

/// Flink's TaskManagerMetricsInfo: JVM numbers, all 0 (no JVM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JvmMetrics {
    pub heap_used: u64,
    pub heap_committed: u64,
    pub heap_max: u64,
    pub non_heap_used: u64,
    pub non_heap_committed: u64,
    pub non_heap_max: u64,
    pub direct_count: u64,
    pub direct_used: u64,
    pub direct_max: u64,
    pub mapped_count: u64,
    pub mapped_used: u64,
    pub mapped_max: u64,
    pub netty_shuffle_memory_segments_available: u64,
    pub netty_shuffle_memory_segments_used: u64,
    pub netty_shuffle_memory_segments_total: u64,
    pub netty_shuffle_memory_available: u64,
    pub netty_shuffle_memory_used: u64,
    pub netty_shuffle_memory_total: u64,
    /// Always empty.
    pub garbage_collectors: Vec<super::jobs::EmptyObject>,
}

/// `GET /taskmanagers/:tmid`: TaskManagerInfo plus allocated slots and (JVM) metrics.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerDetails {
    /// The agent.
    #[serde(flatten)]
    pub info: TaskManagerInfo,
    /// Per job with active subtasks on it.
    pub allocated_slots: Vec<AllocatedSlot>,
    /// All zero.
    pub metrics: JvmMetrics,
}

/// `GET /taskmanagers/:tmid`: TaskManagerInfo plus allocated slots and (JVM) metrics.
#[utoipa::path(get, path = "/taskmanagers/{tmid}", tag = "taskmanagers", params(TaskManagerPath),
    responses(
        (status = 200, description = "The agent, with its slots per job", body = TaskManagerDetails),
        TaskManagerErrors,
    ))]
pub async fn details(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
) -> Result<Json<TaskManagerDetails>, ApiError> {
    let tm = state.registry.taskmanager(&tmid)?;
    let per_job = state.registry.active_subtasks_by_job(&tm.id);
    let assigned: usize = per_job.values().sum();
    let allocated_slots = per_job
        .into_iter()
        .map(|(job_id, n)| AllocatedSlot {
            job_id,
            resource: resource(n as f64),
            assigned_tasks: n,
        })
        .collect();
    Ok(Json(TaskManagerDetails {
        info: info(&tm, assigned),
        allocated_slots,
        metrics: JvmMetrics {
            heap_used: 0,
            heap_committed: 0,
            heap_max: 0,
            non_heap_used: 0,
            non_heap_committed: 0,
            non_heap_max: 0,
            direct_count: 0,
            direct_used: 0,
            direct_max: 0,
            mapped_count: 0,
            mapped_used: 0,
            mapped_max: 0,
            netty_shuffle_memory_segments_available: 0,
            netty_shuffle_memory_segments_used: 0,
            netty_shuffle_memory_segments_total: 0,
            netty_shuffle_memory_available: 0,
            netty_shuffle_memory_used: 0,
            netty_shuffle_memory_total: 0,
            garbage_collectors: Vec::new(),
        },
    }))
}

/// `GET /taskmanagers/:tmid/metrics[?get=a,b]`: the agent's host metrics.
#[utoipa::path(get, path = "/taskmanagers/{tmid}/metrics", tag = "taskmanagers",
    params(TaskManagerPath, MetricParams),
    responses(
        (status = 200, description = "Metric ids, or their values with `get`", body = Vec<MetricValue>),
        TaskManagerErrors,
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    let tm = state.registry.taskmanager(&tmid)?;
    Ok(Json(metric_values(
        &tm.all_metrics(),
        &MetricQuery::parse(&query, false)?,
    )))
}

/// `GET /taskmanagers/metrics[?get=&agg=&taskmanagers=]`: host metrics aggregated across agents.
#[utoipa::path(get, path = "/taskmanagers/metrics", tag = "taskmanagers",
    params(TaskManagersMetricParams),
    responses(
        (status = 200, description = "Metric ids, or their aggregates with `get`", body = Vec<AggregatedMetric>),
        (status = 400, description = "Unknown aggregation mode", body = ErrorBody),
    ))]
pub async fn aggregated_metrics(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<AggregatedMetric>>, ApiError> {
    let q = MetricQuery::parse(&query, true)?;
    let selected = query_lists(&query).remove("taskmanagers");
    let sources: Vec<BTreeMap<String, f64>> = state
        .registry
        .taskmanagers()
        .iter()
        .filter(|tm| selected.as_ref().is_none_or(|ids| ids.contains(&tm.id)))
        .map(TaskManager::all_metrics)
        .collect();
    Ok(Json(aggregate(&sources, &q)))
}

/// `GET /taskmanagers/:tmid/logs`: agents keep no log files (they log to standard error).
#[utoipa::path(get, path = "/taskmanagers/{tmid}/logs", tag = "taskmanagers",
    params(TaskManagerPath),
    responses(
        (status = 200, description = "Always empty", body = LogList),
        TaskManagerErrors,
    ))]
pub async fn logs(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
) -> Result<Json<LogList>, ApiError> {
    state.registry.taskmanager(&tmid)?;
    Ok(Json(LogList { logs: Vec::new() }))
}

/// `GET /taskmanagers/:tmid/log`, `/stdout`, `/logs/:name`: nothing to serve.
#[utoipa::path(get, path = "/taskmanagers/{tmid}/log", tag = "taskmanagers",
    params(TaskManagerPath),
    responses((status = 404, description = "Agents keep no log files (or unknown task manager)", body = ErrorBody)))]
pub async fn no_log_file(
    State(state): State<AppState>,
    Path(path): Path<Vec<(String, String)>>,
) -> ApiError {
    let tmid = path
        .iter()
        .find(|(k, _)| k == "tmid")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    match state.registry.taskmanager(tmid) {
        Err(e) => e.into(),
        Ok(_) => ApiError::not_found(
            "File not found. flamegrid agents write their log to standard error.",
        ),
    }
}

/// `GET /taskmanagers/:tmid/stdout` (same answer as [`no_log_file`]; listed for
/// `/openapi.json`).
#[utoipa::path(get, path = "/taskmanagers/{tmid}/stdout", tag = "taskmanagers",
    params(TaskManagerPath),
    responses((status = 404, description = "Agents keep no log files (or unknown task manager)", body = ErrorBody)))]
pub async fn no_stdout_file(state: State<AppState>, path: Path<Vec<(String, String)>>) -> ApiError {
    no_log_file(state, path).await
}

/// `GET /taskmanagers/:tmid/logs/:name` (same answer as [`no_log_file`]; listed for
/// `/openapi.json`).
#[utoipa::path(get, path = "/taskmanagers/{tmid}/logs/{name}", tag = "taskmanagers",
    params(TaskManagerPath, ("name" = String, Path, description = "A log file name (none exist)")),
    responses((status = 404, description = "Agents keep no log files (or unknown task manager)", body = ErrorBody)))]
pub async fn no_named_log_file(
    state: State<AppState>,
    path: Path<Vec<(String, String)>>,
) -> ApiError {
    no_log_file(state, path).await
}
