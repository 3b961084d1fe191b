//! The vertex paths Flink's dashboard and REST clients poll that carry no profiler data, answered
//! in Flink's shape with fixed, neutral values (never an error: an error pops up in Flink's
//! dashboard): accumulators of the vertex and its subtasks (always empty), back pressure (always
//! `ok`: the OFF_CPU flame graph shows where threads wait), watermarks and metrics (`[]`).
//!
//! Each still checks the path's ids first (400 malformed, 404 unknown), as Flink does. The vertex
//! paths with real data are in [`super::vertices`]; the job-level fixed answers in
//! [`super::flink_fixed`].

use super::error::{ApiError, ErrorBody, SubtaskErrors, VertexErrors};
use super::jobs::EmptyObject;
use super::metrics::{MetricParams, MetricQuery, MetricValue, metric_values};
use super::params::{self, SubtaskPath, VertexPath};
use super::state::AppState;
use super::vertices::{load_vertex, subtask_of};
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
        .routes(routes!(accumulators))
        .routes(routes!(backpressure))
        .routes(routes!(watermarks))
        .routes(routes!(vertex_metrics))
        .routes(routes!(subtasks_metrics))
        .routes(routes!(subtasks_accumulators))
        .routes(routes!(subtask_metrics))
        .routes(routes!(subtask_accumulators))
        .routes(routes!(subtask_attempt_accumulators))
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
