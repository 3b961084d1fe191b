//! `flamegrid-agent sample`: one-shot local sampling.

use clap::Args;
use std::process::ExitCode;

/// Flags of `flamegrid-agent sample` (DESIGN.md).
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Process to sample.
    #[arg(long, env = "FLAMEGRID_PID")]
    pub pid: u32,
}

/// Runs the subcommand.
pub fn main(_args: SampleArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("sample is not implemented yet")
}
