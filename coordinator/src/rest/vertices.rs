//! `/jobs/:jobid/vertices/:vertexid/...`: a vertex and its subtasks in Flink's shapes.
//!
//! The flame graph paths under the same prefix live in `rest/flamegraph.rs`; everything here
//! reads a copy of the one vertex (not of the whole job, which may hold 100,000 subtasks) from
//! the registry and renders it into the typed shapes below, which also describe the answers in
//! `/openapi.json`.

use super::error::{ApiError, ErrorBody, SubtaskErrors, VertexErrors};
use super::jobs::EmptyObject;
use super::metrics::{MetricParams, MetricQuery, MetricValue, metric_values};
use super::params::{self, SubtaskPath, VertexPath};
use super::shapes::{
    Aggregated, ExecutionStateCounts, ExecutionStateTimestamps, IoMetrics, SubtaskEntry, time_span,
};
use super::state::AppState;
use crate::registry::job::{SubtaskRuntime, VertexSpec};
use crate::registry::state::aggregate_execution_states;
use crate::registry::{ExecutionState, RegistryError};
use axum::Json;
use axum::extract::{Path, Query, State};
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
        .routes(routes!(accumulators))
        .routes(routes!(backpressure))
        .routes(routes!(watermarks))
        .routes(routes!(vertex_metrics))
        .routes(routes!(subtasks_metrics))
        .routes(routes!(subtasks_accumulators))
        .routes(routes!(subtask))
        .routes(routes!(subtask_metrics))
        .routes(routes!(subtask_accumulators))
        .routes(routes!(subtask_attempt))
        .routes(routes!(subtask_attempt_accumulators))
}

/// A copy of the vertex named in the path, and of its subtasks' runtime: not of the whole job,
/// which may hold 100,000 subtasks (400 for malformed ids, 404 for unknown ones).
fn load_vertex(
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

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/accumulators` (Flink's
/// SubtasksAllAccumulatorsInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SubtasksAccumulators {
    /// Vertex id.
    pub id: String,
    /// Number of subtasks.
    pub parallelism: usize,
    /// One entry per subtask.
    pub subtasks: Vec<SubtaskAccumulatorsEntry>,
}

/// One subtask's (empty) accumulators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SubtaskAccumulatorsEntry {
    /// Subtask index.
    pub subtask: usize,
    /// Always 0.
    pub attempt: u32,
    /// Its task manager's `host:port`.
    pub endpoint: String,
    /// Always empty.
    #[serde(rename = "user-accumulators")]
    pub user_accumulators: Vec<EmptyObject>,
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/accumulators`: the real subtasks, no
/// accumulators.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/accumulators",
    tag = "vertices", params(VertexPath),
    responses(
        (status = 200, description = "The subtasks, without accumulators", body = SubtasksAccumulators),
        VertexErrors,
    ))]
pub async fn subtasks_accumulators(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<SubtasksAccumulators>, ApiError> {
    let (vertex_spec, vertex_runtime) = load_vertex(&state, &jobid, &vertexid)?;
    let vertex = &vertex_spec;
    let subtasks = vertex_runtime
        .iter()
        .enumerate()
        .map(|(i, s)| SubtaskAccumulatorsEntry {
            subtask: i,
            attempt: 0,
            endpoint: s.endpoint.clone(),
            user_accumulators: Vec::new(),
        })
        .collect();
    Ok(Json(SubtasksAccumulators {
        id: vertex.id.clone(),
        parallelism: vertex.parallelism(),
        subtasks,
    }))
}

fn subtask_of(
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

/// `.../subtasks/:subtaskindex/accumulators` (Flink's SubtaskAccumulatorsInfo), empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SubtaskAccumulators {
    /// Subtask index.
    pub subtask: usize,
    /// Always 0.
    pub attempt: u32,
    /// Always empty.
    pub id: String,
    /// Always empty.
    #[serde(rename = "user-accumulators")]
    pub user_accumulators: Vec<EmptyObject>,
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex/attempts/:attempt/accumulators`
/// and `.../subtasks/:subtaskindex/accumulators`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/accumulators",
    tag = "vertices", params(SubtaskPath),
    responses(
        (status = 200, description = "No accumulators", body = SubtaskAccumulators),
        SubtaskErrors,
    ))]
pub async fn subtask_accumulators(
    State(state): State<AppState>,
    Path(path): Path<Vec<(String, String)>>,
) -> Result<Json<SubtaskAccumulators>, ApiError> {
    let get = |k: &str| {
        path.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let entry = subtask_of(&state, get("jobid"), get("vertexid"), get("subtaskindex"))?;
    if let Some((_, attempt)) = path.iter().find(|(n, _)| n == "attempt") {
        match params::flink_int(attempt) {
            Some(0) => {}
            Some(n) => {
                return Err(ApiError::not_found(format!(
                    "Attempt {n} not found for subtask {}.",
                    get("subtaskindex")
                )));
            }
            None => return Err(ApiError::bad_path_param("attempt", attempt)),
        }
    }
    Ok(Json(SubtaskAccumulators {
        subtask: entry.subtask,
        attempt: 0,
        id: String::new(),
        user_accumulators: Vec::new(),
    }))
}

/// The attempt-level path of [`subtask_accumulators`] (same handler; listed for
/// `/openapi.json`).
#[utoipa::path(get,
    path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/attempts/{attempt}/accumulators",
    tag = "vertices",
    params(SubtaskPath, ("attempt" = String, Path, pattern = "^[0-9]{1,9}$", description = "Attempt number: only 0 exists")),
    responses(
        (status = 200, description = "No accumulators", body = SubtaskAccumulators),
        (status = 400, description = "Malformed job id, vertex id or subtask index", body = ErrorBody),
        (status = 404, description = "Unknown job, vertex, subtask or attempt", body = ErrorBody),
    ))]
pub async fn subtask_attempt_accumulators(
    state: State<AppState>,
    path: Path<Vec<(String, String)>>,
) -> Result<Json<SubtaskAccumulators>, ApiError> {
    subtask_accumulators(state, path).await
}

/// `GET /jobs/:jobid/vertices/:vertexid/accumulators` (Flink's JobVertexAccumulatorsInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct VertexAccumulators {
    /// Vertex id.
    pub id: String,
    /// Always empty.
    #[serde(rename = "user-accumulators")]
    pub user_accumulators: Vec<EmptyObject>,
}

/// `GET /jobs/:jobid/vertices/:vertexid/accumulators`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/accumulators", tag = "vertices",
    params(VertexPath),
    responses(
        (status = 200, description = "No accumulators", body = VertexAccumulators),
        VertexErrors,
    ))]
pub async fn accumulators(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<VertexAccumulators>, ApiError> {
    let (vertex_spec, _) = load_vertex(&state, &jobid, &vertexid)?;
    Ok(Json(VertexAccumulators {
        id: vertex_spec.id.clone(),
        user_accumulators: Vec::new(),
    }))
}

/// `GET /jobs/:jobid/vertices/:vertexid/backpressure` (Flink's JobVertexBackPressureInfo), with
/// Flink 2.3's key set: a live Flink 2.3 writes the level twice, as `backpressureLevel` and as
/// `backpressure-level`, on the vertex and on every subtask, and clients may read either.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Backpressure {
    /// Always `ok`.
    pub status: String,
    /// Always `ok` (Flink 2.3's camelCase spelling of `backpressure-level`).
    #[serde(rename = "backpressureLevel")]
    pub backpressure_level_camel: String,
    /// Always `ok`.
    #[serde(rename = "backpressure-level")]
    pub backpressure_level: String,
    /// When measured: now.
    #[serde(rename = "end-timestamp")]
    pub end_timestamp: i64,
    /// One entry per subtask.
    pub subtasks: Vec<SubtaskBackpressure>,
}

/// One subtask's back pressure: always none.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SubtaskBackpressure {
    /// Subtask index.
    pub subtask: usize,
    /// Always `ok` (Flink 2.3's camelCase spelling of `backpressure-level`).
    #[serde(rename = "backpressureLevel")]
    pub backpressure_level_camel: String,
    /// Always `ok`.
    #[serde(rename = "backpressure-level")]
    pub backpressure_level: String,
    /// 0.
    pub ratio: f64,
    /// 0.
    #[serde(rename = "idleRatio")]
    pub idle_ratio: f64,
    /// 0.
    #[serde(rename = "busyRatio")]
    pub busy_ratio: f64,
}

/// `GET /jobs/:jobid/vertices/:vertexid/backpressure`: every subtask "ok" (flamegrid does not
/// measure back pressure; the OFF_CPU flame graph shows where threads wait).
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/backpressure", tag = "vertices",
    params(VertexPath),
    responses(
        (status = 200, description = "Every subtask `ok`", body = Backpressure),
        VertexErrors,
    ))]
pub async fn backpressure(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Result<Json<Backpressure>, ApiError> {
    let (vertex_spec, _) = load_vertex(&state, &jobid, &vertexid)?;
    let subtasks = (0..vertex_spec.parallelism())
        .map(|i| SubtaskBackpressure {
            subtask: i,
            backpressure_level_camel: "ok".into(),
            backpressure_level: "ok".into(),
            ratio: 0.0,
            idle_ratio: 0.0,
            busy_ratio: 0.0,
        })
        .collect();
    Ok(Json(Backpressure {
        status: "ok".into(),
        backpressure_level_camel: "ok".into(),
        backpressure_level: "ok".into(),
        end_timestamp: now_ms(),
        subtasks,
    }))
}

/// `GET .../watermarks`, `.../subtasks/metrics`, `.../metrics`, `.../subtasks/:i/metrics`:
/// flamegrid has no per-vertex metrics, so `[]` once the path's ids check out.
pub async fn no_metrics(
    State(state): State<AppState>,
    Path(path): Path<Vec<(String, String)>>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    let get = |k: &str| path.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (vertex_spec, _) = load_vertex(
        &state,
        get("jobid").unwrap_or_default(),
        get("vertexid").unwrap_or_default(),
    )?;
    if let Some(raw) = get("subtaskindex") {
        let index = params::subtask_index(raw)?;
        if index >= vertex_spec.parallelism() {
            return Err(ApiError::not_found(format!(
                "Invalid subtask index for vertex {}",
                vertex_spec.id
            )));
        }
    }
    let q = MetricQuery::parse(&query, path.iter().all(|(n, _)| n != "subtaskindex"))?;
    Ok(Json(metric_values(&BTreeMap::new(), &q)))
}

// `no_metrics` serves four paths; utoipa documents one function per path, so each gets a
// delegate that carries its description.

/// `GET /jobs/:jobid/vertices/:vertexid/watermarks`: `[]`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/watermarks", tag = "vertices",
    params(VertexPath),
    responses(
        (status = 200, description = "Always empty", body = Vec<MetricValue>),
        VertexErrors,
    ))]
pub async fn watermarks(
    state: State<AppState>,
    path: Path<Vec<(String, String)>>,
    query: Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    no_metrics(state, path, query).await
}

/// `GET /jobs/:jobid/vertices/:vertexid/metrics`: `[]`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/metrics", tag = "vertices",
    params(VertexPath, MetricParams),
    responses(
        (status = 200, description = "Always empty", body = Vec<MetricValue>),
        VertexErrors,
    ))]
pub async fn vertex_metrics(
    state: State<AppState>,
    path: Path<Vec<(String, String)>>,
    query: Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    no_metrics(state, path, query).await
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/metrics`: `[]`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/metrics", tag = "vertices",
    params(VertexPath, super::metrics::SubtasksMetricParams),
    responses(
        (status = 200, description = "Always empty", body = Vec<MetricValue>),
        (status = 400, description = "Malformed job or vertex id, or unknown aggregation mode", body = ErrorBody),
        (status = 404, description = "Unknown job or vertex", body = ErrorBody),
    ))]
pub async fn subtasks_metrics(
    state: State<AppState>,
    path: Path<Vec<(String, String)>>,
    query: Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    no_metrics(state, path, query).await
}

/// `GET /jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex/metrics`: `[]`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/metrics",
    tag = "vertices", params(SubtaskPath, MetricParams),
    responses(
        (status = 200, description = "Always empty", body = Vec<MetricValue>),
        SubtaskErrors,
    ))]
pub async fn subtask_metrics(
    state: State<AppState>,
    path: Path<Vec<(String, String)>>,
    query: Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    no_metrics(state, path, query).await
}
