//! The system under test as processes: a `flamegrid-coordinator`, its `flamegrid-agent run`
//! processes, and one C++ workload per agent whose threads are the subtasks.
//!
//! Everything here is started exactly as a user would start it (release binaries, loopback
//! ports chosen by the kernel, `RUST_LOG=warn`) and is killed and reaped when its guard is
//! dropped, so an error anywhere in a phase leaves nothing running. Each coordinator gets a
//! scratch directory for its database and the logs; its name holds this driver's pid, which is
//! how `e2e.sh` finds and removes it when the driver itself is killed.

use crate::http::Rest;
use crate::{AGENTS, HANG_GUARD, THREADS_PER_WORKLOAD};
use anyhow::{Context, Result, anyhow, bail};
use flamegrid_workloads::{Mix, RunningWorkload, Workload};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `check` every 10 ms until it yields a value or [`HANG_GUARD`] passes.
pub fn poll<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if start.elapsed() > HANG_GUARD {
            bail!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process that is killed and reaped when dropped.
pub struct KillOnDrop {
    child: Child,
    what: String,
}

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the process's log if it has exited (a dead agent makes figures meaningless).
    pub fn check_alive(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} exited with {status}:\n{text}", self.what);
        }
        Ok(())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Errors only mean it already exited; it is reaped either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory `flamegrid-e2e-TAG-PID-XXXXXX` in the temporary directory, removed on
/// drop (and by `e2e.sh`'s exit trap, by that name, if the driver is killed).
fn scratch_dir(tag: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("flamegrid-e2e-{tag}-{}-", std::process::id()))
        .tempdir()
        .context("cannot create a scratch directory")
}

/// A running `flamegrid-coordinator` and a client of its REST API.
pub struct CoordinatorProcess {
    process: KillOnDrop,
    pub rest: Rest,
    pub rpc_url: String,
    data: tempfile::TempDir,
}

impl CoordinatorProcess {
    /// Starts the coordinator on loopback port 0 with `extra` flags and reads the two address
    /// lines it prints on stdout.
    pub fn start(bin_dir: &Path, extra: &[String]) -> Result<CoordinatorProcess> {
        let data = scratch_dir("coordinator")?;
        let log = data.path().join("coordinator.log");
        let exe = bin_dir.join("flamegrid-coordinator");
        let mut child = Command::new(&exe)
            .args(["--rest-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take();
        let mut process = KillOnDrop {
            child,
            what: "the coordinator".to_owned(),
        };
        let stdout = stdout.ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut rest, mut rpc_url) = (None, None);
        while rest.is_none() || rpc_url.is_none() {
            let Some(line) = lines.next().transpose()? else {
                process.check_alive(&log)?;
                bail!("the coordinator closed stdout before printing its addresses");
            };
            if let Some(url) = line.strip_prefix("flamegrid dashboard: http://") {
                rest = Some(url.trim_end_matches('/').parse::<SocketAddr>()?);
            } else if let Some(url) = line.strip_prefix("flamegrid registry (gRPC): ") {
                rpc_url = Some(url.trim().to_owned());
            }
        }
        // Keep draining stdout so the coordinator never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let rest = rest.ok_or_else(|| anyhow!("no REST address"))?;
        Ok(CoordinatorProcess {
            process,
            rest: Rest::new(rest, HANG_GUARD)?,
            rpc_url: rpc_url.ok_or_else(|| anyhow!("no registry address"))?,
            data,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// A running `flamegrid-agent run`.
pub struct AgentProcess {
    pub process: KillOnDrop,
    pub id: String,
    log: PathBuf,
}

impl AgentProcess {
    /// Fails with the agent's log if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.process.check_alive(&self.log)
    }
}

/// Starts `count` agents against `coordinator` and waits until all are registered.
pub fn start_agents(
    bin_dir: &Path,
    coordinator: &CoordinatorProcess,
    count: usize,
) -> Result<Vec<AgentProcess>> {
    let exe = bin_dir.join("flamegrid-agent");
    let mut agents = Vec::new();
    for i in 0..count {
        let id = format!("e2e-agent-{i}");
        let log = coordinator.data.path().join(format!("{id}.log"));
        let child = Command::new(&exe)
            .args(["run", "--coordinator", &coordinator.rpc_url])
            .args(["--listen", "127.0.0.1:0", "--id", &id])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        agents.push(AgentProcess {
            process: KillOnDrop {
                child,
                what: format!("agent {id}"),
            },
            id,
            log,
        });
    }
    poll("every agent to register", || {
        for a in agents.iter_mut() {
            a.check_alive()?;
        }
        let tms = coordinator.rest.get_json("/taskmanagers")?;
        let registered: Vec<&str> = tms["taskmanagers"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["id"].as_str()).collect())
            .unwrap_or_default();
        Ok(agents
            .iter()
            .all(|a| registered.contains(&a.id.as_str()))
            .then_some(()))
    })?;
    Ok(agents)
}

/// The workload process of each agent and the thread names its subtasks select, in the order
/// subtasks take them (roles interleaved, so any prefix mixes CPU and off-CPU threads).
pub struct Workers {
    pub processes: Vec<RunningWorkload>,
}

impl Workers {
    /// One C++ workload per agent with [`THREADS_PER_WORKLOAD`] named threads. Only the first
    /// process has a spinning thread: with two cores, one busy thread per process would leave
    /// the coordinator and the agents fighting four spinners for the CPU and measure the
    /// scheduler instead of flamegrid.
    pub fn start() -> Result<Workers> {
        let mut processes = Vec::new();
        for i in 0..AGENTS {
            let spin = u32::from(i == 0);
            let rest = THREADS_PER_WORKLOAD - spin;
            let mix = Mix {
                spin,
                sleep: rest.div_ceil(3),
                wait: (rest - rest.div_ceil(3)).div_ceil(2),
                lock: rest - rest.div_ceil(3) - (rest - rest.div_ceil(3)).div_ceil(2),
                churn: 0,
                report_rate: false,
            };
            processes.push(
                flamegrid_workloads::spawn(Workload::Cpp, &mix)
                    .context("cannot start the C++ workload")?,
            );
        }
        Ok(Workers { processes })
    }

    /// The thread names of process `i`, roles interleaved.
    pub fn thread_names(&self, i: usize) -> Result<Vec<String>> {
        let names: Vec<String> = self.processes[i]
            .threads()?
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| n.contains('-'))
            .collect();
        let index = |n: &String| -> (u32, u32) {
            let (role, k) = n.split_once('-').unwrap_or((n, "0"));
            let role_rank = match role {
                "spin" => 0,
                "sleep" => 1,
                "wait" => 2,
                _ => 3,
            };
            (k.parse().unwrap_or(u32::MAX), role_rank)
        };
        let mut names = names;
        names.sort_by_key(index);
        if names.len() < THREADS_PER_WORKLOAD as usize {
            bail!(
                "workload {i} has {} named threads, expected {THREADS_PER_WORKLOAD}",
                names.len()
            );
        }
        Ok(names)
    }

    /// The thread names of every process, in agent order.
    pub fn all_thread_names(&self) -> Result<Vec<Vec<String>>> {
        (0..self.processes.len())
            .map(|i| self.thread_names(i))
            .collect()
    }
}
