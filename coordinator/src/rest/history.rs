//! Flame graph history and differential graphs: what the coordinator remembers of past runs.
//!
//! Flink's flame graph answers "where is the time going now". The cache keeps the last
//! `--flamegraph-history` runs of every vertex (and subtask) key, so two more questions can be
//! answered without sampling again: "what did it look like a minute ago" and "what changed".
//!
//! | path | answer |
//! |---|---|
//! | `GET /jobs/:jobid/vertices/:vertexid/flamegraph/history` | the kept runs, newest first |
//! | `GET .../flamegraph/diff.svg?base=<endTimestamp>` | inferno's differential graph |
//! | `?at=<endTimestamp>` on every view | that kept run instead of the latest (see [`super::flamegraph`]) |
//!
//! Both paths take the flame graph query (`type`, `subtaskindex`, `at`) with the same rules and
//! the same order of checks as [`super::flamegraph`]. Neither ever starts a sampling run.
//!
//! **History** (Flink-style JSON: camelCase keys, the list wrapped in an object):
//!
//! ```json
//! {"runs": [
//!   {"endTimestamp": 1764000123456, "samples": 200, "threads": 2},
//!   {"endTimestamp": 1764000063001, "samples": 180, "threads": 2}
//! ]}
//! ```
//!
//! one element per kept run, newest first: `endTimestamp` is the run's Flink `endTimestamp`
//! (what `at` and `base` take), `samples` the number of samples of the requested `type`, and
//! `threads` how many threads had at least one of them. No run kept yet (or flame graphs
//! disabled) is `{"runs": []}`.
//!
//! **Diff**: `base` (required; the `endTimestamp` of a kept run) is compared with the latest
//! kept run, or with the run `at` names; red grew, blue shrank, the base normalised to the later
//! run's total ([`crate::flamegraph::diff`]). A missing or non-numeric `base` is a 400, a `base`
//! (or `at`) that is not kept is a 404 listing the runs that are.

use super::error::ApiError;
use super::flamegraph::{kept_run, parse_timestamp, resolve};
use super::params;
use super::state::AppState;
use crate::flamegraph::svg::SvgLabels;
use crate::flamegraph::{GraphAnswer, diff, svg};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of the history and diff views.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes(routes!(diff_svg))
}

/// The body of `.../flamegraph/history`; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HistoryInfo {
    /// Kept runs, newest first.
    pub runs: Vec<KeptRun>,
}

/// One kept run in [`HistoryInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeptRun {
    /// When the run ended (ms since the epoch): the value `at` and `base` take.
    pub end_timestamp: i64,
    /// Samples of the requested type.
    pub samples: u64,
    /// Threads with at least one sample of the requested type.
    pub threads: usize,
}

/// The query of `.../flamegraph/diff.svg` beyond the flame graph query (documentation only:
/// the handler parses the raw pairs, as every flame graph view does).
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffParams {
    /// The `endTimestamp` of the earlier kept run (see `.../flamegraph/history`). Missing or not
    /// an integer: 400; no such kept run: 404.
    #[param(pattern = "^[0-9]{1,15}$")]
    pub base: String,
}

/// `GET .../flamegraph/history`: the kept runs of the key, newest first.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph/history", tag = "flamegraphs",
    params(params::VertexPath, super::params::FlameGraphParams),
    responses(
        (status = 200, description = "The kept runs, newest first; never starts a run", body = HistoryInfo),
        (status = 400, description = "Malformed id, type, subtask index or `at`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or no kept run `at`", body = super::error::ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let r = resolve(&state, &jobid, &vertexid, &query)?;
    let ty = r.query.ty;
    let runs = match r.vertex {
        None => Vec::new(),
        Some(_) => state
            .flamegraphs
            .history(&r.key)
            .iter()
            .map(|s| KeptRun {
                end_timestamp: s.end_ms,
                samples: s.sample_count(ty),
                threads: s.thread_count(ty),
            })
            .collect(),
    };
    Ok(Json(HistoryInfo { runs }).into_response())
}

/// `GET .../flamegraph/diff.svg?base=...`: the differential flame graph of base → latest (or
/// `at`).
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph/diff.svg", tag = "flamegraphs",
    params(params::VertexPath, DiffParams, super::params::FlameGraphParams),
    responses(
        (status = 200, description = "inferno's differential flame graph, base to the latest run (or `at`): red grew, blue shrank", body = String, content_type = "image/svg+xml"),
        (status = 400, description = "Malformed id, type, subtask index, `at`, or a missing or malformed `base`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or `base`/`at` not kept", body = super::error::ErrorBody),
    ))]
pub async fn diff_svg(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    // Every 400 before any 404: `base` is parsed with the rest of the query.
    let lists = params::query_lists(&query);
    let base = match lists.get("base").and_then(|v| v.first()) {
        Some(raw) => parse_timestamp("base", raw)?,
        None => {
            return Err(ApiError::bad_request(
                "Bad request, could not parse parameters: Missing query parameter (base): the endTimestamp of a kept run, as listed at .../flamegraph/history.",
            ));
        }
    };
    let r = resolve(&state, &jobid, &vertexid, &query)?;
    let (job_name, vertex_name) = r.names();
    let runs = match &r.vertex {
        None => None,
        Some(_) => {
            let before = kept_run(&state, &r.key, "base", base)?;
            let after = match &r.kept {
                Some(at) => Arc::clone(at),
                None => match state.flamegraphs.cache().peek(&r.key) {
                    Some(latest) => latest,
                    // Evicted between the two reads: say what is kept now.
                    None => kept_run(&state, &r.key, "base", base)?,
                },
            };
            Some((before, after))
        }
    };
    let (key, ty) = (r.key, r.query.ty);
    // Rendering is CPU work of milliseconds: keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let labels = SvgLabels {
            job_id: &key.job_id,
            job_name: &job_name,
            vertex_id: &key.vertex_id,
            vertex_name: &vertex_name,
            subtask: key.subtask,
            ty,
        };
        match runs {
            Some((before, after)) => diff::render(&before, &after, &labels),
            None => svg::render(&GraphAnswer::Disabled, &labels),
        }
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response())
}
