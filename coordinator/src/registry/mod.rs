//! The registry: which task managers (agents) are alive, which jobs exist, and what state every
//! subtask is in.
//!
//! ```text
//!   agents ── Register / Heartbeat (gRPC, grpc.rs) ──▶ Registry ◀── POST/PATCH/GET (rest/)
//!                                                       │  jobs: Vec<Job>   (SQLite: store.rs,
//!                                                       │                    or PostgreSQL: postgres.rs)
//!                                                       │  taskmanagers     (memory; and PostgreSQL)
//!                                                       ▼
//!                                   vertex_sampling() ──▶ flame graph fan-out
//! ```
//!
//! All state sits behind one mutex (`inner`), which heartbeats, the sweeper and every read take
//! for a few map look-ups; the store ([`JobStore`], SQLite in `store.rs`) sits behind a second
//! one (`store`), always taken *before* `inner` when both are needed, so the two never deadlock.
//!
//! * **REST writes** (`POST /jobs`, `PATCH /jobs/:jobid`, expiry of terminal jobs) keep memory
//!   and disk consistent the strict way: the change is applied to a *copy*, committed to the
//!   store with an fsync ([`store::Sync::Full`]), and only then swapped into memory. If the
//!   commit fails nothing changes, and an acknowledged change is always on disk. A new job is
//!   parsed and validated before any lock is taken, and stored before `inner` is locked.
//! * **Heartbeat state** (subtask transitions, pid and thread counts, agents lost) changes
//!   memory *in place*, at a cost of the subtasks that changed, and marks the job dirty; memory
//!   is the truth. [`Registry::flush`], run every [`FLUSH_INTERVAL`] by the flusher
//!   (`flusher.rs`, started with the coordinator, and once more when it stops or the registry is
//!   dropped), copies the dirty jobs' runtimes under `inner`, releases it, and writes them all
//!   in one transaction ([`store::Sync::Normal`]) holding only `store`: heartbeats never wait
//!   for the disk. A failed flush is logged and the jobs stay dirty, so the next one retries.
//!   See `store.rs` for what each kind of write survives (a crash, a power loss).
//!
//! The methods are synchronous (REST writes and the flush block on the disk); async callers run
//! those through `tokio::task::spawn_blocking`.
//!
//! ## Replicas on one database (issue 16)
//!
//! With `--database-url` the store is [`postgres::PgStore`], shared by every replica: REST
//! writes and registrations commit there before they are acknowledged, the flush merges only
//! the subtasks this replica changed into the stored rows, and writes agents' heartbeat times
//! in batches; after each flush the sync step ([`Registry::sync`]) pulls the other replicas'
//! changes into memory; a job id memory lacks is read through once before a 404. What is where,
//! what each replica does, why the change feed misses nothing and what a crash loses:
//! `replication.rs`. Without it (SQLite) none of this runs and nothing changes.
//!
//! Liveness: an agent's heartbeat carries, per watched subtask, whether its process and threads
//! still exist (see `state.rs` for the transitions). [`Registry::expire`], called periodically,
//! drops agents silent for longer than the heartbeat timeout and fails their subtasks.
//!
//! ## Bounded work and state (issue 12)
//!
//! * **Heartbeats cost O(the agent's own subtasks).** The subtasks that are not terminal are
//!   indexed by task manager (`Inner::watched`); a heartbeat looks up only its agent's entries,
//!   matches its liveness reports against them through one map, and changes in place only the
//!   subtasks whose report differs (plus one pass over a changed job's subtask states, to derive
//!   its status). No job is copied and nothing is written to disk by a heartbeat; nothing walks
//!   every job under the lock.
//! * **Terminal jobs expire** like Flink's job store ([`JobRetention`]: `--job-retention-s`,
//!   `jobstore.expiration-time`, and `--job-retention-max`, `jobstore.max-capacity`, oldest
//!   first): [`Registry::expire_jobs`] removes them from memory and from SQLite, and a removed
//!   job answers 404 like one that never existed.
//! * **Everything an agent sends is bounded**: ids, addresses and host strings are length-checked
//!   (INVALID_ARGUMENT naming the field), heartbeats carry at most [`MAX_HEARTBEAT_ENTRIES`]
//!   entries, and the gRPC server's message limits are explicit (`grpc.rs`).
//!
//! ## Agent identity
//!
//! An agent id is a claim, not a proof. Registering an id that a **live** agent holds, from
//! another peer address or with another advertised address, would let anyone redirect the
//! coordinator's sampling calls (and the shared token they carry) to a host of their choice. So
//! such a takeover needs the shared token (when the coordinator has `--token-file`, every call
//! carries it) or the same TLS client certificate the live agent registered with; otherwise it is
//! refused with ALREADY_EXISTS and nothing changes. The same agent registering again from the
//! same place (a restart) is always accepted, and an id whose agent has been silent for longer
//! than `--heartbeat-timeout-s` may be taken by anyone who may register at all.

pub mod error;
pub mod flusher;
pub mod grpc;
pub mod ids;
pub mod job;
pub mod postgres;
pub mod replication;
pub mod state;
pub mod store;
pub mod taskmanager;
pub mod tls;
pub mod validate;

pub use error::RegistryError;
pub use job::Job;
pub use state::{ExecutionState, JobStatus};
pub use taskmanager::{HostFacts, TaskManager};

use crate::missing::MissingReason;
use crate::sampling::{SubtaskSampling, SubtaskTarget, VertexSampling};
use flamegrid_model::clock::now_ms;
use flamegrid_proto::v1;
use job::{JobRuntime, ProcessRef, SubtaskRuntime, SubtaskSpec, VertexSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use store::{JobStore, RuntimeChange, SqliteStore};

/// Longest agent id or address accepted at registration.
pub const MAX_AGENT_FIELD: usize = 256;
/// Longest host string (host name, OS, kernel, agent version) accepted at registration.
pub const MAX_HOST_FIELD: usize = 256;
/// At most this many liveness entries in one heartbeat: DESIGN.md's scale is 100,000 watched
/// subtasks on one coordinator, so one agent may watch all of them.
pub const MAX_HEARTBEAT_ENTRIES: usize = 131_072;
/// At most this many host metrics in one heartbeat (an agent sends about a dozen).
pub const MAX_HEARTBEAT_METRICS: usize = 1024;
/// How often the flusher writes the state heartbeats changed ([`Registry::flush`]): the most
/// heartbeat state a crash of the coordinator can take with it is this much (and the agents
/// tell it again after the restart).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// How long terminal jobs are kept, like Flink's job store (`jobstore.expiration-time`,
/// `jobstore.max-capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// A FINISHED, CANCELED or FAILED job is removed this long after it ended.
    pub max_age: Duration,
    /// At most this many terminal jobs are kept; beyond it the oldest (by end time) go first.
    pub max_count: usize,
}

impl Default for JobRetention {
    /// Flink's defaults: one hour, and 1000 jobs.
    fn default() -> Self {
        JobRetention {
            max_age: Duration::from_secs(3600),
            max_count: 1000,
        }
    }
}

/// Who is calling `Register`, as the transport saw it; decides whether a live agent id may be
/// taken over (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The peer's IP address (the port changes with every connection and is ignored).
    pub peer_ip: Option<IpAddr>,
    /// The DER of the client certificate the peer presented (mutual TLS), if any.
    pub tls_identity: Option<Vec<u8>>,
    /// The call carried the coordinator's shared token (`--token-file`), checked already.
    pub token_verified: bool,
}

impl Caller {
    /// A caller in this process (the demo, tests): trusted like a token holder.
    pub fn in_process() -> Self {
        Caller {
            token_verified: true,
            ..Caller::default()
        }
    }
}

/// A subtask by position: (index into `Inner::jobs`, vertex index, subtask index).
type SubtaskPos = (usize, usize, usize);

/// Jobs, task managers and subtask states; see the module docs.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Locked before `inner` whenever both are held (see the module docs).
    store: Mutex<Box<dyn JobStore>>,
    heartbeat_timeout: Duration,
    retention: JobRetention,
    /// When this registry was opened: subtasks whose agent has not (re-)registered since get
    /// one heartbeat timeout of grace before they count as lost.
    opened: Instant,
    /// Whether other replicas share the store (see `replication.rs`).
    shared: bool,
    /// Rows written to the store by flushes: job runtimes, task managers' heartbeat times.
    written: [AtomicU64; 2],
    /// This replica's id in a shared store (see `replication.rs`): agents it vouches for carry
    /// it as their `vouched_by`.
    replica: Option<String>,
}

/// What the flushes of a registry wrote to its store, in rows (see [`Registry::store_writes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreWrites {
    /// Job runtimes written.
    pub job_rows: u64,
    /// Task managers' rows written by flushes (a shared store only): only when the replica
    /// vouching for an agent changes (it moved here, or stopped heartbeating), not per
    /// heartbeat (see `replication.rs`).
    pub taskmanager_rows: u64,
}

#[derive(Debug)]
struct Inner {
    /// In registration order.
    jobs: Vec<Job>,
    /// Job id → index into `jobs`.
    job_index: HashMap<String, usize>,
    taskmanagers: BTreeMap<String, TaskManager>,
    /// Task manager id → its subtasks that are not terminal: what it watches. Kept in step with
    /// `jobs` by every write, rebuilt whole only when jobs are removed (positions shift).
    watched: HashMap<String, BTreeSet<SubtaskPos>>,
    /// Ids of the jobs whose runtime changed in memory since it was last written
    /// ([`Registry::flush`]), each with the (vertex, subtask) positions that changed (a shared
    /// store merges only those with the other replicas' changes).
    dirty: HashMap<String, BTreeSet<(usize, usize)>>,
    /// Task manager id → when its last heartbeat to *this* replica arrived (ms; a shared store
    /// only): the agents this replica vouches for (see `replication.rs`).
    beats_here: HashMap<String, i64>,
}

impl Inner {
    /// The index of not-terminal subtasks by task manager, from scratch.
    fn index_watched(jobs: &[Job]) -> HashMap<String, BTreeSet<SubtaskPos>> {
        let mut watched: HashMap<String, BTreeSet<SubtaskPos>> = HashMap::new();
        for (j, job) in jobs.iter().enumerate() {
            for (v, vertex) in job.spec.vertices.iter().enumerate() {
                for (s, spec) in vertex.subtasks.iter().enumerate() {
                    if !job.runtime.subtasks[v][s].status.is_terminal() {
                        watched
                            .entry(spec.taskmanager.clone())
                            .or_default()
                            .insert((j, v, s));
                    }
                }
            }
        }
        watched
    }

    /// Rebuilds the id index and the watched index after jobs were removed (positions shift).
    fn reindex(&mut self) {
        self.job_index = self
            .jobs
            .iter()
            .enumerate()
            .map(|(j, job)| (job.spec.id.clone(), j))
            .collect();
        self.watched = Inner::index_watched(&self.jobs);
    }

    /// Drops `pos` from `tm`'s watched set (it became terminal).
    fn unwatch(&mut self, tm: &str, pos: SubtaskPos) {
        if let Some(set) = self.watched.get_mut(tm) {
            set.remove(&pos);
            if set.is_empty() {
                self.watched.remove(tm);
            }
        }
    }

    /// Marks job `j` as changed in memory: the next flush writes it.
    fn mark_dirty(&mut self, j: usize) {
        let id = &self.jobs[j].spec.id;
        if !self.dirty.contains_key(id) {
            let id = id.clone();
            self.dirty.insert(id, BTreeSet::new());
        }
    }

    /// Marks subtask `(v, s)` of job `j` as changed in memory: the next flush writes it.
    fn mark_dirty_at(&mut self, (j, v, s): SubtaskPos) {
        let id = &self.jobs[j].spec.id;
        match self.dirty.get_mut(id) {
            Some(positions) => {
                positions.insert((v, s));
            }
            None => {
                let id = id.clone();
                self.dirty.insert(id, BTreeSet::from([(v, s)]));
            }
        }
    }

    /// The watched positions of `tm`, in order.
    fn watched_by(&self, tm: &str) -> Vec<SubtaskPos> {
        self.watched
            .get(tm)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Identifies one subtask in heartbeats: `<job id>/<vertex id>/<subtask index>`. The agent
/// echoes it back; the registry parses it and checks that the subtask really is on that agent.
pub fn subtask_key(job_id: &str, vertex_id: &str, index: usize) -> String {
    format!("{job_id}/{vertex_id}/{index}")
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
    /// Opens the registry, loading every stored job from `data_dir`, with the default
    /// [`JobRetention`].
    pub fn open(data_dir: &Path, heartbeat_timeout: Duration) -> Result<Self, RegistryError> {
        Self::open_with_retention(data_dir, heartbeat_timeout, JobRetention::default())
    }

    /// Opens the registry, loading every stored job from `data_dir`; terminal jobs are kept as
    /// `retention` says (applied by [`Registry::expire_jobs`]).
    pub fn open_with_retention(
        data_dir: &Path,
        heartbeat_timeout: Duration,
        retention: JobRetention,
    ) -> Result<Self, RegistryError> {
        let store = SqliteStore::open(data_dir)?;
        Self::open_with_store(Box::new(store), heartbeat_timeout, retention)
    }

    /// Opens the registry on any [`JobStore`], loading every job it holds.
    pub fn open_with_store(
        store: Box<dyn JobStore>,
        heartbeat_timeout: Duration,
        retention: JobRetention,
    ) -> Result<Self, RegistryError> {
        let mut store = store;
        let jobs = store.load_all()?;
        let shared = store.is_shared();
        // A shared store also has the agents other replicas (or this one, before a restart)
        // registered: those still within the timeout are live here too.
        let mut taskmanagers = BTreeMap::new();
        for tm in store.load_taskmanagers()? {
            if tm.last_heartbeat.elapsed() <= heartbeat_timeout {
                taskmanagers.insert(tm.id.clone(), tm);
            }
        }
        let job_index = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.spec.id.clone(), i))
            .collect();
        tracing::info!(store = %store.describe(), jobs = jobs.len(), "registry opened");
        let watched = Inner::index_watched(&jobs);
        let replica = store.replica_id().map(str::to_owned);
        Ok(Registry {
            inner: Mutex::new(Inner {
                jobs,
                job_index,
                taskmanagers,
                watched,
                dirty: HashMap::new(),
                beats_here: HashMap::new(),
            }),
            store: Mutex::new(store),
            heartbeat_timeout,
            retention,
            opened: Instant::now(),
            shared,
            written: Default::default(),
            replica,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (REST writes are swapped in
        // whole, heartbeat changes are single-field updates), so a poisoned lock is still safe
        // to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store; taken before [`Registry::lock`] when both are needed.
    fn lock_store(&self) -> MutexGuard<'_, Box<dyn JobStore>> {
        // A transaction interrupted by a panic is rolled back by SQLite: still safe to use.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the runtime of every job that heartbeats or the sweeper changed since the last
    /// flush, in one transaction, without holding the lock heartbeats need during the I/O (see
    /// the module docs). Returns how many jobs were written. On failure the jobs stay dirty, so
    /// the next flush retries them; nothing in memory is lost.
    pub fn flush(&self) -> Result<usize, RegistryError> {
        let mut store = self.lock_store();
        if self.shared {
            self.flush_heartbeats(&mut store)?;
        }
        type Snapshot = Vec<(String, JobRuntime, Vec<(usize, usize)>)>;
        let snapshot: Snapshot = {
            let mut inner = self.lock();
            let dirty = std::mem::take(&mut inner.dirty);
            dirty
                .into_iter()
                .filter_map(|(id, positions)| {
                    let j = *inner.job_index.get(&id)?;
                    Some((
                        id,
                        inner.jobs[j].runtime.clone(),
                        positions.into_iter().collect(),
                    ))
                })
                .collect()
        };
        if snapshot.is_empty() {
            return Ok(0);
        }
        let changes: Vec<RuntimeChange<'_>> = snapshot
            .iter()
            .map(|(id, runtime, positions)| RuntimeChange {
                id,
                runtime,
                changed: Some(positions),
            })
            .collect();
        match store.merge_runtimes(&changes, store::Sync::Normal) {
            Ok(()) => {
                self.written[0].fetch_add(snapshot.len() as u64, Ordering::Relaxed);
                Ok(snapshot.len())
            }
            Err(e) => {
                let mut inner = self.lock();
                for (id, _, positions) in snapshot {
                    if let Some(&j) = inner.job_index.get(&id) {
                        for (v, s) in positions {
                            inner.mark_dirty_at((j, v, s));
                        }
                        inner.mark_dirty(j);
                    }
                }
                Err(e)
            }
        }
    }

    /// Rows the flushes wrote so far (job runtimes, task managers' heartbeat times).
    pub fn store_writes(&self) -> StoreWrites {
        StoreWrites {
            job_rows: self.written[0].load(Ordering::Relaxed),
            taskmanager_rows: self.written[1].load(Ordering::Relaxed),
        }
    }

    /// How many jobs have state in memory that the store does not have yet.
    pub fn dirty_jobs(&self) -> usize {
        self.lock().dirty.len()
    }

    /// Whether the store is shared with other replicas (`--database-url`).
    pub fn is_shared(&self) -> bool {
        self.shared
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
    ///
    /// The body is parsed and checked against the task managers registered when the call
    /// starts, with no lock held (a job of 100,000 subtasks takes a while to parse, and
    /// heartbeats must not wait for it); the job is stored holding only the store's lock, and
    /// then added to memory.
    pub fn register_job(&self, body: &[u8]) -> Result<String, RegistryError> {
        if self.shared {
            // The agents and jobs other replicas know, a moment ago: a job placed on an agent
            // that registered with another replica is valid here too.
            self.sync()?;
        }
        let endpoints: HashMap<String, String> = self
            .lock()
            .taskmanagers
            .values()
            .map(|tm| (tm.id.clone(), tm.endpoint()))
            .collect();
        let spec = validate::parse_job(body, &|tm| endpoints.contains_key(tm))
            .map_err(RegistryError::InvalidJob)?;
        let now = now_ms();
        let job = Job::accepted(spec, now, |tm| {
            endpoints
                .get(tm)
                .cloned()
                .unwrap_or_else(|| "(unassigned)".into())
        });
        // Held until the job is in memory too, so jobs are in the same order in both.
        let mut store = self.lock_store();
        store.insert(&job, now)?;
        let id = job.spec.id.clone();
        tracing::info!(job = %id, name = %job.spec.name, vertices = job.spec.vertices.len(), "job registered");
        let mut inner = self.lock();
        let index = inner.jobs.len();
        for (v, vertex) in job.spec.vertices.iter().enumerate() {
            for (s, spec) in vertex.subtasks.iter().enumerate() {
                match inner.watched.get_mut(&spec.taskmanager) {
                    Some(set) => {
                        set.insert((index, v, s));
                    }
                    None => {
                        inner
                            .watched
                            .insert(spec.taskmanager.clone(), BTreeSet::from([(index, v, s)]));
                    }
                }
            }
        }
        inner.jobs.push(job);
        inner.job_index.insert(id.clone(), index);
        Ok(id)
    }

    /// Cancels a job: every subtask not yet terminal becomes CANCELED, sampling stops. Like
    /// Flink's Dispatcher, cancelling a job that is already CANCELED succeeds (and changes
    /// nothing); a job that ended otherwise (FINISHED, FAILED) is
    /// [`RegistryError::AlreadyTerminal`].
    pub fn cancel_job(&self, job_id: &str) -> Result<(), RegistryError> {
        if self.shared {
            // A job registered on another replica a moment ago is read through first.
            drop(self.lock_with_job(job_id)?);
        }
        let mut store = self.lock_store();
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
        store.merge_runtimes(
            &[RuntimeChange {
                id: job_id,
                runtime: &job.runtime,
                changed: None,
            }],
            store::Sync::Full,
        )?;
        // Written whole, with whatever heartbeats had changed: nothing left to flush.
        inner.dirty.remove(job_id);
        tracing::info!(job = %job_id, "job canceled");
        for (v, vertex) in job.spec.vertices.iter().enumerate() {
            for (s, spec) in vertex.subtasks.iter().enumerate() {
                inner.unwatch(&spec.taskmanager, (index, v, s));
            }
        }
        inner.jobs[index] = job;
        Ok(())
    }

    /// A copy of one job.
    pub fn job(&self, job_id: &str) -> Result<Job, RegistryError> {
        self.with_job(job_id, Job::clone)
    }

    /// Copies of every job, in registration order. Copies 100,000 subtasks for a job of that
    /// size: answers that need only a little of each job use [`Registry::with_jobs`].
    pub fn jobs(&self) -> Vec<Job> {
        self.lock().jobs.clone()
    }

    /// Runs `f` on every job, in registration order, under the registry's lock, without copying
    /// them: for lists and counts. `f` must be quick (heartbeats wait meanwhile).
    pub fn with_jobs<R>(&self, f: impl FnOnce(&[Job]) -> R) -> R {
        f(&self.lock().jobs)
    }

    /// Runs `f` on one job under the registry's lock, without copying it: for answers built
    /// from a summary or a part of a large job. `f` must be quick (heartbeats wait meanwhile).
    pub fn with_job<R>(&self, job_id: &str, f: impl FnOnce(&Job) -> R) -> Result<R, RegistryError> {
        let inner = self.lock_with_job(job_id)?;
        let index = inner
            .job_index
            .get(job_id)
            .ok_or_else(|| RegistryError::JobNotFound(job_id.to_string()))?;
        Ok(f(&inner.jobs[*index]))
    }

    /// A copy of one vertex of a job: its spec and its subtasks' runtime (not the rest of the
    /// job, which may hold 100,000 subtasks).
    pub fn vertex(
        &self,
        job_id: &str,
        vertex_id: &str,
    ) -> Result<(VertexSpec, Vec<SubtaskRuntime>), RegistryError> {
        self.with_job(job_id, |job| {
            let v = job
                .vertex_index(vertex_id)
                .ok_or_else(|| RegistryError::VertexNotFound(vertex_id.to_string()))?;
            Ok((
                job.spec.vertices[v].clone(),
                job.runtime.subtasks[v].clone(),
            ))
        })?
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

    /// How many subtasks that are not terminal task manager `tm` runs, per job id (from the
    /// index of watched subtasks: no walk over every job).
    pub fn active_subtasks_by_job(&self, tm: &str) -> BTreeMap<String, usize> {
        let inner = self.lock();
        // Positions are ordered by job: count runs of the same job.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &(j, _, _) in inner.watched.get(tm).into_iter().flatten() {
            match runs.last_mut() {
                Some((last, n)) if *last == j => *n += 1,
                _ => runs.push((j, 1)),
            }
        }
        runs.into_iter()
            .map(|(j, n)| (inner.jobs[j].spec.id.clone(), n))
            .collect()
    }

    /// How many subtasks that are not terminal are placed on each task manager.
    pub fn active_subtasks_per_taskmanager(&self) -> HashMap<String, usize> {
        self.lock()
            .watched
            .iter()
            .map(|(tm, set)| (tm.clone(), set.len()))
            .collect()
    }

    /// Handles an agent's `Register` from a caller in this process (trusted like a token
    /// holder); see [`Registry::register_taskmanager_as`].
    pub fn register_taskmanager(
        &self,
        req: v1::RegisterRequest,
    ) -> Result<v1::RegisterResponse, RegistryError> {
        self.register_taskmanager_as(req, &Caller::in_process())
    }

    /// Handles an agent's `Register`: adds or refreshes the task manager. Every string is
    /// length-checked first (INVALID_ARGUMENT naming the field). Taking over an id a live agent
    /// holds needs the token or the same TLS identity (see the module docs):
    /// [`RegistryError::AgentIdTaken`] otherwise, and nothing changes.
    pub fn register_taskmanager_as(
        &self,
        req: v1::RegisterRequest,
        caller: &Caller,
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
        for (name, value) in [
            ("host.hostname", &host.hostname),
            ("host.os", &host.os),
            ("host.kernel", &host.kernel),
            ("host.agent_version", &host.agent_version),
        ] {
            check_host_field(name, value)?;
        }
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
            peer_ip: caller.peer_ip,
            tls_identity: caller.tls_identity.clone(),
            // A shared store records this replica as vouching for it (`put_taskmanager`).
            vouched_by: self.replica.clone(),
        };
        // A shared store has the registration before it is acknowledged (every replica then
        // knows the agent); its lock serialises registrations. SQLite does not keep agents.
        let mut store = self.shared.then(|| self.lock_store());
        let inner = self.lock();
        if let Some(live) = inner
            .taskmanagers
            .get(&tm.id)
            .filter(|old| old.last_heartbeat.elapsed() <= self.heartbeat_timeout)
        {
            let same_place = live.address == tm.address && live.peer_ip == tm.peer_ip;
            let same_identity =
                live.tls_identity.is_some() && live.tls_identity == caller.tls_identity;
            if !(same_place || same_identity || caller.token_verified) {
                tracing::warn!(
                    agent = %tm.id, live_address = %live.address, claimed_address = %tm.address,
                    peer = ?caller.peer_ip, "registration refused: the id belongs to a live agent elsewhere"
                );
                return Err(RegistryError::AgentIdTaken(tm.id));
            }
        }
        drop(inner);
        if let Some(store) = store.as_mut() {
            store.put_taskmanager(&tm)?;
        }
        tracing::info!(agent = %tm.id, address = %tm.address, host = %tm.host.hostname, "task manager registered");
        let mut inner = self.lock();
        if self.shared {
            inner.beats_here.insert(tm.id.clone(), tm.last_heartbeat_ms);
        }
        inner.taskmanagers.insert(tm.id.clone(), tm);
        Ok(v1::RegisterResponse {
            heartbeat_interval_ms: self.heartbeat_interval().as_millis() as u64,
        })
    }

    /// Handles an agent's `Heartbeat`: records liveness and metrics, answers with the subtasks
    /// it must watch, or `reregister` when the agent is unknown. Costs O(the agent's own
    /// subtasks + its reports): see the module docs.
    pub fn heartbeat(
        &self,
        req: v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatResponse, RegistryError> {
        if req.liveness.len() > MAX_HEARTBEAT_ENTRIES || req.metrics.len() > MAX_HEARTBEAT_METRICS {
            return Err(RegistryError::BadRequest(format!(
                "at most {MAX_HEARTBEAT_ENTRIES} liveness entries and {MAX_HEARTBEAT_METRICS} \
                 metrics per heartbeat, got {} and {}",
                req.liveness.len(),
                req.metrics.len()
            )));
        }
        self.read_through_taskmanager(&req.agent_id);
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
        if self.shared {
            // What this replica vouches for (`replication.rs`); no allocation once known.
            match inner.beats_here.get_mut(agent_id) {
                Some(at) => *at = now,
                None => {
                    inner.beats_here.insert(agent_id.to_owned(), now);
                }
            }
        }

        // This agent's subtasks, by the key it echoes: the only ones its reports may change.
        // In registration order (job, vertex, subtask), which is the order of the watch list.
        let own: Vec<(String, SubtaskPos)> = inner
            .watched_by(agent_id)
            .into_iter()
            .map(|(j, v, s)| {
                let job = &inner.jobs[j];
                (
                    subtask_key(&job.spec.id, &job.spec.vertices[v].id, s),
                    (j, v, s),
                )
            })
            .collect();
        let keys: HashMap<&str, SubtaskPos> =
            own.iter().map(|(key, pos)| (key.as_str(), *pos)).collect();

        // Apply the reports in place, to the subtasks whose report differs (and only those).
        // `changed` maps a job to whether a subtask's state changed (the job's status is then
        // derived again, one pass over its subtasks) or only a pid or thread count did.
        let mut changed: BTreeMap<usize, bool> = BTreeMap::new();
        let mut touched: Vec<SubtaskPos> = Vec::new();
        let mut ended: Vec<SubtaskPos> = Vec::new();
        for report in &req.liveness {
            let Some(&(j, v, s)) = keys.get(report.subtask_key.as_str()) else {
                continue; // not this agent's, unknown, or already terminal
            };
            let job = &mut inner.jobs[j];
            let current = &job.runtime.subtasks[v][s];
            if current.status.is_terminal() {
                continue; // a second report for a subtask this heartbeat already ended
            }
            let unchanged = report.alive
                && current.status == ExecutionState::Running
                && current.pid == report.pid
                && current.threads == report.threads;
            if unchanged {
                continue;
            }
            let (job_id, vertex_id) = (&job.spec.id, &job.spec.vertices[v].id);
            let spec = &job.spec.vertices[v].subtasks[s];
            let subtask = &mut job.runtime.subtasks[v][s];
            let mut transitioned = true;
            if report.alive {
                subtask.pid = report.pid;
                subtask.threads = report.threads;
                transitioned = subtask.transition(ExecutionState::Running, now);
            } else if subtask.status == ExecutionState::Running {
                subtask.absent = Some(MissingReason::from_wire(report.failure));
                subtask.transition(ExecutionState::Finished, now);
                ended.push((j, v, s));
                tracing::info!(job = %job_id, vertex = %vertex_id, subtask = s, "subtask finished: its threads are gone");
            } else {
                subtask.failure = Some(format!(
                    "task manager {agent_id} found no process or threads for {}",
                    describe_selector(spec)
                ));
                subtask.absent = Some(MissingReason::from_wire(report.failure));
                subtask.transition(ExecutionState::Failed, now);
                ended.push((j, v, s));
                tracing::warn!(job = %job_id, vertex = %vertex_id, subtask = s, "subtask failed: nothing to watch");
            }
            *changed.entry(j).or_default() |= transitioned;
            touched.push((j, v, s));
        }

        // Everything not terminal on this agent is (still) watched; newly watched subtasks
        // become INITIALIZING.
        let mut watch = Vec::with_capacity(own.len());
        for (key, (j, v, s)) in &own {
            let (j, v, s) = (*j, *v, *s);
            let job = &mut inner.jobs[j];
            let status = job.runtime.subtasks[v][s].status;
            if status.is_terminal() {
                continue;
            }
            watch.push(selector_of(&job.spec.vertices[v].subtasks[s], key.clone()));
            if !status.is_sampleable() {
                job.runtime.subtasks[v][s].transition(ExecutionState::Initializing, now);
                changed.insert(j, true);
                touched.push((j, v, s));
            }
        }
        for pos in touched {
            inner.mark_dirty_at(pos);
        }
        // Only a subtask that ended can change a RUNNING job's status: subtasks that started
        // spare the pass over all of a job's (up to 100,000) subtasks.
        let ended_jobs: BTreeSet<usize> = ended.iter().map(|&(j, _, _)| j).collect();
        for (j, transitioned) in changed {
            let job = &mut inner.jobs[j];
            if transitioned && ended_jobs.contains(&j) {
                job.refresh_status(now);
            } else if transitioned {
                job.refresh_status_after_start(now);
            } else {
                job.runtime.last_modification = now;
            }
            inner.mark_dirty(j);
        }
        for pos in ended {
            inner.unwatch(agent_id, pos);
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
        // The task managers whose subtasks are lost: the ones just dropped, and (once the grace
        // after opening is over) any that watches something but is not registered.
        // O(task managers) per tick, without a walk over any job.
        let just_dropped: HashSet<&str> = dropped.iter().map(String::as_str).collect();
        let lost_tms: Vec<String> = inner
            .watched
            .keys()
            .filter(|tm| {
                just_dropped.contains(tm.as_str())
                    || (grace_over && !inner.taskmanagers.contains_key(*tm))
            })
            .cloned()
            .collect();
        let mut changed: BTreeSet<usize> = BTreeSet::new();
        let mut lost: Vec<(String, SubtaskPos)> = Vec::new();
        for tm in &lost_tms {
            for (j, v, s) in inner.watched_by(tm) {
                let subtask = &mut inner.jobs[j].runtime.subtasks[v][s];
                if subtask.status.is_terminal() {
                    continue;
                }
                subtask.failure = Some(format!(
                    "task manager {tm} was lost: no heartbeat for more than {} s",
                    timeout.as_secs_f64()
                ));
                subtask.absent = Some(if subtask.status.is_sampleable() {
                    MissingReason::AgentLost
                } else {
                    MissingReason::NeverConfirmed
                });
                subtask.transition(ExecutionState::Failed, now);
                changed.insert(j);
                inner.mark_dirty_at((j, v, s));
                lost.push((tm.clone(), (j, v, s)));
            }
        }
        for j in changed {
            let job = &mut inner.jobs[j];
            job.refresh_status(now);
            tracing::warn!(job = %job.spec.id, status = job.runtime.status.name(), "subtasks lost with their task manager");
            inner.mark_dirty(j);
        }
        for (tm, pos) in lost {
            inner.unwatch(&tm, pos);
        }
        Ok(dropped)
    }

    /// Removes terminal jobs past their retention ([`JobRetention`]): those that ended longer
    /// than `max_age` ago, then the oldest beyond `max_count`. They go from SQLite first (one
    /// transaction) and then from memory, so a job is never half-removed. Returns the removed
    /// ids, for the caller to free their flame graphs. Called periodically with
    /// [`Registry::expire`].
    pub fn expire_jobs(&self) -> Result<Vec<String>, RegistryError> {
        let mut store = self.lock_store();
        let mut inner = self.lock();
        let now = now_ms();
        let max_age_ms = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut terminal: Vec<(i64, usize)> = inner
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, job)| job.runtime.status.is_terminal())
            .map(|(j, job)| (job.end_time(), j))
            .collect();
        terminal.sort_unstable();
        let over_count = terminal.len().saturating_sub(self.retention.max_count);
        let remove: BTreeSet<usize> = terminal
            .iter()
            .enumerate()
            .filter(|(rank, (ended, _))| {
                *rank < over_count || now.saturating_sub(*ended) > max_age_ms
            })
            .map(|(_, (_, j))| *j)
            .collect();
        if remove.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = remove
            .iter()
            .map(|&j| inner.jobs[j].spec.id.clone())
            .collect();
        store.delete(&ids)?;
        for id in &ids {
            inner.dirty.remove(id);
        }
        let jobs = std::mem::take(&mut inner.jobs);
        inner.jobs = jobs
            .into_iter()
            .enumerate()
            .filter(|(j, _)| !remove.contains(j))
            .map(|(_, job)| job)
            .collect();
        inner.reindex();
        tracing::info!(
            removed = ids.len(),
            kept = inner.jobs.len(),
            "terminal jobs expired (--job-retention-s, --job-retention-max)"
        );
        Ok(ids)
    }

    // ---- what the flame graph service needs -------------------------------------------------

    /// Where and what to sample for a vertex (see [`VertexSampling`]).
    pub fn vertex_sampling(
        &self,
        job_id: &str,
        vertex_id: &str,
    ) -> Result<VertexSampling, RegistryError> {
        let inner = self.lock_with_job(job_id)?;
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
                // Every subtask that is not terminal is sampled, confirmed or not: right after
                // `POST /jobs` no heartbeat has confirmed anything yet, and sampling is the
                // best liveness check there is (a graph on the first request). One whose agent
                // is not registered cannot be, and the run says why.
                let confirmed = status.is_sampleable();
                let runtime = &job.runtime.subtasks[v][s];
                let (target, absent) = match inner.taskmanagers.get(&spec.taskmanager) {
                    // Ended: not sampled, but named with why it ended, if it did not simply
                    // finish or get canceled (see `SubtaskRuntime::absent`).
                    _ if status.is_terminal() => (None, runtime.absent),
                    Some(tm) => (
                        Some(SubtaskTarget {
                            subtask_index: s as u32,
                            taskmanager_id: tm.id.clone(),
                            agent_address: tm.address.clone(),
                            selector: selector_of(spec, subtask_key(&job.spec.id, &vertex.id, s)),
                            confirmed,
                        }),
                        None,
                    ),
                    None if confirmed => (None, Some(MissingReason::AgentLost)),
                    None => (None, Some(MissingReason::NeverConfirmed)),
                };
                SubtaskSampling {
                    index: s as u32,
                    terminal: status.is_terminal(),
                    target,
                    absent,
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
        for (j, v, s) in inner.watched_by(tmid) {
            let job = &inner.jobs[j];
            if !job.runtime.subtasks[v][s].status.is_sampleable() {
                continue;
            }
            let vertex = &job.spec.vertices[v];
            let mut selector = selector_of(
                &vertex.subtasks[s],
                subtask_key(&job.spec.id, &vertex.id, s),
            );
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
        Ok((tm.address.clone(), selectors))
    }
}

impl Drop for Registry {
    /// Writes what heartbeats changed since the last flush: the last owner of the registry
    /// (the coordinator stopping, a test) leaves nothing only in memory.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "registry: the last flush failed; heartbeat state since the previous one is lost");
        }
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

fn check_host_field(name: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_HOST_FIELD || value.chars().any(char::is_control) {
        return Err(RegistryError::BadRequest(format!(
            "{name}: expected at most {MAX_HOST_FIELD} bytes without control characters, got {} bytes",
            value.len()
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
