//! The REST API, in Apache Flink's dialect (paths, shapes, status codes: `flink-rest.md`).
//!
//! One module per resource; handlers only translate between HTTP and the registry:
//!
//! | module | paths |
//! |---|---|
//! | [`cluster`] | `/config`, `/overview`, `/jobmanager/...` |
//! | [`jobs`] | `/jobs`, `/jobs/overview`, `/jobs/metrics`, `/jobs/:jobid[/...]` |
//! | [`flink_fixed`] | job paths without profiler data, fixed answers in Flink's shape (`config`, `checkpoints[/...]`, `accumulators`) |
//! | [`vertices`] | `/jobs/:jobid/vertices/:vertexid[/...]` with real data: details, task managers, subtask times, subtasks |
//! | [`vertex_fixed`] | vertex paths without profiler data, fixed answers in Flink's shape (accumulators, `backpressure`, `watermarks`, `metrics`) |
//! | [`taskmanagers`] | `/taskmanagers[/...]` |
//! | [`flamegraph`] | flame graphs and task manager thread dumps |
//! | [`exports`] | the flame graph as pprof (`.pb.gz`) and speedscope JSON |
//! | [`history`] | kept runs of a flame graph (`/flamegraph/history`) and `diff.svg` |
//! | [`openapi`] | `/openapi.json`, generated from the handler types |
//! | [`prometheus`] | `/metrics`: the coordinator's own metrics in Prometheus' text format |
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
//!   does not serve (TRACE and made-up methods included), 413 for bodies over 1 MiB (16 MiB
//!   for `POST /jobs`), 415 and 403 for writes a web page must not make ([`cross_site`]), 408
//!   past the request timeout;
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
pub mod flink_fixed;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod prometheus;
pub mod self_dump;
pub mod serve;
pub mod shapes;
pub mod state;
pub mod taskmanagers;
pub mod unsupported;
pub mod vertex_fixed;
pub mod vertices;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{from_fn, map_response};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use error::ApiError;
use state::AppState;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// A documented method route that writes: the cross-site checks ([`cross_site::check_write`])
/// run before its handler, so a refused request stores nothing. Only the methods of `route` are
/// wrapped, so a method the path does not serve still answers 405.
pub(crate) fn writes(route: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, methods) = route;
    (
        schemas,
        paths,
        methods.route_layer(from_fn(cross_site::check_write)),
    )
}

/// The extra time a request may take beyond a flame graph run's deadline (the `.svg` and
/// `.folded` endpoints wait the deadline plus a second for a run in flight).
const WAITING_MARGIN: Duration = Duration::from_secs(5);

/// The routes of one API version (mounted bare and under `/v1`) and the OpenAPI document that
/// describes them: each resource module lists its handlers once (`routes!`), and the path,
/// method, parameters and answers come from each handler's `#[utoipa::path]`, so the router and
/// the document cannot disagree.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(openapi::routes())
        .merge(cluster::routes())
        .merge(jobs::routes())
        .merge(flink_fixed::routes())
        .merge(vertices::routes())
        .merge(vertex_fixed::routes())
        .merge(taskmanagers::routes())
        .merge(flamegraph::routes())
        .merge(exports::routes())
        .merge(history::routes())
        .merge(prometheus::routes())
        .merge(unsupported::routes())
        .split_for_parts()
}

/// The whole HTTP router: the API's routes and the `pages` served beside them (the dashboard,
/// which `lib.rs` mounts), every route bare and under `/v1`, with the conventions of the module
/// docs, writes checked by `guard` (see [`auth`]) and by the cross-site rules (see
/// [`cross_site`]), requests bounded by `--rest-request-timeout-s` (see [`serve`]).
pub fn router(state: AppState, guard: auth::WriteGuard, pages: Router<AppState>) -> Router {
    let (api, document) = api();
    let api = api.merge(pages);
    let document = openapi::Document::new(&document);
    let guard = Arc::new(guard);
    let policy = Arc::new(cross_site::CrossSitePolicy::new(
        state.config.cors_origin.clone(),
    ));
    let timeout = request_timeout(&state);
    Router::new()
        .merge(api.clone())
        .nest("/v1", api)
        .fallback(unknown_path)
        .layer(Extension(document))
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
