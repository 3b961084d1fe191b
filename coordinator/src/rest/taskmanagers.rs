//! `/taskmanagers...`: the registered agents in Flink's TaskManagerInfo shape.
//!
//! Mapping of Flink's fields onto an agent:
//! * `id` is the agent id, `path` its advertised gRPC address, `dataPort` that address's port,
//!   `timeSinceLastHeartbeat` the epoch-ms time of its last heartbeat (Flink's naming, not ours).
//! * Slots: one per CPU core (`slotsNumber`); `freeSlots` is cores minus the subtasks placed on
//!   it that are not terminal (never below 0). `assignedTasks` is that subtask count.
//! * `hardware` is the host as the agent reported it; JVM memory fields are 0 (no JVM).
//!
//! The thread dump (`/taskmanagers/:tmid/thread-dump`) is served by `rest/flamegraph.rs`.

use super::error::ApiError;
use super::metrics::{MetricQuery, aggregate, metric_values};
use super::params::query_lists;
use super::state::AppState;
use crate::registry::TaskManager;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn resource(cpu_cores: f64) -> Value {
    json!({"cpuCores": cpu_cores, "taskHeapMemory": 0, "taskOffHeapMemory": 0, "managedMemory": 0,
           "networkMemory": 0, "extendedResources": {}})
}

/// One TaskManagerInfo.
fn info(tm: &TaskManager, assigned: usize) -> Value {
    let slots = tm.host.cpu_cores.max(1) as usize;
    let free = slots.saturating_sub(assigned);
    json!({
        "id": tm.id,
        "path": tm.address,
        "dataPort": tm.data_port(),
        "jmxPort": -1,
        "timeSinceLastHeartbeat": tm.last_heartbeat_ms,
        "slotsNumber": slots,
        "freeSlots": free,
        "assignedTasks": assigned,
        "totalResource": resource(slots as f64),
        "freeResource": resource(free as f64),
        "hardware": {
            "cpuCores": tm.host.cpu_cores,
            "physicalMemory": tm.host.physical_memory,
            "freeMemory": tm.host.free_memory,
            "managedMemory": 0,
        },
        "memoryConfiguration": {
            "frameworkHeap": 0, "taskHeap": 0, "frameworkOffHeap": 0, "taskOffHeap": 0, "networkMemory": 0,
            "managedMemory": 0, "jvmMetaspace": 0, "jvmOverhead": 0, "totalFlinkMemory": 0,
            "totalProcessMemory": tm.host.physical_memory,
        },
    })
}

/// `GET /taskmanagers`.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let assigned = state.registry.active_subtasks_per_taskmanager();
    let tms: Vec<Value> = state
        .registry
        .taskmanagers()
        .iter()
        .map(|tm| info(tm, assigned.get(&tm.id).copied().unwrap_or(0)))
        .collect();
    Json(json!({ "taskmanagers": tms }))
}

/// `GET /taskmanagers/:tmid`: TaskManagerInfo plus allocated slots and (JVM) metrics.
pub async fn details(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tm = state.registry.taskmanager(&tmid)?;
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for job in state.registry.jobs() {
        for (v, vertex) in job.spec.vertices.iter().enumerate() {
            for (s, spec) in vertex.subtasks.iter().enumerate() {
                if spec.taskmanager == tm.id && !job.runtime.subtasks[v][s].status.is_terminal() {
                    *per_job.entry(job.spec.id.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    let assigned: usize = per_job.values().sum();
    let mut body = info(&tm, assigned);
    let slots: Vec<Value> = per_job
        .into_iter()
        .map(|(job, n)| json!({"jobId": job, "resource": resource(n as f64), "assignedTasks": n}))
        .collect();
    body["allocatedSlots"] = Value::Array(slots);
    body["metrics"] = json!({
        "heapUsed": 0, "heapCommitted": 0, "heapMax": 0, "nonHeapUsed": 0, "nonHeapCommitted": 0,
        "nonHeapMax": 0, "directCount": 0, "directUsed": 0, "directMax": 0, "mappedCount": 0,
        "mappedUsed": 0, "mappedMax": 0, "nettyShuffleMemorySegmentsAvailable": 0,
        "nettyShuffleMemorySegmentsUsed": 0, "nettyShuffleMemorySegmentsTotal": 0,
        "nettyShuffleMemoryAvailable": 0, "nettyShuffleMemoryUsed": 0, "nettyShuffleMemoryTotal": 0,
        "garbageCollectors": [],
    });
    Ok(Json(body))
}

/// `GET /taskmanagers/:tmid/metrics[?get=a,b]`: the agent's host metrics.
pub async fn metrics(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let tm = state.registry.taskmanager(&tmid)?;
    Ok(Json(metric_values(
        &tm.all_metrics(),
        &MetricQuery::parse(&query, false)?,
    )))
}

/// `GET /taskmanagers/metrics[?get=&agg=&taskmanagers=]`: host metrics aggregated across agents.
pub async fn aggregated_metrics(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
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
pub async fn logs(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.registry.taskmanager(&tmid)?;
    Ok(Json(json!({ "logs": [] })))
}

/// `GET /taskmanagers/:tmid/log`, `/stdout`, `/logs/:name`: nothing to serve.
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
