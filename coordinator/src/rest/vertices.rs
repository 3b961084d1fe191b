//! `/jobs/:jobid/vertices/:vertexid/...`: a vertex and its subtasks in Flink's shapes.
//!
//! The flame graph paths under the same prefix live in `rest/flamegraph.rs`; everything here
//! reads a copy of the one vertex (not of the whole job, which may hold 100,000 subtasks) from
//! the registry and renders it into the typed shapes below, which also describe the answers in
//! `/openapi.json`.

use super::error::{ApiError, ErrorBody, VertexErrors};
use super::params::{self, SubtaskPath, VertexPath};
use super::shapes::{
    Aggregated, ExecutionStateCounts, ExecutionStateTimestamps, IoMetrics, SubtaskEntry, time_span,
};
use super::state::AppState;
use crate::registry::job::{SubtaskRuntime, VertexSpec};
use crate::registry::state::aggregate_execution_states;
use crate::registry::{ExecutionState, RegistryError};
use axum::Json;
use axum::extract::{Path, State};
use flamegrid_model::clock::now_ms;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each declared once by its handler's `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(details))
        .routes(routes!(taskmanagers))
        .routes(routes!(subtask_times))
        .routes(routes!(subtask))
        .routes(routes!(subtask_attempt))
}

/// A copy of the vertex named in the path, and of its subtasks' runtime: not of the whole job,
/// which may hold 100,000 subtasks (400 for malformed ids, 404 for unknown ones).
pub(super) fn load_vertex(
    state: &AppState,
    jobid: &str,
    vertexid: &str,
) -> Result<(VertexSpec, Vec<SubtaskRuntime>), ApiError> {
    let vertex_id = params::vertex_id(vertexid)?;
    // Checked first, for the same 400 as the job paths.
    let job_id = params::job_id(jobid)?;
    state
        .registry
        .vertex(&job_id, &vertex_id)
        .map_err(|e| match e {
            RegistryError::JobNotFound(id) => ApiError::not_found(format!("Job {id} not found")),
            other => other.into(),
        })
}

/// `GET /jobs/:jobid/vertices/:vertexid` (Flink's JobVertexDetailsInfo).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VertexDetails {
    /// Vertex id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Number of subtasks.
    pub parallelism: usize,
    /// Equal to `parallelism`.
    #[serde(rename = "maxParallelism")]
    pub max_parallelism: usize,
    /// The coordinator's clock when answering.
    pub now: i64,
    /// One entry per subtask.
    pub subtasks: Vec<SubtaskEntry>,
    /// Summaries over the subtasks.
    pub aggregated: Aggregated,
}

/// `GET /jobs/:jobid/vertices/:vertexid`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}", tag = "vertices", params(VertexPath),
    responses(
        (status = 200, description = "The vertex and its subtasks", body = VertexDetails),
        VertexErrors,
    ))]
pub async fn details(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<VertexDetails>, ApiError> {
    let (vertex_spec, vertex_runtime) = load_vertex(&state, &jobid, &vertexid)?;
    let now = now_ms();
    let vertex = &vertex_spec;
    let runtimes = &vertex_runtime;
    let subtasks = runtimes
        .iter()
        .enumerate()
        .map(|(i, s)| SubtaskEntry::of(i, s, &vertex.subtasks[i].taskmanager, now))
        .collect();
    Ok(Json(VertexDetails {
        id: vertex.id.clone(),
        name: vertex.name.clone(),
        parallelism: vertex.parallelism(),
        max_parallelism: vertex.parallelism(),
        now,
        subtasks,
        aggregated: Aggregated::of(runtimes.iter(), now),
    }))
}

/// `GET /jobs/:jobid/vertices/:vertexid/taskmanagers` (Flink's JobVertexTaskManagersInfo).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VertexTaskManagers {
    /// Vertex id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The coordinator's clock when answering.
    pub now: i64,
    /// One entry per task manager that runs subtasks of the vertex.
    pub taskmanagers: Vec<VertexTaskManager>,
}

/// The subtasks of a vertex on one task manager.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VertexTaskManager {
    /// The task manager's `host:port`.
    pub endpoint: String,
    /// Aggregate state of these subtasks.
    pub status: ExecutionState,
    /// Earliest start, -1 if none.
    #[serde(rename = "start-time")]
    pub start_time: i64,
    /// Latest end once all are terminal, else -1.
    #[serde(rename = "end-time")]
    pub end_time: i64,
    /// ms, -1 if never started.
    pub duration: i64,
    /// All zero.
    pub metrics: IoMetrics,
    /// These subtasks per state.
    #[serde(rename = "status-counts")]
    pub status_counts: ExecutionStateCounts,
    /// The task manager's id.
    #[serde(rename = "taskmanager-id")]
    pub taskmanager_id: String,
    /// Summaries over these subtasks.
    pub aggregated: Aggregated,
}

/// `GET /jobs/:jobid/vertices/:vertexid/taskmanagers`: subtasks grouped by task manager.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/taskmanagers", tag = "vertices",
    params(VertexPath),
    responses(
        (status = 200, description = "The subtasks grouped by task manager", body = VertexTaskManagers),
        VertexErrors,
    ))]
pub async fn taskmanagers(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<VertexTaskManagers>, ApiError> {
    let (vertex_spec, vertex_runtime) = load_vertex(&state, &jobid, &vertexid)?;
    let now = now_ms();
    let vertex = &vertex_spec;
    let mut by_tm: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in vertex.subtasks.iter().enumerate() {
        by_tm.entry(s.taskmanager.as_str()).or_default().push(i);
    }
    let taskmanagers = by_tm
        .into_iter()
        .map(|(tm, indexes)| {
            let subtasks: Vec<_> = indexes.iter().map(|i| &vertex_runtime[*i]).collect();
            let (start_time, end_time, duration) = time_span(subtasks.iter().copied(), now);
            VertexTaskManager {
                // Every group has at least one subtask: it was created from one.
                endpoint: subtasks
                    .first()
                    .map(|s| s.endpoint.clone())
                    .unwrap_or_default(),
                status: aggregate_execution_states(subtasks.iter().map(|s| s.status)),
                start_time,
                end_time,
                duration,
                metrics: IoMetrics::ZERO,
                status_counts: ExecutionStateCounts::of(subtasks.iter().map(|s| s.status)),
                taskmanager_id: tm.to_string(),
                aggregated: Aggregated::of(subtasks.iter().copied(), now),
            }
        })
        .collect();
    Ok(Json(VertexTaskManagers {
        id: vertex.id.clone(),
        name: vertex.name.clone(),
        now,
        taskmanagers,
    }))
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasktimes` (Flink's SubtasksTimesInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SubtaskTimes {
    /// Vertex id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The coordinator's clock when answering.
    pub now: i64,
    /// One entry per subtask.
    pub subtasks: Vec<SubtaskTimesEntry>,
}

/// When one subtask entered each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SubtaskTimesEntry {
    /// Subtask index.
    pub subtask: usize,
    /// Its task manager's `host:port`.
    pub endpoint: String,
    /// From SCHEDULED to its end (or now), -1 if never scheduled.
    pub duration: i64,
    /// When it entered each state (0 if never).
    pub timestamps: ExecutionStateTimestamps,
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasktimes`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/subtasktimes", tag = "vertices",
    params(VertexPath),
    responses(
        (status = 200, description = "Per-state timestamps of every subtask", body = SubtaskTimes),
        VertexErrors,
    ))]
pub async fn subtask_times(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<SubtaskTimes>, ApiError> {
    let (vertex_spec, vertex_runtime) = load_vertex(&state, &jobid, &vertexid)?;
    let now = now_ms();
    let vertex = &vertex_spec;
    let subtasks = vertex_runtime
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let scheduled = s.timestamp(ExecutionState::Scheduled);
            let duration = if scheduled == 0 {
                -1
            } else {
                (if s.status.is_terminal() {
                    s.end_time()
                } else {
                    now
                }) - scheduled
            };
            SubtaskTimesEntry {
                subtask: i,
                endpoint: s.endpoint.clone(),
                duration,
                timestamps: ExecutionStateTimestamps::of(s),
            }
        })
        .collect();
    Ok(Json(SubtaskTimes {
        id: vertex.id.clone(),
        name: vertex.name.clone(),
        now,
        subtasks,
    }))
}

/// The subtask named in the path, as Flink's attempt entry (400 for malformed ids or index, 404
/// for unknown ones or an index not below the parallelism).
pub(super) fn subtask_of(
    state: &AppState,
    jobid: &str,
    vertexid: &str,
    raw_index: &str,
) -> Result<SubtaskEntry, ApiError> {
    let (vertex_spec, vertex_runtime) = load_vertex(state, jobid, vertexid)?;
    let index = params::subtask_index(raw_index)?;
    let vertex = &vertex_spec;
    let subtask = vertex_runtime.get(index).ok_or_else(|| {
        ApiError::not_found(format!("Invalid subtask index for vertex {}", vertex.id))
    })?;
    Ok(SubtaskEntry::of(
        index,
        subtask,
        &vertex.subtasks[index].taskmanager,
        now_ms(),
    ))
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex`: the current attempt.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}",
    tag = "vertices", params(SubtaskPath),
    responses(
        (status = 200, description = "The subtask's current (only) attempt", body = SubtaskEntry),
        (status = 400, description = "Malformed job id, vertex id or subtask index", body = ErrorBody),
        (status = 404, description = "Unknown job or vertex, or index not below the parallelism", body = ErrorBody),
    ))]
pub async fn subtask(
    State(state): State<AppState>,
    Path((jobid, vertexid, index)): Path<(String, String, String)>,
) -> Result<Json<SubtaskEntry>, ApiError> {
    subtask_of(&state, &jobid, &vertexid, &index).map(Json)
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex/attempts/:attempt`: attempt 0 is
/// the only one flamegrid knows.
#[utoipa::path(get,
    path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/attempts/{attempt}",
    tag = "vertices",
    params(SubtaskPath, ("attempt" = String, Path, pattern = "^[0-9]{1,9}$", description = "Attempt number: only 0 exists")),
    responses(
        (status = 200, description = "Attempt 0", body = SubtaskEntry),
        (status = 400, description = "Malformed id, index or attempt", body = ErrorBody),
        (status = 404, description = "Unknown job, vertex, subtask or attempt", body = ErrorBody),
    ))]
pub async fn subtask_attempt(
    State(state): State<AppState>,
    Path((jobid, vertexid, index, attempt)): Path<(String, String, String, String)>,
) -> Result<Json<SubtaskEntry>, ApiError> {
    let entry = subtask_of(&state, &jobid, &vertexid, &index)?;
    // Flink's `SubtaskAttemptPathParameter`: `Integer.parseInt`.
    match params::flink_int(&attempt) {
        Some(0) => Ok(Json(entry)),
        Some(n) => Err(ApiError::not_found(format!(
            "Attempt {n} not found for subtask {index}."
        ))),
        None => Err(ApiError::bad_path_param("attempt", &attempt)),
    }
}
