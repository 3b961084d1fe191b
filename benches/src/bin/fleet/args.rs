//! The simulator's command line. `benches/fleet.sh` passes `--bin-dir` and the fleet sizes and
//! forwards everything else its user typed. Every flag also reads `FLAMEGRID_<FLAG>`.

use clap::Parser;
use flamegrid_benches::positive_count;
use std::path::PathBuf;

/// A fleet of simulated agents against one real coordinator: N agents in this process, each a
/// real gRPC `Sampling` server on its own loopback port that registers and heartbeats at the
/// coordinator's default interval and answers `Sample` after the requested window with
/// synthetic stacks; one job of one vertex of S subtasks spread round-robin over them. For every
/// (N, S) it starts a fresh `flamegrid-coordinator`, measures its CPU with heartbeats only, then
/// requests a refreshed flame graph `--runs` times and prints one Markdown table: time to the
/// graph against the window, the coordinator's own time after the last answer, the dispatch
/// spread, coordinator CPU and memory, and whether every sample was kept. Raises this process's
/// open file limit to its hard limit (each agent is a listener plus connections; the
/// coordinator, started from here, inherits it).
#[derive(Debug, Clone, Parser)]
#[command(name = "flamegrid-fleet", version)]
pub struct Options {
    /// Directory holding the `flamegrid-coordinator` to measure (a release build).
    #[arg(
        long,
        env = "FLAMEGRID_BIN_DIR",
        value_name = "DIR",
        default_value = "target/release"
    )]
    pub bin_dir: PathBuf,

    /// Numbers of simulated agents, comma-separated; every one is measured with every
    /// --subtasks.
    #[arg(long, env = "FLAMEGRID_AGENTS", value_name = "N,...", value_delimiter = ',',
          default_value = "1,10,100,1000", value_parser = positive_count)]
    pub agents: Vec<usize>,

    /// Subtasks of the one vertex (its parallelism), comma-separated. A vertex over the
    /// coordinator's cap is reported as such (the 400 of `POST /jobs`), not as a failure.
    #[arg(long, env = "FLAMEGRID_SUBTASKS", value_name = "S,...", value_delimiter = ',',
          default_value = "1000,10000", value_parser = positive_count)]
    pub subtasks: Vec<usize>,

    /// Refreshed flame graphs requested per configuration, one after the other.
    #[arg(long, env = "FLAMEGRID_RUNS", value_name = "N", default_value = "5",
          value_parser = positive_count)]
    pub runs: usize,

    /// Samples per subtask per run (the coordinator's --flamegraph-num-samples).
    #[arg(long, env = "FLAMEGRID_SAMPLES", value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub samples: u32,

    /// Delay between samples in ms (the coordinator's --flamegraph-delay-ms). The window is
    /// (samples − 1) × delay.
    #[arg(long, env = "FLAMEGRID_DELAY_MS", value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub delay_ms: u32,

    /// Frames per synthetic stack (at least 3).
    #[arg(long, env = "FLAMEGRID_DEPTH", value_name = "FRAMES", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(3..=1024))]
    pub depth: u32,

    /// Distinct stacks per subtask.
    #[arg(long, env = "FLAMEGRID_BREADTH", value_name = "N", default_value = "4",
          value_parser = positive_count)]
    pub breadth: usize,

    /// Distinct stacks in the whole vertex at most (subtasks share them beyond that).
    #[arg(long, env = "FLAMEGRID_POOL", value_name = "N", default_value = "10000",
          value_parser = positive_count)]
    pub pool: usize,

    /// Seconds the coordinator's CPU is measured with heartbeats only, before the runs.
    #[arg(long, env = "FLAMEGRID_IDLE_S", value_name = "S", default_value = "15",
          value_parser = positive_count)]
    pub idle_s: usize,

    /// An extra flag for every coordinator started (repeatable), e.g.
    /// `--coordinator-arg=--flamegraph-history=1`.
    #[arg(
        long,
        env = "FLAMEGRID_COORDINATOR_ARG",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub coordinator_arg: Vec<String>,

    /// Also write the Markdown table to this file (it always goes to stdout).
    #[arg(long, env = "FLAMEGRID_REPORT", value_name = "FILE")]
    pub report: Option<PathBuf>,
}
