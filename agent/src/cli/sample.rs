//! `flamegrid-agent sample`: one-shot local sampling, like `eu-stack -p` or `py-spy dump` but
//! N samples, folded or JSON output. No coordinator, no allow-list: the kernel's own ptrace
//! permission checks apply, and a refusal is explained in one line.
//!
//! ```text
//! flamegrid-agent sample --pid 4242 --samples 100 --interval-ms 10 --type on-cpu > cpu.folded
//! inferno-flamegraph < cpu.folded > cpu.svg
//! ```

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use flamegrid_model::{GraphType, SampleSet};
use flamegrid_sampler::selection::{AccessPolicy, ProcessRef, ThreadSelector};
use flamegrid_sampler::{RunStats, Sampler, SamplerOptions};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Most samples one CLI run takes (100 000 samples at 0 ms is a few seconds to minutes).
pub const MAX_SAMPLES: u32 = 100_000;
/// Longest interval between samples, ms.
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// Deepest stack kept.
pub const MAX_DEPTH: u32 = 1024;

/// Which samples to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum TypeArg {
    /// Every sample.
    #[value(alias = "FULL")]
    Full,
    /// Samples of running/runnable threads (state RUNNABLE).
    #[value(alias = "on_cpu", alias = "ON_CPU")]
    OnCpu,
    /// Samples of waiting threads (WAITING, TIMED_WAITING, BLOCKED).
    #[value(alias = "off_cpu", alias = "OFF_CPU")]
    OffCpu,
}

impl From<TypeArg> for GraphType {
    fn from(t: TypeArg) -> GraphType {
        match t {
            TypeArg::Full => GraphType::Full,
            TypeArg::OnCpu => GraphType::OnCpu,
            TypeArg::OffCpu => GraphType::OffCpu,
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// `frame;frame;...;frame COUNT` per distinct stack, root first (inferno/flamegraph.pl input).
    Folded,
    /// Every sample with thread, state, timestamp and frames.
    Json,
}

/// Flags of `flamegrid-agent sample` (DESIGN.md). Every flag also reads `FLAMEGRID_<FLAG>`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Process to sample.
    #[arg(long, env = "FLAMEGRID_PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: u32,

    /// Sample only this thread id (repeatable; with --thread-name, threads must match both).
    #[arg(long = "tid", env = "FLAMEGRID_TID", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub tids: Vec<u32>,

    /// Sample only threads whose name (/proc/PID/task/TID/comm) matches this regex as a whole.
    #[arg(long, env = "FLAMEGRID_THREAD_NAME")]
    pub thread_name: Option<String>,

    /// Samples per thread, 1..=100000.
    #[arg(long, env = "FLAMEGRID_SAMPLES", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_SAMPLES as i64))]
    pub samples: u32,

    /// Milliseconds between samples, 0..=60000 (0: back to back).
    #[arg(long, env = "FLAMEGRID_INTERVAL_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=MAX_INTERVAL_MS))]
    pub interval_ms: u64,

    /// Frames kept per stack (the innermost ones), 1..=1024.
    #[arg(long, env = "FLAMEGRID_MAX_DEPTH", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=MAX_DEPTH as i64))]
    pub max_depth: u32,

    /// Which samples to print: full (all), on-cpu (RUNNABLE), off-cpu (waiting/blocked).
    #[arg(long = "type", env = "FLAMEGRID_TYPE", value_enum, ignore_case = true, default_value_t = TypeArg::Full)]
    pub graph_type: TypeArg,

    /// Output format.
    #[arg(long, env = "FLAMEGRID_FORMAT", value_enum, ignore_case = true, default_value_t = FormatArg::Folded)]
    pub format: FormatArg,

    /// How stacks are read: auto (perf events where allowed, else ptrace), perf (running
    /// threads are never stopped; needs CAP_PERFMON or root) or ptrace (every sample stops each
    /// thread briefly). The JSON output's "sampler" field (and --stats) says which was used.
    #[arg(long, env = "FLAMEGRID_SAMPLER", value_enum, ignore_case = true, default_value_t = super::SamplerArg::Auto)]
    pub sampler: super::SamplerArg,

    /// Most memory the perf events' ring buffers may take, MiB (1..=65536; each thread sampled
    /// with perf maps about 1 MiB). Threads beyond it are read with ptrace, logged once with the
    /// reason. Without CAP_IPC_LOCK the kernel's own limit applies too (kernel.
    /// perf_event_mlock_kb per CPU plus RLIMIT_MEMLOCK) and the cap is lowered to it.
    #[arg(long, env = "FLAMEGRID_PERF_RING_MEMORY_MIB", value_name = "MIB",
          default_value_t = super::DEFAULT_PERF_RING_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub perf_ring_memory_mib: u32,

    /// Print timings to stderr: threads, per-thread stop time (median/p99 µs), snapshot time per
    /// round, unwind and symbolization time. Hidden: not one of DESIGN.md's flags, kept for
    /// the benchmarks (`benches/`), which read these lines.
    #[arg(long, env = "FLAMEGRID_STATS", hide = true)]
    pub stats: bool,
}

/// Runs the subcommand.
pub fn main(args: SampleArgs) -> anyhow::Result<ExitCode> {
    // Logs (off unless RUST_LOG asks) go to stderr; stdout carries only the samples.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let thread_name = match &args.thread_name {
        Some(p) if !p.is_empty() => Some(ThreadSelector::compile_thread_name(p)?),
        _ => None,
    };
    let mut tids = args.tids.clone();
    tids.sort_unstable();
    tids.dedup();
    let selector = ThreadSelector {
        process: ProcessRef::Pid(args.pid),
        tids,
        thread_name,
    };
    let sampler = Sampler::with_perf_ring_memory(
        args.sampler.into(),
        (args.perf_ring_memory_mib as usize) << 20,
    )?;
    let opts = SamplerOptions {
        num_samples: args.samples,
        delay: Duration::from_millis(args.interval_ms),
        max_depth: args.max_depth,
        kernel_stacks: false,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let (run, stats) = sampler.sample_with_stats(
        &[("cli".to_string(), selector)],
        &AccessPolicy::unrestricted(),
        &opts,
    );
    let Some((_, result)) = run.subtasks.into_iter().next() else {
        anyhow::bail!("the sampler returned no result");
    };
    let set = result?;
    // Threads the kernel refused while others were sampled: the output is still useful, but
    // say (one line) what it lacks and why.
    for (_, warning) in &run.warnings {
        eprintln!("warning: {warning}");
    }
    if args.stats {
        print_stats(&stats, &set);
    }
    let ty: GraphType = args.graph_type.into();
    let text = match args.format {
        FormatArg::Folded => flamegrid_model::folded::to_folded([&set], ty),
        FormatArg::Json => json_output(&set, ty, args.pid, (run.start_ms, run.end_ms), &stats)?,
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `| head` closing the pipe is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing the output"),
    }
}

fn json_output(
    set: &SampleSet,
    ty: GraphType,
    pid: u32,
    (start_ms, end_ms): (i64, i64),
    stats: &RunStats,
) -> anyhow::Result<String> {
    let samples: Vec<serde_json::Value> = set
        .samples
        .iter()
        .filter(|s| ty.accepts(s.state))
        .map(|s| {
            let thread = set.thread_of(s);
            serde_json::json!({
                "tid": thread.map(|t| t.tid),
                "thread": thread.map(|t| t.name.as_str()),
                "state": s.state,
                "timestamp_ms": s.timestamp_ms,
                "truncated": s.truncated,
                "frames": set.stack_frames(s).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "pid": pid,
        "type": ty.as_str(),
        "sampler": stats.backend,
        "lost_records": stats.lost_records,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "samples": samples,
    });
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}

fn print_stats(stats: &RunStats, set: &SampleSet) {
    let mean = |d: &[Duration]| {
        if d.is_empty() {
            0.0
        } else {
            d.iter().map(|d| d.as_secs_f64()).sum::<f64>() / d.len() as f64 * 1e3
        }
    };
    let median_ms = |d: &[Duration]| {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    eprintln!("sampler: {}", stats.backend);
    eprintln!("threads: {}", stats.threads);
    eprintln!("rounds: {}", stats.rounds);
    eprintln!("samples: {}", set.samples.len());
    eprintln!(
        "stop_us: median {:.1} p90 {:.1} p99 {:.1} max {:.1} (n={})",
        stats.stop_quantile_us(0.5),
        stats.stop_quantile_us(0.9),
        stats.stop_quantile_us(0.99),
        stats.stop_quantile_us(1.0),
        stats.stop_ns.len()
    );
    eprintln!(
        "snapshot_ms: median {:.3} mean {:.3} first {:.3}",
        median_ms(&stats.snapshot_time),
        mean(&stats.snapshot_time),
        stats
            .snapshot_time
            .first()
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    eprintln!(
        "round_ms: median {:.3} mean {:.3} (incl. /proc reads)",
        median_ms(&stats.round_time),
        mean(&stats.round_time)
    );
    eprintln!(
        "module_load_ms: {:.3}",
        stats.module_load.as_secs_f64() * 1e3
    );
    eprintln!("unwind_ms: {:.3}", stats.unwind.as_secs_f64() * 1e3);
    eprintln!("symbolize_ms: {:.3}", stats.symbolize.as_secs_f64() * 1e3);
    eprintln!("not_stopped: {}", stats.not_stopped);
    eprintln!("perf_reads: {}", stats.perf_reads);
    eprintln!("lost_records: {}", stats.lost_records);
}
