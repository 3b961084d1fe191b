//! The REST API, in Apache Flink's dialect (paths, shapes, status codes: `flink-rest.md`).
//!
//! One module per resource; handlers only translate between HTTP and the registry:
//!
//! | module | paths |
//! |---|---|
//! | [`cluster`] | `/config`, `/overview`, `/jobmanager/...` |
//! | [`jobs`] | `/jobs`, `/jobs/overview`, `/jobs/metrics`, `/jobs/:jobid[/...]` |
//! | [`vertices`] | `/jobs/:jobid/vertices/:vertexid[/...]` |
//! | [`taskmanagers`] | `/taskmanagers[/...]` |
//! | [`flamegraph`] | flame graphs and task manager thread dumps |
//! | [`exports`] | the flame graph as pprof (`.pb.gz`) and speedscope JSON |
//! | [`history`] | kept runs of a flame graph (`/flamegraph/history`) and `diff.svg` |
//! | [`openapi`] | `/openapi.json`, generated from the handler types |
//! | [`auth`] | who may write (`--read-only`, `--rest-token-file`) |
//! | [`cross_site`] | what a web page may do: JSON-only writes, `Origin` checks, CORS |
//! | [`serve`] | the listener: header-read and request timeouts, connection limit |
//! | [`self_dump`] | stacks for `/jobmanager/thread-dump` from a helper process |
//! | [`unsupported`] | the rest of Flink's API: a JSON error saying flamegrid does not do it |
//!
//! Conventions every response follows, enforced in one place (`finish_response`) rather than
//! in each handler:
//! * every path is served bare and under `/v1`; any other prefix is an unknown path;
//! * errors are `{"errors": [...]}`: 404 for unknown paths (`File not found.` for a GET, as
//!   Flink's static-file handler says, `Not found: <uri>` otherwise), 405 for a method a path
//!   does not serve (TRACE and made-up methods included), 413 for bodies over 1 MiB, 415 and
//!   403 for writes a web page must not make ([`cross_site`]), 408 past the request timeout;
//! * JSON is sent as `application/json; charset=UTF-8`;
//! * every answer carries `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//!   `Referrer-Policy: no-referrer` (a JSON or SVG answer is never to be sniffed into HTML or
//!   framed by another site); CORS headers only for origins listed with `--cors-origin`.

pub mod auth;
pub mod cluster;
pub mod cross_site;
pub mod error;
pub mod exports;
pub mod flamegraph;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod self_dump;
pub mod serve;
pub mod shapes;
pub mod state;
pub mod taskmanagers;
pub mod unsupported;
pub mod vertices;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{from_fn, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post};
use error::ApiError;
use state::AppState;
use std::sync::Arc;
use std::time::Duration;

/// A method route that writes: the cross-site checks ([`cross_site::check_write`]) run before
/// its handler, so a refused request stores nothing. Only the methods set on `route` are
/// wrapped, so a method the path does not serve still answers 405.
fn writes(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(from_fn(cross_site::check_write))
}

/// The extra time a request may take beyond a flame graph run's deadline (the `.svg` and
/// `.folded` endpoints wait the deadline plus a second for a run in flight).
const WAITING_MARGIN: Duration = Duration::from_secs(5);

/// The routes of one API version (mounted bare and under `/v1`).
fn api_routes() -> Router<AppState> {
    Router::new()
        // cluster
        .route("/config", get(cluster::config))
        .route("/overview", get(cluster::overview))
        .route("/jobmanager/config", get(cluster::jobmanager_config))
        .route("/jobmanager/environment", get(cluster::jobmanager_environment))
        .route("/jobmanager/metrics", get(cluster::jobmanager_metrics))
        .route("/jobmanager/logs", get(cluster::jobmanager_logs))
        .route("/jobmanager/logs/{name}", get(cluster::no_named_log_file))
        .route("/jobmanager/log", get(cluster::no_log_file))
        .route("/jobmanager/stdout", get(cluster::no_stdout_file))
        .route("/jobmanager/thread-dump", get(cluster::jobmanager_thread_dump))
        // jobs
        .route("/jobs", get(jobs::list).merge(writes(post(jobs::register))))
        .route("/jobs/overview", get(jobs::overview))
        .route("/jobs/metrics", get(jobs::aggregated_metrics))
        .route("/jobs/{jobid}", get(jobs::details).merge(writes(patch(jobs::cancel))))
        .route("/jobs/{jobid}/status", get(jobs::status))
        .route("/jobs/{jobid}/plan", get(jobs::job_plan))
        .route("/jobs/{jobid}/exceptions", get(jobs::exceptions))
        .route("/jobs/{jobid}/config", get(jobs::config))
        .route("/jobs/{jobid}/accumulators", get(jobs::accumulators))
        .route("/jobs/{jobid}/metrics", get(jobs::metrics))
        .route("/jobs/{jobid}/execution-result", get(jobs::execution_result))
        // A POST that only says "not supported" changes nothing, like every `unsupported` route.
        .route("/jobs/{jobid}/checkpoints", get(jobs::checkpoints).post(unsupported::checkpoint_trigger))
        .route("/jobs/{jobid}/checkpoints/config", get(jobs::checkpoints_config))
        .route("/jobs/{jobid}/checkpoints/details/{checkpointid}", get(jobs::checkpoint_details))
        .route("/jobs/{jobid}/jobmanager/config", get(jobs::jobmanager_config))
        .route("/jobs/{jobid}/jobmanager/environment", get(jobs::jobmanager_environment))
        // vertices
        .route("/jobs/{jobid}/vertices/{vertexid}", get(vertices::details))
        .route("/jobs/{jobid}/vertices/{vertexid}/taskmanagers", get(vertices::taskmanagers))
        .route("/jobs/{jobid}/vertices/{vertexid}/subtasktimes", get(vertices::subtask_times))
        .route("/jobs/{jobid}/vertices/{vertexid}/accumulators", get(vertices::accumulators))
        .route("/jobs/{jobid}/vertices/{vertexid}/backpressure", get(vertices::backpressure))
        .route("/jobs/{jobid}/vertices/{vertexid}/watermarks", get(vertices::watermarks))
        .route("/jobs/{jobid}/vertices/{vertexid}/metrics", get(vertices::vertex_metrics))
        .route("/jobs/{jobid}/vertices/{vertexid}/subtasks/metrics", get(vertices::subtasks_metrics))
        .route("/jobs/{jobid}/vertices/{vertexid}/subtasks/accumulators", get(vertices::subtasks_accumulators))
        .route("/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}", get(vertices::subtask))
        .route("/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/metrics", get(vertices::subtask_metrics))
        .route(
            "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/accumulators",
            get(vertices::subtask_accumulators),
        )
        .route(
            "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/attempts/{attempt}",
            get(vertices::subtask_attempt),
        )
        .route(
            "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}/attempts/{attempt}/accumulators",
            get(vertices::subtask_attempt_accumulators),
        )
        // task managers
        .route("/taskmanagers", get(taskmanagers::list))
        .route("/taskmanagers/metrics", get(taskmanagers::aggregated_metrics))
        .route("/taskmanagers/{tmid}", get(taskmanagers::details))
        .route("/taskmanagers/{tmid}/metrics", get(taskmanagers::metrics))
        .route("/taskmanagers/{tmid}/logs", get(taskmanagers::logs))
        .route("/taskmanagers/{tmid}/logs/{name}", get(taskmanagers::no_named_log_file))
        .route("/taskmanagers/{tmid}/log", get(taskmanagers::no_log_file))
        .route("/taskmanagers/{tmid}/stdout", get(taskmanagers::no_stdout_file))
        // this API's own description
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(unsupported::routes())
        .merge(flamegraph::routes())
        .merge(exports::routes())
        .merge(history::routes())
        .merge(crate::dashboard::routes())
}

/// The whole REST router: every route bare and under `/v1`, the conventions of the module docs,
/// writes checked by `guard` (see [`auth`]) and by the cross-site rules (see [`cross_site`]),
/// requests bounded by `--rest-request-timeout-s` (see [`serve`]).
pub fn router(state: AppState, guard: auth::WriteGuard) -> Router {
    let api = api_routes();
    let guard = Arc::new(guard);
    let policy = Arc::new(cross_site::CrossSitePolicy::new(
        state.config.cors_origin.clone(),
    ));
    let timeout = request_timeout(&state);
    Router::new()
        .merge(api.clone())
        .nest("/v1", api)
        .fallback(unknown_path)
        .layer(DefaultBodyLimit::max(jobs::MAX_BODY_BYTES))
        .layer(from_fn(
            move |request: Request, next: axum::middleware::Next| {
                auth::guard_writes(guard.clone(), request, next)
            },
        ))
        .layer(from_fn(
            move |request: Request, next: axum::middleware::Next| {
                serve::request_timeout(timeout, request, next)
            },
        ))
        .layer(map_response(finish_response))
        .layer(from_fn(
            move |request: Request, next: axum::middleware::Next| {
                cross_site::cors(policy.clone(), request, next)
            },
        ))
        .with_state(state)
}

/// `--rest-request-timeout-s`, raised to a flame graph run's deadline plus [`WAITING_MARGIN`]
/// when that is longer, so the endpoints that wait for a run are never cut off by it.
pub fn request_timeout(state: &AppState) -> Duration {
    let configured = Duration::from_secs(state.config.rest_request_timeout_s);
    configured.max(state.flamegraphs.run_deadline() + Duration::from_secs(1) + WAITING_MARGIN)
}

/// Unknown paths, as Flink's router answers them.
async fn unknown_path(method: Method, request: Request) -> ApiError {
    if method == Method::GET || method == Method::HEAD {
        ApiError::not_found("File not found.")
    } else {
        ApiError::not_found(format!("Not found: {}", request.uri().path()))
    }
}

/// Gives every response the API's conventions: JSON errors (the framework's own rejections, such
/// as 405 and 413, come as empty or plain-text bodies), the charset Flink writes, and the
/// security headers.
async fn finish_response(response: Response) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let is_json = content_type.starts_with("application/json");
    let mut response = if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_string();
        let message = match status {
            StatusCode::METHOD_NOT_ALLOWED => "Method not allowed for this path.".to_string(),
            StatusCode::PAYLOAD_TOO_LARGE => {
                "Request body too large (the limit is 1 MiB).".to_string()
            }
            _ if !text.is_empty() => text,
            _ => status.canonical_reason().unwrap_or("Error").to_string(),
        };
        let mut rebuilt = ApiError::new(status, message).into_response();
        if let Some(allow) = parts.headers.get(header::ALLOW) {
            rebuilt.headers_mut().insert(header::ALLOW, allow.clone());
        }
        rebuilt
    } else {
        response
    };
    let headers = response.headers_mut();
    if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json")
    {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
    }
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
