//! The agent's one error type.

/// Everything that can go wrong in the agent library.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Placeholder until the sampler lands.
    #[error("{0}")]
    Other(String),
}
