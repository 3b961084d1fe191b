//! Replicas in step: N coordinators on one PostgreSQL database (`--database-url`, issue 16)
//! answer every request alike, and any of them can die.
//!
//! ## What is where
//!
//! * **In the database** ([`super::postgres::PgStore`]): every job (spec and runtime), the jobs
//!   deleted lately (tombstones, for the other replicas), and every registered agent (address,
//!   host facts, what the takeover rules of [`super::Caller`] need: peer address and TLS
//!   identity) with the time of its latest heartbeat as of the last batch that wrote it.
//! * **In memory, on each replica**: a copy of all of it, which answers every read, and what
//!   the agents heartbeating to *this* replica changed since the last flush (the dirty subtasks,
//!   the newer heartbeat times, metrics).
//!
//! ## What each replica does
//!
//! * **REST writes** (`POST /jobs`, cancel, expiry of terminal jobs) commit to the database
//!   before they are acknowledged, as with SQLite. A cancel, like the flush, merges into the row
//!   under `SELECT … FOR UPDATE` (a subtask another replica saw end stays as it ended).
//! * **Heartbeats** change memory only and mark the subtasks they changed. The flusher
//!   ([`super::flusher`], every [`super::FLUSH_INTERVAL`]) writes those subtasks, and only those,
//!   into each job's row under `SELECT … FOR UPDATE`, then derives the job's status again from
//!   the merged row: agents heartbeating to different replicas never overwrite each other.
//! * **Heartbeat times** are written by the same flush, in one statement for all agents, and
//!   only for agents whose stored time is older than [`HEARTBEAT_WRITE_FRACTION`] of the
//!   heartbeat timeout: 1,000 agents heartbeating every second to a coordinator with a 30 s
//!   timeout write about 1,000 rows every 7.5 s, not 1,000 a second
//!   ([`super::Registry::store_writes`] counts them). Liveness ([`super::Registry::expire`])
//!   uses the latest time any replica saw, which is at most that fraction plus two flush
//!   intervals old, so a heartbeat timeout must stay well above that (the default 30 s does).
//! * **The sync step** ([`super::Registry::sync`], run by the flusher after each flush) pulls
//!   what changed in the database since the previous pull and applies it to memory without
//!   marking anything dirty: new jobs, runtimes (keeping the subtasks changed here and not
//!   flushed yet), deleted jobs, and agents (new ones, newer heartbeat times, re-registrations).
//!   A change made on one replica is therefore seen by the others within about one flush
//!   interval. A look-up of a job id that memory does not have reads through to the database
//!   once before answering 404, so `POST /jobs` on replica A then `GET` on replica B works at
//!   once; likewise a heartbeat from an agent memory does not have, so an agent registered on A
//!   a moment ago is not told to register again by B.
//!
//! ## Why the change feed misses nothing
//!
//! A sequence number taken inside a transaction can become visible after a higher one (commit
//! order is not sequence order), so "rows above the highest number I saw" loses rows. Every row
//! is stamped instead with its writing transaction's id (`pg_current_xact_id()`, `xid8`), and a
//! pull runs in one REPEATABLE READ snapshot that also yields `pg_snapshot_xmin` of itself: every
//! transaction below that xmin had ended when the snapshot was taken, so its rows are visible in
//! this pull or never will be. The next pull re-reads every row stamped at or above this xmin:
//! a transaction still running now has an id at or above it and is read once it commits.
//! Re-reading a row already applied is harmless (applying is idempotent). The pull holds the
//! registry's store lock, so no flush of this replica commits between its snapshot and the
//! moment memory takes it in.
//!
//! ## What a crash loses
//!
//! Nothing acknowledged: jobs, cancels and registrations are committed before the answer.
//! A replica killed with SIGKILL loses the subtask changes and heartbeat times of at most one
//! flush interval, which its agents tell again (to it after a restart, or to another replica:
//! an agent that moves keeps its registration, as every replica knows it from the database).
//! A restarted replica loads everything from the database, agents included.
//!
//! Clocks: heartbeat times are wall-clock milliseconds written by the replica that received
//! them; replicas' clocks are assumed in step to well under the heartbeat timeout (NTP).

use super::store::JobStore;
use super::{Inner, Registry, RegistryError, SubtaskPos};
use crate::registry::postgres::instant_of;
use std::collections::{BTreeSet, HashSet};
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

/// A heartbeat time is written again once the stored one is older than this fraction of the
/// heartbeat timeout (see the module docs).
pub const HEARTBEAT_WRITE_FRACTION: u32 = 4;

/// What one [`Registry::sync`] applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Jobs new to this replica.
    pub new_jobs: usize,
    /// Known jobs whose stored runtime was applied.
    pub updated_jobs: usize,
    /// Jobs removed.
    pub deleted_jobs: usize,
    /// Agents added or refreshed.
    pub taskmanagers: usize,
}

impl Registry {
    /// Pulls what other replicas changed since the last pull and applies it to memory (see
    /// the module docs); does nothing on a store nobody else writes.
    pub fn sync(&self) -> Result<Synced, RegistryError> {
        let mut store = self.lock_store();
        let Some(pulled) = store.pull()? else {
            return Ok(Synced::default());
        };
        let mut synced = Synced::default();
        let mut inner = self.lock();
        let now = flamegrid_model::clock::now_ms();

        // Deleted jobs go first (positions shift, so the index is rebuilt once).
        let deleted: HashSet<&str> = pulled
            .deleted
            .iter()
            .map(String::as_str)
            .filter(|id| inner.job_index.contains_key(*id))
            .collect();
        if !deleted.is_empty() {
            synced.deleted_jobs = deleted.len();
            for id in &deleted {
                inner.dirty.remove(*id);
            }
            let jobs = std::mem::take(&mut inner.jobs);
            inner.jobs = jobs
                .into_iter()
                .filter(|job| !deleted.contains(job.spec.id.as_str()))
                .collect();
            inner.reindex();
        }

        for (spec, id, runtime) in pulled.jobs {
            if let Some(&j) = inner.job_index.get(&id) {
                if apply_runtime(&mut inner, j, runtime, now) {
                    synced.updated_jobs += 1;
                }
            } else if let Some(spec) = spec {
                if pulled.deleted.contains(&id) {
                    continue;
                }
                add_job(&mut inner, super::Job { spec, runtime });
                synced.new_jobs += 1;
            }
        }

        for tm in pulled.taskmanagers {
            let stored = inner.stored_beats.entry(tm.id.clone()).or_insert(0);
            *stored = (*stored).max(tm.last_heartbeat_ms);
            match inner.taskmanagers.get_mut(&tm.id) {
                Some(known) => {
                    let reregistered = tm.registered_ms > known.registered_ms;
                    let newer = tm.last_heartbeat_ms > known.last_heartbeat_ms;
                    if reregistered {
                        known.address = tm.address.clone();
                        known.host = tm.host.clone();
                        known.agent_pid = tm.agent_pid;
                        known.registered_ms = tm.registered_ms;
                        known.peer_ip = tm.peer_ip;
                        known.tls_identity = tm.tls_identity.clone();
                    }
                    if newer {
                        known.last_heartbeat_ms = tm.last_heartbeat_ms;
                        known.last_heartbeat = instant_of(tm.last_heartbeat_ms);
                    }
                    if reregistered || newer {
                        synced.taskmanagers += 1;
                    }
                }
                None if tm.last_heartbeat.elapsed() <= self.heartbeat_timeout => {
                    tracing::debug!(agent = %tm.id, "task manager known from the shared database");
                    inner.taskmanagers.insert(tm.id.clone(), tm);
                    synced.taskmanagers += 1;
                }
                None => {}
            }
        }
        Ok(synced)
    }

    /// Writes the heartbeat times the store is too far behind on (a shared store only; see
    /// the module docs). Holds `inner` only to pick them.
    pub(super) fn flush_heartbeats(
        &self,
        store: &mut MutexGuard<'_, Box<dyn JobStore>>,
    ) -> Result<(), RegistryError> {
        let stale_ms =
            i64::try_from((self.heartbeat_timeout / HEARTBEAT_WRITE_FRACTION).as_millis())
                .unwrap_or(i64::MAX);
        let due: Vec<(String, i64)> = {
            let inner = self.lock();
            inner
                .taskmanagers
                .values()
                .filter(|tm| {
                    let stored = inner.stored_beats.get(&tm.id).copied().unwrap_or(0);
                    tm.last_heartbeat_ms.saturating_sub(stored) >= stale_ms
                })
                .map(|tm| (tm.id.clone(), tm.last_heartbeat_ms))
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let beats: Vec<(&str, i64)> = due.iter().map(|(id, ms)| (id.as_str(), *ms)).collect();
        let written = store.touch_taskmanagers(&beats)?;
        self.written[1].fetch_add(written as u64, Ordering::Relaxed);
        let mut inner = self.lock();
        for (id, ms) in due {
            let stored = inner.stored_beats.entry(id).or_insert(0);
            *stored = (*stored).max(ms);
        }
        Ok(())
    }

    /// Before a heartbeat from `agent_id`: on a shared store, an agent memory does not have
    /// (registered on another replica since the last sync) is read from the database once, and
    /// taken in if its stored heartbeat is within the timeout (the sync's rule), so it is not
    /// asked to register again. A failed read is logged: the heartbeat is then answered as for
    /// an unknown agent (`reregister`), which is always safe.
    pub(super) fn read_through_taskmanager(&self, agent_id: &str) {
        if !self.shared || self.lock().taskmanagers.contains_key(agent_id) {
            return;
        }
        let mut store = self.lock_store();
        let found = match store.load_taskmanager(agent_id) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(agent = %agent_id, error = %e, "cannot read an unknown agent from the shared database");
                return;
            }
        };
        let mut inner = self.lock();
        if let Some(tm) = found
            && tm.last_heartbeat.elapsed() <= self.heartbeat_timeout
            && !inner.taskmanagers.contains_key(agent_id)
        {
            tracing::debug!(agent = %agent_id, "task manager read through from the shared database");
            let stored = inner.stored_beats.entry(tm.id.clone()).or_insert(0);
            *stored = (*stored).max(tm.last_heartbeat_ms);
            inner.taskmanagers.insert(tm.id.clone(), tm);
        }
    }

    /// The registry's lock, with job `job_id` in memory: on a miss, a shared store is read
    /// once (a job registered on another replica a moment ago), else
    /// [`RegistryError::JobNotFound`].
    pub(super) fn lock_with_job(
        &self,
        job_id: &str,
    ) -> Result<MutexGuard<'_, Inner>, RegistryError> {
        {
            let inner = self.lock();
            if inner.job_index.contains_key(job_id) || !self.shared {
                return if inner.job_index.contains_key(job_id) {
                    Ok(inner)
                } else {
                    Err(RegistryError::JobNotFound(job_id.to_string()))
                };
            }
        }
        let mut store = self.lock_store();
        let found = store.load_one(job_id)?;
        let mut inner = self.lock();
        if let Some(job) = found
            && !inner.job_index.contains_key(job_id)
        {
            tracing::debug!(job = %job_id, "job read through from the shared database");
            add_job(&mut inner, job);
        }
        drop(store);
        if inner.job_index.contains_key(job_id) {
            Ok(inner)
        } else {
            Err(RegistryError::JobNotFound(job_id.to_string()))
        }
    }
}

/// Appends a job new to memory, watching its subtasks that are not terminal.
fn add_job(inner: &mut Inner, job: super::Job) {
    let index = inner.jobs.len();
    for (v, vertex) in job.spec.vertices.iter().enumerate() {
        for (s, spec) in vertex.subtasks.iter().enumerate() {
            if !job.runtime.subtasks[v][s].status.is_terminal() {
                inner
                    .watched
                    .entry(spec.taskmanager.clone())
                    .or_default()
                    .insert((index, v, s));
            }
        }
    }
    inner.job_index.insert(job.spec.id.clone(), index);
    inner.jobs.push(job);
}

/// Applies a pulled runtime to job `j`, keeping the subtasks changed here and not flushed yet,
/// and never making a subtask that ended here run again; where both ended, the stored end wins
/// (the first end any replica stored), so every replica shows the same. Returns whether
/// anything changed.
fn apply_runtime(inner: &mut Inner, j: usize, pulled: super::job::JobRuntime, now: i64) -> bool {
    let id = inner.jobs[j].spec.id.clone();
    let dirty: BTreeSet<(usize, usize)> = inner.dirty.get(&id).cloned().unwrap_or_default();
    let job = &mut inner.jobs[j];
    if job.runtime == pulled {
        return false;
    }
    if pulled.subtasks.len() != job.runtime.subtasks.len()
        || pulled
            .subtasks
            .iter()
            .zip(&job.runtime.subtasks)
            .any(|(a, b)| a.len() != b.len())
    {
        tracing::error!(job = %id, "a pulled runtime does not match the job's shape; ignored");
        return false;
    }
    let mut ended: Vec<(String, SubtaskPos)> = Vec::new();
    for (v, subtasks) in pulled.subtasks.into_iter().enumerate() {
        for (s, subtask) in subtasks.into_iter().enumerate() {
            let mine = &mut job.runtime.subtasks[v][s];
            if dirty.contains(&(v, s))
                || (mine.status.is_terminal() && !subtask.status.is_terminal())
                || *mine == subtask
            {
                continue;
            }
            if subtask.status.is_terminal() && !mine.status.is_terminal() {
                ended.push((
                    job.spec.vertices[v].subtasks[s].taskmanager.clone(),
                    (j, v, s),
                ));
            }
            *mine = subtask;
        }
    }
    let (mine, theirs) = (job.runtime.status, pulled.status);
    if dirty.is_empty() {
        if !mine.is_terminal() || theirs.is_terminal() {
            job.runtime.status = theirs;
            job.runtime.timestamps = pulled.timestamps;
        }
        job.runtime.last_modification = job.runtime.last_modification.max(pulled.last_modification);
    } else if !mine.is_terminal() {
        job.runtime.status = theirs;
        job.runtime.timestamps = pulled.timestamps;
        job.refresh_status(now);
    }
    for (tm, pos) in ended {
        inner.unwatch(&tm, pos);
    }
    true
}
