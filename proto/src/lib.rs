//! flamegrid's wire contract: the `flamegrid.v1` gRPC services and messages, generated at build
//! time from `proto/flamegrid/v1/*.proto` (see `build.rs`), plus conversions between the compact
//! interned wire form and [`flamegrid_model`]'s types.
//!
//! Two services live here: [`v1::sampling_server::Sampling`] (served by every agent) and
//! [`v1::registry_server::Registry`] (served by the coordinator). The agent and the coordinator
//! depend on this crate, never on each other.

/// Generated code for package `flamegrid.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flamegrid.v1");
}

pub mod convert;

pub use convert::{ConvertError, SampleResponseBuilder};
