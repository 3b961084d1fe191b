//! Job and task-manager registry (to be written).

use crate::fanout::VertexSampling;

/// The registry (stub).
#[derive(Debug, Default)]
pub struct Registry {
    _private: (),
}

/// Registry errors (stub).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Unknown job.
    #[error("Job {0} not found")]
    JobNotFound(String),
}

impl Registry {
    /// Where and what to sample for a vertex (see [`VertexSampling`]).
    pub fn vertex_sampling(&self, job_id: &str, _vertex_id: &str) -> Result<VertexSampling, RegistryError> {
        Err(RegistryError::JobNotFound(job_id.to_string()))
    }
}
