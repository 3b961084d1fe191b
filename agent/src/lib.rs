//! flamegrid's agent: everything that runs on a worker host.
//!
//! * [`sampler`]: stops a thread for the instant of reading its registers and stack (ptrace
//!   SEIZE + INTERRUPT, one OS thread owns every ptrace call), unwinds with DWARF CFI, symbolizes,
//!   and reads the thread's state from `/proc`. No networking in here.
//! * [`selection`]: turns a selector (pid or process name, tids or a thread-name regex) into the
//!   threads to sample, and enforces the allow-list.
//! * [`service`]: the `flamegrid.v1.Sampling` gRPC service over the sampler.
//! * [`registration`]: registers with the coordinator and heartbeats.
//! * [`cli`]: the `sample` and `run` subcommands of the `flamegrid-agent` binary.
//! * [`memory`]: allocator settings and giving memory back after a burst of work.
//!
//! Arrows point one way: cli → service/registration → sampler/selection.

pub mod cli;
pub mod error;
pub mod memory;
pub mod registration;
pub mod sampler;
pub mod selection;
pub mod service;

pub use error::AgentError;
