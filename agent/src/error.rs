//! The agent's one error type.
//!
//! What goes wrong while sampling is the sampler's [`SamplerError`]: the gRPC service maps its
//! variants to statuses and per-subtask failures (`service::failure_kind`), so a caller sees
//! *which* of them it was. [`AgentError`] adds what only the agent can get wrong (its own
//! settings) and carries a sampler error through unchanged, so `flamegrid-agent`'s one line of
//! error output reads the same either way.

use flamegrid_sampler::SamplerError;

/// Everything that can go wrong in the agent library outside a sampling run's per-target results.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The sampler failed (starting its threads, resolving a selector, reading `/proc`).
    #[error(transparent)]
    Sampler(#[from] SamplerError),

    /// A flag or setting value that is out of bounds or malformed; nothing was done.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
