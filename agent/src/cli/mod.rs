//! Command-line interface: one module per subcommand. Every flag also reads from an environment
//! variable `FLAMEGRID_<FLAG_IN_CAPS>`.

use clap::{Parser, Subcommand};

pub mod run;
pub mod sample;

/// Samples the stacks and states of native threads on this host.
#[derive(Debug, Parser)]
#[command(name = "flamegrid-agent", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The agent's subcommands.
// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample threads of a local process once and print the stacks (no coordinator needed).
    Sample(sample::SampleArgs),
    /// Serve the sampling gRPC service and register with a coordinator.
    Run(run::RunArgs),
}
