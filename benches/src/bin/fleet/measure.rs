//! One configuration (N agents, one vertex of S subtasks) measured, and the table of all of
//! them.
//!
//! For every configuration a fresh coordinator is started (release build, loopback, its own
//! scratch directory), with the run's window as its flame graph settings. Then:
//!
//! 1. the fleet starts and registers; the job is registered (`POST /jobs`; a 400 is reported
//!    as "over the cap", since a coordinator caps the parallelism of a vertex) and every
//!    subtask is RUNNING (the agents reported it alive in a heartbeat);
//! 2. **idle**: the coordinator's CPU (user + system, `/proc/PID/stat`) over `--idle-s`
//!    seconds with heartbeats only, as % of one core;
//! 3. **runs**, one after the other: `GET .../flamegraph?refresh=true` starts a run and the
//!    vertex's history (`.../flamegraph/history`, cheap, never starts a run) is polled every
//!    5 ms until a newer run is kept: that is the **time to the graph**, set against the
//!    window. Until every agent has answered, the history is polled every 50 ms only (no graph
//!    can land before, and a poll of a 10,000-subtask vertex costs the coordinator about a
//!    millisecond: a poll every 5 ms through the whole window was a sixth of a core taken from
//!    the run being measured). From the simulated agents' log: the **dispatch spread** (first to last `Sample`
//!    received) and the coordinator's **own time after the last answer** (graph seen − last
//!    answer handed to the agents' gRPC servers). The graph's root `value` (Flink's JSON) is
//!    compared with the samples the agents sent. After every run: `VmRSS`; at the end `VmHWM`.

use crate::args::Options;
use crate::first_graph::{Posted, VertexUrl, post_one_vertex_job, wait_running};
use crate::processes::{CoordinatorProcess, poll};
use crate::sim::{self, Shared};
use crate::stacks::StackShape;
use anyhow::{Result, bail};
use flamegrid_benches::procfs::{self, Machine, Memory};
use flamegrid_benches::stats::{median, spread};
use flamegrid_proto::prometheus::parse_line;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How often the history is polled once every agent has answered.
const POLL: Duration = Duration::from_millis(5);

/// How often the history is polled while agents are still sampling.
const SLOW_POLL: Duration = Duration::from_millis(50);

/// The agents' registrations are spread over this: the coordinator's default heartbeat
/// interval (a third of the 30 s timeout, at most 5 s), so heartbeats arrive evenly.
const REGISTRATION_SPREAD: Duration = Duration::from_secs(5);

/// The figures of one configuration.
pub struct Row {
    pub agents: usize,
    pub subtasks: usize,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// `POST /jobs` refused the vertex (its message went to stderr).
    OverTheCap,
    Measured(Box<Figures>),
}

pub struct Figures {
    /// Per run, ms.
    pub to_graph: Vec<f64>,
    pub after_last_answer: Vec<f64>,
    /// Per run, ms: the coordinator's own count of the same (`/metrics`), `None` from a
    /// coordinator that does not export it.
    pub own_after_last_answer: Vec<Option<f64>>,
    pub dispatch_spread: Vec<f64>,
    /// Coordinator CPU over each run, % of one core.
    pub run_cpu: Vec<f64>,
    /// Coordinator CPU with heartbeats only, % of one core.
    pub idle_cpu: f64,
    /// VmRSS after registration (before any run) and after each run, KiB.
    pub rss_idle: u64,
    pub rss: Vec<u64>,
    /// VmHWM at the end, KiB.
    pub hwm: u64,
    /// Per run: (samples in the graph, samples the agents sent).
    pub kept: Vec<(u64, u64)>,
    /// Threads of the coordinator at the end.
    pub threads: Option<u64>,
}

/// `Threads:` of `/proc/PID/status`.
fn threads(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Measures `agents` × `subtasks`.
pub fn configuration(
    runtime: &tokio::runtime::Runtime,
    opts: &Options,
    agents: usize,
    subtasks: usize,
) -> Result<Row> {
    let mut flags = vec![
        "--flamegraph-num-samples".to_owned(),
        opts.samples.to_string(),
        "--flamegraph-delay-ms".to_owned(),
        opts.delay_ms.to_string(),
        "--flamegraph-max-depth".to_owned(),
        opts.depth.max(100).to_string(),
    ];
    flags.extend(opts.coordinator_arg.iter().cloned());
    let coordinator = CoordinatorProcess::start(&opts.bin_dir, &flags)?;
    let pid = coordinator.pid();
    let shared = Shared::new(StackShape {
        depth: opts.depth as usize,
        breadth: opts.breadth,
        pool: opts.pool,
    });
    let fleet = runtime.block_on(sim::start(
        agents,
        &coordinator.rpc_url,
        &shared,
        REGISTRATION_SPREAD,
    ))?;
    poll("every simulated agent to register", || {
        let tms = coordinator.rest.get_json("/taskmanagers")?;
        let n = tms["taskmanagers"].as_array().map_or(0, Vec::len);
        Ok((n >= agents).then_some(()))
    })?;
    eprintln!("   {agents} agents registered");

    let body = json!({
        "name": format!("fleet {agents} agents x {subtasks} subtasks"),
        "vertices": [{
            "name": format!("Operator: {subtasks} simulated subtasks"),
            "parallelism": subtasks,
            "subtasks": (0..subtasks).map(|i| json!({
                "taskmanager": fleet.ids[i % agents],
                "pid": 10_000 + i,
            })).collect::<Vec<_>>(),
        }],
    });
    let VertexUrl { job, base } = match post_one_vertex_job(&coordinator, &body)? {
        Posted::Registered(url) => url,
        Posted::Refused(message) => {
            eprintln!("   over the cap: {message}");
            return Ok(Row {
                agents,
                subtasks,
                outcome: Outcome::OverTheCap,
            });
        }
    };
    wait_running(&coordinator, &[&job])?;
    eprintln!("   every subtask RUNNING");

    let ticks = procfs::clock_ticks();
    let cpu = || procfs::cpu_seconds(pid, ticks);
    let (c0, t0) = (cpu()?, Instant::now());
    std::thread::sleep(Duration::from_secs(opts.idle_s as u64));
    let idle_cpu = 100.0 * (cpu()? - c0) / t0.elapsed().as_secs_f64();
    let rss_idle = Memory::of(pid)?.rss;
    eprintln!(
        "   idle: {idle_cpu:.1} % of a core, RSS {:.0} MiB",
        rss_idle as f64 / 1024.0
    );

    let mut figures = Figures {
        to_graph: Vec::new(),
        after_last_answer: Vec::new(),
        own_after_last_answer: Vec::new(),
        dispatch_spread: Vec::new(),
        run_cpu: Vec::new(),
        idle_cpu,
        rss_idle,
        rss: Vec::new(),
        hwm: 0,
        kept: Vec::new(),
        threads: None,
    };
    let window =
        Duration::from_millis(u64::from(opts.delay_ms) * u64::from(opts.samples.saturating_sub(1)));
    for run in 0..opts.runs {
        let previous = latest_run(&coordinator, &base)?;
        shared.take();
        let (c0, t0) = (cpu()?, Instant::now());
        let started = coordinator.rest.get(&format!("{base}?refresh=true"))?;
        if started.status != 200 {
            bail!("GET {base}?refresh=true → {}", started.status);
        }
        let end = loop {
            if let Some(end) = latest_run(&coordinator, &base)?.filter(|e| Some(*e) > previous) {
                break end;
            }
            if t0.elapsed() > crate::HANG_GUARD {
                bail!("{base}: no new graph after {:?}", crate::HANG_GUARD);
            }
            // Fast once every agent answered (or, should some never be asked or answer, once
            // the window and a second have passed).
            let fast = shared.answers() >= agents.min(subtasks) as u64
                || t0.elapsed() > window + Duration::from_secs(1);
            std::thread::sleep(if fast { POLL } else { SLOW_POLL });
        };
        let seen = Instant::now();
        let run_cpu = 100.0 * (cpu()? - c0) / t0.elapsed().as_secs_f64();
        let log = shared.take();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let graph = coordinator.rest.get_json(&format!("{base}?at={end}"))?;
        let value = graph["data"]["value"].as_u64().unwrap_or(0);
        let (first, last, answered) =
            match (log.first_received, log.last_received, log.last_answered) {
                (Some(f), Some(l), Some(a)) => (f, l, a),
                _ => bail!("run {run}: no simulated agent answered a Sample call"),
            };
        figures.to_graph.push(ms(seen - t0));
        figures
            .after_last_answer
            .push(ms(seen.saturating_duration_since(answered)));
        let metrics = scrape_metrics(&coordinator);
        let own = metrics
            .get("flamegrid_coordinator_flamegraph_last_run_after_answers_seconds")
            .map(|s| s * 1e3);
        figures.own_after_last_answer.push(own);
        figures.dispatch_spread.push(ms(last - first));
        figures.run_cpu.push(run_cpu);
        figures.kept.push((value, log.samples));
        figures.rss.push(Memory::of(pid)?.rss);
        eprintln!(
            "   run {}: graph {:.0} ms, after last answer {:.0} ms (coordinator's own {:.0}), \
             spread {:.0} ms ({} calls), CPU {run_cpu:.0} %, kept {value}/{}, RSS {:.0} MiB \
             (cache's estimate {:.0} MiB)",
            run + 1,
            ms(seen - t0),
            ms(seen.saturating_duration_since(answered)),
            own.unwrap_or(f64::NAN),
            ms(last - first),
            log.calls,
            log.samples,
            *figures.rss.last().unwrap_or(&0) as f64 / 1024.0,
            metrics
                .get("flamegrid_coordinator_flamegraph_cache_bytes")
                .map_or(f64::NAN, |bytes| bytes / (1024.0 * 1024.0)),
        );
    }
    figures.hwm = Memory::of(pid)?.hwm;
    figures.threads = threads(pid);
    drop(fleet);
    Ok(Row {
        agents,
        subtasks,
        outcome: Outcome::Measured(Box::new(figures)),
    })
}

/// The unlabelled samples of the coordinator's `/metrics`, by name (read with the project's
/// own parser of the text format); empty when it cannot be read. A metric an older build does
/// not export (measured side by side) is simply absent.
fn scrape_metrics(coordinator: &CoordinatorProcess) -> BTreeMap<String, f64> {
    let Some(text) = coordinator
        .rest
        .get("/metrics")
        .ok()
        .and_then(|answer| String::from_utf8(answer.body).ok())
    else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| parse_line(line).ok().flatten())
        .filter(|(_, labels, _)| labels.is_empty())
        .map(|(name, _, value)| (name, value))
        .collect()
}

/// The `endTimestamp` of the newest kept run of the vertex, if any.
fn latest_run(coordinator: &CoordinatorProcess, base: &str) -> Result<Option<i64>> {
    let history = coordinator.rest.get_json(&format!("{base}/history"))?;
    Ok(history["runs"][0]["endTimestamp"].as_i64())
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// "median (min–max)" of a set of runs, in whole units.
fn med_range(values: &[f64]) -> String {
    let s = spread(values);
    format!("{:.0} ({:.0}–{:.0})", median(values), s.min, s.max)
}

/// The Markdown table of every configuration, with what was measured and how.
pub fn table(opts: &Options, rows: &[Row]) -> String {
    let machine = Machine::read();
    let window = f64::from(opts.samples.saturating_sub(1)) * f64::from(opts.delay_ms);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Window {} × {} ms ({window:.0} ms), stacks {} frames deep, {} distinct per subtask, \
         at most {} per vertex; {} runs per row; idle CPU over {} s. Machine: {} CPUs, {}, kernel {}; \
         load average at the end {}.\n",
        opts.samples,
        opts.delay_ms,
        opts.depth,
        opts.breadth,
        opts.pool,
        opts.runs,
        opts.idle_s,
        machine.cpus,
        machine.cpu_model.as_deref().unwrap_or("?"),
        machine.kernel,
        procfs::load_averages().map_or_else(|| "?".to_owned(), |[one, _, _]| one),
    );
    let _ = writeln!(
        out,
        "| agents | subtasks | time to graph, ms | after last answer, ms \
         | coordinator's own after last answer, ms | dispatch spread, ms \
         | CPU per run, % core | CPU idle (heartbeats), % core | RSS idle → after each run, MiB \
         | peak RSS, MiB | threads | samples kept |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"
    );
    for row in rows {
        match &row.outcome {
            Outcome::OverTheCap => {
                let _ = writeln!(
                    out,
                    "| {} | {} | over the cap (`POST /jobs` → 400) | | | | | | | | | |",
                    row.agents, row.subtasks
                );
            }
            Outcome::Measured(f) => {
                let kept: u64 = f.kept.iter().map(|k| k.0).sum();
                let sent: u64 = f.kept.iter().map(|k| k.1).sum();
                let kept_text = if kept == sent {
                    format!("all ({sent})")
                } else {
                    format!("{kept} of {sent}")
                };
                let rss = std::iter::once(f.rss_idle)
                    .chain(f.rss.iter().copied())
                    .map(mib)
                    .collect::<Vec<_>>()
                    .join(" → ");
                let own: Option<Vec<f64>> = f.own_after_last_answer.iter().copied().collect();
                let own = own.map_or_else(|| "?".to_owned(), |own| med_range(&own));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {own} | {} | {} | {:.1} | {rss} | {} | {} | {kept_text} |",
                    row.agents,
                    row.subtasks,
                    med_range(&f.to_graph),
                    med_range(&f.after_last_answer),
                    med_range(&f.dispatch_spread),
                    med_range(&f.run_cpu),
                    f.idle_cpu,
                    mib(f.hwm),
                    f.threads.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                );
            }
        }
    }
    out
}
