//! The registry's gRPC face (`flamegrid.v1.Registry`), served on `--rpc-addr`.
//!
//! Two calls: `Register` (an agent announces itself and its host) and `Heartbeat` (liveness of
//! the subtasks it watches, host metrics; the answer says what to watch next, or to register
//! again). The service is a thin shell: it moves the request onto a blocking thread (the
//! registry may fsync) and maps [`RegistryError`] onto gRPC status codes.
//!
//! With `--token-file`, every call must carry `authorization: Bearer <token>`; [`TokenCheck`]
//! compares in constant time and refuses others with UNAUTHENTICATED, logging the peer.

use super::{Registry, RegistryError};
use flamegrid_proto::v1;
use flamegrid_proto::v1::registry_server::RegistryServer;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// The tonic service over a shared [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    /// A service answering from `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        RegistryService { registry }
    }

    /// The service wrapped in its token check, ready for `Server::add_service`.
    pub fn into_server(
        self,
        token: TokenCheck,
    ) -> InterceptedService<RegistryServer<RegistryService>, TokenCheck> {
        RegistryServer::with_interceptor(self, token)
    }
}

fn to_status(e: RegistryError) -> Status {
    match e {
        RegistryError::BadRequest(msg) => Status::invalid_argument(msg),
        RegistryError::InvalidJob(msgs) => Status::invalid_argument(msgs.join("; ")),
        other => {
            tracing::error!(error = %other, "registry call failed");
            Status::internal(other.to_string())
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("registry task failed: {e}")))?
        .map_err(to_status)
}

#[tonic::async_trait]
impl v1::registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let registry = self.registry.clone();
        let req = request.into_inner();
        blocking(move || registry.register_taskmanager(req))
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let registry = self.registry.clone();
        let req = request.into_inner();
        blocking(move || registry.heartbeat(req))
            .await
            .map(Response::new)
    }
}

/// Checks the shared token on every call, when one is configured.
#[derive(Clone, Default)]
pub struct TokenCheck {
    expected: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("TokenCheck")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl TokenCheck {
    /// No token required.
    pub fn disabled() -> Self {
        TokenCheck { expected: None }
    }

    /// Require this token (already trimmed, non-empty).
    pub fn require(token: &str) -> Self {
        TokenCheck {
            expected: Some(Arc::from(token.as_bytes())),
        }
    }

    /// Reads the token from a file (surrounding whitespace ignored); an empty file is an error,
    /// because an empty token would let anyone in.
    pub fn from_file(path: &std::path::Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RegistryError::BadRequest(format!("cannot read token file {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(RegistryError::BadRequest(format!(
                "token file {} is empty",
                path.display()
            )));
        }
        Ok(TokenCheck::require(token))
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess was
/// right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected) => Ok(request),
            _ => {
                let peer = request
                    .remote_addr()
                    .map_or_else(|| "unknown".to_string(), |a| a.to_string());
                tracing::warn!(%peer, "registry call refused: missing or wrong token");
                Err(Status::unauthenticated("missing or wrong bearer token"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
