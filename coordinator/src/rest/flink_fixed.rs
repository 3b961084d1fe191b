//! The job paths Flink's dashboard and REST clients poll that carry no profiler data, answered
//! in Flink's shape with fixed, neutral values (never an error: an error pops up in Flink's
//! dashboard): a job's config, its checkpoint statistics, checkpoint config and details (there
//! are none: flamegrid takes no checkpoints), and its accumulators (always empty).
//!
//! Each still checks the job id first (400 malformed, 404 unknown), as Flink does. The paths
//! with real data about a job are in [`super::jobs`]; the Flink paths flamegrid does not serve at
//! all are in [`super::unsupported`].

use super::error::{ApiError, ErrorBody, JobErrors};
use super::jobs::{EmptyObject, load_job};
use super::params::JobPath;
use super::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each declared once by its handler's `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(config))
        .routes(routes!(accumulators))
        // Its POST (a checkpoint trigger) is in `unsupported`: it only says "not supported".
        .routes(routes!(checkpoints))
        .routes(routes!(checkpoints_config))
        .routes(routes!(checkpoint_details))
}

/// `GET /jobs/:jobid/config` (Flink's JobConfigInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobConfig {
    /// Job id.
    pub jid: String,
    /// Job name.
    pub name: String,
    /// Neutral values.
    #[serde(rename = "execution-config")]
    pub execution_config: ExecutionConfig,
}

/// Flink's execution config, with neutral values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ExecutionConfig {
    /// Always `Restart deactivated.`.
    pub restart_strategy: String,
    /// The largest vertex parallelism.
    pub job_parallelism: usize,
    /// Always false.
    pub object_reuse_mode: bool,
    /// Always `{}`.
    pub user_config: EmptyObject,
}

/// `GET /jobs/:jobid/config`.
#[utoipa::path(get, path = "/jobs/{jobid}/config", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Flink's job config, neutral values", body = JobConfig),
        JobErrors,
    ))]
pub async fn config(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<JobConfig>, ApiError> {
    let job = load_job(&state, &jobid)?;
    let parallelism = job
        .spec
        .vertices
        .iter()
        .map(|v| v.parallelism())
        .max()
        .unwrap_or(1);
    Ok(Json(JobConfig {
        jid: job.spec.id.clone(),
        name: job.spec.name.clone(),
        execution_config: ExecutionConfig {
            restart_strategy: "Restart deactivated.".into(),
            job_parallelism: parallelism,
            object_reuse_mode: false,
            user_config: EmptyObject {},
        },
    }))
}

/// Flink's checkpoint statistics summary, all zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct CheckpointSummary {
    /// 0.
    pub min: i64,
    /// 0.
    pub max: i64,
    /// 0.
    pub avg: i64,
    /// 0.
    pub p50: f64,
    /// 0.
    pub p90: f64,
    /// 0.
    pub p95: f64,
    /// 0.
    pub p99: f64,
    /// 0.
    pub p999: f64,
}

/// `GET /jobs/:jobid/checkpoints` (Flink's CheckpointingStatistics), empty.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CheckpointStatistics {
    /// All zero.
    pub counts: CheckpointCounts,
    /// All zero.
    pub summary: CheckpointSummaries,
    /// All null.
    pub latest: LatestCheckpoints,
    /// Always empty.
    pub history: Vec<EmptyObject>,
}

/// Checkpoint counts, all zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct CheckpointCounts {
    /// 0.
    pub restored: u64,
    /// 0.
    pub total: u64,
    /// 0.
    pub in_progress: u64,
    /// 0.
    pub completed: u64,
    /// 0.
    pub failed: u64,
}

/// Per-measure summaries, all zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct CheckpointSummaries {
    /// Zero.
    pub checkpointed_size: CheckpointSummary,
    /// Zero.
    pub state_size: CheckpointSummary,
    /// Zero.
    pub end_to_end_duration: CheckpointSummary,
    /// Zero.
    pub alignment_buffered: CheckpointSummary,
    /// Zero.
    pub processed_data: CheckpointSummary,
    /// Zero.
    pub persisted_data: CheckpointSummary,
}

/// The latest checkpoints: there are none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct LatestCheckpoints {
    /// null.
    pub completed: Option<EmptyObject>,
    /// null.
    pub savepoint: Option<EmptyObject>,
    /// null.
    pub failed: Option<EmptyObject>,
    /// null.
    pub restored: Option<EmptyObject>,
}

/// `GET /jobs/:jobid/checkpoints`: Flink's checkpoint statistics, all empty (flamegrid takes no
/// checkpoints).
#[utoipa::path(get, path = "/jobs/{jobid}/checkpoints", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "All zero: flamegrid takes no checkpoints", body = CheckpointStatistics),
        JobErrors,
    ))]
pub async fn checkpoints(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<CheckpointStatistics>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(Json(CheckpointStatistics {
        counts: CheckpointCounts::default(),
        summary: CheckpointSummaries::default(),
        latest: LatestCheckpoints::default(),
        history: Vec::new(),
    }))
}

/// `GET /jobs/:jobid/checkpoints/config` (Flink's CheckpointConfigInfo), checkpointing off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CheckpointConfig {
    /// `exactly_once`.
    pub mode: String,
    /// The largest i64: never.
    pub interval: i64,
    /// 0.
    pub timeout: i64,
    /// 0.
    pub min_pause: i64,
    /// 0.
    pub max_concurrent: i64,
    /// Off.
    pub externalization: Externalization,
    /// `none`.
    pub state_backend: String,
    /// `none`.
    pub checkpoint_storage: String,
    /// false.
    pub unaligned_checkpoints: bool,
    /// 0.
    pub tolerable_failed_checkpoints: i64,
    /// 0.
    pub aligned_checkpoint_timeout: i64,
    /// false.
    pub checkpoints_after_tasks_finish: bool,
    /// false.
    pub state_changelog_enabled: bool,
    /// 0.
    pub changelog_periodic_materialization_interval: i64,
    /// `none`.
    pub changelog_storage: String,
}

/// Externalized checkpoints: off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Externalization {
    /// false.
    pub enabled: bool,
    /// true.
    pub delete_on_cancellation: bool,
}

/// `GET /jobs/:jobid/checkpoints/config`: checkpointing shown as off.
#[utoipa::path(get, path = "/jobs/{jobid}/checkpoints/config", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Checkpointing shown as off", body = CheckpointConfig),
        JobErrors,
    ))]
pub async fn checkpoints_config(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<CheckpointConfig>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(Json(CheckpointConfig {
        mode: "exactly_once".into(),
        interval: i64::MAX,
        timeout: 0,
        min_pause: 0,
        max_concurrent: 0,
        externalization: Externalization {
            enabled: false,
            delete_on_cancellation: true,
        },
        state_backend: "none".into(),
        checkpoint_storage: "none".into(),
        unaligned_checkpoints: false,
        tolerable_failed_checkpoints: 0,
        aligned_checkpoint_timeout: 0,
        checkpoints_after_tasks_finish: false,
        state_changelog_enabled: false,
        changelog_periodic_materialization_interval: 0,
        changelog_storage: "none".into(),
    }))
}

/// `GET /jobs/:jobid/checkpoints/details/:checkpointid`: there are none.
#[utoipa::path(get, path = "/jobs/{jobid}/checkpoints/details/{checkpointid}", tag = "jobs",
    params(JobPath, ("checkpointid" = String, Path, pattern = "^[0-9]{1,18}$", description = "A checkpoint id: an integer (none exist)")),
    responses(
        (status = 400, description = "Malformed job id or checkpoint id", body = ErrorBody),
        (status = 404, description = "Unknown job, or (always) unknown checkpoint", body = ErrorBody),
    ))]
pub async fn checkpoint_details(
    State(state): State<AppState>,
    Path((jobid, checkpoint)): Path<(String, String)>,
) -> Result<Json<EmptyObject>, ApiError> {
    load_job(&state, &jobid)?;
    let id: i64 = checkpoint
        .parse()
        .map_err(|_| ApiError::bad_path_param("checkpointid", &checkpoint))?;
    Err(ApiError::not_found(format!(
        "Could not find checkpointing statistics for checkpoint {id}."
    )))
}

/// `GET /jobs/:jobid/accumulators` (Flink's JobAccumulatorsInfo), empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct JobAccumulators {
    /// Always empty.
    pub job_accumulators: Vec<EmptyObject>,
    /// Always empty.
    pub user_task_accumulators: Vec<EmptyObject>,
    /// Always `{}`.
    pub serialized_user_task_accumulators: EmptyObject,
}

/// `GET /jobs/:jobid/accumulators`.
#[utoipa::path(get, path = "/jobs/{jobid}/accumulators", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Always empty", body = JobAccumulators),
        JobErrors,
    ))]
pub async fn accumulators(
    State(state): State<AppState>,
    Path(jobid): Path<String>,
) -> Result<Json<JobAccumulators>, ApiError> {
    load_job(&state, &jobid)?;
    Ok(Json(JobAccumulators {
        job_accumulators: Vec::new(),
        user_task_accumulators: Vec::new(),
        serialized_user_task_accumulators: EmptyObject {},
    }))
}
