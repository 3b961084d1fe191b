//! The registry's durable store: the [`JobStore`] trait, and its embedded implementation
//! [`SqliteStore`], one SQLite file, `<data-dir>/registry.sqlite3`.
//!
//! One row per job. `spec` is the JSON of [`JobSpec`] (written once); `runtime` the JSON of
//! [`JobRuntime`] (rewritten when subtask states change, several jobs per transaction). Task
//! managers and liveness are not stored: after a restart every agent learns it is unknown on its
//! next heartbeat and registers again.
//!
//! ## Durability
//!
//! Two kinds of writes, two promises ([`Sync`]):
//!
//! * **REST writes** (`POST /jobs`, `PATCH /jobs/:jobid`, expiry of terminal jobs) are
//!   [`Sync::Full`]: SQLite runs in WAL mode and such a transaction is fsynced before it returns,
//!   so `POST /jobs` answers 202 only once the job is on disk, and survives a power loss. A
//!   coordinator killed at any instant (even `kill -9` in the middle of a write) restarts with
//!   every acknowledged job and none half-written: a transaction that did not commit is rolled
//!   back from the WAL on the next open.
//! * **State observed from heartbeats** (subtask transitions, lost agents) is written in batches
//!   by the registry's flusher ([`super::Registry::flush`]) with [`Sync::Normal`]
//!   (`synchronous = NORMAL`): committed to the WAL without an fsync. That survives a crash or
//!   `kill -9` of the coordinator (the WAL is in the operating system's cache), but a power loss
//!   or kernel crash may lose the batches written since the last fsync (the next `Sync::Full`
//!   commit or WAL checkpoint syncs them too, as the WAL is one sequential file). Nothing is lost
//!   that the agents cannot tell again: after a restart they re-register and their next
//!   heartbeats re-derive every subtask's state. State changes reach the store at most one flush
//!   interval after they happen in memory (memory is the truth in between).
//!
//! The trait has a second implementation, [`super::postgres::PgStore`], the database shared by
//! replicated coordinators (issue 16). Its extra duties (reading one job through, merging
//! subtask changes with other replicas', the change feed, task managers) are the trait's methods
//! with defaults: for SQLite, one coordinator owns the file, memory holds everything, and those
//! defaults say so.

use super::error::RegistryError;
use super::job::{Job, JobRuntime, JobSpec};
use super::taskmanager::TaskManager;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};

/// Bumped when the table layout changes.
const SCHEMA_VERSION: i64 = 1;

/// How durable a write must be when it returns (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// On stable storage: survives a power loss. For writes a client is told succeeded.
    Full,
    /// Committed and visible to the next open after a process crash, not necessarily synced to
    /// the disk yet. For state the agents' heartbeats will tell again.
    Normal,
}

/// Where the registry keeps jobs. The registry calls it from one thread at a time (behind its
/// store lock), never while it holds the lock that heartbeats need, except for REST writes.
pub trait JobStore: Send + std::fmt::Debug {
    /// Every stored job, in registration order.
    fn load_all(&self) -> Result<Vec<Job>, RegistryError>;
    /// Stores a new job; durable ([`Sync::Full`]) when this returns `Ok`.
    fn insert(&mut self, job: &Job, created_ms: i64) -> Result<(), RegistryError>;
    /// Rewrites the runtime part of several jobs (by id) in one transaction. A job that is no
    /// longer stored (expired meanwhile) is skipped: this never brings a job back.
    fn update_runtimes(
        &mut self,
        runtimes: &[(&str, &JobRuntime)],
        sync: Sync,
    ) -> Result<(), RegistryError>;
    /// Deletes these jobs in one transaction; durable ([`Sync::Full`]) when this returns `Ok`.
    fn delete(&mut self, ids: &[String]) -> Result<(), RegistryError>;
    /// Where the store is, for logs and errors.
    fn describe(&self) -> String;

    /// Whether other coordinators share this store (replicas on one database): then the
    /// registry merges its writes with theirs, pulls their changes ([`JobStore::pull`]) and
    /// keeps task managers in the store too.
    fn is_shared(&self) -> bool {
        false
    }
    /// One stored job, for a look-up that missed memory (a job registered on another replica a
    /// moment ago). A store nobody else writes has nothing memory lacks.
    fn load_one(&mut self, _id: &str) -> Result<Option<Job>, RegistryError> {
        Ok(None)
    }
    /// Writes the subtasks that changed in memory (`changed` positions, or the whole runtime
    /// when `None`) of several jobs in one transaction, merged with what other writers stored
    /// meanwhile (see [`merge_runtime`]). A store nobody else writes simply rewrites the runtimes.
    fn merge_runtimes(
        &mut self,
        changes: &[RuntimeChange<'_>],
        sync: Sync,
    ) -> Result<(), RegistryError> {
        let runtimes: Vec<(&str, &JobRuntime)> =
            changes.iter().map(|c| (c.id, c.runtime)).collect();
        self.update_runtimes(&runtimes, sync)
    }
    /// What other writers changed since the last pull (or since [`JobStore::load_all`]); `None`
    /// when nobody else writes.
    fn pull(&mut self) -> Result<Option<Pulled>, RegistryError> {
        Ok(None)
    }
    /// Every stored task manager (a shared store only).
    fn load_taskmanagers(&mut self) -> Result<Vec<TaskManager>, RegistryError> {
        Ok(Vec::new())
    }
    /// One stored task manager (a shared store only), for a heartbeat from an agent memory does
    /// not have yet (registered on another replica a moment ago).
    fn load_taskmanager(&mut self, _id: &str) -> Result<Option<TaskManager>, RegistryError> {
        Ok(None)
    }
    /// Stores a registration (a shared store only); durable when this returns `Ok`.
    fn put_taskmanager(&mut self, _tm: &TaskManager) -> Result<(), RegistryError> {
        Ok(())
    }
    /// This replica's id in a shared store (the `vouched_by` of the agents it vouches for);
    /// `None` for a store nobody else writes.
    fn replica_id(&self) -> Option<&str> {
        None
    }
    /// Refreshes this replica's vouching row (`seen_ms`, `vouch_ms`), and in the same
    /// transaction claims the agents in `claims` (they heartbeat here now) and releases those in
    /// `releases` that it still vouches for (they stopped heartbeating here), each with its last
    /// heartbeat time here; never moves a stored time backwards (a shared store only). Returns
    /// the task manager rows written.
    fn vouch(
        &mut self,
        _seen_ms: i64,
        _vouch_ms: i64,
        _claims: &[(&str, i64)],
        _releases: &[(&str, i64)],
    ) -> Result<usize, RegistryError> {
        Ok(0)
    }
}

/// The changed part of one job's runtime, for [`JobStore::merge_runtimes`].
#[derive(Debug, Clone, Copy)]
pub struct RuntimeChange<'a> {
    /// The job.
    pub id: &'a str,
    /// Its runtime in memory.
    pub runtime: &'a JobRuntime,
    /// The (vertex, subtask) positions that changed, or `None` for all of them (a cancel).
    pub changed: Option<&'a [(usize, usize)]>,
}

/// What other writers of a shared store changed, as [`JobStore::pull`] returns it.
#[derive(Debug, Default)]
pub struct Pulled {
    /// Jobs stored or changed: the spec is there only for jobs this store has not handed out
    /// before (new to memory).
    pub jobs: Vec<(Option<JobSpec>, String, JobRuntime)>,
    /// Jobs deleted.
    pub deleted: Vec<String>,
    /// Task managers registered, claimed or released, as stored (their heartbeat time already
    /// the later of their own and their vouching replica's).
    pub taskmanagers: Vec<TaskManager>,
    /// Replicas whose vouching row changed: id, and the time until which every agent it vouches
    /// for is known to have heartbeat (`seen_ms - vouch_ms`).
    pub replicas: Vec<(String, i64)>,
}

/// Merges `local` (memory) into `stored` (the store's row) for the positions that changed
/// locally: a subtask the store already has terminal stays as stored (an end observed by any
/// replica is final, as in memory), the others take the local value; then the job's status is
/// derived again from the merged subtasks (unless the stored job already ended, or the local
/// change is a cancel), so replicas whose agents report different subtasks of one job never
/// overwrite each other.
pub fn merge_runtime(
    stored: &mut JobRuntime,
    local: &JobRuntime,
    changed: Option<&[(usize, usize)]>,
) {
    let mut apply = |v: usize, s: usize| {
        let (Some(into), Some(from)) = (
            stored.subtasks.get_mut(v).and_then(|vs| vs.get_mut(s)),
            local.subtasks.get(v).and_then(|vs| vs.get(s)),
        ) else {
            return;
        };
        if !into.status.is_terminal() {
            *into = from.clone();
        }
    };
    match changed {
        Some(positions) => positions.iter().for_each(|&(v, s)| apply(v, s)),
        None => {
            for (v, subtasks) in local.subtasks.iter().enumerate() {
                for s in 0..subtasks.len() {
                    apply(v, s);
                }
            }
        }
    }
    stored.last_modification = stored.last_modification.max(local.last_modification);
    if stored.status.is_terminal() {
        return;
    }
    if local.status == super::JobStatus::Canceled {
        stored.status = local.status;
        stored.timestamps = local.timestamps;
        return;
    }
    let status =
        super::JobStatus::from_subtask_states(stored.subtasks.iter().flatten().map(|s| s.status));
    if status != stored.status {
        stored.status = status;
        // Stamped when this replica saw it happen, if it did; else at its latest change.
        stored.timestamps[status.index()] = if local.status == status {
            local.timestamps[status.index()]
        } else {
            local.last_modification
        };
    }
}

/// The SQLite store. The connection is not `Sync`: the registry keeps it behind its store lock.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The `synchronous` setting the connection has now (changed only between transactions).
    sync: Sync,
}

impl SqliteStore {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            RegistryError::Storage(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("registry.sqlite3");
        let conn = Connection::open(&path).map_err(|e| storage(&path, e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| storage(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(RegistryError::Storage(format!(
                "{}: cannot switch to WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS jobs (
                 seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                 id         TEXT NOT NULL UNIQUE,
                 name       TEXT NOT NULL,
                 spec       TEXT NOT NULL,
                 runtime    TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             );",
        )
        .map_err(|e| storage(&path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| storage(&path, e))?;
        match version {
            0 => conn
                .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| storage(&path, e))?,
            SCHEMA_VERSION => {}
            other => {
                return Err(RegistryError::Storage(format!(
                    "{}: schema version {other} is newer than this coordinator's ({SCHEMA_VERSION})",
                    path.display()
                )));
            }
        }
        Ok(SqliteStore {
            conn,
            path,
            sync: Sync::Full,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets `PRAGMA synchronous` for the next transactions, if it is not set so already.
    fn set_sync(&mut self, sync: Sync) -> Result<(), RegistryError> {
        if self.sync != sync {
            let pragma = match sync {
                Sync::Full => "PRAGMA synchronous = FULL",
                Sync::Normal => "PRAGMA synchronous = NORMAL",
            };
            self.conn
                .execute_batch(pragma)
                .map_err(|e| storage(&self.path, e))?;
            self.sync = sync;
        }
        Ok(())
    }
}

impl JobStore for SqliteStore {
    fn load_all(&self) -> Result<Vec<Job>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, spec, runtime FROM jobs ORDER BY seq")
            .map_err(|e| storage(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| storage(&self.path, e))?;
        let mut jobs = Vec::new();
        for row in rows {
            let (id, spec, runtime) = row.map_err(|e| storage(&self.path, e))?;
            let spec: JobSpec = serde_json::from_str(&spec).map_err(|e| {
                RegistryError::Storage(format!("{}: job {id}: bad spec: {e}", self.path.display()))
            })?;
            let runtime: JobRuntime = serde_json::from_str(&runtime).map_err(|e| {
                RegistryError::Storage(format!(
                    "{}: job {id}: bad runtime: {e}",
                    self.path.display()
                ))
            })?;
            jobs.push(Job { spec, runtime });
        }
        Ok(jobs)
    }

    fn insert(&mut self, job: &Job, created_ms: i64) -> Result<(), RegistryError> {
        let spec = to_json(&job.spec)?;
        let runtime = to_json(&job.runtime)?;
        self.set_sync(Sync::Full)?;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| storage(&self.path, e))?;
        tx.execute(
            "INSERT INTO jobs (id, name, spec, runtime, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job.spec.id, job.spec.name, spec, runtime, created_ms],
        )
        .map_err(|e| storage(&self.path, e))?;
        tx.commit().map_err(|e| storage(&self.path, e))
    }

    fn update_runtimes(
        &mut self,
        runtimes: &[(&str, &JobRuntime)],
        sync: Sync,
    ) -> Result<(), RegistryError> {
        // Encode first: the transaction is then only SQLite's own work.
        let encoded = runtimes
            .iter()
            .map(|(id, runtime)| Ok((*id, to_json(runtime)?)))
            .collect::<Result<Vec<_>, RegistryError>>()?;
        self.set_sync(sync)?;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| storage(&self.path, e))?;
        {
            let mut update = tx
                .prepare_cached("UPDATE jobs SET runtime = ?1 WHERE id = ?2")
                .map_err(|e| storage(&self.path, e))?;
            for (id, runtime) in &encoded {
                update
                    .execute(params![runtime, id])
                    .map_err(|e| storage(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| storage(&self.path, e))
    }

    fn delete(&mut self, ids: &[String]) -> Result<(), RegistryError> {
        self.set_sync(Sync::Full)?;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| storage(&self.path, e))?;
        for id in ids {
            tx.execute("DELETE FROM jobs WHERE id = ?1", params![id])
                .map_err(|e| storage(&self.path, e))?;
        }
        tx.commit().map_err(|e| storage(&self.path, e))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn storage(path: &Path, e: rusqlite::Error) -> RegistryError {
    RegistryError::Storage(format!("{}: {e}", path.display()))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, RegistryError> {
    serde_json::to_string(value)
        .map_err(|e| RegistryError::Storage(format!("cannot encode a job: {e}")))
}
