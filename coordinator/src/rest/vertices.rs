//! `/jobs/:jobid/vertices/:vertexid/...`: a vertex and its subtasks in Flink's shapes.
//!
//! The flame graph paths under the same prefix live in `rest/flamegraph.rs`; everything here
//! reads a copy of the job from the registry and renders it.

use super::error::ApiError;
use super::jobs::load_job;
use super::metrics::{MetricQuery, metric_values};
use super::params;
use super::shapes::{aggregated, execution_state_counts, io_metrics, subtask_entry, time_span};
use super::state::AppState;
use crate::registry::state::{aggregate_execution_states, now_ms};
use crate::registry::{ExecutionState, Job};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The job and the index of the vertex named in the path (400 for malformed ids, 404 for
/// unknown ones).
fn load_vertex(state: &AppState, jobid: &str, vertexid: &str) -> Result<(Job, usize), ApiError> {
    let vertex_id = params::vertex_id(vertexid)?;
    let job = load_job(state, jobid)?;
    let v = job
        .vertex_index(&vertex_id)
        .ok_or_else(|| ApiError::not_found(format!("No vertex with ID '{vertex_id}' exists.")))?;
    Ok((job, v))
}

/// `GET /jobs/:jobid/vertices/:vertexid`.
pub async fn details(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, v) = load_vertex(&state, &jobid, &vertexid)?;
    let now = now_ms();
    let vertex = &job.spec.vertices[v];
    let runtimes = &job.runtime.subtasks[v];
    let subtasks: Vec<Value> = runtimes
        .iter()
        .enumerate()
        .map(|(i, s)| subtask_entry(i, s, &vertex.subtasks[i].taskmanager, now))
        .collect();
    Ok(Json(json!({
        "id": vertex.id,
        "name": vertex.name,
        "parallelism": vertex.parallelism(),
        "maxParallelism": vertex.parallelism(),
        "now": now,
        "subtasks": subtasks,
        "aggregated": aggregated(runtimes.iter(), now),
    })))
}

/// `GET /jobs/:jobid/vertices/:vertexid/taskmanagers`: subtasks grouped by task manager.
pub async fn taskmanagers(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, v) = load_vertex(&state, &jobid, &vertexid)?;
    let now = now_ms();
    let vertex = &job.spec.vertices[v];
    let mut by_tm: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in vertex.subtasks.iter().enumerate() {
        by_tm.entry(s.taskmanager.as_str()).or_default().push(i);
    }
    let entries: Vec<Value> = by_tm
        .into_iter()
        .map(|(tm, indexes)| {
            let subtasks: Vec<_> = indexes
                .iter()
                .map(|i| &job.runtime.subtasks[v][*i])
                .collect();
            let (start, end, duration) = time_span(subtasks.iter().copied(), now);
            json!({
                "endpoint": subtasks[0].endpoint,
                "status": aggregate_execution_states(subtasks.iter().map(|s| s.status)).name(),
                "start-time": start,
                "end-time": end,
                "duration": duration,
                "metrics": io_metrics(),
                "status-counts": execution_state_counts(subtasks.iter().map(|s| s.status)),
                "taskmanager-id": tm,
                "aggregated": aggregated(subtasks.iter().copied(), now),
            })
        })
        .collect();
    Ok(Json(
        json!({"id": vertex.id, "name": vertex.name, "now": now, "taskmanagers": entries}),
    ))
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasktimes`.
pub async fn subtask_times(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, v) = load_vertex(&state, &jobid, &vertexid)?;
    let now = now_ms();
    let vertex = &job.spec.vertices[v];
    let subtasks: Vec<Value> = job.runtime.subtasks[v]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let scheduled = s.timestamp(ExecutionState::Scheduled);
            let duration = if scheduled == 0 {
                -1
            } else {
                (if s.status.is_terminal() { s.end_time() } else { now }) - scheduled
            };
            let mut timestamps = Map::new();
            for state in ExecutionState::ALL {
                timestamps.insert(state.name().into(), json!(s.timestamp(state)));
            }
            json!({"subtask": i, "endpoint": s.endpoint, "duration": duration, "timestamps": timestamps})
        })
        .collect();
    Ok(Json(
        json!({"id": vertex.id, "name": vertex.name, "now": now, "subtasks": subtasks}),
    ))
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/accumulators`: the real subtasks, no
/// accumulators.
pub async fn subtasks_accumulators(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, v) = load_vertex(&state, &jobid, &vertexid)?;
    let vertex = &job.spec.vertices[v];
    let subtasks: Vec<Value> = job.runtime.subtasks[v]
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"subtask": i, "attempt": 0, "endpoint": s.endpoint, "user-accumulators": []}))
        .collect();
    Ok(Json(
        json!({"id": vertex.id, "parallelism": vertex.parallelism(), "subtasks": subtasks}),
    ))
}

fn subtask_of(
    state: &AppState,
    jobid: &str,
    vertexid: &str,
    raw_index: &str,
) -> Result<Value, ApiError> {
    let (job, v) = load_vertex(state, jobid, vertexid)?;
    let index = params::subtask_index(raw_index)?;
    let vertex = &job.spec.vertices[v];
    let subtask = job.runtime.subtasks[v].get(index).ok_or_else(|| {
        ApiError::not_found(format!("Invalid subtask index for vertex {}", vertex.id))
    })?;
    Ok(subtask_entry(
        index,
        subtask,
        &vertex.subtasks[index].taskmanager,
        now_ms(),
    ))
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex`: the current attempt.
pub async fn subtask(
    State(state): State<AppState>,
    Path((jobid, vertexid, index)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    subtask_of(&state, &jobid, &vertexid, &index).map(Json)
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex/attempts/:attempt`: attempt 0 is
/// the only one flamegrid knows.
pub async fn subtask_attempt(
    State(state): State<AppState>,
    Path((jobid, vertexid, index, attempt)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let entry = subtask_of(&state, &jobid, &vertexid, &index)?;
    match attempt.parse::<u32>() {
        Ok(0) => Ok(Json(entry)),
        Ok(n) => Err(ApiError::not_found(format!(
            "Attempt {n} not found for subtask {index}."
        ))),
        Err(_) => Err(ApiError::bad_path_param("attempt", &attempt)),
    }
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex/attempts/:attempt/accumulators`
/// and `.../subtasks/:subtaskindex/accumulators`.
pub async fn subtask_accumulators(
    State(state): State<AppState>,
    Path(path): Path<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let get = |k: &str| {
        path.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let entry = subtask_of(&state, get("jobid"), get("vertexid"), get("subtaskindex"))?;
    let attempt = get("attempt");
    if !attempt.is_empty() && attempt != "0" {
        return Err(ApiError::not_found(format!(
            "Attempt {attempt} not found for subtask {}.",
            get("subtaskindex")
        )));
    }
    Ok(Json(
        json!({"subtask": entry["subtask"], "attempt": 0, "id": "", "user-accumulators": []}),
    ))
}

/// `GET /jobs/:jobid/vertices/:vertexid/accumulators`.
pub async fn accumulators(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, v) = load_vertex(&state, &jobid, &vertexid)?;
    Ok(Json(
        json!({"id": job.spec.vertices[v].id, "user-accumulators": []}),
    ))
}

/// `GET /jobs/:jobid/vertices/:vertexid/backpressure`: every subtask "ok" (flamegrid does not
/// measure back pressure; the OFF_CPU flame graph shows where threads wait).
pub async fn backpressure(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, v) = load_vertex(&state, &jobid, &vertexid)?;
    let subtasks: Vec<Value> = (0..job.spec.vertices[v].parallelism())
        .map(|i| {
            json!({"subtask": i, "attempt-number": 0, "backpressure-level": "ok", "ratio": 0.0,
                   "idleRatio": 0.0, "busyRatio": 0.0})
        })
        .collect();
    Ok(Json(json!({
        "status": "ok",
        "backpressure-level": "ok",
        "end-timestamp": now_ms(),
        "subtasks": subtasks,
    })))
}

/// `GET .../watermarks`, `.../subtasks/metrics`, `.../metrics`, `.../subtasks/:i/metrics`:
/// flamegrid has no per-vertex metrics, so `[]` once the path's ids check out.
pub async fn no_metrics(
    State(state): State<AppState>,
    Path(path): Path<Vec<(String, String)>>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let get = |k: &str| path.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (job, v) = load_vertex(
        &state,
        get("jobid").unwrap_or_default(),
        get("vertexid").unwrap_or_default(),
    )?;
    if let Some(raw) = get("subtaskindex") {
        let index = params::subtask_index(raw)?;
        if index >= job.spec.vertices[v].parallelism() {
            return Err(ApiError::not_found(format!(
                "Invalid subtask index for vertex {}",
                job.spec.vertices[v].id
            )));
        }
    }
    let q = MetricQuery::parse(&query, path.iter().all(|(n, _)| n != "subtaskindex"))?;
    Ok(Json(metric_values(&BTreeMap::new(), &q)))
}
