//! Who may write. REST reads are open (Flink's are); writes (`POST /jobs`, `PATCH /jobs/:jobid`,
//! and any other POST, PUT, PATCH or DELETE) can be refused outright with `--read-only` (403) or
//! require `Authorization: Bearer <token>` with `--rest-token-file` (401 otherwise). The token is
//! compared in constant time and never logged.

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The write policy, read once at start.
#[derive(Clone, Default)]
pub struct WriteGuard {
    read_only: bool,
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGuard")
            .field("read_only", &self.read_only)
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl WriteGuard {
    /// From `--read-only` and the token of `--rest-token-file` (read at start, see
    /// [`crate::credentials`]; already trimmed and non-empty).
    pub fn new(read_only: bool, token: Option<&str>) -> Self {
        WriteGuard {
            read_only,
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }

    /// Checks one request; `None` lets it through.
    fn refuse(&self, request: &Request) -> Option<Response> {
        let write = matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        if !write {
            return None;
        }
        if self.read_only {
            return Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "This coordinator is read-only (--read-only): writes are refused.",
                )
                .into_response(),
            );
        }
        let expected = self.token.as_ref()?;
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if presented.is_some_and(|t| constant_time_eq(t.as_bytes(), expected)) {
            return None;
        }
        tracing::warn!(method = %request.method(), path = %request.uri().path(), "REST write refused: missing or wrong token");
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "This write needs a valid \"Authorization: Bearer <token>\" header.",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: refuses writes the policy does not allow, passes everything else on.
pub async fn guard_writes(guard: Arc<WriteGuard>, request: Request, next: Next) -> Response {
    match guard.refuse(&request) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}
