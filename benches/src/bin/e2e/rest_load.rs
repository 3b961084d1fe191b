//! Phase 2: REST throughput under wrk, and the resident memory of the coordinator and the
//! agents before, between and after.
//!
//! A fresh coordinator with default settings and [`AGENTS`] agents serves one job of 64
//! subtasks whose graph is built once; wrk then loads three URLs in alternating rounds: the
//! cached flame graph (what the goals are about), `/jobs/overview`, and `/config`, a small
//! constant answer whose rate is the ceiling of this machine and the HTTP stack, against which
//! the other two show what their own work costs. The coordinator's CPU time over each run is
//! read from `/proc`, so the report can give requests per core as well as per second.

use crate::AGENTS;
use crate::first_graph::{Method, Shape, first_graph, register_job, wait_running};
use crate::processes::{AgentProcess, CoordinatorProcess, Workers, start_agents};
use crate::wrk::{WrkRun, run_wrk};
use anyhow::{Result, bail};
use flamegrid_benches::procfs::{Memory, clock_ticks, cpu_seconds};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct RestResult {
    /// One entry per URL.
    pub targets: Vec<RestTarget>,
    pub memory: Vec<MemoryPoint>,
}

impl RestResult {
    /// The URL of `kind`, if it was measured.
    pub fn target(&self, kind: &str) -> Option<&RestTarget> {
        self.targets.iter().find(|t| t.kind == kind)
    }
}

/// One URL under wrk.
pub struct RestTarget {
    pub label: String,
    /// What the URL stands for in the goals: "flamegraph", "overview" or "config".
    pub kind: &'static str,
    pub response_bytes: usize,
    /// One run per round.
    pub runs: Vec<WrkRun>,
}

/// The memory of the coordinator and the agents at one moment of the REST phase.
pub struct MemoryPoint {
    pub label: String,
    pub coordinator: Memory,
    /// Field-wise maximum over the agents.
    pub agents: Memory,
}

fn memory_point(
    label: &str,
    coordinator: &CoordinatorProcess,
    agents: &[AgentProcess],
) -> Result<MemoryPoint> {
    let mut max = Memory::default();
    for a in agents {
        max = max.max(Memory::of(a.process.pid())?);
    }
    Ok(MemoryPoint {
        label: label.to_owned(),
        coordinator: Memory::of(coordinator.pid())?,
        agents: max,
    })
}

/// Runs the REST phase: `wrk_rounds` rounds of `wrk -d<wrk_duration>` per URL.
pub fn measure_rest(
    bin_dir: &Path,
    workers: &Workers,
    wrk_rounds: usize,
    wrk_duration: &str,
) -> Result<RestResult> {
    eprintln!("== REST load: wrk -t2 -c32 -d{wrk_duration}, {wrk_rounds} rounds");
    let coordinator = CoordinatorProcess::start(bin_dir, &[])?;
    let mut agents = start_agents(bin_dir, &coordinator, AGENTS)?;
    let names = workers.all_thread_names()?;
    let shape = Shape {
        subtasks: 64,
        agents: AGENTS,
        method: Method::Folded,
    };
    let job = register_job(&coordinator, &agents, workers, &names, shape, "REST load")?;
    wait_running(&coordinator, &[&job.job])?;
    let mut memory = vec![memory_point(
        "idle (job registered, no graph yet)",
        &coordinator,
        &agents,
    )?];
    let (ms, _) = first_graph(&coordinator, &job, Method::Folded)?;
    eprintln!("   first graph {ms:.0} ms");
    // The JSON endpoint now answers from the cache.
    let cached = coordinator.rest.get_json(&job.base)?;
    if cached["endTimestamp"].as_i64().unwrap_or(0) <= 0 {
        bail!("no cached graph after the first run: {cached}");
    }
    std::thread::sleep(Duration::from_secs(1));
    memory.push(memory_point(
        "at rest (after the first graph)",
        &coordinator,
        &agents,
    )?);

    let mut targets: Vec<RestTarget> = Vec::new();
    let mut paths: Vec<String> = Vec::new();
    for (label, kind, path) in [
        (
            format!("cached flame graph `{}`", job.base),
            "flamegraph",
            job.base.clone(),
        ),
        (
            "`/jobs/overview` (1 job)".to_owned(),
            "overview",
            "/jobs/overview".to_owned(),
        ),
        (
            "`/config` (ceiling: a small constant answer)".to_owned(),
            "config",
            "/config".to_owned(),
        ),
    ] {
        let answer = coordinator.rest.get(&path)?;
        if answer.status != 200 {
            bail!("GET {path} → {}", answer.status);
        }
        targets.push(RestTarget {
            label,
            kind,
            response_bytes: answer.body.len(),
            runs: Vec::new(),
        });
        paths.push(path);
    }
    let ticks = clock_ticks();
    for round in 0..wrk_rounds {
        let mut line = String::new();
        for (target, path) in targets.iter_mut().zip(&paths) {
            let url = format!("http://{}{path}", coordinator.rest.addr());
            let cpu_before = cpu_seconds(coordinator.pid(), ticks)?;
            let start = Instant::now();
            let mut run = run_wrk(&url, wrk_duration)?;
            let wall = start.elapsed().as_secs_f64();
            run.coordinator_cores = (cpu_seconds(coordinator.pid(), ticks)? - cpu_before) / wall;
            write!(line, " {} {:.0} req/s;", target.kind, run.rps)?;
            target.runs.push(run);
        }
        eprintln!("   round {}/{wrk_rounds}:{line}", round + 1);
        for a in agents.iter_mut() {
            a.check_alive()?;
        }
    }
    memory.push(memory_point("after the wrk load", &coordinator, &agents)?);
    Ok(RestResult { targets, memory })
}
