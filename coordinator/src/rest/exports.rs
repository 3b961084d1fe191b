//! Flame graph exports for other tools: the same graph as `.../flamegraph`, as files that pprof
//! and speedscope open.
//!
//! | path | body |
//! |---|---|
//! | `GET /jobs/:jobid/vertices/:vertexid/flamegraph.pb.gz` | gzipped pprof `Profile` ([`pprof`]), `application/octet-stream` |
//! | `GET /jobs/:jobid/vertices/:vertexid/flamegraph.speedscope.json` | speedscope file ([`speedscope`]), `application/json` |
//!
//! Both take the flame graph's query (`type` = FULL / ON_CPU / OFF_CPU, `subtaskindex`) and go
//! through the same request handling as the `.svg` and `.folded` views
//! (`super::flamegraph::resolve_waiting`): Flink's 400/404 checks in Flink's order, then the
//! cached graph, waiting (bounded) for a run in flight when nothing is cached yet. Both answer
//! with a `Content-Disposition: attachment` file name (vertex id, type, subtask, run end), so a
//! browser saves the file and `curl -OJ` names it.
//!
//! When there is no graph (flame graphs disabled, vertex terminated, no run finished after the
//! wait) the answer is what the `.svg` and `.folded` views give: 200 with a body that is valid in
//! its format and says why, never an empty body a tool would choke on. For pprof that is a
//! profile without samples whose comment explains (`go tool pprof -comments`); for speedscope, a
//! file with one empty profile named by the explanation.
//!
//! ```sh
//! curl -o vertex.pb.gz "localhost:8081/jobs/$J/vertices/$V/flamegraph.pb.gz?type=on_cpu"
//! go tool pprof -top vertex.pb.gz
//! curl -OJ "localhost:8081/jobs/$J/vertices/$V/flamegraph.speedscope.json"   # then speedscope.app
//! ```
//!
//! [`pprof`]: crate::flamegraph::pprof
//! [`speedscope`]: crate::flamegraph::speedscope

use super::error::ApiError;
use super::flamegraph::{Resolved, resolve_waiting};
use super::state::AppState;
use crate::flamegraph::pprof::ExportContext;
use crate::flamegraph::{GraphAnswer, pprof, speedscope};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of the export views.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(flamegraph_pprof))
        .routes(routes!(flamegraph_speedscope))
}

/// Names, task managers and the sampling interval for the exports of a resolved request. The
/// task managers come from the job's registered spec, which names one for every subtask,
/// including those that are no longer running.
fn export_context(state: &AppState, r: &Resolved) -> ExportContext {
    let (job_name, vertex_name) = r.names();
    let taskmanagers: BTreeMap<u32, String> = match &r.vertex {
        // Disabled: the registry is not consulted (as for every view), and there are no samples.
        None => BTreeMap::new(),
        Some(_) => state
            .registry
            .job(&r.key.job_id)
            .ok()
            .and_then(|job| {
                job.spec
                    .vertices
                    .into_iter()
                    .find(|v| v.id == r.key.vertex_id)
            })
            .map(|v| {
                v.subtasks
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| (i as u32, s.taskmanager))
                    .collect()
            })
            .unwrap_or_default(),
    };
    ExportContext {
        job_id: r.key.job_id.clone(),
        job_name,
        vertex_id: r.key.vertex_id.clone(),
        vertex_name,
        subtask: r.key.subtask,
        interval_ms: state.flamegraphs.settings().params.delay_ms,
        taskmanagers,
    }
}

/// `attachment; filename="<stem><extension>"` (the stem is ASCII without quotes).
fn attachment(ctx: &ExportContext, r: &Resolved, answer: &GraphAnswer, extension: &str) -> String {
    format!(
        "attachment; filename=\"{}{extension}\"",
        ctx.file_stem(r.query.ty, answer)
    )
}

/// `GET .../flamegraph.pb.gz`: the graph as a gzipped pprof profile.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph.pb.gz", tag = "flamegraphs",
    params(super::params::VertexPath, super::params::FlameGraphParams),
    responses(
        (status = 200, description = "A gzipped pprof Profile (perftools.profiles); without a graph, an empty profile whose comment says why", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "Malformed id, type, subtask index or `at`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or no kept run `at`", body = super::error::ErrorBody),
    ))]
pub async fn flamegraph_pprof(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (r, answer) = resolve_waiting(&state, &jobid, &vertexid, &query).await?;
    let ctx = export_context(&state, &r);
    let disposition = attachment(&ctx, &r, &answer, ".pb.gz");
    let ty = r.query.ty;
    // Encoding and compressing 10 k stacks takes milliseconds of CPU: off the async workers.
    let body = tokio::task::spawn_blocking(move || pprof::render(&answer, ty, &ctx))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// `GET .../flamegraph.speedscope.json`: the graph in speedscope's file format.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph.speedscope.json", tag = "flamegraphs",
    params(super::params::VertexPath, super::params::FlameGraphParams),
    responses(
        (status = 200, description = "speedscope's file format, one sampled profile per subtask; without a graph, one empty profile named with the reason", body = speedscope::SpeedscopeFile),
        (status = 400, description = "Malformed id, type, subtask index or `at`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or no kept run `at`", body = super::error::ErrorBody),
    ))]
pub async fn flamegraph_speedscope(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (r, answer) = resolve_waiting(&state, &jobid, &vertexid, &query).await?;
    let ctx = export_context(&state, &r);
    let disposition = attachment(&ctx, &r, &answer, ".speedscope.json");
    let ty = r.query.ty;
    let body = tokio::task::spawn_blocking(move || speedscope::render(&answer, ty, &ctx))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/json; charset=UTF-8".to_string(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}
