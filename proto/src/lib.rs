//! flamegrid's wire contract: the `flamegrid.v1` gRPC services and messages, generated at build
//! time from `proto/flamegrid/v1/*.proto` (see `build.rs`), plus conversions between the compact
//! interned wire form and [`flamegrid_model`]'s types.
//!
//! Two services live here: [`v1::sampling_server::Sampling`] (served by every agent) and
//! [`v1::registry_server::Registry`] (served by the coordinator). The agent and the coordinator
//! depend on this crate, never on each other. [`pprof`] holds the types of pprof's profile format,
//! which the coordinator exports.
//! [`exposure`] is the secure-default rule every listener of both binaries follows;
//! [`credential_flags`] the token and TLS flags both binaries take; [`host`] the host facts both
//! report; [`prometheus`] the text format both serve at `/metrics`.

/// Generated code for package `flamegrid.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flamegrid.v1");
}

/// Generated code for pprof's profile format (package `perftools.profiles`, from
/// `proto/pprof/profile.proto`): the coordinator writes it for `go tool pprof` and the viewers
/// that read pprof files. It lives here so every .proto of the project is compiled in one place.
pub mod pprof {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("perftools.profiles");
}

pub mod convert;
pub mod credential_flags;
pub mod exposure;
pub mod host;
pub mod prometheus;

pub use convert::{ConvertError, SampleResponseBuilder};

/// Largest `Register` / `Heartbeat` message either side sends or accepts, agreed here so the
/// agent and the coordinator cannot drift apart. A heartbeat carries one liveness entry per
/// watched subtask (~85 bytes with its selector) and its answer one selector per subtask (~100
/// bytes with a short thread-name pattern): 100,000 watched subtasks make ~10 MB, beyond tonic's
/// 4 MiB default (which cut an agent watching ~45,000). 64 MiB leaves room for long patterns
/// while still bounding what one call can make either side buffer.
pub const MAX_REGISTRY_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
