//! `flamegrid-fleet`: one real coordinator against a simulated fleet of up to thousands of
//! agents (issue 15), driven by `benches/fleet.sh`.
//!
//! A real fleet of 1,000 hosts cannot be started on one machine, but the coordinator cannot
//! tell a real agent from one that speaks the same contract. So [`sim`] runs N agents in this
//! process, each a real tonic `Sampling` server on its own loopback port that registers with
//! the coordinator's real registry and heartbeats at its default interval, and answers `Sample`
//! with synthetic stacks ([`stacks`]) once the requested window has passed. [`measure`] then
//! registers one job of one vertex of S subtasks spread round-robin over them, asks for a
//! refreshed flame graph several times, and takes its figures from both sides: what the
//! driver sees over REST, what the simulated agents saw of the run (when the requests arrived,
//! when the last answer left), and what `/proc` says of the coordinator (CPU, memory).
//!
//! The coordinator, its HTTP client and `/proc` are the `flamegrid-e2e` driver's own modules
//! (`processes`, `http`, `first_graph`), shared by path so both drivers start and ask it the
//! same way.

mod args;
mod measure;
mod sim;
mod stacks;

// The e2e driver's modules, shared rather than copied. Parts of them (real agents, workloads)
// are not used here.
#[allow(dead_code)]
#[path = "../e2e/first_graph.rs"]
mod first_graph;
#[allow(dead_code)]
#[path = "../e2e/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../e2e/processes.rs"]
mod processes;

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::time::Duration;

/// Upper bound on any wait for the coordinator, so a broken build fails the run instead of
/// hanging it. Nothing is asserted about speed; the figures are the result.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Used by the shared e2e modules for their real agents and workloads, which this driver does
/// not start.
const AGENTS: usize = 4;
const THREADS_PER_WORKLOAD: u32 = 64;

/// Raises the soft limit of open files to the hard limit: every simulated agent holds a
/// listener and connections, and the coordinator started from here inherits the limit.
/// Returns (before, after).
fn raise_file_limit() -> Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
        Ok((before, limit.rlim_cur))
    }
}

fn main() -> Result<()> {
    let opts = args::Options::parse();
    let exe = opts.bin_dir.join("flamegrid-coordinator");
    if !exe.is_file() {
        bail!(
            "{} is missing: cargo build --release -p flamegrid-coordinator",
            exe.display()
        );
    }
    let (before, after) = raise_file_limit()?;
    eprintln!("open file limit raised from {before} to {after}");
    let largest = opts.agents.iter().copied().max().unwrap_or(0) as u64;
    if after < 4 * largest + 256 {
        bail!(
            "the open file limit ({after}) is too low for {largest} agents; raise the hard limit (ulimit -Hn)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fleet")
        .build()
        .context("cannot start the simulator's runtime")?;
    let mut rows = Vec::new();
    for &subtasks in &opts.subtasks {
        for &agents in &opts.agents {
            eprintln!("== {agents} agents × {subtasks} subtasks");
            rows.push(measure::configuration(&runtime, &opts, agents, subtasks)?);
        }
    }
    let text = measure::table(&opts, &rows);
    print!("{text}");
    if let Some(path) = &opts.report {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("table written to {}", path.display());
    }
    Ok(())
}
