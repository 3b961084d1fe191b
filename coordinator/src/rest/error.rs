//! Errors as Flink writes them: `{"errors": ["..."]}` with Flink's status codes and wording.
//!
//! Every handler returns `Result<_, ApiError>`; [`ApiError`] knows its status and messages, and
//! `From<RegistryError>` gives each registry failure the status Flink would use (404 for unknown
//! ids, 409 for a cancel that came too late, 500 only for real faults).

use crate::registry::RegistryError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// The body of every error answer, `{"errors": ["..."]}`: the one error shape Flink's clients
/// parse, described once here and referenced by every path in `/openapi.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable messages; the first says what went wrong.
    pub errors: Vec<String>,
}

// The error answers most paths share, declared once: a handler lists one of these in its
// `responses(...)` after its own statuses, instead of repeating the same 400 and 404 lines.

/// The errors of a path under `/jobs/{jobid}`: a malformed or unknown job id.
#[derive(IntoResponses)]
pub enum JobErrors {
    /// 400.
    #[response(status = 400, description = "Malformed job id")]
    Malformed(ErrorBody),
    /// 404.
    #[response(status = 404, description = "Unknown job")]
    Unknown(ErrorBody),
}

/// The errors of a path under `/jobs/{jobid}/vertices/{vertexid}`: a malformed or unknown job
/// or vertex id.
#[derive(IntoResponses)]
pub enum VertexErrors {
    /// 400.
    #[response(status = 400, description = "Malformed job or vertex id")]
    Malformed(ErrorBody),
    /// 404.
    #[response(status = 404, description = "Unknown job or vertex")]
    Unknown(ErrorBody),
}

/// The errors of a path under `/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}`.
#[derive(IntoResponses)]
pub enum SubtaskErrors {
    /// 400.
    #[response(
        status = 400,
        description = "Malformed job id, vertex id or subtask index"
    )]
    Malformed(ErrorBody),
    /// 404.
    #[response(status = 404, description = "Unknown job, vertex or subtask")]
    Unknown(ErrorBody),
}

/// The error of a path under `/taskmanagers/{tmid}`: an unknown task manager (any id is
/// looked up, so none is malformed).
#[derive(IntoResponses)]
pub enum TaskManagerErrors {
    /// 404.
    #[response(status = 404, description = "Unknown task manager")]
    Unknown(ErrorBody),
}

/// An error response: an HTTP status and the strings of Flink's `errors` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `errors` array.
    pub errors: Vec<String>,
}

impl ApiError {
    /// An error with one message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            errors: vec![message.into()],
        }
    }

    /// 400 with a free-text message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 with a free-text message.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 400 for a path parameter that does not parse, in Flink's words.
    pub fn bad_path_param(name: &str, value: &str) -> Self {
        ApiError::bad_request(format!(
            "Bad request, could not parse parameters: Cannot resolve path parameter ({name}) from value \"{value}\"."
        ))
    }

    /// 400 for a query parameter that does not parse, in Flink's words.
    pub fn bad_query_param(name: &str, value: &str) -> Self {
        ApiError::bad_request(format!(
            "Bad request, could not parse parameters: Cannot resolve query parameter ({name}) from value \"{value}\"."
        ))
    }

    /// 500 for a fault of the coordinator itself (logged; the client sees Flink's generic text).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            errors: vec![
                "Internal server error.".into(),
                format!("<Exception on server side:\n{detail}\nEnd of exception on server side>"),
            ],
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::JobNotFound(_)
            | RegistryError::VertexNotFound(_)
            | RegistryError::TaskManagerNotFound(_)
            | RegistryError::SubtaskNotFound(_) => ApiError::not_found(e.to_string()),
            RegistryError::BadRequest(msg) => ApiError::bad_request(msg),
            RegistryError::InvalidJob(problems) => ApiError {
                status: StatusCode::BAD_REQUEST,
                errors: problems,
            },
            RegistryError::AlreadyTerminal(_) | RegistryError::AgentIdTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            RegistryError::Storage(_) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                errors: self.errors,
            }),
        )
            .into_response()
    }
}
