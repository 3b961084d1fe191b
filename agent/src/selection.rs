//! Which threads to sample: resolves a selector (a process by pid or name; its threads by tids, a
//! thread-name regex, or all) into concrete threads, and enforces the agent's allow-list.
//!
//! (API fixed; bodies to be written by the sampler work.)

use crate::AgentError;

/// A process, by id or by kernel name (`/proc/<pid>/comm`, re-resolved at every run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRef {
    /// By pid.
    Pid(u32),
    /// By comm name.
    Name(String),
}

/// What to sample for one subtask.
#[derive(Debug, Clone)]
pub struct ThreadSelector {
    /// The process.
    pub process: ProcessRef,
    /// Threads by tid (empty: not selected by tid).
    pub tids: Vec<u32>,
    /// Threads whose comm matches this regex as a whole (None: not selected by name).
    pub thread_name: Option<regex::Regex>,
}

/// Which processes the agent may sample.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    _private: (),
}

impl AccessPolicy {
    /// No restriction (the one-shot `sample` command relies on the OS's own permission checks).
    pub fn unrestricted() -> Self {
        AccessPolicy::default()
    }
}

/// A selector resolved to concrete threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The process id.
    pub pid: u32,
    /// The process's comm.
    pub comm: String,
    /// Selected threads: (tid, name).
    pub threads: Vec<(u32, String)>,
}

/// Resolves `sel` now, checking `policy`.
pub fn resolve(_sel: &ThreadSelector, _policy: &AccessPolicy) -> Result<ResolvedTarget, AgentError> {
    Err(AgentError::Other("selection not implemented yet".into()))
}
