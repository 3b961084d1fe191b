//! `GET /openapi.json`: an OpenAPI 3.1 description of the REST API, generated from the handler
//! types with `utoipa` rather than written by hand.
//!
//! How the pieces fit:
//! * every response body is a plain struct deriving both `serde::Serialize` (what the handler
//!   sends) and `utoipa::ToSchema` (what the document says), so the two cannot disagree: a field
//!   renamed for the wire is renamed in the schema by the same `#[serde(rename)]`;
//! * every handler carries `#[utoipa::path(...)]` naming its path, parameters (`params.rs` and
//!   `metrics.rs` hold the `IntoParams` types), and every status it can answer with its body,
//!   errors being the one [`ErrorBody`] shape `{"errors": [...]}`;
//! * each resource module lists its handlers once, in its `routes()` (`utoipa_axum::routes!`):
//!   that one list both mounts the handler on the router and adds its path to the document,
//!   with every schema it references; [`ApiDoc`] below holds only what belongs to no route
//!   (title, tags, the shared schemas, the security scheme). Writes (`POST /jobs`, `PATCH /jobs/:jobid`) name the `bearer` security scheme,
//!   which [`BearerScheme`] adds (it matters only with `--rest-token-file`).
//!
//! Paths are documented bare; every one is also served under `/v1`. The document is built with
//! the router (`rest::api`, once per process: it never changes while running) and served as
//! compact JSON.
//!
//! `tests/openapi.rs` checks that no route bypasses the document and that live answers validate
//! against it; `.ci/schemathesis.sh` fuzzes a live coordinator with it.

use super::error::ErrorBody;
use super::jobs::EmptyObject;
use super::state::AppState;
use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the API description holds beyond its routes, which the resource modules' `routes()`
/// add (see the module docs).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flamegrid coordinator REST API",
        description = "On-demand flame graphs of native worker threads, served in Apache Flink's \
            REST dialect. Every path is also served under `/v1`. Errors are `{\"errors\": [...]}` \
            with Flink's status codes. Reads are open; writes need `Authorization: Bearer` when \
            the coordinator runs with `--rest-token-file`."
    ),
    components(schemas(ErrorBody, EmptyObject)),
    modifiers(&BearerScheme),
    tags(
        (name = "cluster", description = "The dashboard's settings, the cluster, the coordinator itself"),
        (name = "jobs", description = "Registered jobs"),
        (name = "vertices", description = "A job's vertices and subtasks"),
        (name = "taskmanagers", description = "Registered agents"),
        (name = "flamegraphs", description = "Flame graphs and thread dumps"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` HTTP security scheme that the write paths name.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token of --rest-token-file (writes only; reads are open)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as compact JSON text, built once with the router (`rest::api`) and handed to
/// [`openapi_json`] as a request extension.
#[derive(Debug, Clone)]
pub struct Document(Bytes);

impl Document {
    /// Serialises `openapi` once.
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Document {
        let text = openapi.to_json().unwrap_or_else(|e| {
            // Serialising the document's own types cannot fail; if it ever did, say so in a
            // valid (if empty) document rather than failing every request.
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            r#"{"openapi":"3.1.0","info":{"title":"flamegrid","version":"0"},"paths":{}}"#
                .to_string()
        });
        Document(Bytes::from(text))
    }
}

/// The route of this document itself.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "cluster",
    responses((status = 200, description = "This OpenAPI document", body = Object)))]
pub async fn openapi_json(Extension(document): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        document.0,
    )
        .into_response()
}
