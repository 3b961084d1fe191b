//! The registry's one error type, shaped for the REST layer: each variant maps to one HTTP status
//! (400, 404, 409 or 500) and carries Flink's wording where Flink has one.

use super::state::JobStatus;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No job with this id (REST: 404).
    #[error("Job {0} not found")]
    JobNotFound(String),
    /// The job exists but has no vertex with this id (REST: 404).
    #[error("No vertex with ID '{0}' exists.")]
    VertexNotFound(String),
    /// No live task manager with this id (REST: 404).
    #[error("Could not find TaskExecutor {0}.")]
    TaskManagerNotFound(String),
    /// A subtask index at or above the vertex's parallelism (REST: 404).
    #[error("Invalid subtask index for vertex {0}")]
    SubtaskNotFound(String),
    /// A malformed request (REST: 400).
    #[error("{0}")]
    BadRequest(String),
    /// A `POST /jobs` body with these problems, each naming its field (REST: 400).
    #[error("invalid job: {}", .0.join("; "))]
    InvalidJob(Vec<String>),
    /// Cancel of a job that already ended in another state than CANCELED (REST: 409).
    #[error(
        "Job cancellation failed because the job has already reached another terminal state ({}).",
        .0.name()
    )]
    AlreadyTerminal(JobStatus),
    /// `Register` of an id a live agent holds elsewhere, without the token or its TLS identity
    /// (gRPC: ALREADY_EXISTS). Says nothing about the live agent.
    #[error(
        "agent id {0:?} is registered by a live agent elsewhere; taking it over needs the shared \
         token (--token-file) or that agent's TLS certificate, or wait until it has been silent \
         for --heartbeat-timeout-s"
    )]
    AgentIdTaken(String),
    /// The embedded database failed (REST: 500).
    #[error("registry storage: {0}")]
    Storage(String),
}
