//! Flame graph endpoints and task manager thread dumps. Handlers only translate HTTP ↔ domain:
//! parse and check the request (Flink's 400/404 rules, in Flink's order), ask the registry for the
//! vertex and the [`FlameGraphService`](crate::flamegraph::FlameGraphService) for the answer, and
//! render it with the view the path names.
//!
//! | path | view |
//! |---|---|
//! | `GET /jobs/:jobid/vertices/:vertexid/flamegraph` | Flink's JSON (never waits) |
//! | `GET .../flamegraph.svg` | interactive SVG (waits for a run in flight) |
//! | `GET .../flamegraph.folded` | collapsed stacks as text (waits likewise) |
//! | `GET /taskmanagers/:tmid/thread-dump` | Flink's `ThreadDumpInfo` from the agent |
//!
//! All three flame graph paths take the same query: `type` (FULL, ON_CPU, OFF_CPU in any case;
//! a comma list or repeated key uses the first value; default FULL) and `subtaskindex` (a
//! non-negative integer below the parallelism). The order of checks follows Flink's handler: ids
//! and query parse first (400), then the job and vertex must exist (404), then the subtask index
//! must be in range (404), then the terminated check (-1).
//!
//! flamegrid adds `at=<endTimestamp>` (every view, the exports and the diff included): serve
//! that kept run instead of the latest (see [`super::history`] for the list). It is checked last:
//! not an integer → 400 like any bad query parameter; a run that is not (or no longer) kept →
//! 404 naming the runs that are. A kept run is served even for a vertex that has terminated since,
//! and `at` never starts a run.
//!
//! flamegrid also adds `refresh=true|false` (default false): with `true`, a new run starts now
//! for the key, even though the cached graph is still fresh, unless one is already in flight;
//! the answer is still immediate, with what is cached (the JSON endpoint never blocks). Any
//! other value is a 400 like any bad query parameter; with `at` it changes nothing (a kept run
//! is never resampled).
//!
//! The JSON view also takes flamegrid's `minWidth=<fraction>`: frames narrower than that share
//! of the root merged per caller (see [`crate::flamegraph::prune`]); without it, Flink's tree.
//!
//! Response headers, on all three views:
//!
//! * `X-Flamegrid-Sampling: true|false` — whether a run for this key (or, for a subtask, its
//!   vertex) is in flight after this request: a page shows "sampling…" and keeps polling until
//!   it reads `false`, then has the new graph.
//! * `X-Flamegrid-Missing: 1,3` — the subtasks missing from the graph served, only when there
//!   are any. Every body says why as well: the JSON in `"missing"` and `"missingReasons"`, the
//!   SVG in its subtitle, the folded text in a `#` header line that flame graph tools skip (see
//!   [`crate::missing`] for the words).
//!
//! The JSON view sends a big graph (256 KiB of text or more: a vertex of thousands of distinct
//! stacks) gzipped, `Content-Encoding: gzip`, to a client whose `Accept-Encoding` takes gzip
//! (browsers do; `curl --compressed`), since the cache keeps it so (see
//! [`crate::flamegraph::json::render_cached`]); any other client gets the text.

use super::error::{ApiError, TaskManagerErrors};
use super::params;
use super::state::AppState;
use crate::flamegraph::cache::GraphKey;
use crate::flamegraph::profile::Snapshot;
use crate::flamegraph::svg::SvgLabels;
use crate::flamegraph::{FlameGraphError, GraphAnswer, folded, json, prune, svg};
use crate::sampling::VertexSampling;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flamegrid_model::GraphType;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of `/jobs/:jobid/vertices/:vertexid/flamegraph*` and `/taskmanagers/:tmid/thread-dump`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(flamegraph_json))
        .routes(routes!(flamegraph_svg))
        .routes(routes!(flamegraph_folded))
        .routes(routes!(thread_dump))
}

/// The parsed query of the three flame graph paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphQuery {
    /// Which samples to show.
    pub ty: GraphType,
    /// One subtask, or all.
    pub subtask: Option<u32>,
    /// A kept run by its `endTimestamp` (`at`), or `None` for the latest.
    pub at: Option<i64>,
    /// `refresh=true`: start a new run now even if the cached graph is fresh.
    pub refresh: bool,
}

/// Response header: is a run for the key in flight (`true`/`false`)? See the module docs.
pub const SAMPLING_HEADER: &str = "x-flamegrid-sampling";

/// Response header: the subtasks missing from the graph served, comma-separated.
pub const MISSING_HEADER: &str = "x-flamegrid-missing";

impl GraphQuery {
    /// Parses `type`, `subtaskindex`, `at` and `refresh` Flink's way (first value of a comma
    /// list or repeated key); anything else in the query is ignored, as Flink does.
    pub fn parse(pairs: &[(String, String)]) -> Result<GraphQuery, ApiError> {
        let lists = params::query_lists(pairs);
        let first = |name: &str| lists.get(name).and_then(|v| v.first()).map(String::as_str);
        let ty = match first("type") {
            None => GraphType::Full,
            Some(raw) => parse_type(raw).ok_or_else(|| ApiError::bad_query_param("type", raw))?,
        };
        let subtask = match first("subtaskindex") {
            None => None,
            // Java's Integer.parseInt, non-negative: `+3` and `-0` pass, 2^31 does not.
            Some(raw) => Some(
                params::flink_int(raw)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| ApiError::bad_query_param("subtaskindex", raw))?,
            ),
        };
        let at = match first("at") {
            None => None,
            Some(raw) => Some(parse_timestamp("at", raw)?),
        };
        let refresh = match first("refresh") {
            None | Some("false") => false,
            Some("true") => true,
            Some(raw) => return Err(ApiError::bad_query_param("refresh", raw)),
        };
        Ok(GraphQuery {
            ty,
            subtask,
            at,
            refresh,
        })
    }
}

/// An `endTimestamp` (ms since the epoch) given as query parameter `name`.
pub(super) fn parse_timestamp(name: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::bad_query_param(name, raw))
}

/// Flink upper-cases the value and maps it onto the enum: `on_cpu` works, `on-cpu` does not.
fn parse_type(raw: &str) -> Option<GraphType> {
    GraphType::ALL
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(raw))
}

/// Everything a flame graph handler needs once the request is known to be valid.
pub(super) struct Resolved {
    pub(super) key: GraphKey,
    pub(super) query: GraphQuery,
    /// `None` when flame graphs are disabled (the registry is not consulted, as in Flink).
    pub(super) vertex: Option<VertexSampling>,
    /// The kept run `at` names (`None` without `at`, or when flame graphs are disabled).
    pub(super) kept: Option<Arc<Snapshot>>,
}

impl Resolved {
    /// The job's and vertex's names for titles and file names (`?` when flame graphs are
    /// disabled and the registry was not asked).
    pub(super) fn names(&self) -> (String, String) {
        match &self.vertex {
            Some(v) => (v.job_name.clone(), v.vertex_name.clone()),
            None => ("?".to_string(), "?".to_string()),
        }
    }

    /// What the request asks to see: the kept run named by `at`, or else the service's answer
    /// for the latest run (which may start a refresh; `answer_now` never waits).
    fn answer_now(&self, state: &AppState) -> GraphAnswer {
        match (&self.kept, &self.vertex) {
            (Some(kept), _) => GraphAnswer::Ready(Arc::clone(kept)),
            (None, None) => GraphAnswer::Disabled,
            (None, Some(v)) => state
                .flamegraphs
                .answer_with(&self.key, v, self.query.refresh),
        }
    }

    /// The `X-Flamegrid-Sampling` and (when some subtasks are missing, also from a run that
    /// delivered nothing or for a terminated vertex) `X-Flamegrid-Missing` headers for an
    /// answer to this request; read after the answer, so a request that started a run says
    /// `true`.
    pub(super) fn headers(&self, state: &AppState, answer: &GraphAnswer) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let sampling = state.flamegraphs.sampling(&self.key);
        headers.insert(
            SAMPLING_HEADER,
            HeaderValue::from_static(if sampling { "true" } else { "false" }),
        );
        if !answer.missing().is_empty() {
            let list: Vec<String> = answer.missing().keys().map(u32::to_string).collect();
            // Digits and commas: always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&list.join(",")) {
                headers.insert(MISSING_HEADER, value);
            }
        }
        headers
    }
}

/// A kept run of `key` by its `endTimestamp`, or a 404 that says which runs are kept and where
/// they are listed. `param` names the query parameter (`at`, `base`) for the message.
pub(super) fn kept_run(
    state: &AppState,
    key: &GraphKey,
    param: &str,
    end_ms: i64,
) -> Result<Arc<Snapshot>, ApiError> {
    if let Some(s) = state.flamegraphs.kept_run(key, end_ms) {
        return Ok(s);
    }
    let kept: Vec<String> = state
        .flamegraphs
        .history(key)
        .iter()
        .map(|s| s.end_ms.to_string())
        .collect();
    let subtask = key
        .subtask
        .map(|i| format!(" subtask {i}"))
        .unwrap_or_default();
    let list = format!(
        "/jobs/{}/vertices/{}/flamegraph/history{}",
        key.job_id,
        key.vertex_id,
        key.subtask
            .map(|i| format!("?subtaskindex={i}"))
            .unwrap_or_default()
    );
    // With a long history the message names the newest few; the list has them all.
    const NAMED: usize = 20;
    let which = match kept.len() {
        0 => "No run is kept for it yet".to_string(),
        n if n <= NAMED => format!("Kept runs end at {} (newest first)", kept.join(", ")),
        n => format!(
            "Kept runs end at {} and {} earlier (newest first)",
            kept[..NAMED].join(", "),
            n - NAMED
        ),
    };
    Err(ApiError::not_found(format!(
        "No kept flame graph run of vertex {}{subtask} ended at {end_ms} ({param}). {which}; the list is at {list}.",
        key.vertex_id
    )))
}

pub(super) fn resolve(
    state: &AppState,
    jobid: &str,
    vertexid: &str,
    query: &[(String, String)],
) -> Result<Resolved, ApiError> {
    let job_id = params::job_id(jobid)?;
    let vertex_id = params::vertex_id(vertexid)?;
    let query = GraphQuery::parse(query)?;
    let key = GraphKey {
        job_id,
        vertex_id,
        subtask: query.subtask,
    };
    if !state.flamegraphs.enabled() {
        return Ok(Resolved {
            key,
            query,
            vertex: None,
            kept: None,
        });
    }
    let vertex = state
        .registry
        .vertex_sampling(&key.job_id, &key.vertex_id)?;
    if let Some(i) = query.subtask
        && i >= vertex.parallelism
    {
        return Err(ApiError::not_found(format!(
            "Invalid subtask index for vertex {}",
            key.vertex_id
        )));
    }
    let kept = match query.at {
        None => None,
        Some(at) => Some(kept_run(state, &key, "at", at)?),
    };
    Ok(Resolved {
        key,
        query,
        vertex: Some(vertex),
        kept,
    })
}

/// `GET .../flamegraph`: Flink's JSON; always 200 once the request is valid; never waits. A big
/// graph (from [`json::GZIP_FROM_BYTES`] of text) is sent gzipped to a client that accepts
/// gzip (`Content-Encoding: gzip`), as the cache keeps it; every answer says `Vary:
/// accept-encoding`.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph", tag = "flamegraphs",
    params(params::VertexPath, super::params::FlameGraphParams, prune::PruneParams),
    responses(
        (status = 200, description = "Flink's flame graph JSON; never waits", body = json::VertexFlameGraph, headers(("X-Flamegrid-Sampling" = bool, description = "true while a sampling run for this graph is in flight"), ("X-Flamegrid-Missing" = String, description = "Subtasks missing from the graph, comma-separated; only when some are"))),
        (status = 400, description = "Malformed id, type, subtask index, `at`, `refresh` or `minWidth`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or no kept run `at`", body = super::error::ErrorBody),
    ))]
pub async fn flamegraph_json(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let min_width =
        prune::min_width(&query).map_err(|raw| ApiError::bad_query_param(prune::PARAM, &raw))?;
    let r = resolve(&state, &jobid, &vertexid, &query)?;
    let answer = r.answer_now(&state);
    let body = match min_width {
        None => json::render_cached(state.flamegraphs.cache(), &answer, r.query.ty),
        Some(w) => json::JsonBody::Plain(prune::render(&answer, r.query.ty, w).into()),
    };
    let (body, gzipped) = body
        .for_client(accepts_gzip(&request_headers))
        .map_err(ApiError::internal)?;
    let mut headers = r.headers(&state, &answer);
    // The body depends on Accept-Encoding (a big graph is sent gzipped to who accepts it).
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzipped {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok((
        headers,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body,
    )
        .into_response())
}

/// Whether the client accepts a gzipped body: `gzip` (or `x-gzip`, or `*`) in one of its
/// `Accept-Encoding` headers with a nonzero weight (RFC 9110 §12.5.3; `gzip;q=0` refuses it).
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let wanted = ["gzip", "x-gzip", "*"]
                .iter()
                .any(|c| coding.eq_ignore_ascii_case(c));
            let weight = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().ok())
                        .flatten()
                })
                .next()
                .unwrap_or(1.0);
            wanted && weight > 0.0
        })
}

/// What the waiting views (`.svg`, `.folded`, the exports) show: the request resolved, and the
/// cached graph, after waiting (bounded) for a run in flight so a first request gets a real
/// graph. With `at`, the kept run it names, at once (a 404 from [`resolve`] if it is not kept).
pub(super) async fn resolve_waiting(
    state: &AppState,
    jobid: &str,
    vertexid: &str,
    query: &[(String, String)],
) -> Result<(Resolved, GraphAnswer), ApiError> {
    let r = resolve(state, jobid, vertexid, query)?;
    let answer = match (&r.kept, &r.vertex) {
        (Some(kept), _) => GraphAnswer::Ready(Arc::clone(kept)),
        (None, None) => GraphAnswer::Disabled,
        (None, Some(v)) => {
            state
                .flamegraphs
                .answer_waiting_with(&r.key, v, r.query.refresh)
                .await
        }
    };
    Ok((r, answer))
}

/// `GET .../flamegraph.svg`: inferno's interactive SVG.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph.svg", tag = "flamegraphs",
    params(params::VertexPath, super::params::FlameGraphParams),
    responses(
        (status = 200, description = "Interactive SVG (waits for a run in flight)", body = String, content_type = "image/svg+xml", headers(("X-Flamegrid-Sampling" = bool, description = "true while a sampling run for this graph is in flight"), ("X-Flamegrid-Missing" = String, description = "Subtasks missing from the graph, comma-separated; only when some are"))),
        (status = 400, description = "Malformed id, type, subtask index, `at` or `refresh`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or no kept run `at`", body = super::error::ErrorBody),
    ))]
pub async fn flamegraph_svg(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (r, answer) = resolve_waiting(&state, &jobid, &vertexid, &query).await?;
    let headers = r.headers(&state, &answer);
    let (job_name, vertex_name) = r.names();
    let (key, ty) = (r.key, r.query.ty);
    // Rendering 10 k stacks takes milliseconds of CPU: keep it off the async workers.
    let svg = tokio::task::spawn_blocking(move || {
        let labels = SvgLabels {
            job_id: &key.job_id,
            job_name: &job_name,
            vertex_id: &key.vertex_id,
            vertex_name: &vertex_name,
            subtask: key.subtask,
            ty,
        };
        svg::render(&answer, &labels)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((headers, [(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// `GET .../flamegraph.folded`: collapsed stacks, `a;b;c COUNT` per line.
#[utoipa::path(get, path = "/jobs/{jobid}/vertices/{vertexid}/flamegraph.folded", tag = "flamegraphs",
    params(params::VertexPath, super::params::FlameGraphParams),
    responses(
        (status = 200, description = "Collapsed stacks, `a;b;c COUNT` per line", body = String, content_type = "text/plain", headers(("X-Flamegrid-Sampling" = bool, description = "true while a sampling run for this graph is in flight"), ("X-Flamegrid-Missing" = String, description = "Subtasks missing from the graph, comma-separated; only when some are"))),
        (status = 400, description = "Malformed id, type, subtask index, `at` or `refresh`", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job or vertex, subtask index not below the parallelism, or no kept run `at`", body = super::error::ErrorBody),
    ))]
pub async fn flamegraph_folded(
    State(state): State<AppState>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (r, answer) = resolve_waiting(&state, &jobid, &vertexid, &query).await?;
    let body = folded::render(&answer, r.query.ty);
    Ok((
        r.headers(&state, &answer),
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response())
}

/// `GET /taskmanagers/:tmid/thread-dump`: one deep sample of every thread the agent watches.
#[utoipa::path(get, path = "/taskmanagers/{tmid}/thread-dump", tag = "flamegraphs",
    params(params::TaskManagerPath),
    responses(
        (status = 200, description = "Stacks of the threads the agent watches", body = super::cluster::ThreadDump),
        (status = 403, description = "A watched process is outside the agent's allow-list (the answer never says what the list holds)", body = super::error::ErrorBody),
        TaskManagerErrors,
        (status = 503, description = "The agent did not answer, or failed (a fixed message per kind of failure; details only in the coordinator's log)", body = super::error::ErrorBody),
    ))]
pub async fn thread_dump(
    State(state): State<AppState>,
    Path(tmid): Path<String>,
) -> Result<Response, ApiError> {
    let (address, selectors) = state.registry.taskmanager_dump_targets(&tmid)?;
    if selectors.is_empty() {
        return Ok(axum::Json(crate::flamegraph::dump::ThreadDumpInfo {
            thread_infos: Vec::new(),
        })
        .into_response());
    }
    match state.flamegraphs.thread_dump(&address, selectors).await {
        Ok(dump) => Ok(axum::Json(dump).into_response()),
        Err(e) => {
            // The whole error, agent text included, goes to the log for the operator; the REST
            // answer says only what kind of failure it was (see `agent_failure`).
            tracing::warn!(taskmanager = %tmid, error = %e, "thread dump failed");
            let (status, what) = agent_failure(&e);
            Err(ApiError::new(
                status,
                format!("Thread dump of TaskExecutor {tmid} failed: {what}."),
            ))
        }
    }
}

/// What a REST client is told when an agent call fails: a fixed phrase per kind of failure,
/// never the agent's own text. That text may name a process's user, its command name or the
/// agent's allow-list, which a REST client (anyone who reaches the port) must not learn: it
/// would tell which processes exist on a host and how to dress one up to be sampled.
fn agent_failure(error: &FlameGraphError) -> (StatusCode, &'static str) {
    use crate::fanout::FanOutError;
    use tonic::Code;
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match error {
        FlameGraphError::Agent(FanOutError::Status { code, .. }) => match code {
            Code::PermissionDenied => (
                StatusCode::FORBIDDEN,
                "a watched process is outside the agent's allow-list",
            ),
            Code::NotFound => (unavailable, "no such process"),
            Code::Unauthenticated => (
                unavailable,
                "the agent refused the coordinator's credentials",
            ),
            Code::ResourceExhausted => (unavailable, "the agent is busy; retry later"),
            Code::InvalidArgument => (unavailable, "the agent refused the request"),
            Code::Unavailable | Code::Cancelled => (unavailable, "agent unreachable"),
            Code::DeadlineExceeded => (unavailable, "the agent did not answer in time"),
            _ => (unavailable, "the agent failed"),
        },
        FlameGraphError::Agent(FanOutError::DeadlineExceeded { .. }) => {
            (unavailable, "the agent did not answer in time")
        }
        FlameGraphError::Agent(FanOutError::BadAddress { .. }) => {
            (unavailable, "agent unreachable")
        }
        FlameGraphError::Agent(_) => (unavailable, "the agent's answer was not usable"),
        // The coordinator's own settings (credential files, TLS): its log says which.
        _ => (
            unavailable,
            "the coordinator cannot call agents (see its log)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<GraphQuery, ApiError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GraphQuery::parse(&pairs)
    }

    #[test]
    fn query_follows_flink() {
        assert_eq!(
            q(&[]).unwrap(),
            GraphQuery {
                ty: GraphType::Full,
                subtask: None,
                at: None,
                refresh: false,
            }
        );
        assert!(q(&[("refresh", "true")]).unwrap().refresh);
        assert!(!q(&[("refresh", "false")]).unwrap().refresh);
        assert_eq!(
            q(&[("at", "1700000000123")]).unwrap().at,
            Some(1_700_000_000_123)
        );
        assert_eq!(q(&[("type", "on_cpu")]).unwrap().ty, GraphType::OnCpu);
        assert_eq!(
            q(&[("type", "Off_Cpu,full")]).unwrap().ty,
            GraphType::OffCpu
        );
        assert_eq!(
            q(&[("type", "full"), ("type", "on_cpu")]).unwrap().ty,
            GraphType::Full
        );
        assert_eq!(q(&[("subtaskindex", "3")]).unwrap().subtask, Some(3));
        for bad in [
            ("type", "cpu"),
            ("type", "on-cpu"),
            ("subtaskindex", "-1"),
            ("subtaskindex", "x"),
            ("at", "yesterday"),
            ("at", "1.5"),
            ("refresh", "yes"),
            ("refresh", "TRUE"),
            ("refresh", ""),
            ("refresh", "1"),
        ] {
            let e = q(&[bad]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.errors[0].contains(&format!("({})", bad.0)), "{e:?}");
        }
    }

    #[test]
    fn gzip_is_accepted_only_when_the_client_says_so_with_a_nonzero_weight() {
        let accepts = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            accepts_gzip(&headers)
        };
        assert!(!accepts(&[]));
        for yes in [
            &["gzip"][..],
            &["gzip, deflate, br, zstd"],
            &["br;q=1.0, GZIP;q=0.5"],
            &["x-gzip"],
            &["identity", "gzip"],
            &["*"],
            &["deflate, *;q=0.1"],
        ] {
            assert!(accepts(yes), "{yes:?}");
        }
        for no in [
            &["identity"][..],
            &["deflate, br"],
            &["gzip;q=0"],
            &["gzip; q=0.000"],
            &["*;q=0"],
            &["gzipped"],
        ] {
            assert!(!accepts(no), "{no:?}");
        }
    }
}
