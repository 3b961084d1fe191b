//! `flamegrid-e2e`: end-to-end and REST benchmarks through a real coordinator and real agents
//! (issue 6, items 3 and 4), driven by `benches/e2e.sh`.
//!
//! A unit benchmark cannot say how long a user waits for a flame graph: that time is the
//! sampling window plus everything around it (REST, fan-out over gRPC, one ptrace session per
//! agent, folding, symbolizing, rendering). So this driver starts the real release binaries
//! exactly as a user would (`flamegrid-coordinator`, four `flamegrid-agent run` processes on
//! loopback ports, one workload process per agent), registers jobs over `POST /jobs`, and
//! measures from the outside, in three steps, one module each:
//!
//! 1. [`first_graph`]: **time to first graph** of never-sampled vertices (1, 16 and 64
//!    subtasks over 1 or 4 agents), for the default 100 × 50 ms window and a short
//!    20 × 10 ms one; overhead = time − window.
//! 2. [`rest_load`]: **REST load** with [`wrk`] against a cached flame graph,
//!    `/jobs/overview` and `/config`, in alternating rounds, and the **resident memory**
//!    of the coordinator and the agents at rest and after the load.
//! 3. [`flink`]: **beside Apache Flink 2.3**: with `--flink-results FILE` (written by
//!    `benches/flink-reference.sh`, which `e2e.sh` runs first in the same invocation) the
//!    report puts the same measurements of a real Flink cluster beside flamegrid's, with
//!    ratios, and judges the goals against them instead of the figures quoted in issue 6.
//!
//! [`report`] turns the results into Markdown, which goes to stdout and to `--report FILE`
//! ([`args`] has every flag). The processes of the system under test live in [`processes`];
//! the driver talks to them over [`http`]. Every child process is killed when its guard
//! drops; `e2e.sh` also runs this driver in its own process group and kills the group on
//! exit, so nothing outlives the run even when the driver itself is killed.

mod args;
mod first_graph;
mod flink;
mod http;
mod processes;
mod report;
mod rest_load;
mod wrk;

use anyhow::{Context, Result, bail};
use clap::Parser;
use flamegrid_benches::procfs::load_averages;
use std::time::Duration;

/// Upper bound on any wait for the system under test, so a broken build fails the run instead
/// of hanging it. Nothing is asserted about speed here; the figures are the result.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Agents (and workload processes) started per coordinator: the "4 agents" configurations.
const AGENTS: usize = 4;

/// Named threads per workload process: enough for 64 subtasks on one agent.
const THREADS_PER_WORKLOAD: u32 = 64;

/// Where the goals of issue 6 put the bars.
mod goals {
    /// First graph at most this much later than the sampling window (64 subtasks, 4 agents).
    pub const FIRST_GRAPH_OVERHEAD_MS: f64 = 50.0;
    /// Flink 2.3's cached flame graph throughput measured for issue 6, and the factor asked.
    pub const FLINK_FLAMEGRAPH_RPS: f64 = 800.0;
    pub const FLAMEGRAPH_FACTOR: f64 = 25.0;
    /// Flink 2.3's `/jobs/overview` throughput measured for issue 6.
    pub const FLINK_OVERVIEW_RPS: f64 = 17_600.0;
    /// Resident memory bounds under load, MiB.
    pub const COORDINATOR_RSS_MIB: f64 = 30.0;
    pub const AGENT_RSS_MIB: f64 = 15.0;
}

/// The 1-minute load average, as the kernel prints it, or "?".
fn load_average() -> String {
    load_averages().map_or_else(|| "?".to_owned(), |[one, _, _]| one)
}

fn main() -> Result<()> {
    let opts = args::Options::parse();
    for exe in ["flamegrid-coordinator", "flamegrid-agent"] {
        let path = opts.bin_dir.join(exe);
        if !path.is_file() {
            bail!(
                "{} is missing: cargo build --release -p flamegrid-coordinator -p flamegrid-agent",
                path.display()
            );
        }
    }
    // Read the Flink figures first: a broken file fails the run before minutes of measuring.
    let flink =
        flink::FlinkSide::from_options(opts.flink_results.as_deref(), opts.flink_note.as_deref())?;
    let load_start = load_average();
    let workers = processes::Workers::start()?;
    let windows = vec![
        first_graph::measure_window(&opts.bin_dir, &workers, 100, 50, opts.rounds)?,
        first_graph::measure_window(&opts.bin_dir, &workers, 20, 10, opts.short_rounds)?,
    ];
    let rest =
        rest_load::measure_rest(&opts.bin_dir, &workers, opts.wrk_rounds, &opts.wrk_duration)?;
    let loads = report::Loads {
        start: load_start,
        end: load_average(),
    };
    let text = report::report(&opts, &windows, &rest, &loads, &flink)?;
    print!("{text}");
    if let Some(path) = &opts.report {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}
