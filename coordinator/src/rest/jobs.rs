//! `/jobs` and `/jobs/:jobid/...` (except vertices): registration, listing, details, plan,
//! status, cancel, exceptions (the subtasks that failed), execution result and metrics, in
//! Flink's shape. The job paths that carry no profiler data at all (config, checkpoints,
//! accumulators) answer fixed values from [`super::flink_fixed`].

use super::cluster::{ConfigEntry, Environment};
use super::error::{ApiError, ErrorBody, JobErrors};
use super::metrics::{
    AggregatedMetric, JobsMetricParams, MetricParams, MetricQuery, MetricValue, metric_values,
};
use super::params::{self, JobPath};
use super::shapes::{
    ExecutionStateCounts, IoMetrics, JobTimestamps, TaskCounts, html_escape, time_span,
};
use super::state::AppState;
use crate::registry::{ExecutionState, Job, JobStatus, RegistryError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flamegrid_model::clock::now_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each declared once by its handler's `#[utoipa::path]`; the
/// writes pass the cross-site checks first ([`super::writes`]).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(job_registration_limit(super::writes(routes!(register))))
        .routes(routes!(overview))
        .routes(routes!(aggregated_metrics))
        .routes(routes!(details))
        .routes(super::writes(routes!(cancel)))
        .routes(routes!(status))
        .routes(routes!(job_plan))
        .routes(routes!(exceptions))
        .routes(routes!(metrics))
        .routes(routes!(execution_result))
        .routes(routes!(jobmanager_config))
        .routes(routes!(jobmanager_environment))
}

/// `{}`: what Flink answers where there is nothing to say (a cancel), and the value of its
/// always-empty object fields (`optimizer_properties`, `user-config`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EmptyObject {}

/// The body of `POST /jobs`, as `/openapi.json` describes it. The handler does not deserialize
/// into this type: `registry/validate.rs` walks the JSON itself so that it can name *every*
/// problem by its field at once; tests build well-formed bodies from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRegistration {
    /// Display name: 1 to 256 characters, not blank, no control characters.
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    /// The operators, upstream first: 1 to 1024 vertices, at most 8192 subtasks in all.
    #[schema(min_items = 1, max_items = 1024)]
    pub vertices: Vec<VertexRegistration>,
}

/// One vertex of a [`JobRegistration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VertexRegistration {
    /// Display name: 1 to 256 characters, not blank, no control characters.
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    /// Must equal the number of subtasks.
    #[schema(minimum = 1, maximum = 1024)]
    pub parallelism: u32,
    /// Indexes of upstream vertices; each must name an earlier vertex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<u32>,
    /// One entry per subtask: 1 to 1024.
    #[schema(min_items = 1, max_items = 1024)]
    pub subtasks: Vec<SubtaskRegistration>,
}

/// One subtask of a [`VertexRegistration`]: exactly one of `pid` and `process_name`, and
/// optionally which of its threads (`tids`, `thread_name`; neither means all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubtaskRegistration {
    /// A registered task manager id (`GET /taskmanagers`).
    #[schema(min_length = 1, max_length = 256)]
    pub taskmanager: String,
    /// The process by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4194304)]
    pub pid: Option<u32>,
    /// The process by its kernel name (`comm`, 1 to 15 bytes, no `/`), re-resolved at every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 15)]
    pub process_name: Option<String>,
    /// Threads by id (1 to 1024 distinct ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 1024)]
    pub tids: Option<Vec<u32>>,
    /// Threads whose name this regular expression matches as a whole (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1024)]
    pub thread_name: Option<String>,
}

/// `POST /jobs`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobIdAnswer {
    /// The new job's id (32 hex digits).
    pub jobid: String,
}

/// `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobList {
    /// Every registered job.
    pub jobs: Vec<JobIdStatus>,
}

/// One entry of [`JobList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobIdStatus {
    /// Job id.
    pub id: String,
    /// Current status.
    pub status: JobStatus,
}

/// `GET /jobs/overview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobsOverview {
    /// One entry per job.
    pub jobs: Vec<JobOverview>,
}

/// One job in `/jobs/overview` (Flink's JobDetails).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobOverview {
    /// Job id.
    pub jid: String,
    /// Display name.
    pub name: String,
    /// Always `STREAMING`.
    #[serde(rename = "jobType")]
    pub job_type: String,
    /// Always `Default`.
    #[serde(rename = "schedulerType")]
    pub scheduler_type: String,
    /// When it was registered (ms since the epoch).
    #[serde(rename = "start-time")]
    pub start_time: i64,
    /// When it ended, -1 while it runs.
    #[serde(rename = "end-time")]
    pub end_time: i64,
    /// End (or now) minus start, ms.
    pub duration: i64,
    /// Current status.
    pub state: JobStatus,
    /// When anything about it last changed.
    #[serde(rename = "last-modification")]
    pub last_modification: i64,
    /// Subtasks per state.
    pub tasks: TaskCounts,
    /// Always 0.
    #[serde(rename = "pending-operators")]
    pub pending_operators: u32,
}

/// Largest accepted request body, on every path but `POST /jobs`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Largest accepted `POST /jobs` body: a job of 100,000 subtasks
/// ([`crate::registry::validate::MAX_SUBTASKS_PER_JOB`]) named by pid takes about 4 MiB, by
/// process and thread name somewhat more.
pub const MAX_JOB_BODY_BYTES: usize = 16 * 1024 * 1024;

/// `POST /jobs` takes bodies up to [`MAX_JOB_BODY_BYTES`] (the router's default, which this
/// overrides for this route only, is [`MAX_BODY_BYTES`]).
fn job_registration_limit(
    route: utoipa_axum::router::UtoipaMethodRouter<AppState>,
) -> utoipa_axum::router::UtoipaMethodRouter<AppState> {
    let (schemas, paths, methods) = route;
    (
        schemas,
        paths,
        methods.layer(DefaultBodyLimit::max(MAX_JOB_BODY_BYTES)),
    )
}

/// The 413 of a `POST /jobs` body over [`MAX_JOB_BODY_BYTES`].
fn job_body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body too large (the limit for a job registration is {} MiB).",
            MAX_JOB_BODY_BYTES >> 20
        ),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// Looks a job up by its raw path id (400 for a malformed id, 404 for an unknown one) and
/// copies it.
pub fn load_job(state: &AppState, raw_id: &str) -> Result<Job, ApiError> {
    with_job(state, raw_id, Job::clone)
}

/// Looks a job up by its raw path id like [`load_job`], and runs `f` on it under the registry's
/// lock instead of copying it (a job may hold 100,000 subtasks): for answers that summarise it.
pub fn with_job<R>(
    state: &AppState,
    raw_id: &str,
    f: impl FnOnce(&Job) -> R,
) -> Result<R, ApiError> {
    let id = params::job_id(raw_id)?;
    state.registry.with_job(&id, f).map_err(|e| match e {
        RegistryError::JobNotFound(id) => ApiError::not_found(format!("Job {id} not found")),
        other => other.into(),
    })
}

/// `POST /jobs`: validates the whole body and stores the job; 202 `{"jobid": ...}`.
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    request_body(content = JobRegistration, content_type = "application/json",
        description = "The job: vertices of subtasks, each a process (and threads) on a task manager"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Stored; sampling can start", body = JobIdAnswer),
        (status = 400, description = "Not valid: every problem, each naming its field", body = ErrorBody),
        (status = 401, description = "A bearer token is required (--rest-token-file)", body = ErrorBody),
        (status = 403, description = "The coordinator is read-only, or the request's Origin is neither this server nor a --cors-origin entry (a cross-site write)", body = ErrorBody),
        (status = 413, description = "Body over 16 MiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json (writes take nothing else)", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = match body {
        Ok(body) if body.len() <= MAX_JOB_BODY_BYTES => body,
        Ok(_) => return Err(job_body_too_large()),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(job_body_too_large());
        }
        Err(rejection) => return Err(ApiError::new(rejection.status(), rejection.body_text())),
    };
    let registry = state.registry.clone();
    let jobid = blocking(move || registry.register_job(&body)).await?;
    Ok((StatusCode::ACCEPTED, Json(JobIdAnswer { jobid })).into_response())
}

/// `GET /jobs`: ids and statuses.
#[utoipa::path(get, path = "/jobs", tag = "jobs",
    responses((status = 200, description = "Every job's id and status", body = JobList)))]
pub async fn list(State(state): State<AppState>) -> Json<JobList> {
    let jobs = state.registry.with_jobs(|jobs| {
        jobs.iter()
            .map(|j| JobIdStatus {
                id: j.spec.id.clone(),
                status: j.runtime.status,
            })
            .collect()
    });
    Json(JobList { jobs })
}

fn all_states(job: &Job) -> impl Iterator<Item = ExecutionState> + '_ {
    job.runtime.subtasks.iter().flatten().map(|s| s.status)
}

/// `GET /jobs/overview`.
#[utoipa::path(get, path = "/jobs/overview", tag = "jobs",
    responses((status = 200, description = "Name, times, state and task counts per job", body = JobsOverview)))]
pub async fn overview(State(state): State<AppState>) -> Json<JobsOverview> {
    let now = now_ms();
    let jobs = state.registry.with_jobs(|jobs| {
        jobs.iter()
            .map(|j| JobOverview {
                jid: j.spec.id.clone(),
                name: j.spec.name.clone(),
                job_type: "STREAMING".into(),
                scheduler_type: "Default".into(),
                start_time: j.start_time(),
                end_time: j.end_time(),
                duration: j.duration(now),
                state: j.runtime.status,
                last_modification: j.runtime.last_modification,
                tasks: TaskCounts::of(all_states(j)),
                pending_operators: 0,
            })
            .collect()
    });
    Json(JobsOverview { jobs })
}

/// The id of the slot-sharing group all of a job's vertices share (32 hex, derived from the
/// job id so it is stable).
fn slot_sharing_group(job: &Job) -> String {
    let n = u128::from_str_radix(&job.spec.id, 16).unwrap_or(0);
    format!("{:032x}", n ^ 0x5f1a_3e0d_c0de_f1a3_e9a1_d5ab_1e5e_ed5a)
}

/// One vertex of `/jobs/:jobid`'s `vertices`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VertexSummary {
    /// Vertex id (32 hex digits).
    pub id: String,
    /// The slot-sharing group every vertex of the job shares.
    #[serde(rename = "slotSharingGroupId")]
    pub slot_sharing_group_id: String,
    /// Display name.
    pub name: String,
    /// Equal to `parallelism`.
    #[serde(rename = "maxParallelism")]
    pub max_parallelism: usize,
    /// Number of subtasks.
    pub parallelism: usize,
    /// Aggregate state of its subtasks.
    pub status: ExecutionState,
    /// Earliest subtask start, -1 if none.
    #[serde(rename = "start-time")]
    pub start_time: i64,
    /// Latest subtask end once all are terminal, else -1.
    #[serde(rename = "end-time")]
    pub end_time: i64,
    /// ms, -1 if never started.
    pub duration: i64,
    /// Subtasks per state.
    pub tasks: ExecutionStateCounts,
    /// All zero.
    pub metrics: IoMetrics,
}

/// One vertex of `/jobs/:jobid`'s `vertices`.
fn vertex_summary(job: &Job, v: usize, now: i64) -> VertexSummary {
    let vertex = &job.spec.vertices[v];
    let subtasks = &job.runtime.subtasks[v];
    let (start_time, end_time, duration) = time_span(subtasks, now);
    VertexSummary {
        id: vertex.id.clone(),
        slot_sharing_group_id: slot_sharing_group(job),
        name: vertex.name.clone(),
        max_parallelism: vertex.parallelism(),
        parallelism: vertex.parallelism(),
        status: job.vertex_status(v),
        start_time,
        end_time,
        duration,
        tasks: ExecutionStateCounts::of(subtasks.iter().map(|s| s.status)),
        metrics: IoMetrics::ZERO,
    }
}

/// A job's plan (Flink's JobPlanInfo): one node per vertex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Plan {
    /// Job id.
    pub jid: String,
    /// Job name.
    pub name: String,
    /// Always `STREAMING`.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The vertices.
    pub nodes: Vec<PlanNode>,
}

/// One node of a [`Plan`]; its id is the vertex id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PlanNode {
    /// Vertex id.
    pub id: String,
    /// Number of subtasks.
    pub parallelism: usize,
    /// Always empty.
    pub operator: String,
    /// Always empty.
    pub operator_strategy: String,
    /// The vertex name, HTML-escaped as Flink does.
    pub description: String,
    /// Edges from upstream vertices; absent for sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<PlanInput>>,
    /// Always `{}`.
    pub optimizer_properties: EmptyObject,
}

/// An edge of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PlanInput {
    /// Position among the node's inputs.
    pub num: usize,
    /// Upstream vertex id.
    pub id: String,
    /// `FORWARD` between equal parallelisms, else `REBALANCE`.
    pub ship_strategy: String,
    /// Always `pipelined_bounded`.
    pub exchange: String,
}

/// The job's plan: one node per vertex (node id = vertex id), edges from `inputs`.
fn plan(job: &Job) -> Plan {
    let nodes = job
        .spec
        .vertices
        .iter()
        .map(|vertex| {
            let inputs = (!vertex.inputs.is_empty()).then(|| {
                vertex
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(num, &up)| {
                        let upstream = &job.spec.vertices[up];
                        let strategy = if upstream.parallelism() == vertex.parallelism() {
                            "FORWARD"
                        } else {
                            "REBALANCE"
                        };
                        PlanInput {
                            num,
                            id: upstream.id.clone(),
                            ship_strategy: strategy.into(),
                            exchange: "pipelined_bounded".into(),
                        }
                    })
                    .collect()
            });
            PlanNode {
                id: vertex.id.clone(),
                parallelism: vertex.parallelism(),
                operator: String::new(),
                operator_strategy: String::new(),
                description: html_escape(&vertex.name),
                inputs,
                optimizer_properties: EmptyObject {},
            }
        })
        .collect();
    Plan {
        jid: job.spec.id.clone(),
        name: job.spec.name.clone(),
        job_type: "STREAMING".into(),
        nodes,
    }
}

/// `GET /jobs/:jobid` (Flink's JobDetailsInfo).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobDetails {
    /// Job id.
    pub jid: String,
    /// Equal to the job id.
    #[serde(rename = "application-id")]
    pub application_id: String,
    /// Display name.
    pub name: String,
    /// Always false.
    #[serde(rename = "isStoppable")]
    pub is_stoppable: bool,
    /// Current status.
    pub state: JobStatus,
    /// Always `STREAMING`.
    #[serde(rename = "job-type")]
    pub job_type: String,
    /// Always `Default`.
    #[serde(rename = "schedulerType")]
    pub scheduler_type: String,
    /// When it was registered.
    #[serde(rename = "start-time")]
    pub start_time: i64,
    /// When it ended, -1 while it runs.
    #[serde(rename = "end-time")]
    pub end_time: i64,
    /// ms.
    pub duration: i64,
    /// Always -1.
    #[serde(rename = "maxParallelism")]
    pub max_parallelism: i64,
    /// The coordinator's clock when answering.
    pub now: i64,
    /// When each job status was entered.
    pub timestamps: JobTimestamps,
    /// The vertices.
    pub vertices: Vec<VertexSummary>,
    /// Vertices per state.
    #[serde(rename = "status-counts")]
    pub status_counts: ExecutionStateCounts,
    /// The plan.
    pub plan: Plan,
    /// Always 0.
    #[serde(rename = "pending-operators")]
    pub pending_operators: u32,
}

/// `GET /jobs/:jobid`.
#[utoipa::path(get, path = "/jobs/{jobid}", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Timestamps, vertices and plan", body = JobDetails),
        JobErrors,
    ))]
pub async fn details(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<JobDetails>, ApiError> {
    with_job(&state, &jobid, job_details).map(Json)
}

/// `GET /jobs/:jobid`'s answer: summaries, without a copy of the job.
fn job_details(job: &Job) -> JobDetails {
    let now = now_ms();
    let vertices = (0..job.spec.vertices.len())
        .map(|v| vertex_summary(job, v, now))
        .collect();
    let vertex_states = (0..job.spec.vertices.len()).map(|v| job.vertex_status(v));
    JobDetails {
        jid: job.spec.id.clone(),
        application_id: job.spec.id.clone(),
        name: job.spec.name.clone(),
        is_stoppable: false,
        state: job.runtime.status,
        job_type: "STREAMING".into(),
        scheduler_type: "Default".into(),
        start_time: job.start_time(),
        end_time: job.end_time(),
        duration: job.duration(now),
        max_parallelism: -1,
        now,
        timestamps: JobTimestamps::of(job),
        vertices,
        status_counts: ExecutionStateCounts::of(vertex_states),
        plan: plan(job),
        pending_operators: 0,
    }
}

/// `GET /jobs/:jobid/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobPlan {
    /// The plan.
    pub plan: Plan,
}

/// `GET /jobs/:jobid/plan`.
#[utoipa::path(get, path = "/jobs/{jobid}/plan", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Nodes (vertex ids) and edges", body = JobPlan),
        JobErrors,
    ))]
pub async fn job_plan(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<JobPlan>, ApiError> {
    with_job(&state, &jobid, |job| Json(JobPlan { plan: plan(job) }))
}

/// `GET /jobs/:jobid/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobStatusAnswer {
    /// Current status.
    pub status: JobStatus,
}

/// `GET /jobs/:jobid/status`.
#[utoipa::path(get, path = "/jobs/{jobid}/status", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "The job's status", body = JobStatusAnswer),
        JobErrors,
    ))]
pub async fn status(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<JobStatusAnswer>, ApiError> {
    with_job(&state, &jobid, |job| {
        Json(JobStatusAnswer {
            status: job.runtime.status,
        })
    })
}

/// The query of `PATCH /jobs/:jobid`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CancelParams {
    /// `cancel` (the default, any letter case); `stop` answers 308 as in Flink; anything else
    /// is a 400.
    #[param(inline)]
    pub mode: Option<CancelMode>,
}

/// The values of `PATCH /jobs/:jobid`'s `mode` (any letter case is accepted).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CancelMode {
    /// Cancel the job: every subtask becomes CANCELED and sampling stops.
    Cancel,
    /// Removed from Flink's API (308).
    Stop,
}

/// `PATCH /jobs/:jobid[?mode=cancel]`: cancels; 202 with `{}` as Flink answers.
#[utoipa::path(patch, path = "/jobs/{jobid}", tag = "jobs", params(JobPath, CancelParams),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "CANCELED (also when it already was); sampling stops", body = EmptyObject),
        (status = 308, description = "`mode=stop` was removed from Flink's API", body = ErrorBody),
        (status = 400, description = "Malformed job id or mode", body = ErrorBody),
        (status = 401, description = "A bearer token is required (--rest-token-file)", body = ErrorBody),
        (status = 403, description = "The coordinator is read-only, or the request's Origin is neither this server nor a --cors-origin entry (a cross-site write)", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job already ended otherwise (FINISHED or FAILED)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json (writes take nothing else, even without a body)", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let id = params::job_id(&jobid)?;
    // Flink converts every value of the list (an unknown one is a 400) and acts on the first.
    let modes = params::query_lists(&query)
        .remove("mode")
        .unwrap_or_default();
    for mode in &modes {
        if !(mode.eq_ignore_ascii_case("cancel") || mode.eq_ignore_ascii_case("stop")) {
            return Err(ApiError::bad_query_param("mode", mode));
        }
    }
    if modes
        .first()
        .is_some_and(|m| m.eq_ignore_ascii_case("stop"))
    {
        return Err(ApiError::new(
            StatusCode::PERMANENT_REDIRECT,
            "The termination mode \"stop\" has been removed. For an ungraceful shutdown, please use \
             \"cancel\" instead. For a graceful shutdown, please use \"jobs/:jobId/stop\" instead.",
        ));
    }
    let registry = state.registry.clone();
    match blocking(move || registry.cancel_job(&id)).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(EmptyObject {})).into_response()),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            Err(ApiError::not_found("Job could not be found."))
        }
        Err(e) => Err(e),
    }
}

/// `GET /jobs/:jobid/exceptions` (Flink's JobExceptionsInfoWithHistory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobExceptions {
    /// The history.
    #[serde(rename = "exceptionHistory")]
    pub exception_history: ExceptionHistory,
}

/// The failed subtasks, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExceptionHistory {
    /// One entry per failed subtask.
    pub entries: Vec<ExceptionEntry>,
    /// Always false.
    pub truncated: bool,
}

/// Why one subtask failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionEntry {
    /// Always `flamegrid.SubtaskLost`.
    pub exception_name: String,
    /// The reason (agent lost, process gone).
    pub stacktrace: String,
    /// When it failed.
    pub timestamp: i64,
    /// `vertex name (i/parallelism)`.
    pub task_name: String,
    /// Its task manager's `host:port`.
    pub endpoint: String,
    /// Its task manager's id.
    pub task_manager_id: String,
    /// Always `{}`.
    pub failure_labels: EmptyObject,
    /// Always empty.
    pub concurrent_exceptions: Vec<EmptyObject>,
}

/// `GET /jobs/:jobid/exceptions`: the subtasks that failed (lost agent, missing process) as
/// Flink's exception history entries.
#[utoipa::path(get, path = "/jobs/{jobid}/exceptions", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Failed subtasks, newest first", body = JobExceptions),
        JobErrors,
    ))]
pub async fn exceptions(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<JobExceptions>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let mut entries = Vec::new();
    for (v, vertex) in job.spec.vertices.iter().enumerate() {
        for (s, subtask) in job.runtime.subtasks[v].iter().enumerate() {
            let Some(reason) = &subtask.failure else {
                continue;
            };
            entries.push(ExceptionEntry {
                exception_name: "flamegrid.SubtaskLost".into(),
                stacktrace: reason.clone(),
                timestamp: subtask.timestamp(ExecutionState::Failed),
                task_name: format!("{} ({}/{})", vertex.name, s + 1, vertex.parallelism()),
                endpoint: subtask.endpoint.clone(),
                task_manager_id: vertex.subtasks[s].taskmanager.clone(),
                failure_labels: EmptyObject {},
                concurrent_exceptions: Vec::new(),
            });
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.timestamp));
    Ok(Json(JobExceptions {
        exception_history: ExceptionHistory {
            entries,
            truncated: false,
        },
    }))
}

/// `GET /jobs/:jobid/execution-result` (Flink's JobExecutionResultResponseBody).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExecutionResult {
    /// `IN_PROGRESS` or `COMPLETED`.
    pub status: QueueStatus,
    /// Present once the job ended.
    #[serde(
        rename = "job-execution-result",
        skip_serializing_if = "Option::is_none"
    )]
    pub job_execution_result: Option<JobExecutionResult>,
}

/// Flink's asynchronous-operation status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueStatus {
    /// `IN_PROGRESS` or `COMPLETED`.
    pub id: String,
}

/// How an ended job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct JobExecutionResult {
    /// Job id.
    pub id: String,
    /// `SUCCEEDED`, `CANCELED` or `FAILED`.
    pub application_status: String,
    /// Always `{}`.
    pub accumulator_results: EmptyObject,
    /// ms from start to end.
    pub net_runtime: i64,
}

/// `GET /jobs/:jobid/execution-result`: `IN_PROGRESS` until the job ends.
#[utoipa::path(get, path = "/jobs/{jobid}/execution-result", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "IN_PROGRESS, or how the job ended", body = ExecutionResult),
        JobErrors,
    ))]
pub async fn execution_result(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<ExecutionResult>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let status = job.runtime.status;
    if !status.is_terminal() {
        return Ok(Json(ExecutionResult {
            status: QueueStatus {
                id: "IN_PROGRESS".into(),
            },
            job_execution_result: None,
        }));
    }
    let application_status = match status {
        JobStatus::Finished => "SUCCEEDED",
        JobStatus::Canceled => "CANCELED",
        _ => "FAILED",
    };
    Ok(Json(ExecutionResult {
        status: QueueStatus {
            id: "COMPLETED".into(),
        },
        job_execution_result: Some(JobExecutionResult {
            id: job.spec.id.clone(),
            application_status: application_status.into(),
            accumulator_results: EmptyObject {},
            net_runtime: job.duration(now_ms()),
        }),
    }))
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
#[utoipa::path(get, path = "/jobs/{jobid}/metrics", tag = "jobs", params(JobPath, MetricParams),
    responses(
        (status = 200, description = "Metric ids, or their values with `get`", body = Vec<MetricValue>),
        JobErrors,
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<MetricValue>>, ApiError> {
    let job = load_job(&state, &jobid)?;
    Ok(Json(metric_values(
        &job_metrics(&job, now_ms()),
        &MetricQuery::parse(&query, false)?,
    )))
}

/// `GET /jobs/metrics[?get=&agg=&jobs=]`: job metrics aggregated across jobs.
#[utoipa::path(get, path = "/jobs/metrics", tag = "jobs", params(JobsMetricParams),
    responses(
        (status = 200, description = "Metric ids, or their aggregates with `get`", body = Vec<AggregatedMetric>),
        (status = 400, description = "Unknown aggregation mode, or a malformed job id in `jobs`", body = ErrorBody),
    ))]
pub async fn aggregated_metrics(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<AggregatedMetric>>, ApiError> {
    let q = MetricQuery::parse(&query, true)?;
    let now = now_ms();
    // Flink's `JobsFilterQueryParameter` parses every id: a malformed one is a 400.
    let selected = params::query_lists(&query).remove("jobs");
    if let Some(ids) = &selected {
        for raw in ids {
            params::job_id(raw).map_err(|_| ApiError::bad_query_param("jobs", raw))?;
        }
    }
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
#[utoipa::path(get, path = "/jobs/{jobid}/jobmanager/config", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "The coordinator's settings", body = Vec<ConfigEntry>),
        JobErrors,
    ))]
pub async fn jobmanager_config(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Vec<ConfigEntry>>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(super::cluster::jobmanager_config(State(state)).await)
}

/// `GET /jobs/:jobid/jobmanager/environment`: the coordinator's environment, once the job checks
/// out.
#[utoipa::path(get, path = "/jobs/{jobid}/jobmanager/environment", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "The coordinator process", body = Environment),
        JobErrors,
    ))]
pub async fn jobmanager_environment(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<Environment>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(super::cluster::jobmanager_environment().await)
}
