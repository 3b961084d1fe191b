//! The registry: which task managers (agents) are alive, which jobs exist, and what state every
//! subtask is in.
//!
//! ```text
//!   agents ── Register / Heartbeat (gRPC, grpc.rs) ──▶ Registry ◀── POST/PATCH/GET (rest/)
//!                                                       │  jobs: Vec<Job>   (SQLite: store.rs)
//!                                                       │  taskmanagers     (memory)
//!                                                       ▼
//!                                   vertex_sampling() ──▶ flame graph fan-out
//! ```
//!
//! All state sits behind one mutex. Operations are short (a few map look-ups and, for writes, one
//! SQLite transaction), so one lock keeps memory and disk trivially consistent: a write is applied
//! to a *copy* of the affected jobs, committed to SQLite, and only then swapped into memory. If
//! the commit fails nothing changes, and an acknowledged change is always on disk.
//!
//! The methods are synchronous (SQLite commits block on fsync); async callers run the writing
//! ones through `tokio::task::spawn_blocking`.
//!
//! Liveness: an agent's heartbeat carries, per watched subtask, whether its process and threads
//! still exist (see `state.rs` for the transitions). [`Registry::expire`], called periodically,
//! drops agents silent for longer than the heartbeat timeout and fails their subtasks.

pub mod error;
pub mod grpc;
pub mod ids;
pub mod job;
pub mod state;
pub mod store;
pub mod taskmanager;
pub mod tls;
pub mod validate;

pub use error::RegistryError;
pub use job::Job;
pub use state::{ExecutionState, JobStatus};
pub use taskmanager::{HostFacts, TaskManager};

use crate::fanout::{SubtaskSampling, SubtaskTarget, VertexSampling};
use flamegrid_proto::v1;
use job::{ProcessRef, SubtaskSpec};
use state::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use store::JobStore;

/// Longest agent id or address accepted at registration.
const MAX_AGENT_FIELD: usize = 256;
/// At most this many liveness entries or metrics in one heartbeat.
const MAX_HEARTBEAT_ENTRIES: usize = 65_536;

/// Jobs, task managers and subtask states; see the module docs.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    heartbeat_timeout: Duration,
    /// When this registry was opened: subtasks whose agent has not (re-)registered since get
    /// one heartbeat timeout of grace before they count as lost.
    opened: Instant,
}

#[derive(Debug)]
struct Inner {
    store: JobStore,
    /// In registration order.
    jobs: Vec<Job>,
    /// Job id → index into `jobs`.
    job_index: HashMap<String, usize>,
    taskmanagers: BTreeMap<String, TaskManager>,
}

/// Identifies one subtask in heartbeats: `<job id>/<vertex id>/<subtask index>`. The agent
/// echoes it back; the registry parses it and checks that the subtask really is on that agent.
pub fn subtask_key(job_id: &str, vertex_id: &str, index: usize) -> String {
    format!("{job_id}/{vertex_id}/{index}")
}

fn parse_subtask_key(key: &str) -> Option<(&str, &str, usize)> {
    let mut parts = key.split('/');
    let (job, vertex, index) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((job, vertex, index.parse().ok()?))
}

/// The wire selector for a registered subtask.
pub fn selector_of(spec: &SubtaskSpec, key: String) -> v1::ThreadSelector {
    v1::ThreadSelector {
        subtask_key: key,
        process: Some(match &spec.process {
            ProcessRef::Pid(pid) => v1::thread_selector::Process::Pid(*pid),
            ProcessRef::ProcessName(name) => {
                v1::thread_selector::Process::ProcessName(name.clone())
            }
        }),
        tids: spec.tids.clone(),
        thread_name: spec.thread_name.clone().unwrap_or_default(),
    }
}

impl Registry {
    /// Opens the registry, loading every stored job from `data_dir`.
    pub fn open(data_dir: &Path, heartbeat_timeout: Duration) -> Result<Self, RegistryError> {
        let store = JobStore::open(data_dir)?;
        let jobs = store.load_all()?;
        let job_index = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.spec.id.clone(), i))
            .collect();
        tracing::info!(path = %store.path().display(), jobs = jobs.len(), "registry opened");
        Ok(Registry {
            inner: Mutex::new(Inner {
                store,
                jobs,
                job_index,
                taskmanagers: BTreeMap::new(),
            }),
            heartbeat_timeout,
            opened: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (writes are swapped in whole),
        // so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Agents that stay silent this long are dropped.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// How often agents should heartbeat: a third of the timeout (so two lost heartbeats are
    /// survived), between 100 ms and 5 s.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.heartbeat_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    // ---- jobs ------------------------------------------------------------------------------

    /// Validates and stores a `POST /jobs` body; returns the new job's id once it is durable.
    pub fn register_job(&self, body: &[u8]) -> Result<String, RegistryError> {
        let mut inner = self.lock();
        let spec = validate::parse_job(body, &|tm| inner.taskmanagers.contains_key(tm))
            .map_err(RegistryError::InvalidJob)?;
        let now = now_ms();
        let endpoints: HashMap<&str, String> = inner
            .taskmanagers
            .values()
            .map(|tm| (tm.id.as_str(), tm.endpoint()))
            .collect();
        let job = Job::accepted(spec, now, |tm| {
            endpoints
                .get(tm)
                .cloned()
                .unwrap_or_else(|| "(unassigned)".into())
        });
        inner.store.insert(&job, now)?;
        let id = job.spec.id.clone();
        tracing::info!(job = %id, name = %job.spec.name, vertices = job.spec.vertices.len(), "job registered");
        let index = inner.jobs.len();
        inner.jobs.push(job);
        inner.job_index.insert(id.clone(), index);
        Ok(id)
    }

    /// Cancels a job: every subtask not yet terminal becomes CANCELED, sampling stops. Like
    /// Flink's Dispatcher, cancelling a job that is already CANCELED succeeds (and changes
    /// nothing); a job that ended otherwise (FINISHED, FAILED) is
    /// [`RegistryError::AlreadyTerminal`].
    pub fn cancel_job(&self, job_id: &str) -> Result<(), RegistryError> {
        let mut inner = self.lock();
        let index = *inner
            .job_index
            .get(job_id)
            .ok_or_else(|| RegistryError::JobNotFound(job_id.to_string()))?;
        let status = inner.jobs[index].runtime.status;
        if status == JobStatus::Canceled {
            tracing::debug!(job = %job_id, "cancel of a job already canceled: nothing to do");
            return Ok(());
        }
        if status.is_terminal() {
            return Err(RegistryError::AlreadyTerminal(status));
        }
        let mut job = inner.jobs[index].clone();
        job.cancel(now_ms());
        inner.store.update_runtimes([&job])?;
        tracing::info!(job = %job_id, "job canceled");
        inner.jobs[index] = job;
        Ok(())
    }

    /// A copy of one job.
    pub fn job(&self, job_id: &str) -> Result<Job, RegistryError> {
        let inner = self.lock();
        let index = inner
            .job_index
            .get(job_id)
            .ok_or_else(|| RegistryError::JobNotFound(job_id.to_string()))?;
        Ok(inner.jobs[*index].clone())
    }

    /// Copies of every job, in registration order.
    pub fn jobs(&self) -> Vec<Job> {
        self.lock().jobs.clone()
    }

    // ---- task managers ---------------------------------------------------------------------

    /// Copies of every live task manager, ordered by id.
    pub fn taskmanagers(&self) -> Vec<TaskManager> {
        self.lock().taskmanagers.values().cloned().collect()
    }

    /// A copy of one live task manager.
    pub fn taskmanager(&self, id: &str) -> Result<TaskManager, RegistryError> {
        self.lock()
            .taskmanagers
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::TaskManagerNotFound(id.to_string()))
    }

    /// How many subtasks that are not terminal are placed on each task manager.
    pub fn active_subtasks_per_taskmanager(&self) -> HashMap<String, usize> {
        let inner = self.lock();
        let mut counts = HashMap::new();
        for job in &inner.jobs {
            for (v, vertex) in job.spec.vertices.iter().enumerate() {
                for (s, spec) in vertex.subtasks.iter().enumerate() {
                    if !job.runtime.subtasks[v][s].status.is_terminal() {
                        *counts.entry(spec.taskmanager.clone()).or_insert(0) += 1;
                    }
                }
            }
        }
        counts
    }

    /// Handles an agent's `Register`: adds or refreshes the task manager.
    pub fn register_taskmanager(
        &self,
        req: v1::RegisterRequest,
    ) -> Result<v1::RegisterResponse, RegistryError> {
        check_agent_field("agent_id", &req.agent_id)?;
        check_agent_field("address", &req.address)?;
        if !(req.address.starts_with("http://") || req.address.starts_with("https://")) {
            return Err(RegistryError::BadRequest(format!(
                "address: expected http://HOST:PORT or https://HOST:PORT, got {:?}",
                req.address
            )));
        }
        let host = req.host.unwrap_or_default();
        let now = now_ms();
        let tm = TaskManager {
            id: req.agent_id.clone(),
            address: req.address,
            host: HostFacts {
                hostname: host.hostname,
                cpu_cores: host.cpu_cores,
                physical_memory: host.physical_memory,
                free_memory: host.free_memory,
                os: host.os,
                kernel: host.kernel,
                agent_version: host.agent_version,
            },
            agent_pid: req.pid,
            registered_ms: now,
            last_heartbeat_ms: now,
            last_heartbeat: Instant::now(),
            metrics: BTreeMap::new(),
        };
        tracing::info!(agent = %tm.id, address = %tm.address, host = %tm.host.hostname, "task manager registered");
        self.lock().taskmanagers.insert(tm.id.clone(), tm);
        Ok(v1::RegisterResponse {
            heartbeat_interval_ms: self.heartbeat_interval().as_millis() as u64,
        })
    }

    /// Handles an agent's `Heartbeat`: records liveness and metrics, answers with the subtasks
    /// it must watch, or `reregister` when the agent is unknown.
    pub fn heartbeat(
        &self,
        req: v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatResponse, RegistryError> {
        if req.liveness.len() > MAX_HEARTBEAT_ENTRIES || req.metrics.len() > MAX_HEARTBEAT_ENTRIES {
            return Err(RegistryError::BadRequest(format!(
                "at most {MAX_HEARTBEAT_ENTRIES} liveness entries and metrics per heartbeat"
            )));
        }
        let mut inner = self.lock();
        let agent_id = req.agent_id.as_str();
        let Some(tm) = inner.taskmanagers.get_mut(agent_id) else {
            tracing::debug!(agent = %agent_id, "heartbeat from an unknown agent: asking it to register");
            return Ok(v1::HeartbeatResponse {
                reregister: true,
                watch: Vec::new(),
            });
        };
        let now = now_ms();
        tm.last_heartbeat = Instant::now();
        tm.last_heartbeat_ms = now;
        tm.host.free_memory = req.free_memory;
        tm.metrics = req
            .metrics
            .into_iter()
            .filter(|(k, v)| k.len() <= MAX_AGENT_FIELD && v.is_finite())
            .collect();

        // Apply the liveness reports to copies of the affected jobs.
        let mut changed: BTreeMap<usize, Job> = BTreeMap::new();
        for report in &req.liveness {
            let Some((job_id, vertex_id, index)) = parse_subtask_key(&report.subtask_key) else {
                continue;
            };
            let Some(&j) = inner.job_index.get(job_id) else {
                continue;
            };
            let Some(v) = inner.jobs[j].vertex_index(vertex_id) else {
                continue;
            };
            let Some(spec) = inner.jobs[j].spec.vertices[v].subtasks.get(index) else {
                continue;
            };
            if spec.taskmanager != agent_id
                || inner.jobs[j].runtime.subtasks[v][index]
                    .status
                    .is_terminal()
            {
                continue;
            }
            let job = changed.entry(j).or_insert_with(|| inner.jobs[j].clone());
            let subtask = &mut job.runtime.subtasks[v][index];
            if report.alive {
                subtask.pid = report.pid;
                subtask.threads = report.threads;
                subtask.transition(ExecutionState::Running, now);
            } else if subtask.status == ExecutionState::Running {
                subtask.transition(ExecutionState::Finished, now);
                tracing::info!(job = %job_id, vertex = %vertex_id, subtask = index, "subtask finished: its threads are gone");
            } else {
                subtask.failure = Some(format!(
                    "task manager {agent_id} found no process or threads for {}",
                    describe_selector(spec)
                ));
                subtask.transition(ExecutionState::Failed, now);
                tracing::warn!(job = %job_id, vertex = %vertex_id, subtask = index, "subtask failed: nothing to watch");
            }
        }

        // Everything not terminal on this agent is (still) watched; newly watched subtasks
        // become INITIALIZING.
        let mut watch = Vec::new();
        for j in 0..inner.jobs.len() {
            let job = changed.get(&j).unwrap_or(&inner.jobs[j]);
            let mut newly_watched = Vec::new();
            for (v, vertex) in job.spec.vertices.iter().enumerate() {
                for (s, spec) in vertex.subtasks.iter().enumerate() {
                    let status = job.runtime.subtasks[v][s].status;
                    if spec.taskmanager != agent_id || status.is_terminal() {
                        continue;
                    }
                    watch.push(selector_of(spec, subtask_key(&job.spec.id, &vertex.id, s)));
                    if !status.is_sampleable() {
                        newly_watched.push((v, s));
                    }
                }
            }
            if !newly_watched.is_empty() {
                let job = changed.entry(j).or_insert_with(|| inner.jobs[j].clone());
                for (v, s) in newly_watched {
                    job.runtime.subtasks[v][s].transition(ExecutionState::Initializing, now);
                }
            }
        }
        if !changed.is_empty() {
            for job in changed.values_mut() {
                job.refresh_status(now);
            }
            inner.store.update_runtimes(changed.values())?;
            for (j, job) in changed {
                inner.jobs[j] = job;
            }
        }
        Ok(v1::HeartbeatResponse {
            reregister: false,
            watch,
        })
    }

    /// Drops agents silent for longer than the heartbeat timeout and fails every subtask that
    /// is not terminal and whose agent is gone (after a grace of one timeout since the registry
    /// opened, so that agents can re-register after a coordinator restart). Returns the ids of
    /// the dropped agents.
    pub fn expire(&self) -> Result<Vec<String>, RegistryError> {
        let mut inner = self.lock();
        let timeout = self.heartbeat_timeout;
        let dropped: Vec<String> = inner
            .taskmanagers
            .values()
            .filter(|tm| tm.last_heartbeat.elapsed() > timeout)
            .map(|tm| tm.id.clone())
            .collect();
        for id in &dropped {
            inner.taskmanagers.remove(id);
            tracing::warn!(agent = %id, timeout_s = timeout.as_secs_f64(), "task manager lost: no heartbeat");
        }
        let grace_over = self.opened.elapsed() > timeout;
        let now = now_ms();
        let mut changed: Vec<(usize, Job)> = Vec::new();
        for (j, job) in inner.jobs.iter().enumerate() {
            let mut copy: Option<Job> = None;
            for (v, vertex) in job.spec.vertices.iter().enumerate() {
                for (s, spec) in vertex.subtasks.iter().enumerate() {
                    let lost = dropped.contains(&spec.taskmanager)
                        || (grace_over && !inner.taskmanagers.contains_key(&spec.taskmanager));
                    if !lost || job.runtime.subtasks[v][s].status.is_terminal() {
                        continue;
                    }
                    let c = copy.get_or_insert_with(|| job.clone());
                    let subtask = &mut c.runtime.subtasks[v][s];
                    subtask.failure = Some(format!(
                        "task manager {} was lost: no heartbeat for more than {} s",
                        spec.taskmanager,
                        timeout.as_secs_f64()
                    ));
                    subtask.transition(ExecutionState::Failed, now);
                }
            }
            if let Some(mut c) = copy {
                c.refresh_status(now);
                changed.push((j, c));
            }
        }
        if !changed.is_empty() {
            inner
                .store
                .update_runtimes(changed.iter().map(|(_, job)| job))?;
            for (j, job) in changed {
                tracing::warn!(job = %job.spec.id, status = job.runtime.status.name(), "subtasks lost with their task manager");
                inner.jobs[j] = job;
            }
        }
        Ok(dropped)
    }

    // ---- what the flame graph service needs -------------------------------------------------

    /// Where and what to sample for a vertex (see [`VertexSampling`]).
    pub fn vertex_sampling(
        &self,
        job_id: &str,
        vertex_id: &str,
    ) -> Result<VertexSampling, RegistryError> {
        let inner = self.lock();
        let j = *inner
            .job_index
            .get(job_id)
            .ok_or_else(|| RegistryError::JobNotFound(job_id.to_string()))?;
        let job = &inner.jobs[j];
        let v = job
            .vertex_index(vertex_id)
            .ok_or_else(|| RegistryError::VertexNotFound(vertex_id.to_string()))?;
        let vertex = &job.spec.vertices[v];
        let subtasks = vertex
            .subtasks
            .iter()
            .enumerate()
            .map(|(s, spec)| {
                let status = job.runtime.subtasks[v][s].status;
                let target = match inner.taskmanagers.get(&spec.taskmanager) {
                    Some(tm) if status.is_sampleable() => Some(SubtaskTarget {
                        subtask_index: s as u32,
                        taskmanager_id: tm.id.clone(),
                        agent_address: tm.address.clone(),
                        selector: selector_of(spec, subtask_key(&job.spec.id, &vertex.id, s)),
                    }),
                    _ => None,
                };
                SubtaskSampling {
                    index: s as u32,
                    terminal: status.is_terminal(),
                    target,
                }
            })
            .collect();
        Ok(VertexSampling {
            job_name: job.spec.name.clone(),
            vertex_name: vertex.name.clone(),
            parallelism: vertex.subtasks.len() as u32,
            vertex_terminal: job.vertex_status(v).is_terminal(),
            subtasks,
        })
    }

    /// The agent address of a live task manager and one selector per process it watches: every
    /// process that runs a RUNNING or INITIALIZING subtask on it, each once, with no thread
    /// filter. A thread dump is of whole processes, as Flink's is of the whole TaskManager JVM:
    /// a stuck thread is often one no subtask selector names (a pool, a timer, a GC thread).
    pub fn taskmanager_dump_targets(
        &self,
        tmid: &str,
    ) -> Result<(String, Vec<v1::ThreadSelector>), RegistryError> {
        let inner = self.lock();
        let tm = inner
            .taskmanagers
            .get(tmid)
            .ok_or_else(|| RegistryError::TaskManagerNotFound(tmid.to_string()))?;
        let mut selectors: Vec<v1::ThreadSelector> = Vec::new();
        for job in &inner.jobs {
            for (v, vertex) in job.spec.vertices.iter().enumerate() {
                for (s, spec) in vertex.subtasks.iter().enumerate() {
                    if spec.taskmanager == tmid && job.runtime.subtasks[v][s].status.is_sampleable()
                    {
                        let mut selector =
                            selector_of(spec, subtask_key(&job.spec.id, &vertex.id, s));
                        // The whole process, named once: the agent then lists each thread once.
                        selector.tids.clear();
                        selector.thread_name.clear();
                        if !selectors
                            .iter()
                            .any(|known| known.process == selector.process)
                        {
                            selectors.push(selector);
                        }
                    }
                }
            }
        }
        Ok((tm.address.clone(), selectors))
    }
}

fn check_agent_field(name: &str, value: &str) -> Result<(), RegistryError> {
    if value.is_empty() || value.len() > MAX_AGENT_FIELD || value.chars().any(char::is_control) {
        return Err(RegistryError::BadRequest(format!(
            "{name}: expected 1 to {MAX_AGENT_FIELD} bytes without control characters"
        )));
    }
    Ok(())
}

fn describe_selector(spec: &SubtaskSpec) -> String {
    let process = match &spec.process {
        ProcessRef::Pid(pid) => format!("pid {pid}"),
        ProcessRef::ProcessName(name) => format!("process {name:?}"),
    };
    let mut threads = Vec::new();
    if !spec.tids.is_empty() {
        threads.push(format!("tids {:?}", spec.tids));
    }
    if let Some(re) = &spec.thread_name {
        threads.push(format!("thread name /{re}/"));
    }
    if threads.is_empty() {
        process
    } else {
        format!("{process} ({})", threads.join(", "))
    }
}
