//! The embedded store: one SQLite file, `<data-dir>/registry.sqlite3`.
//!
//! Durability contract: `POST /jobs` answers 202 only after the transaction that inserted the
//! job has committed, and SQLite runs in WAL mode with `synchronous = FULL`, so a commit is on
//! disk before it is acknowledged. A coordinator killed at any instant (even `kill -9` in the
//! middle of a write) restarts with every acknowledged job and none half-written: a transaction
//! that did not commit is rolled back from the WAL on the next open.
//!
//! One row per job. `spec` is the JSON of [`JobSpec`] (written once); `runtime` the JSON of
//! [`JobRuntime`] (rewritten on every state transition, several jobs per transaction when one
//! heartbeat changes many). Task managers are not stored: after a restart every agent learns it
//! is unknown on its next heartbeat and registers again.

use super::error::RegistryError;
use super::job::{Job, JobRuntime, JobSpec};
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};

/// Bumped when the table layout changes.
const SCHEMA_VERSION: i64 = 1;

/// The SQLite connection. Not `Sync`: the registry keeps it behind its lock.
#[derive(Debug)]
pub struct JobStore {
    conn: Connection,
    path: PathBuf,
}

impl JobStore {
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
        Ok(JobStore { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored job, in registration order.
    pub fn load_all(&self) -> Result<Vec<Job>, RegistryError> {
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

    /// Stores a new job; durable when this returns `Ok`.
    pub fn insert(&mut self, job: &Job, created_ms: i64) -> Result<(), RegistryError> {
        let spec = to_json(&job.spec)?;
        let runtime = to_json(&job.runtime)?;
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

    /// Rewrites the runtime part of several jobs in one transaction.
    pub fn update_runtimes<'a>(
        &mut self,
        jobs: impl IntoIterator<Item = &'a Job>,
    ) -> Result<(), RegistryError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| storage(&self.path, e))?;
        for job in jobs {
            let runtime = to_json(&job.runtime)?;
            tx.execute(
                "UPDATE jobs SET runtime = ?1 WHERE id = ?2",
                params![runtime, job.spec.id],
            )
            .map_err(|e| storage(&self.path, e))?;
        }
        tx.commit().map_err(|e| storage(&self.path, e))
    }
}

impl JobStore {
    /// Deletes these jobs in one transaction; durable when this returns `Ok`.
    pub fn delete(&mut self, ids: &[String]) -> Result<(), RegistryError> {
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
}

fn storage(path: &Path, e: rusqlite::Error) -> RegistryError {
    RegistryError::Storage(format!("{}: {e}", path.display()))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, RegistryError> {
    serde_json::to_string(value)
        .map_err(|e| RegistryError::Storage(format!("cannot encode a job: {e}")))
}
