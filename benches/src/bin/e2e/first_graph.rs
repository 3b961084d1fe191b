//! Phase 1: the time from the first flame graph request to the first graph.
//!
//! For every [`Shape`] (1, 16 and 64 subtasks over 1 or 4 agents; each subtask one thread) one
//! fresh job per round is registered up front and every subtask is RUNNING before the clock
//! starts, so every measurement is a true *first* request to a vertex that was never sampled.
//! Two ways of waiting are timed:
//!
//! * [`Method::Folded`]: one `GET .../flamegraph.folded`, which waits for the run it starts, so
//!   its request-to-answer time is the time to first graph;
//! * [`Method::JsonPoll`]: Flink's JSON endpoint polled every 5 ms until `endTimestamp > 0`,
//!   as Flink's dashboard does (faster than it does).
//!
//! The shapes alternate inside every round and the starting shape rotates, so the noise of a
//! shared machine hits them all alike. Each window (samples × delay) needs its own coordinator,
//! since the window is a coordinator flag.

use crate::processes::{AgentProcess, CoordinatorProcess, Workers, poll, start_agents};
use crate::{AGENTS, HANG_GUARD};
use anyhow::{Result, anyhow, bail};
use flamegrid_benches::procfs::Memory;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the JSON method polls, like a (fast) dashboard.
const JSON_POLL: Duration = Duration::from_millis(5);

/// One measured shape: how many subtasks over how many agents, and how the first graph is
/// awaited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub subtasks: usize,
    pub agents: usize,
    pub method: Method,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// One `GET .../flamegraph.folded`, which waits for the run it starts.
    Folded,
    /// `GET .../flamegraph` every [`JSON_POLL`] until `endTimestamp > 0`.
    JsonPoll,
}

impl Shape {
    pub fn label(&self) -> String {
        let method = match self.method {
            Method::Folded => "`.folded`",
            Method::JsonPoll => "JSON poll 5 ms",
        };
        format!(
            "{} subtask{} / {} agent{} ({method})",
            self.subtasks,
            if self.subtasks == 1 { "" } else { "s" },
            self.agents,
            if self.agents == 1 { "" } else { "s" }
        )
    }
}

/// The shapes measured in every window.
fn shapes() -> Vec<Shape> {
    let folded = |subtasks, agents| Shape {
        subtasks,
        agents,
        method: Method::Folded,
    };
    vec![
        folded(1, 1),
        folded(16, 1),
        folded(16, 4),
        folded(64, 1),
        folded(64, 4),
        Shape {
            subtasks: 64,
            agents: 4,
            method: Method::JsonPoll,
        },
    ]
}

/// A registered job of one vertex: what to request.
pub struct VertexUrl {
    pub job: String,
    /// `/jobs/JOB/vertices/VERTEX/flamegraph`.
    pub base: String,
}

/// Registers a one-vertex job of `shape`: subtask `i` is thread `i / agents` of agent
/// `i % agents`'s workload.
pub fn register_job(
    coordinator: &CoordinatorProcess,
    agents: &[AgentProcess],
    workers: &Workers,
    names: &[Vec<String>],
    shape: Shape,
    tag: &str,
) -> Result<VertexUrl> {
    let subtasks: Vec<Value> = (0..shape.subtasks)
        .map(|i| {
            let a = i % shape.agents;
            json!({
                "taskmanager": agents[a].id,
                "pid": workers.processes[a].pid(),
                "thread_name": names[a][i / shape.agents],
            })
        })
        .collect();
    let body = json!({
        "name": format!("e2e {tag}"),
        "vertices": [{
            "name": format!("Operator: {} subtasks over {} agents", shape.subtasks, shape.agents),
            "parallelism": shape.subtasks,
            "subtasks": subtasks,
        }],
    });
    match post_one_vertex_job(coordinator, &body)? {
        Posted::Registered(url) => Ok(url),
        Posted::Refused(message) => bail!("POST /jobs → 400: {message}"),
    }
}

/// What `POST /jobs` made of a job of one vertex.
pub enum Posted {
    /// Registered: where its flame graph is.
    Registered(VertexUrl),
    /// Refused with 400 (over a cap, say): the coordinator's message.
    Refused(String),
}

/// Posts a job of one vertex and reads its vertex id back. A 400 is [`Posted::Refused`];
/// any other answer but 202 is an error.
pub fn post_one_vertex_job(coordinator: &CoordinatorProcess, body: &Value) -> Result<Posted> {
    let answer = coordinator.rest.post_json("/jobs", body)?;
    if answer.status == 400 {
        let message = String::from_utf8_lossy(&answer.body).into_owned();
        return Ok(Posted::Refused(message));
    }
    if answer.status != 202 {
        bail!(
            "POST /jobs → {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let answer: Value = serde_json::from_slice(&answer.body)?;
    let job = answer["jobid"]
        .as_str()
        .ok_or_else(|| anyhow!("POST /jobs answered without a jobid: {answer}"))?
        .to_owned();
    let details = coordinator.rest.get_json(&format!("/jobs/{job}"))?;
    let vertex = details["vertices"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("job {job} has no vertex id: {details}"))?;
    Ok(Posted::Registered(VertexUrl {
        base: format!("/jobs/{job}/vertices/{vertex}/flamegraph"),
        job,
    }))
}

/// Waits until every subtask of every job in `jobs` is RUNNING (its agent watches its thread
/// and reported it alive), the state in which a user asks for a flame graph. The job status
/// alone is not enough: like Flink's, it is RUNNING from registration on.
pub fn wait_running(coordinator: &CoordinatorProcess, jobs: &[&str]) -> Result<()> {
    poll("every subtask to be RUNNING", || {
        let overview = coordinator.rest.get_json("/jobs/overview")?;
        let ready: Vec<&str> = overview["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| {
                        let tasks = &j["tasks"];
                        tasks["total"].as_u64().is_some() && tasks["running"] == tasks["total"]
                    })
                    .filter_map(|j| j["jid"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        Ok(jobs.iter().all(|j| ready.contains(j)).then_some(()))
    })
}

/// One time-to-first-graph measurement: milliseconds and the samples the graph holds.
pub fn first_graph(
    coordinator: &CoordinatorProcess,
    url: &VertexUrl,
    method: Method,
) -> Result<(f64, u64)> {
    let start = Instant::now();
    match method {
        Method::Folded => {
            let path = format!("{}.folded", url.base);
            let answer = coordinator.rest.get(&path)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if answer.status != 200 {
                bail!("GET {path} → {}", answer.status);
            }
            let samples = String::from_utf8_lossy(&answer.body)
                .lines()
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                .sum();
            if samples == 0 {
                bail!("GET {path} answered without a graph after {ms:.1} ms");
            }
            Ok((ms, samples))
        }
        Method::JsonPoll => loop {
            let graph = coordinator.rest.get_json(&url.base)?;
            let end = graph["endTimestamp"].as_i64().unwrap_or(-3);
            if end > 0 {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                let samples = graph["data"]["value"].as_u64().unwrap_or(0);
                return Ok((ms, samples));
            }
            if end == -1 || end == -2 {
                bail!(
                    "{}: endTimestamp {end} (vertex ended or graphs disabled)",
                    url.base
                );
            }
            if start.elapsed() > HANG_GUARD {
                bail!("{}: no graph after {HANG_GUARD:?}", url.base);
            }
            std::thread::sleep(JSON_POLL);
        },
    }
}

/// One sampling window and its results.
pub struct WindowResult {
    pub samples: u32,
    pub delay_ms: u32,
    pub rounds: usize,
    /// Cold first graph over all four agents (first gRPC connections included).
    pub cold_ms: f64,
    pub rows: Vec<ShapeResult>,
    pub coordinator_memory: Memory,
    /// Field-wise maximum over the agents.
    pub agent_memory: Memory,
}

impl WindowResult {
    pub fn window_ms(&self) -> f64 {
        f64::from(self.samples) * f64::from(self.delay_ms)
    }

    /// N samples are separated by N − 1 delays: no sampler can answer sooner than this.
    pub fn floor_ms(&self) -> f64 {
        f64::from(self.samples.saturating_sub(1)) * f64::from(self.delay_ms)
    }

    /// The row of `subtasks` over `agents` awaited by `method`, if it was measured.
    pub fn row(&self, subtasks: usize, agents: usize, method: Method) -> Option<&ShapeResult> {
        self.rows.iter().find(|x| {
            x.shape.subtasks == subtasks && x.shape.agents == agents && x.shape.method == method
        })
    }
}

/// The rounds of one shape.
pub struct ShapeResult {
    pub shape: Shape,
    pub times_ms: Vec<f64>,
    pub samples_seen: Vec<u64>,
}

/// Measures one window (`samples` × `delay_ms`) over `rounds` rounds with a coordinator and
/// [`AGENTS`] agents of its own.
pub fn measure_window(
    bin_dir: &Path,
    workers: &Workers,
    samples: u32,
    delay_ms: u32,
    rounds: usize,
) -> Result<WindowResult> {
    eprintln!("== window {samples} × {delay_ms} ms, {rounds} rounds");
    let coordinator = CoordinatorProcess::start(
        bin_dir,
        &[
            "--flamegraph-num-samples".to_owned(),
            samples.to_string(),
            "--flamegraph-delay-ms".to_owned(),
            delay_ms.to_string(),
        ],
    )?;
    let mut agents = start_agents(bin_dir, &coordinator, AGENTS)?;
    let names = workers.all_thread_names()?;

    // A warm-up job over all agents: its graph opens the coordinator's gRPC channels, so the
    // measured rounds see the steady state. Its time is reported as the cold figure.
    let warm_shape = Shape {
        subtasks: AGENTS,
        agents: AGENTS,
        method: Method::Folded,
    };
    let warm = register_job(
        &coordinator,
        &agents,
        workers,
        &names,
        warm_shape,
        "warm-up",
    )?;

    let shapes = shapes();
    let mut jobs: Vec<Vec<VertexUrl>> = Vec::new();
    for round in 0..rounds {
        let mut row = Vec::new();
        for s in &shapes {
            row.push(register_job(
                &coordinator,
                &agents,
                workers,
                &names,
                *s,
                &format!("round {round} {}", s.label()),
            )?);
        }
        jobs.push(row);
    }
    let mut ids: Vec<&str> = jobs.iter().flatten().map(|v| v.job.as_str()).collect();
    ids.push(&warm.job);
    wait_running(&coordinator, &ids)?;

    let (cold_ms, _) = first_graph(&coordinator, &warm, Method::Folded)?;
    eprintln!("   cold first graph (4 subtasks / 4 agents): {cold_ms:.1} ms");

    let mut rows: Vec<ShapeResult> = shapes
        .iter()
        .map(|s| ShapeResult {
            shape: *s,
            times_ms: Vec::new(),
            samples_seen: Vec::new(),
        })
        .collect();
    for (round, row) in jobs.iter().enumerate() {
        // Rotate the starting shape every round so no shape always runs first.
        for k in 0..shapes.len() {
            let i = (k + round) % shapes.len();
            let (ms, seen) = first_graph(&coordinator, &row[i], shapes[i].method)?;
            rows[i].times_ms.push(ms);
            rows[i].samples_seen.push(seen);
        }
        eprintln!(
            "   round {}/{rounds}: {}",
            round + 1,
            rows.iter()
                .map(|r| format!("{:.0}", r.times_ms[round]))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for a in agents.iter_mut() {
            a.check_alive()?;
        }
    }
    let coordinator_memory = Memory::of(coordinator.pid())?;
    let mut agent_memory = Memory::default();
    for a in &agents {
        agent_memory = agent_memory.max(Memory::of(a.process.pid())?);
    }
    Ok(WindowResult {
        samples,
        delay_ms,
        rounds,
        cold_ms,
        rows,
        coordinator_memory,
        agent_memory,
    })
}
