//! `/jobs` and `/jobs/:jobid/...` (except vertices): registration, listing, details, plan,
//! status, cancel, and the job-level paths Flink's dashboard polls that carry no profiler data
//! (exceptions, config, checkpoints, accumulators, metrics), answered in Flink's shape.

use super::error::ApiError;
use super::metrics::{MetricQuery, metric_values};
use super::params;
use super::shapes::{
    execution_state_counts, html_escape, io_metrics, job_timestamps, task_counts_lower, time_span,
};
use super::state::AppState;
use crate::registry::state::now_ms;
use crate::registry::{ExecutionState, Job, JobStatus, RegistryError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Largest accepted `POST /jobs` body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// Looks a job up by its raw path id (400 for a malformed id, 404 for an unknown one).
pub fn load_job(state: &AppState, raw_id: &str) -> Result<Job, ApiError> {
    let id = params::job_id(raw_id)?;
    state.registry.job(&id).map_err(|e| match e {
        RegistryError::JobNotFound(id) => ApiError::not_found(format!("Job {id} not found")),
        other => other.into(),
    })
}

/// `POST /jobs`: validates the whole body and stores the job; 202 `{"jobid": ...}`.
pub async fn register(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large (the limit is 1 MiB).",
        ));
    }
    let registry = state.registry.clone();
    let id = blocking(move || registry.register_job(&body)).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "jobid": id }))).into_response())
}

/// `GET /jobs`: ids and statuses.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let jobs: Vec<Value> = state
        .registry
        .jobs()
        .iter()
        .map(|j| json!({"id": j.spec.id, "status": j.runtime.status.name()}))
        .collect();
    Json(json!({ "jobs": jobs }))
}

fn all_states(job: &Job) -> impl Iterator<Item = ExecutionState> + '_ {
    job.runtime.subtasks.iter().flatten().map(|s| s.status)
}

/// `GET /jobs/overview`.
pub async fn overview(State(state): State<AppState>) -> Json<Value> {
    let now = now_ms();
    let jobs: Vec<Value> = state
        .registry
        .jobs()
        .iter()
        .map(|j| {
            json!({
                "jid": j.spec.id,
                "name": j.spec.name,
                "jobType": "STREAMING",
                "schedulerType": "Default",
                "start-time": j.start_time(),
                "end-time": j.end_time(),
                "duration": j.duration(now),
                "state": j.runtime.status.name(),
                "last-modification": j.runtime.last_modification,
                "tasks": task_counts_lower(all_states(j)),
                "pending-operators": 0,
            })
        })
        .collect();
    Json(json!({ "jobs": jobs }))
}

/// The id of the slot-sharing group all of a job's vertices share (32 hex, derived from the
/// job id so it is stable).
fn slot_sharing_group(job: &Job) -> String {
    let n = u128::from_str_radix(&job.spec.id, 16).unwrap_or(0);
    format!("{:032x}", n ^ 0x5f1a_3e0d_c0de_f1a3_e9a1_d5ab_1e5e_ed5a)
}

/// One vertex of `/jobs/:jobid`'s `vertices`.
fn vertex_summary(job: &Job, v: usize, now: i64) -> Value {
    let vertex = &job.spec.vertices[v];
    let subtasks = &job.runtime.subtasks[v];
    let (start, end, duration) = time_span(subtasks, now);
    json!({
        "id": vertex.id,
        "slotSharingGroupId": slot_sharing_group(job),
        "name": vertex.name,
        "maxParallelism": vertex.parallelism(),
        "parallelism": vertex.parallelism(),
        "status": job.vertex_status(v).name(),
        "start-time": start,
        "end-time": end,
        "duration": duration,
        "tasks": execution_state_counts(subtasks.iter().map(|s| s.status)),
        "metrics": io_metrics(),
    })
}

/// The job's plan: one node per vertex (node id = vertex id), edges from `inputs`.
fn plan(job: &Job) -> Value {
    let nodes: Vec<Value> = job
        .spec
        .vertices
        .iter()
        .map(|vertex| {
            let mut node = Map::new();
            node.insert("id".into(), json!(vertex.id));
            node.insert("parallelism".into(), json!(vertex.parallelism()));
            node.insert("operator".into(), json!(""));
            node.insert("operator_strategy".into(), json!(""));
            node.insert("description".into(), json!(html_escape(&vertex.name)));
            if !vertex.inputs.is_empty() {
                let inputs: Vec<Value> = vertex
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(num, &up)| {
                        let upstream = &job.spec.vertices[up];
                        let strategy =
                            if upstream.parallelism() == vertex.parallelism() { "FORWARD" } else { "REBALANCE" };
                        json!({"num": num, "id": upstream.id, "ship_strategy": strategy, "exchange": "pipelined_bounded"})
                    })
                    .collect();
                node.insert("inputs".into(), Value::Array(inputs));
            }
            node.insert("optimizer_properties".into(), json!({}));
            Value::Object(node)
        })
        .collect();
    json!({"jid": job.spec.id, "name": job.spec.name, "type": "STREAMING", "nodes": nodes})
}

/// `GET /jobs/:jobid`.
pub async fn details(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let now = now_ms();
    let vertices: Vec<Value> = (0..job.spec.vertices.len())
        .map(|v| vertex_summary(&job, v, now))
        .collect();
    let vertex_states = (0..job.spec.vertices.len()).map(|v| job.vertex_status(v));
    Ok(Json(json!({
        "jid": job.spec.id,
        "application-id": job.spec.id,
        "name": job.spec.name,
        "isStoppable": false,
        "state": job.runtime.status.name(),
        "job-type": "STREAMING",
        "schedulerType": "Default",
        "start-time": job.start_time(),
        "end-time": job.end_time(),
        "duration": job.duration(now),
        "maxParallelism": -1,
        "now": now,
        "timestamps": job_timestamps(&job),
        "vertices": vertices,
        "status-counts": execution_state_counts(vertex_states),
        "plan": plan(&job),
        "pending-operators": 0,
    })))
}

/// `GET /jobs/:jobid/plan`.
pub async fn job_plan(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    Ok(Json(json!({ "plan": plan(&job) })))
}

/// `GET /jobs/:jobid/status`.
pub async fn status(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    Ok(Json(json!({ "status": job.runtime.status.name() })))
}

/// `PATCH /jobs/:jobid[?mode=cancel]`: cancels; 202 with `{}` as Flink answers.
pub async fn cancel(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let id = params::job_id(&jobid)?;
    if let Some(mode) = params::query_lists(&query)
        .get("mode")
        .and_then(|m| m.first())
    {
        match mode.to_ascii_lowercase().as_str() {
            "cancel" => {}
            "stop" => {
                return Err(ApiError::new(
                    StatusCode::PERMANENT_REDIRECT,
                    "The termination mode \"stop\" has been removed. For an ungraceful shutdown, please use \
                     \"cancel\" instead. For a graceful shutdown, please use \"jobs/:jobId/stop\" instead.",
                ));
            }
            _ => return Err(ApiError::bad_query_param("mode", mode)),
        }
    }
    let registry = state.registry.clone();
    match blocking(move || registry.cancel_job(&id)).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response()),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            Err(ApiError::not_found("Job could not be found."))
        }
        Err(e) => Err(e),
    }
}

/// `GET /jobs/:jobid/exceptions`: the subtasks that failed (lost agent, missing process) as
/// Flink's exception history entries.
pub async fn exceptions(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let mut entries = Vec::new();
    for (v, vertex) in job.spec.vertices.iter().enumerate() {
        for (s, subtask) in job.runtime.subtasks[v].iter().enumerate() {
            let Some(reason) = &subtask.failure else {
                continue;
            };
            entries.push(json!({
                "exceptionName": "flamegrid.SubtaskLost",
                "stacktrace": reason,
                "timestamp": subtask.timestamp(ExecutionState::Failed),
                "taskName": format!("{} ({}/{})", vertex.name, s + 1, vertex.parallelism()),
                "endpoint": subtask.endpoint,
                "taskManagerId": vertex.subtasks[s].taskmanager,
                "failureLabels": {},
                "concurrentExceptions": [],
            }));
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e["timestamp"].as_i64().unwrap_or(0)));
    Ok(Json(
        json!({ "exceptionHistory": { "entries": entries, "truncated": false } }),
    ))
}

/// `GET /jobs/:jobid/config`.
pub async fn config(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let parallelism = job
        .spec
        .vertices
        .iter()
        .map(|v| v.parallelism())
        .max()
        .unwrap_or(1);
    Ok(Json(json!({
        "jid": job.spec.id,
        "name": job.spec.name,
        "execution-config": {
            "restart-strategy": "Restart deactivated.",
            "job-parallelism": parallelism,
            "object-reuse-mode": false,
            "user-config": {},
        },
    })))
}

fn zero_summary() -> Value {
    json!({"min": 0, "max": 0, "avg": 0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0})
}

/// `GET /jobs/:jobid/checkpoints`: Flink's checkpoint statistics, all empty (flamegrid takes no
/// checkpoints).
pub async fn checkpoints(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(Json(json!({
        "counts": {"restored": 0, "total": 0, "in_progress": 0, "completed": 0, "failed": 0},
        "summary": {
            "checkpointed_size": zero_summary(), "state_size": zero_summary(),
            "end_to_end_duration": zero_summary(), "alignment_buffered": zero_summary(),
            "processed_data": zero_summary(), "persisted_data": zero_summary(),
        },
        "latest": {"completed": null, "savepoint": null, "failed": null, "restored": null},
        "history": [],
    })))
}

/// `GET /jobs/:jobid/checkpoints/config`: checkpointing shown as off.
pub async fn checkpoints_config(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(Json(json!({
        "mode": "exactly_once",
        "interval": i64::MAX,
        "timeout": 0,
        "min_pause": 0,
        "max_concurrent": 0,
        "externalization": {"enabled": false, "delete_on_cancellation": true},
        "state_backend": "none",
        "checkpoint_storage": "none",
        "unaligned_checkpoints": false,
        "tolerable_failed_checkpoints": 0,
        "aligned_checkpoint_timeout": 0,
        "checkpoints_after_tasks_finish": false,
        "state_changelog_enabled": false,
        "changelog_periodic_materialization_interval": 0,
        "changelog_storage": "none",
    })))
}

/// `GET /jobs/:jobid/checkpoints/details/:checkpointid`: there are none.
pub async fn checkpoint_details(
    State(state): State<AppState>,
    Path((jobid, checkpoint)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    load_job(&state, &jobid)?;
    let id: i64 = checkpoint
        .parse()
        .map_err(|_| ApiError::bad_path_param("checkpointid", &checkpoint))?;
    Err(ApiError::not_found(format!(
        "Could not find checkpointing statistics for checkpoint {id}."
    )))
}

/// `GET /jobs/:jobid/accumulators`.
pub async fn accumulators(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(Json(json!({
        "job-accumulators": [],
        "user-task-accumulators": [],
        "serialized-user-task-accumulators": {},
    })))
}

/// `GET /jobs/:jobid/execution-result`: `IN_PROGRESS` until the job ends.
pub async fn execution_result(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let status = job.runtime.status;
    if !status.is_terminal() {
        return Ok(Json(json!({"status": {"id": "IN_PROGRESS"}})));
    }
    let application_status = match status {
        JobStatus::Finished => "SUCCEEDED",
        JobStatus::Canceled => "CANCELED",
        _ => "FAILED",
    };
    Ok(Json(json!({
        "status": {"id": "COMPLETED"},
        "job-execution-result": {
            "id": job.spec.id,
            "application-status": application_status,
            "accumulator-results": {},
            "net-runtime": job.duration(now_ms()),
        },
    })))
}

/// The metrics flamegrid keeps per job (Flink names): `uptime`, `downtime`, `numRestarts`.
pub fn job_metrics(job: &Job, now: i64) -> BTreeMap<String, f64> {
    let uptime = if job.runtime.status == JobStatus::Running {
        (now - job.start_time()).max(0)
    } else {
        0
    };
    BTreeMap::from([
        ("uptime".to_string(), uptime as f64),
        ("downtime".to_string(), 0.0),
        ("numRestarts".to_string(), 0.0),
    ])
}

/// `GET /jobs/:jobid/metrics[?get=a,b]`.
pub async fn metrics(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let job = load_job(&state, &jobid)?;
    Ok(Json(metric_values(
        &job_metrics(&job, now_ms()),
        &MetricQuery::parse(&query, false)?,
    )))
}

/// `GET /jobs/metrics[?get=&agg=&jobs=]`: job metrics aggregated across jobs.
pub async fn aggregated_metrics(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let q = MetricQuery::parse(&query, true)?;
    let now = now_ms();
    let selected = params::query_lists(&query).remove("jobs");
    let per_job: Vec<BTreeMap<String, f64>> = state
        .registry
        .jobs()
        .iter()
        .filter(|j| {
            selected
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|id| id.eq_ignore_ascii_case(&j.spec.id)))
        })
        .map(|j| job_metrics(j, now))
        .collect();
    Ok(Json(super::metrics::aggregate(&per_job, &q)))
}

/// `GET /jobs/:jobid/jobmanager/config`: the coordinator's settings, once the job checks out.
pub async fn jobmanager_config(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(super::cluster::jobmanager_config(State(state)).await)
}

/// `GET /jobs/:jobid/jobmanager/environment`: the coordinator's environment, once the job checks
/// out.
pub async fn jobmanager_environment(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(super::cluster::jobmanager_environment().await)
}
