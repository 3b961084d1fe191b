//! The one error type of this crate's library: what can go wrong reading `/proc`.
//!
//! The drivers (binaries) wrap it in `anyhow` with the context of the measurement that needed
//! the figure; here it only says which file and what was wrong with it.

/// Why a figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read at all: most often the process (or thread) has exited.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file, e.g. `/proc/1234/status`.
        path: String,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The file was read but a field was missing or not a number (another kernel's format).
    #[error("{path}: {what}")]
    Malformed {
        /// The file, e.g. `/proc/1234/stat`.
        path: String,
        /// Which field, and what was wrong with it.
        what: String,
    },
}
