//! flamegrid's agent: everything that runs on a worker host around the sampler.
//!
//! The sampling itself (ptrace, unwinding, symbolization, `/proc`, thread selection) is the
//! [`flamegrid_sampler`] crate; this one puts it on the network.
//!
//! * [`service`]: the `flamegrid.v1.Sampling` gRPC service over the sampler.
//! * [`wire`]: the contract's thread selectors checked and turned into the sampler's.
//! * [`registration`]: registers with the coordinator and heartbeats.
//! * [`telemetry`]: the service's counters and the `--metrics-listen` `/metrics` endpoint.
//! * [`cli`]: the `sample` and `run` subcommands of the `flamegrid-agent` binary.
//!
//! Arrows point one way: cli → service/registration → wire → sampler.

pub mod cli;
pub mod error;
pub mod registration;
pub mod service;
pub mod telemetry;
pub mod wire;

pub use error::AgentError;
