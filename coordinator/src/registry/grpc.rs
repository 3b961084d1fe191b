//! The registry's gRPC face (`flamegrid.v1.Registry`), served on `--rpc-addr`.
//!
//! Two calls: `Register` (an agent announces itself and its host) and `Heartbeat` (liveness of
//! the subtasks it watches, host metrics; the answer says what to watch next, or to register
//! again). The service is a thin shell: it moves the request onto a blocking thread (the
//! registry may fsync) and maps [`RegistryError`] onto gRPC status codes.
//!
//! With `--token-file`, every call must carry `authorization: Bearer <token>`; [`TokenCheck`]
//! compares in constant time and refuses others with UNAUTHENTICATED, logging the peer.
//!
//! `Register` also hands the registry who is calling ([`Caller`]: peer IP, TLS client
//! certificate, whether the token was checked), so that a live agent's id cannot be taken over
//! from elsewhere without credentials (ALREADY_EXISTS).
//!
//! Message limits are explicit ([`MAX_REGISTRY_MESSAGE_BYTES`]): a heartbeat of one agent may
//! report on, and be answered with, up to [`super::MAX_HEARTBEAT_ENTRIES`] watched subtasks.

use super::{Caller, Registry, RegistryError};
use flamegrid_proto::v1;
use flamegrid_proto::v1::registry_server::RegistryServer;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

pub use flamegrid_proto::MAX_REGISTRY_MESSAGE_BYTES;

/// The tonic service over a shared [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
    /// Every call has passed the shared-token check (`--token-file` is set).
    token_required: bool,
}

impl RegistryService {
    /// A service answering from `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        RegistryService {
            registry,
            token_required: false,
        }
    }

    /// The service wrapped in its token check and with its message limits, ready for
    /// `Server::add_service`.
    pub fn into_server(
        mut self,
        token: TokenCheck,
    ) -> InterceptedService<RegistryServer<RegistryService>, TokenCheck> {
        self.token_required = token.expected.is_some();
        let server = RegistryServer::new(self)
            .max_decoding_message_size(MAX_REGISTRY_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_REGISTRY_MESSAGE_BYTES);
        InterceptedService::new(server, token)
    }
}

/// Who is calling, from what the transport knows about the request.
fn caller_of<T>(request: &Request<T>, token_verified: bool) -> Caller {
    Caller {
        peer_ip: request.remote_addr().map(|a| a.ip()),
        tls_identity: request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec())),
        token_verified,
    }
}

fn to_status(e: RegistryError) -> Status {
    match e {
        RegistryError::BadRequest(msg) => Status::invalid_argument(msg),
        e @ RegistryError::AgentIdTaken(_) => Status::already_exists(e.to_string()),
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
        let caller = caller_of(&request, self.token_required);
        let req = request.into_inner();
        blocking(move || registry.register_taskmanager_as(req, &caller))
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let registry = self.registry.clone();
        let req = request.into_inner();
        // The registry's gRPC server has a thread of its own (`lib.rs`): a heartbeat answered
        // from memory runs right here; one that may read the shared store goes to the
        // blocking pool like every other call.
        if registry.heartbeat_stays_in_memory(&req.agent_id) {
            return registry
                .heartbeat(req)
                .map(Response::new)
                .map_err(to_status);
        }
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
