//! The native stack sampler. (API fixed; implementation to be written.)

use crate::AgentError;
use crate::selection::{AccessPolicy, ThreadSelector};
use flamegrid_model::SampleSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// How to sample.
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Samples per thread (>= 1).
    pub num_samples: u32,
    /// Delay between samples.
    pub delay: Duration,
    /// Frames kept per stack (innermost ones).
    pub max_depth: u32,
    /// Append kernel stacks of off-CPU threads (opt-in, root only).
    pub kernel_stacks: bool,
    /// Set to end a run early (graceful shutdown); the run returns what it has.
    pub cancel: Arc<AtomicBool>,
}

/// The result of one sampling run over several targets.
#[derive(Debug)]
pub struct SamplingRun {
    /// First sample, ms since the epoch.
    pub start_ms: i64,
    /// Last sample, ms since the epoch.
    pub end_ms: i64,
    /// One entry per target, in request order: its samples or why it has none.
    pub subtasks: Vec<(String, Result<SampleSet, AgentError>)>,
}

/// A handle on the sampler; cheap to clone, safe to share between threads.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    _private: (),
}

impl Sampler {
    /// Starts the sampler.
    pub fn new() -> Result<Sampler, AgentError> {
        Ok(Sampler::default())
    }

    /// Samples `targets` (key, selector) — blocking.
    pub fn sample(
        &self,
        targets: &[(String, ThreadSelector)],
        _policy: &AccessPolicy,
        _opts: &SamplerOptions,
    ) -> SamplingRun {
        SamplingRun {
            start_ms: 0,
            end_ms: 0,
            subtasks: targets
                .iter()
                .map(|(k, _)| (k.clone(), Err(AgentError::Other("sampler not implemented yet".into()))))
                .collect(),
        }
    }
}
