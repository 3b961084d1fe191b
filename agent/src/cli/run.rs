//! `flamegrid-agent run`: the long-running agent.

use clap::Args;
use std::process::ExitCode;

/// Flags of `flamegrid-agent run` (DESIGN.md).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The coordinator's registry address.
    #[arg(long, env = "FLAMEGRID_COORDINATOR")]
    pub coordinator: String,
}

/// Runs the subcommand.
pub fn main(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("run is not implemented yet")
}
