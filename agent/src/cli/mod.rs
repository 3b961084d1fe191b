//! Command-line interface: one module per subcommand. Every flag also reads from an environment
//! variable `FLAMEGRID_<FLAG_IN_CAPS>`.

use clap::{Parser, Subcommand, ValueEnum};
use flamegrid_sampler::Backend;

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

/// `--sampler` of `sample` and `run`: how stacks are read (env `FLAMEGRID_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SamplerArg {
    /// Perf events where the kernel allows `perf_event_open` for the target (root, CAP_PERFMON,
    /// or kernel.perf_event_paranoid <= 2 with ptrace access to it), ptrace for the other
    /// threads; the choice and the reason for a fallback are logged once.
    #[default]
    Auto,
    /// Perf events only: a running thread is never stopped. Its stack comes from the kernel's
    /// task-clock samples (user registers and a copy of the top of its stack), a sleeping
    /// thread's from its last switch-out; a thread asleep since before the run is read once with
    /// ptrace (it is asleep: the stop costs it nothing). Needs CAP_PERFMON (or root) and ptrace
    /// access to the target; a refusal fails the target.
    Perf,
    /// Every sample stops each thread for ~20-30 µs (PTRACE_SEIZE + PTRACE_INTERRUPT), which
    /// also costs a running thread a voluntary context switch. Needs ptrace access to the
    /// target (same user, or CAP_SYS_PTRACE).
    Ptrace,
}

/// `--perf-ring-memory-mib`'s default: the sampler's default cap.
pub const DEFAULT_PERF_RING_MEMORY_MIB: u32 =
    (flamegrid_sampler::DEFAULT_PERF_RING_MEMORY >> 20) as u32;

impl SamplerArg {
    /// The mode `FLAMEGRID_SAMPLER` names, as `--sampler` reads it when the flag is absent:
    /// for agents built without the command line ([`run::RunArgs::new`]). A value that is not
    /// a mode is logged and `auto` used.
    pub fn from_env() -> SamplerArg {
        match Backend::from_env() {
            Ok(Backend::Auto) => SamplerArg::Auto,
            Ok(Backend::Perf) => SamplerArg::Perf,
            Ok(Backend::Ptrace) => SamplerArg::Ptrace,
            Err(e) => {
                tracing::warn!("FLAMEGRID_SAMPLER: {e}; sampling with --sampler auto");
                SamplerArg::Auto
            }
        }
    }
}

impl From<SamplerArg> for Backend {
    fn from(a: SamplerArg) -> Backend {
        match a {
            SamplerArg::Auto => Backend::Auto,
            SamplerArg::Perf => Backend::Perf,
            SamplerArg::Ptrace => Backend::Ptrace,
        }
    }
}
