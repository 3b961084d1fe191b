//! Replicas in step: N coordinators on one PostgreSQL database (`--database-url`, issue 16)
//! answer every request alike, and any of them can die.
//!
//! ## What is where
//!
//! * **In the database** ([`super::postgres::PgStore`]): every job (spec and runtime), the jobs
//!   deleted lately (tombstones, for the other replicas), and every registered agent (address,
//!   host facts, what the takeover rules of [`super::Caller`] need: peer address and TLS
//!   identity), the replica that vouches for its heartbeats (`vouched_by`), and one row per
//!   replica (`registry_replicas`) saying until when the agents it vouches for heartbeat.
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
//! * **Heartbeats are vouched for, not written.** An agent heartbeats to one replica at a time.
//!   That replica *vouches* for it while its last heartbeat here is within
//!   [`VOUCH_FRACTION`] of the heartbeat timeout (7.5 s of the default 30 s; agents beat every
//!   5 s), and each flush refreshes the replica's one row in `registry_replicas` (`seen_ms`, and
//!   that window as `vouch_ms`). An agent's own row is written only when the replica vouching
//!   for it changes: it registers or moves here (*claimed*: `vouched_by` = this replica), or
//!   stops heartbeating here (*released*, with its real last heartbeat time, only if this
//!   replica still vouches for it). So 1,000 agents that stay put cost one row per flush, not a
//!   row per heartbeat ([`super::Registry::store_writes`] counts the agents' rows). Other
//!   replicas keep each agent's heartbeat time at the later of its own and `seen_ms - vouch_ms`
//!   of the replica vouching for it: at most that window plus two flush intervals old, so a
//!   heartbeat timeout must stay well above it (the default 30 s does). A replica that dies
//!   stops refreshing its row; its agents' times stop with it until they move to another
//!   replica (within about one heartbeat interval), which claims them.
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
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

/// A replica vouches for an agent while the agent's last heartbeat to it is within this
/// fraction of the heartbeat timeout (see the module docs).
pub const VOUCH_FRACTION: u32 = 4;

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

        // Agents whose latest heartbeat went to another replica, which claimed them.
        let mut gone_elsewhere: Vec<(String, i64)> = Vec::new();
        for tm in pulled.taskmanagers {
            if tm
                .vouched_by
                .as_deref()
                .is_some_and(|by| Some(by) != self.replica.as_deref())
            {
                gone_elsewhere.push((tm.id.clone(), tm.last_heartbeat_ms));
            }
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
                    let moved = known.vouched_by != tm.vouched_by;
                    // The database says who vouches for it now (claims and releases commit in
                    // one order there; memory follows).
                    known.vouched_by = tm.vouched_by;
                    if reregistered || newer || moved {
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

        // An agent claimed elsewhere with a heartbeat newer than its last one here is not this
        // replica's to vouch for (or release) any more; a later heartbeat here claims it back.
        for (id, their_beat) in gone_elsewhere {
            if inner
                .beats_here
                .get(&id)
                .is_some_and(|&here| here <= their_beat)
            {
                inner.beats_here.remove(&id);
            }
        }

        // The other replicas' refreshed rows: every agent they vouch for heartbeat until then.
        let vouched: HashMap<&str, i64> = pulled
            .replicas
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != self.replica.as_deref())
            .map(|(id, until)| (id.as_str(), *until))
            .collect();
        if !vouched.is_empty() {
            for tm in inner.taskmanagers.values_mut() {
                let until = tm.vouched_by.as_deref().and_then(|r| vouched.get(r));
                if let Some(&until) = until
                    && until > tm.last_heartbeat_ms
                {
                    tm.last_heartbeat_ms = until;
                    tm.last_heartbeat = instant_of(until);
                }
            }
        }
        Ok(synced)
    }

    /// Refreshes this replica's vouching row and writes the agents whose vouching changed:
    /// those heartbeating here that it does not vouch for yet (claimed), and those it vouches
    /// for that stopped heartbeating here (released); see the module docs. Holds `inner` only to
    /// pick them and to take the result in.
    pub(super) fn flush_heartbeats(
        &self,
        store: &mut MutexGuard<'_, Box<dyn JobStore>>,
    ) -> Result<(), RegistryError> {
        let window = self.heartbeat_timeout / VOUCH_FRACTION;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let now = flamegrid_model::clock::now_ms();
        let fresh_since = now.saturating_sub(window_ms);
        let me = self.replica.as_deref();
        let (claims, releases) = {
            let inner = self.lock();
            let mut claims: Vec<(String, i64)> = Vec::new();
            let mut releases: Vec<(String, i64)> = Vec::new();
            for (id, &at) in &inner.beats_here {
                let vouched_here = inner
                    .taskmanagers
                    .get(id)
                    .is_some_and(|tm| tm.vouched_by.as_deref() == me);
                if at >= fresh_since && !vouched_here {
                    claims.push((id.clone(), at));
                } else if at < fresh_since {
                    releases.push((id.clone(), at));
                }
            }
            (claims, releases)
        };
        let written = store.vouch(now, window_ms, &as_refs(&claims), &as_refs(&releases))?;
        self.written[1].fetch_add(written as u64, Ordering::Relaxed);
        let mut inner = self.lock();
        for (id, _) in claims {
            if let Some(tm) = inner.taskmanagers.get_mut(&id) {
                tm.vouched_by = self.replica.clone();
            }
        }
        for (id, at) in releases {
            // The database no longer has this replica vouching for it: a beat that arrived
            // during the write is claimed again by the next flush.
            if let Some(tm) = inner.taskmanagers.get_mut(&id)
                && tm.vouched_by.as_deref() == me
            {
                tm.vouched_by = None;
            }
            if inner.beats_here.get(&id) == Some(&at) {
                inner.beats_here.remove(&id);
            }
        }
        Ok(())
    }

    /// Whether a heartbeat from `agent_id` is answered from memory alone, without reading the
    /// store ([`Registry::heartbeat`] then only takes the registry's lock, which is never held
    /// across I/O): always on a store of its own, and on a shared store once the agent is in
    /// memory. The gRPC service answers such a heartbeat on its own thread instead of handing
    /// it to the blocking pool (two thread wake-ups per heartbeat, most of the idle CPU of a
    /// coordinator with a thousand agents).
    pub fn heartbeat_stays_in_memory(&self, agent_id: &str) -> bool {
        !self.shared || self.lock().taskmanagers.contains_key(agent_id)
    }

    /// Before a heartbeat from `agent_id`: on a shared store, an agent memory does not have
    /// (registered on another replica since the last sync) is read from the database once, and
    /// taken in if its stored heartbeat is within the timeout (the sync's rule), so it is not
    /// asked to register again. A failed read is logged: the heartbeat is then answered as for
    /// an unknown agent (`reregister`), which is always safe.
    pub(super) fn read_through_taskmanager(&self, agent_id: &str) {
        if self.heartbeat_stays_in_memory(agent_id) {
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

/// Borrowed views of owned (id, time) pairs, as [`JobStore::vouch`] takes them.
fn as_refs(list: &[(String, i64)]) -> Vec<(&str, i64)> {
    list.iter().map(|(id, ms)| (id.as_str(), *ms)).collect()
}
