//! `flamegrid-compare`: flamegrid side by side with eu-stack and gdb, on the same processes, in
//! one run. `benches/compare.sh` builds everything and runs this; it prints a Markdown report.
//!
//! Shared 2-vCPU machines are noisy, so every comparison here follows the same discipline:
//! all tools run against the *same* target process, in alternating rounds (the order rotates
//! every round so no tool always runs right after another one), and the report gives medians
//! and ratios between tools measured side by side, never a lone absolute time.
//!
//! What it measures:
//! 1. snapshot latency of whole 16/64/256-thread processes: `flamegrid-agent sample --samples 1`
//!    (cold one-shot), a warm snapshot (per-round time from `--samples N --interval-ms 0
//!    --stats`, and a whole `Sampler::sample` call on a warm in-process sampler, which is what a
//!    running agent does per request), `eu-stack -p`, `eu-stack -i -p`, `gdb -batch -p PID -ex
//!    'thread apply all bt'`;
//! 2. how long each thread is stopped (median, p90, p99) from `--stats`;
//! 3. throughput a spinning target loses while sampled at 20 Hz and 100 Hz, per wall-clock
//!    second and per second of its own CPU time (the second is immune to the CPU share a busy
//!    machine's scheduler happens to grant the spinner), with the spinner and the sampler pinned
//!    to different CPUs where there are two, plus the direct cost: the fraction of wall time
//!    each thread was held stopped (from the sampler's own stop times, free of rate noise).
//!
//! Sections 1-3 measure the ptrace backend (`--sampler ptrace`). Section 4 puts the backends
//! side by side with `perf record --call-graph dwarf` on the same spinning target: voluntary
//! context switches added per 100 samples, how long the running thread is held, the spinner's
//! throughput at 100 Hz and 1 000 Hz, and the sampler's CPU time per sample.

use anyhow::{Context as _, bail};
use clap::Parser;
use flamegrid_benches::procfs::{Machine, load_averages, thread_cpu_ns};
use flamegrid_benches::stats::{median, quantile};
use flamegrid_benches::{
    SNAPSHOT_SIZES, positive_count, snapshot_mix, throughput_mix, whole_process,
};
use flamegrid_sampler::selection::AccessPolicy;
use flamegrid_sampler::selection::{ProcessRef, ThreadSelector};
use flamegrid_sampler::{Backend, RunStats, Sampler, SamplerOptions};
use flamegrid_workloads::{Mix, RunningWorkload, Workload, spawn};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The workload every comparison samples: C built without frame pointers, so every tool has
/// to unwind through DWARF CFI (the common case for distribution-built code).
const TARGET: Workload = Workload::CNoFramePointers;

/// flamegrid's sampler side by side with eu-stack and gdb on the same processes, in
/// alternating rounds: snapshot latency, how long each thread is stopped, and what sampling
/// costs a spinning target. Prints a Markdown report on stdout (progress on stderr); normally
/// run by `benches/compare.sh`, which builds the release agent first.
#[derive(Debug, Parser)]
#[command(name = "flamegrid-compare", version)]
struct Args {
    /// The release `flamegrid-agent` to time (its `sample` one-shots and `--stats` runs).
    #[arg(
        long,
        env = "FLAMEGRID_AGENT",
        value_name = "PATH",
        default_value = "target/release/flamegrid-agent"
    )]
    agent: PathBuf,

    /// Alternating rounds per snapshot comparison (all six tools once per round)
    /// [default: 7, 3 with --quick].
    #[arg(long, env = "FLAMEGRID_ROUNDS", value_name = "N", value_parser = positive_count)]
    rounds: Option<usize>,

    /// Rounds of the throughput comparison, each an unsampled, a 20 Hz and a 100 Hz window
    /// [default: 10, 3 with --quick].
    #[arg(long, env = "FLAMEGRID_THROUGHPUT_ROUNDS", value_name = "N",
          value_parser = positive_count)]
    throughput_rounds: Option<usize>,

    /// One-second rate readings per throughput window [default: 2].
    #[arg(long, env = "FLAMEGRID_WINDOW_SECS", value_name = "S", value_parser = positive_count)]
    window_secs: Option<usize>,

    /// The sections to run, comma-separated: snapshot (latency against eu-stack and gdb), stop
    /// (how long each thread is stopped), throughput (cost to a spinning target), backends
    /// (ptrace vs perf events vs `perf record --call-graph dwarf`).
    #[arg(
        long,
        env = "FLAMEGRID_SECTIONS",
        value_name = "LIST",
        value_enum,
        value_delimiter = ',',
        default_value = "snapshot,stop,throughput,backends"
    )]
    sections: Vec<Section>,

    /// Do not pin the throughput spinner to the last CPU and this process (the sampler) to
    /// CPU 0; by default they are pinned apart so the loss measured is the sampling's own and
    /// not two threads competing for one CPU.
    #[arg(long, env = "FLAMEGRID_NO_PIN")]
    no_pin: bool,

    /// Fewer rounds, for a smoke test: 3 snapshot rounds and 3 throughput rounds. Explicit
    /// --rounds, --throughput-rounds or --window-secs still win.
    #[arg(long, env = "FLAMEGRID_QUICK")]
    quick: bool,
}

/// A part of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Snapshot,
    Stop,
    Throughput,
    Backends,
}

/// The settings of a run, once `--quick` and the defaults are resolved.
struct Settings {
    agent: PathBuf,
    /// Alternating rounds per snapshot comparison.
    rounds: usize,
    /// Rounds of the throughput comparison (each: unsampled, 20 Hz, 100 Hz).
    throughput_rounds: usize,
    /// Rate readings (seconds) per throughput window.
    window_secs: usize,
    /// Sections to run.
    sections: Vec<Section>,
    /// Pin the throughput spinner to the last CPU and this process (the sampler) to CPU 0, so
    /// the two do not compete for one CPU and the measured loss is the sampling's own.
    pin: bool,
}

impl Settings {
    fn from_args(args: Args) -> anyhow::Result<Settings> {
        let settings = Settings {
            agent: args.agent,
            rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 7 }),
            throughput_rounds: args
                .throughput_rounds
                .unwrap_or(if args.quick { 3 } else { 10 }),
            window_secs: args.window_secs.unwrap_or(2),
            sections: args.sections,
            pin: !args.no_pin,
        };
        if !settings.agent.is_file() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p flamegrid-agent`",
                settings.agent.display()
            );
        }
        Ok(settings)
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_args(Args::parse())?;
    let mut report = String::new();
    let started = Instant::now();
    machine_section(&mut report, &settings)?;
    let wanted = |section: Section| settings.sections.contains(&section);
    if wanted(Section::Snapshot) {
        eprintln!("[compare] snapshot latency ...");
        snapshot_section(&mut report, &settings)?;
    }
    if wanted(Section::Stop) {
        eprintln!("[compare] stop times ...");
        stop_time_section(&mut report, &settings)?;
    }
    if wanted(Section::Throughput) {
        eprintln!("[compare] throughput ...");
        throughput_section(&mut report, &settings)?;
    }
    if wanted(Section::Backends) {
        eprintln!("[compare] backends: ptrace vs perf events vs perf record ...");
        backends_section(&mut report, &settings)?;
    }
    writeln!(
        report,
        "\n_Whole run: {:.0} s; load average at the end: {}._",
        started.elapsed().as_secs_f64(),
        load_average()
    )?;
    print!("{report}");
    Ok(())
}

// ---- helpers -------------------------------------------------------------------------------

/// The 1, 5 and 15-minute load averages, or "?".
fn load_average() -> String {
    load_averages().map_or_else(|| "?".to_owned(), |l| l.join(" "))
}

/// First line of `cmd --version`, or "not installed".
fn tool_version(cmd: &str) -> String {
    Command::new(cmd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "not installed".to_owned())
}

/// A command to time: stdout discarded, stderr captured (the agent's `--stats` go there).
/// debuginfod is switched off so no tool waits on the network.
fn command(program: &std::path::Path, args: &[String]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env("DEBUGINFOD_URLS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs `c` to completion: (wall time, stderr). A failing tool is an error: its time would
/// measure the failure.
fn timed(c: &mut Command) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{c:?} failed ({}): {}", out.status, stderr.trim());
    }
    Ok((wall, stderr))
}

/// Finds `key: median X` style values in the agent's `--stats` output.
fn stat_value(stats: &str, line_key: &str, field: &str) -> Option<f64> {
    let line = stats.lines().find(|l| l.starts_with(line_key))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == field {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "–".to_owned()
    } else if v < 1.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ratio(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        "–".to_owned()
    } else if v >= 10.0 {
        format!("{v:.0}×")
    } else {
        format!("{v:.1}×")
    }
}

// ---- machine -------------------------------------------------------------------------------

fn machine_section(report: &mut String, settings: &Settings) -> anyhow::Result<()> {
    let machine = Machine::read();
    let cpu = machine.cpu_model.unwrap_or_else(|| "?".to_owned());
    let (cpus, kernel) = (machine.cpus, machine.kernel);
    writeln!(report, "# flamegrid sampler: side-by-side comparison\n")?;
    writeln!(report, "| | |\n|---|---|")?;
    writeln!(
        report,
        "| machine | {cpus} vCPU, {cpu}, Linux {} |",
        kernel.trim()
    )?;
    writeln!(report, "| load average at start | {} |", load_average())?;
    writeln!(
        report,
        "| flamegrid-agent | `{}` |",
        settings.agent.display()
    )?;
    writeln!(report, "| eu-stack | {} |", tool_version("eu-stack"))?;
    writeln!(report, "| gdb | {} |", tool_version("gdb"))?;
    writeln!(
        report,
        "| target | `{}` (C, `-O2 -fomit-frame-pointer`): 1 spinning thread, the rest sleeping, \
         waiting on a condition variable or blocked on a mutex |",
        TARGET
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    )?;
    writeln!(
        report,
        "| method | {} alternating rounds per size (order rotated each round); medians; \
         ratios = other tool's median / flamegrid's median |",
        settings.rounds
    )?;
    Ok(())
}

// ---- 1. snapshot latency -------------------------------------------------------------------

/// The contenders of the snapshot comparison, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    FlamegridCold,
    FlamegridWarmRound,
    FlamegridWarmCall,
    EuStack,
    EuStackInline,
    Gdb,
}

impl Tool {
    const ALL: [Tool; 6] = [
        Tool::FlamegridCold,
        Tool::FlamegridWarmRound,
        Tool::FlamegridWarmCall,
        Tool::EuStack,
        Tool::EuStackInline,
        Tool::Gdb,
    ];

    fn label(self) -> &'static str {
        match self {
            Tool::FlamegridCold => "`flamegrid-agent sample --samples 1` (cold one-shot)",
            Tool::FlamegridWarmRound => {
                "flamegrid warm round (`--samples 20 --interval-ms 0 --stats`, round median)"
            }
            Tool::FlamegridWarmCall => {
                "flamegrid warm `Sampler::sample` (1 sample, cached symbols, as in the agent)"
            }
            Tool::EuStack => "`eu-stack -p PID`",
            Tool::EuStackInline => "`eu-stack -i -p PID`",
            Tool::Gdb => "`gdb -batch -p PID -ex 'thread apply all bt'`",
        }
    }
}

/// Measures one tool once against `pid`, in milliseconds.
fn measure(tool: Tool, pid: u32, settings: &Settings, warm: &Sampler) -> anyhow::Result<f64> {
    let pid_s = pid.to_string();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    match tool {
        Tool::FlamegridCold => {
            let (wall, _) = timed(&mut command(
                &settings.agent,
                &s(&[
                    "sample",
                    "--pid",
                    &pid_s,
                    "--samples",
                    "1",
                    "--sampler",
                    "ptrace",
                ]),
            ))?;
            Ok(ms(wall))
        }
        Tool::FlamegridWarmRound => {
            let (_, stats) = timed(&mut command(
                &settings.agent,
                &s(&[
                    "sample",
                    "--pid",
                    &pid_s,
                    "--samples",
                    "20",
                    "--interval-ms",
                    "0",
                    "--stats",
                    "--sampler",
                    "ptrace",
                ]),
            ))?;
            stat_value(&stats, "round_ms:", "median")
                .context("no round_ms in the agent's --stats output")
        }
        Tool::FlamegridWarmCall => {
            let opts = SamplerOptions {
                num_samples: 1,
                ..SamplerOptions::default()
            };
            let mut times = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                let run = warm.sample(&whole_process(pid), &AccessPolicy::unrestricted(), &opts);
                times.push(ms(start.elapsed()));
                if let Some((_, Err(e))) = run.subtasks.first() {
                    bail!("in-process sampling of {pid} failed: {e}");
                }
            }
            Ok(median(&times))
        }
        Tool::EuStack => Ok(ms(timed(&mut command(
            "eu-stack".as_ref(),
            &s(&["-p", &pid_s]),
        ))?
        .0)),
        Tool::EuStackInline => Ok(ms(timed(&mut command(
            "eu-stack".as_ref(),
            &s(&["-i", "-p", &pid_s]),
        ))?
        .0)),
        Tool::Gdb => Ok(ms(timed(&mut command(
            "gdb".as_ref(),
            &s(&["-batch", "-p", &pid_s, "-ex", "thread apply all bt"]),
        ))?
        .0)),
    }
}

fn snapshot_section(report: &mut String, settings: &Settings) -> anyhow::Result<()> {
    writeln!(
        report,
        "\n## 1. Snapshot latency (whole process, ms, median)\n"
    )?;
    let warm = Sampler::with_backend(Backend::Ptrace).context("starting the in-process sampler")?;
    let mut results: BTreeMap<(u32, Tool), Vec<f64>> = BTreeMap::new();
    let mut stopped_after = Vec::new();
    for threads in SNAPSHOT_SIZES {
        let target = spawn(TARGET, &snapshot_mix(threads)).context("starting the target")?;
        let pid = target.pid();
        eprintln!("[compare]   {threads} threads (pid {pid})");
        // One untimed pass: page cache, and the warm sampler's caches.
        for tool in Tool::ALL {
            measure(tool, pid, settings, &warm)?;
        }
        for round in 0..settings.rounds {
            for k in 0..Tool::ALL.len() {
                let tool = Tool::ALL[(k + round) % Tool::ALL.len()];
                let v = measure(tool, pid, settings, &warm)?;
                results.entry((threads, tool)).or_default().push(v);
            }
        }
        stopped_after.extend(target.stopped_threads());
    }

    write!(report, "| tool |")?;
    for threads in SNAPSHOT_SIZES {
        write!(report, " {threads} threads |")?;
    }
    writeln!(report, "\n|---|{}", "---|".repeat(SNAPSHOT_SIZES.len()))?;
    let med = |threads: u32, tool: Tool| {
        results
            .get(&(threads, tool))
            .map_or(f64::NAN, |v| median(v))
    };
    for tool in Tool::ALL {
        write!(report, "| {} |", tool.label())?;
        for threads in SNAPSHOT_SIZES {
            write!(report, " {} |", fmt_ms(med(threads, tool)))?;
        }
        writeln!(report)?;
    }

    writeln!(
        report,
        "\nRatios (how many times faster flamegrid is, medians of the same run):\n"
    )?;
    write!(report, "| comparison |")?;
    for threads in SNAPSHOT_SIZES {
        write!(report, " {threads} threads |")?;
    }
    writeln!(report, "\n|---|{}", "---|".repeat(SNAPSHOT_SIZES.len()))?;
    let ratios: [(&str, Tool, Tool); 6] = [
        (
            "`eu-stack -p` / flamegrid warm call (goal ≥ 20×)",
            Tool::EuStack,
            Tool::FlamegridWarmCall,
        ),
        (
            "`eu-stack -p` / flamegrid warm round",
            Tool::EuStack,
            Tool::FlamegridWarmRound,
        ),
        (
            "gdb / flamegrid warm call (goal ≥ 100×)",
            Tool::Gdb,
            Tool::FlamegridWarmCall,
        ),
        (
            "`eu-stack -i -p` / flamegrid cold one-shot (goal ≥ 1×)",
            Tool::EuStackInline,
            Tool::FlamegridCold,
        ),
        (
            "`eu-stack -p` / flamegrid cold one-shot",
            Tool::EuStack,
            Tool::FlamegridCold,
        ),
        (
            "gdb / flamegrid cold one-shot",
            Tool::Gdb,
            Tool::FlamegridCold,
        ),
    ];
    for (label, other, ours) in ratios {
        write!(report, "| {label} |")?;
        for threads in SNAPSHOT_SIZES {
            write!(
                report,
                " {} |",
                fmt_ratio(med(threads, other) / med(threads, ours))
            )?;
        }
        writeln!(report)?;
    }
    writeln!(
        report,
        "\nThe cold one-shot includes process start, loading unwind tables and symbolizing \
         (with inlined frames, like `eu-stack -i`). The warm call is what a running agent pays \
         per single-sample request; the warm round excludes symbolization (done once per run). \
         Threads left stopped after all tools ran: {}.",
        if stopped_after.is_empty() {
            "none".to_owned()
        } else {
            format!("{stopped_after:?}")
        }
    )?;
    Ok(())
}

// ---- 2. stop times -------------------------------------------------------------------------

fn stop_time_section(report: &mut String, settings: &Settings) -> anyhow::Result<()> {
    writeln!(
        report,
        "\n## 2. Time each thread is stopped (µs, from `--stats`)\n"
    )?;
    writeln!(
        report,
        "`flamegrid-agent sample --pid PID --samples 200 --interval-ms 10 --stats`, 3 runs per \
         target; each cell is the median over the runs of that run's statistic.\n"
    )?;
    writeln!(
        report,
        "| target | threads | median | p90 | p99 | max | not stopped in time |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    let quiet = Mix {
        report_rate: false,
        ..throughput_mix()
    };
    let targets: [(&str, Mix); 3] = [
        ("quiet: 1 spinning + 7 blocked", quiet),
        ("64 threads (1 spinning)", snapshot_mix(64)),
        (
            "busy: 3 spinning + 5 blocked on 2 vCPUs",
            Mix {
                spin: 3,
                sleep: 2,
                wait: 2,
                lock: 1,
                churn: 0,
                report_rate: false,
            },
        ),
    ];
    for (label, mix) in targets {
        let target = spawn(TARGET, &mix)?;
        let pid = target.pid().to_string();
        let mut cols: [Vec<f64>; 5] = Default::default();
        for _ in 0..3 {
            let args: Vec<String> = [
                "sample",
                "--pid",
                &pid,
                "--samples",
                "200",
                "--interval-ms",
                "10",
                "--stats",
                "--sampler",
                "ptrace",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let (_, stats) = timed(&mut command(&settings.agent, &args))?;
            for (i, field) in ["median", "p90", "p99", "max"].iter().enumerate() {
                cols[i]
                    .push(stat_value(&stats, "stop_us:", field).context("no stop_us in --stats")?);
            }
            cols[4].push(stat_value(&stats, "not_stopped:", "not_stopped:").unwrap_or(f64::NAN));
        }
        writeln!(
            report,
            "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
            mix.steady_threads(),
            median(&cols[0]),
            median(&cols[1]),
            median(&cols[2]),
            median(&cols[3]),
            median(&cols[4]),
        )?;
        let stopped = target.stopped_threads();
        if !stopped.is_empty() {
            writeln!(report, "\n**threads left stopped: {stopped:?}**\n")?;
        }
    }
    Ok(())
}

// ---- 3. throughput -------------------------------------------------------------------------

/// One measurement window of the throughput target.
struct Window {
    /// The spinner's iterations per wall-clock second, one per reading.
    rates: Vec<f64>,
    /// Iterations per second of the spinner's own CPU time over the window: what sampling
    /// costs the code itself (interrupts, kernel entries, cache pollution), independent of how
    /// much CPU the scheduler gives the spinner on a shared machine.
    per_cpu_second: f64,
    /// Fraction of the window the spinner was on a CPU.
    cpu_share: f64,
}

/// Reads `secs` rate lines after discarding the one in progress (it straddles the change of
/// condition).
fn read_window(target: &mut RunningWorkload, spinner: u32, secs: usize) -> anyhow::Result<Window> {
    let pid = target.pid();
    target
        .next_rate()
        .context("the target stopped reporting its rate")?;
    let (cpu0, t0) = (thread_cpu_ns(pid, spinner)?, Instant::now());
    let mut rates = Vec::with_capacity(secs);
    for _ in 0..secs {
        rates.push(
            target
                .next_rate()
                .context("the target stopped reporting its rate")? as f64,
        );
    }
    let (cpu1, wall) = (thread_cpu_ns(pid, spinner)?, t0.elapsed());
    let cpu_s = (cpu1 - cpu0) / 1e9;
    Ok(Window {
        per_cpu_second: rates.iter().sum::<f64>() / cpu_s.max(1e-9),
        cpu_share: cpu_s / wall.as_secs_f64(),
        rates,
    })
}

/// Samples every thread of `pid` at `hz` on a background thread while `during` runs.
fn while_sampling<T>(
    sampler: &Sampler,
    pid: u32,
    hz: u32,
    during: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, RunStats)> {
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = SamplerOptions {
        num_samples: 100_000,
        delay: Duration::from_micros(1_000_000 / u64::from(hz)),
        max_depth: 100,
        kernel_stacks: false,
        cancel: Arc::clone(&cancel),
    };
    let worker = {
        let sampler = sampler.clone();
        std::thread::spawn(move || {
            sampler.sample_with_stats(&whole_process(pid), &AccessPolicy::unrestricted(), &opts)
        })
    };
    let result = during();
    cancel.store(true, Ordering::SeqCst);
    let (run, stats) = match worker.join() {
        Ok(r) => r,
        Err(_) => bail!("the sampling thread panicked"),
    };
    if let Some((_, Err(e))) = run.subtasks.first() {
        bail!("sampling at {hz} Hz failed: {e}");
    }
    Ok((result?, stats))
}

/// Pins `tid` (a thread of any process) to `cpus` (a `taskset` CPU list), with `all` pinning
/// every thread of the process `tid` leads (threads created later inherit it).
fn pin(tid: u32, cpus: &str, all: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new("taskset");
    if all {
        cmd.arg("-a");
    }
    let status = cmd
        .args(["-p", "-c", cpus, &tid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin the throughput target")?;
    if !status.success() {
        bail!("taskset -p -c {cpus} {tid} failed ({status})");
    }
    Ok(())
}

/// The throughput target of sections 3 and 4, started, with its spinner thread.
struct SpinnerTarget {
    target: RunningWorkload,
    pid: u32,
    /// The `spin-0` thread.
    spinner: u32,
    /// CPUs of this machine.
    cpus: usize,
    /// Whether the spinner runs pinned to the last CPU and this process (the samplers) to
    /// CPU 0 (`--pin`, and at least two CPUs).
    pinned: bool,
}

/// Starts the throughput target and pins it apart from the samplers when asked. Called before
/// any sampler exists, so their threads inherit CPU 0.
fn spinner_target(settings: &Settings) -> anyhow::Result<SpinnerTarget> {
    let target = spawn(TARGET, &throughput_mix())?;
    let pid = target.pid();
    let spinner = target
        .tid_of("spin-0")
        .context("the throughput target has no spin-0 thread")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = settings.pin && cpus >= 2;
    if pinned {
        pin(std::process::id(), "0", true)?;
        pin(spinner, &(cpus - 1).to_string(), false)?;
    }
    Ok(SpinnerTarget {
        target,
        pid,
        spinner,
        cpus,
        pinned,
    })
}

fn throughput_section(report: &mut String, settings: &Settings) -> anyhow::Result<()> {
    writeln!(
        report,
        "\n## 3. Cost to the target: spinner throughput while sampled\n"
    )?;
    let SpinnerTarget {
        mut target,
        pid,
        spinner,
        cpus,
        pinned,
    } = spinner_target(settings)?;
    let sampler = Sampler::with_backend(Backend::Ptrace)?;
    // Conditions: 0 = unsampled, else the sampling rate in Hz.
    let conditions = [0u32, 20, 100];
    let mut rates: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut shares: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    // Per round: each sampled condition's median relative to the same round's unsampled
    // median, per wall second and per CPU second. Pairing within a round cancels the slow
    // drift of a shared machine's load.
    let mut paired_wall: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut paired_cpu: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut rounds_taken: BTreeMap<u32, u32> = BTreeMap::new();
    // Per sampled window: the mean fraction of wall time a sampled thread was held stopped
    // (sum of every stop ÷ threads ÷ window), the part of the loss that is certain.
    let mut held: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for round in 0..settings.throughput_rounds {
        let mut windows: BTreeMap<u32, Window> = BTreeMap::new();
        for k in 0..conditions.len() {
            let hz = conditions[(k + round) % conditions.len()];
            let window = if hz == 0 {
                read_window(&mut target, spinner, settings.window_secs)?
            } else {
                let started = Instant::now();
                let (w, stats) = while_sampling(&sampler, pid, hz, || {
                    read_window(&mut target, spinner, settings.window_secs)
                })?;
                let wall_ns = started.elapsed().as_nanos() as f64;
                *rounds_taken.entry(hz).or_default() += stats.rounds;
                let stopped_ns: u64 = stats.stop_ns.iter().sum();
                held.entry(hz)
                    .or_default()
                    .push(stopped_ns as f64 / stats.threads.max(1) as f64 / wall_ns * 100.0);
                w
            };
            rates.entry(hz).or_default().extend(&window.rates);
            shares.entry(hz).or_default().push(window.cpu_share);
            windows.insert(hz, window);
        }
        let base = &windows[&0];
        for hz in &conditions[1..] {
            let w = &windows[hz];
            paired_wall
                .entry(*hz)
                .or_default()
                .push((median(&w.rates) / median(&base.rates) - 1.0) * 100.0);
            paired_cpu
                .entry(*hz)
                .or_default()
                .push((w.per_cpu_second / base.per_cpu_second - 1.0) * 100.0);
        }
    }
    let base = median(&rates[&0]);
    writeln!(
        report,
        "Target: 1 spinning thread reporting its loop iterations per second, plus 7 blocked \
         threads; all {} threads sampled in-process (`Sampler`, as the agent does) at 20 Hz and \
         100 Hz. {} rounds × (unsampled, 20 Hz, 100 Hz; order rotated) × {} one-second \
         readings. Changes are medians over rounds of (condition ÷ the same round's unsampled \
         figure − 1), per wall-clock second (what the goal is about) and per second of the \
         spinner's own CPU time (what the sampling costs the code it interrupts, independent of \
         the CPU share the scheduler gives the spinner). {} The last column is the direct \
         cost: every stop's duration (interrupt to detach, an upper bound) summed, divided by \
         the threads and the window: the share of wall time a sampled thread could not run.\n",
        throughput_mix().steady_threads(),
        settings.throughput_rounds,
        settings.window_secs,
        if pinned {
            format!(
                "The spinner was pinned to CPU {} and the sampler to CPU 0.",
                cpus - 1
            )
        } else {
            "Nothing was pinned.".to_owned()
        }
    )?;
    writeln!(
        report,
        "| condition | iterations / wall s | change / wall s (p25 … p75) | \
         change / CPU s (p25 … p75) | spinner CPU share | goal | held stopped (median, max) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    for hz in conditions {
        let m = median(&rates[&hz]);
        let share = median(&shares[&hz]) * 100.0;
        if hz == 0 {
            writeln!(report, "| unsampled | {m:.0} | – | – | {share:.0} % | | |")?;
            continue;
        }
        let (wall, cpu) = (&paired_wall[&hz], &paired_cpu[&hz]);
        let goal = if hz <= 20 { "loss < 1 %" } else { "loss < 3 %" };
        writeln!(
            report,
            "| sampled at {hz} Hz | {m:.0} | {:+.2} % ({:+.1} … {:+.1}) | {:+.2} % ({:+.1} … {:+.1}) \
             | {share:.0} % | {goal} | {:.3} % ({:.3} %) |",
            median(wall),
            quantile(wall, 0.25),
            quantile(wall, 0.75),
            median(cpu),
            quantile(cpu, 0.25),
            quantile(cpu, 0.75),
            median(&held[&hz]),
            quantile(&held[&hz], 1.0),
        )?;
    }
    let unsampled = &rates[&0];
    writeln!(
        report,
        "\nNoise floor: unsampled one-second readings range p10 … p90 = {:+.1} % … {:+.1} % \
         around their median; a change inside that band is not measurable on this machine. \
         When the machine is busier than its cores (see the load average), the spinner's wall \
         rate follows the CPU share the scheduler grants it, and a thread that is briefly \
         stopped 20–100 times a second is treated as an interactive sleeper and may get a \
         *larger* share; the per-CPU-second column is the cost that remains. Sampling rounds \
         taken: {}.",
        (quantile(unsampled, 0.1) / base - 1.0) * 100.0,
        (quantile(unsampled, 0.9) / base - 1.0) * 100.0,
        rounds_taken
            .iter()
            .map(|(hz, n)| format!("{n} at {hz} Hz"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let stopped = target.stopped_threads();
    if !stopped.is_empty() {
        writeln!(report, "\n**threads left stopped: {stopped:?}**")?;
    }
    Ok(())
}

// ---- 4. backends: ptrace vs perf events vs perf record ----------------------------------

/// Who samples in a backends condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sampling {
    /// Nobody (the baseline).
    Unsampled,
    /// flamegrid's sampler with this backend.
    Flamegrid(Backend),
    /// `perf record --call-graph dwarf`.
    PerfRecord,
}

impl Sampling {
    fn label(self) -> String {
        match self {
            Sampling::Unsampled => "unsampled".into(),
            Sampling::Flamegrid(b) => format!("flamegrid `--sampler {}`", b.as_str()),
            Sampling::PerfRecord => "`perf record --call-graph dwarf`".into(),
        }
    }
}

/// CPU time of every thread of process `pid` (ns), from each task's `schedstat`.
fn process_cpu_ns(pid: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: u32 = entry?.file_name().to_string_lossy().parse()?;
        // A thread that exited between the listing and the read no longer counts.
        total += thread_cpu_ns(pid, tid).unwrap_or(0.0);
    }
    Ok(total)
}

/// `voluntary_ctxt_switches` of one thread.
fn voluntary_switches(pid: u32, tid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no voluntary_ctxt_switches in status")
}

/// A running `perf record --call-graph dwarf -F HZ` of `who` (`-t TID` or `-p PID`).
struct PerfRecord {
    child: std::process::Child,
    data: PathBuf,
}

impl PerfRecord {
    fn start(who: &[&str], hz: u32) -> anyhow::Result<PerfRecord> {
        let data =
            std::env::temp_dir().join(format!("flamegrid-compare-{}.data", std::process::id()));
        let child = Command::new("perf")
            .args([
                "record",
                "--call-graph",
                "dwarf",
                "-F",
                &hz.to_string(),
                "-o",
            ])
            .arg(&data)
            .args(who)
            .env("DEBUGINFOD_URLS", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running perf record (Debian: linux-perf)")?;
        // perf needs a moment to open its events; wait until its ring buffers exist.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5)
            && !std::fs::read_dir(format!("/proc/{}/fd", child.id())).is_ok_and(|d| {
                d.filter_map(Result::ok).any(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("perf_event"))
                })
            })
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(PerfRecord { child, data })
    }

    /// Stops the recording: (perf's CPU time while it recorded, ns; samples it wrote).
    fn stop(self) -> anyhow::Result<(f64, f64)> {
        let cpu = process_cpu_ns(self.child.id()).unwrap_or(f64::NAN);
        let pid = i32::try_from(self.child.id())?;
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .context("running kill")?;
        let out = self.child.wait_with_output()?;
        let _ = std::fs::remove_file(&self.data);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // "[ perf record: Captured and wrote 1.234 MB perf.data (567 samples) ]"
        let samples = stderr
            .rsplit_once(" samples)")
            .and_then(|(before, _)| before.rsplit_once('('))
            .and_then(|(_, n)| n.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        Ok((cpu, samples))
    }
}

/// One sampled stretch of the spinner: what it cost (switches, holds, sampler CPU).
struct Cost {
    switches_per_100: f64,
    held_p99_us: Option<f64>,
    cpu_us_per_sample: f64,
}

/// 100 samples of the spinner alone at 100 Hz with `sampling`.
fn spinner_cost(sampling: Sampling, pid: u32, spinner: u32) -> anyhow::Result<Cost> {
    let before = voluntary_switches(pid, spinner)?;
    match sampling {
        Sampling::Flamegrid(backend) => {
            let sampler = Sampler::with_backend(backend)?;
            let me = std::process::id();
            let cpu0 = process_cpu_ns(me)?;
            let opts = SamplerOptions {
                num_samples: 100,
                delay: Duration::from_millis(10),
                ..SamplerOptions::default()
            };
            let selector = ThreadSelector {
                process: ProcessRef::Pid(pid),
                tids: vec![spinner],
                thread_name: None,
            };
            let (run, stats) = sampler.sample_with_stats(
                &[("spinner".to_owned(), selector)],
                &AccessPolicy::unrestricted(),
                &opts,
            );
            let cpu = process_cpu_ns(me)? - cpu0;
            if let Some((_, Err(e))) = run.subtasks.first() {
                bail!("sampling the spinner with {} failed: {e}", backend.as_str());
            }
            let after = voluntary_switches(pid, spinner)?;
            let samples = f64::from(stats.rounds.max(1));
            Ok(Cost {
                switches_per_100: (after - before) as f64 * 100.0 / samples,
                held_p99_us: (!stats.stop_ns.is_empty()).then(|| stats.stop_quantile_us(0.99)),
                cpu_us_per_sample: cpu / 1e3 / samples,
            })
        }
        Sampling::PerfRecord => {
            let tid = spinner.to_string();
            let rec = PerfRecord::start(&["-t", &tid], 100)?;
            std::thread::sleep(Duration::from_secs(1));
            let (cpu, samples) = rec.stop()?;
            let after = voluntary_switches(pid, spinner)?;
            Ok(Cost {
                switches_per_100: (after - before) as f64 * 100.0 / samples.max(1.0),
                held_p99_us: None,
                cpu_us_per_sample: cpu / 1e3 / samples.max(1.0),
            })
        }
        Sampling::Unsampled => bail!("nothing samples in the unsampled condition"),
    }
}

fn backends_section(report: &mut String, settings: &Settings) -> anyhow::Result<()> {
    writeln!(
        report,
        "\n## 4. Backends side by side: ptrace, perf events, `perf record --call-graph dwarf`\n"
    )?;
    let SpinnerTarget {
        mut target,
        pid,
        spinner,
        cpus,
        pinned,
    } = spinner_target(settings)?;
    let contenders = [
        Sampling::Flamegrid(Backend::Ptrace),
        Sampling::Flamegrid(Backend::Perf),
        Sampling::PerfRecord,
    ];

    // (a) The spinner alone, 100 samples at 100 Hz, 3 alternating rounds.
    let mut costs: BTreeMap<usize, Vec<Cost>> = BTreeMap::new();
    for round in 0..3 {
        for k in 0..contenders.len() {
            let i = (k + round) % contenders.len();
            costs
                .entry(i)
                .or_default()
                .push(spinner_cost(contenders[i], pid, spinner)?);
        }
    }
    writeln!(
        report,
        "The spinner of the throughput target alone (`--tid`), 100 samples at 100 Hz, 3 \
         alternating rounds, medians. Voluntary context switches are the kernel's count for the \
         spinner (`/proc/PID/task/TID/status`); a pure spinner makes none of its own. Held: how \
         long the running thread was stopped per sample (p99 of the sampler's stop times). \
         Sampler CPU: the sampling process's CPU time (every thread: for flamegrid in-process \
         the run including unwinding and symbolization, for perf record the recording, not its \
         post-processing) ÷ samples.\n"
    )?;
    writeln!(
        report,
        "| sampler | voluntary switches added / 100 samples | running thread held, p99 | sampler CPU / sample |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    for (i, c) in &costs {
        let col = |f: &dyn Fn(&Cost) -> f64| median(&c.iter().map(f).collect::<Vec<_>>());
        let held: Vec<f64> = c.iter().filter_map(|c| c.held_p99_us).collect();
        writeln!(
            report,
            "| {} | {:.1} | {} | {:.0} µs |",
            contenders[*i].label(),
            col(&|c| c.switches_per_100),
            if held.is_empty() {
                "0 stops".to_owned()
            } else {
                format!("{:.0} µs", median(&held))
            },
            col(&|c| c.cpu_us_per_sample),
        )?;
    }

    // (b) Throughput of the spinner while the whole process is sampled at 100 and 1 000 Hz.
    let mut conditions = vec![(Sampling::Unsampled, 0u32)];
    for c in contenders {
        for hz in [100u32, 1000] {
            conditions.push((c, hz));
        }
    }
    let samplers: BTreeMap<&str, Sampler> = [Backend::Ptrace, Backend::Perf]
        .into_iter()
        .map(|b| Ok((b.as_str(), Sampler::with_backend(b)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut paired: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut paired_cpu: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for round in 0..settings.throughput_rounds {
        let mut windows: BTreeMap<usize, Window> = BTreeMap::new();
        for k in 0..conditions.len() {
            let i = (k + round) % conditions.len();
            let (who, hz) = conditions[i];
            let window = match who {
                Sampling::Unsampled => read_window(&mut target, spinner, settings.window_secs)?,
                Sampling::Flamegrid(b) => {
                    while_sampling(&samplers[b.as_str()], pid, hz, || {
                        read_window(&mut target, spinner, settings.window_secs)
                    })?
                    .0
                }
                Sampling::PerfRecord => {
                    let p = pid.to_string();
                    let rec = PerfRecord::start(&["-p", &p], hz)?;
                    let w = read_window(&mut target, spinner, settings.window_secs);
                    rec.stop()?;
                    w?
                }
            };
            windows.insert(i, window);
        }
        let base = &windows[&0];
        for (i, w) in windows.iter().filter(|(i, _)| **i != 0) {
            paired
                .entry(*i)
                .or_default()
                .push((median(&w.rates) / median(&base.rates) - 1.0) * 100.0);
            paired_cpu
                .entry(*i)
                .or_default()
                .push((w.per_cpu_second / base.per_cpu_second - 1.0) * 100.0);
        }
    }
    writeln!(
        report,
        "\nThe spinner's throughput while every thread of the target ({} threads) is sampled \
         at 100 Hz and 1 000 Hz: {} rounds × {} conditions (order rotated) × {} one-second \
         readings; change = median over rounds of (condition ÷ the same round's unsampled \
         reading − 1). {}\n",
        throughput_mix().steady_threads(),
        settings.throughput_rounds,
        conditions.len(),
        settings.window_secs,
        if pinned {
            format!(
                "The spinner was pinned to CPU {} and the samplers (perf record too) to CPU 0.",
                cpus - 1
            )
        } else {
            "Nothing was pinned.".to_owned()
        }
    )?;
    writeln!(
        report,
        "| sampler | rate | change / wall s (p25 … p75) | change / CPU s (p25 … p75) | goal |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    for (i, (who, hz)) in conditions.iter().enumerate().skip(1) {
        let (wall, cpu) = (&paired[&i], &paired_cpu[&i]);
        let goal = match (who, hz) {
            (Sampling::Flamegrid(Backend::Perf), 100) => "loss < 1 %",
            (Sampling::Flamegrid(Backend::Perf), _) => "loss < 2 %",
            _ => "",
        };
        writeln!(
            report,
            "| {} | {hz} Hz | {:+.2} % ({:+.1} … {:+.1}) | {:+.2} % ({:+.1} … {:+.1}) | {goal} |",
            who.label(),
            median(wall),
            quantile(wall, 0.25),
            quantile(wall, 0.75),
            median(cpu),
            quantile(cpu, 0.25),
            quantile(cpu, 0.75),
        )?;
    }
    let stopped = target.stopped_threads();
    if !stopped.is_empty() {
        writeln!(report, "\n**threads left stopped: {stopped:?}**")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Settings from `args`, with `--agent` pointing at a file that exists (this test binary).
    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let exe = std::env::current_exe()?;
        let argv = [
            "flamegrid-compare",
            "--agent",
            exe.to_str().unwrap_or_default(),
        ];
        let parsed = Args::try_parse_from(argv.iter().chain(args))?;
        Settings::from_args(parsed)
    }

    #[test]
    fn quick_lowers_the_defaults_and_explicit_flags_win_in_any_order() {
        let full = settings(&[]).unwrap();
        assert_eq!(
            (full.rounds, full.throughput_rounds, full.window_secs),
            (7, 10, 2)
        );
        assert!(full.pin);
        assert_eq!(
            full.sections,
            [
                Section::Snapshot,
                Section::Stop,
                Section::Throughput,
                Section::Backends
            ]
        );
        let quick = settings(&["--quick"]).unwrap();
        assert_eq!((quick.rounds, quick.throughput_rounds), (3, 3));
        for args in [["--quick", "--rounds", "5"], ["--rounds", "5", "--quick"]] {
            assert_eq!(settings(&args).unwrap().rounds, 5, "{args:?}");
        }
        let some = settings(&["--sections", "snapshot,stop", "--no-pin"]).unwrap();
        assert_eq!(some.sections, [Section::Snapshot, Section::Stop]);
        assert!(!some.pin);
    }

    #[test]
    fn bad_input_is_refused_before_anything_runs() {
        for args in [
            &["--sections", "snapshot,flames"][..],
            &["--rounds", "0"],
            &["--window-secs", "x"],
            &["--frobnicate"],
        ] {
            assert!(settings(args).is_err(), "{args:?}");
        }
        let missing = Args::try_parse_from(["flamegrid-compare", "--agent", "/no/such/agent"])
            .map_err(anyhow::Error::from)
            .and_then(Settings::from_args);
        let e = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("/no/such/agent does not exist"), "{e}");
    }

    #[test]
    fn help_explains_every_flag() {
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        assert!(
            help.contains("side by side with eu-stack and gdb"),
            "{help}"
        );
        assert!(
            Args::command()
                .get_arguments()
                .all(|a| a.get_help().is_some())
        );
    }
}
