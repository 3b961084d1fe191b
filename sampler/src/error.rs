//! The sampler's one error type.
//!
//! Every fallible function of the sampler library returns [`SamplerError`]. The variants are the
//! distinctions a caller acts on: the agent's gRPC service maps `NoSuchProcess` to NOT_FOUND,
//! `PermissionDenied` to PERMISSION_DENIED, `InvalidArgument` to INVALID_ARGUMENT; the one-shot
//! CLI prints the `Display` form as its single line of error output. Messages therefore name the
//! process and say *why* in one line, never with a backtrace.

use std::io;

/// Everything that can go wrong in the sampler library.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The process (or every selected thread of it) does not exist (any more).
    #[error("no such process: {0}")]
    NoSuchProcess(String),

    /// The process exists but none of its threads matches the thread selection (a `--tid`
    /// or `--thread-name` that selects nothing). Not "no such process": the process is
    /// there, the selection is what needs changing.
    #[error("{0}")]
    NoMatchingThread(String),

    /// The sampler may not sample this process. `reason` says which of the possible causes it is:
    /// the agent's allow-list, `kernel.yama.ptrace_scope`, a missing `CAP_SYS_PTRACE` for another
    /// user's process, another tracer already attached, or a plain EPERM from the kernel.
    #[error("may not trace pid {pid}: {reason}")]
    PermissionDenied {
        /// The process that was refused.
        pid: u32,
        /// One line: which cause it is.
        reason: String,
    },

    /// A request or flag value that is out of bounds or malformed; nothing was done.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An I/O error, with what the sampler was doing when it happened.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (e.g. "reading /proc/42/maps").
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Anything else (an internal fault such as the tracer thread having gone away).
    #[error("{0}")]
    Other(String),
}

impl SamplerError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> SamplerError {
        SamplerError::Io {
            context: context.into(),
            source,
        }
    }
}
