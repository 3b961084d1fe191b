//! The registry's shared store: [`PgStore`], the [`JobStore`] of replicated coordinators on one
//! PostgreSQL database (`--database-url`, issue 16; tables in `migrations/0001_registry.sql`).
//!
//! The trait is synchronous (the registry calls it on blocking threads, behind its store lock);
//! every method runs its queries on the database's own runtime through [`Database::blocking`].
//! What each replica does with it, and why the change feed misses nothing, is in
//! `replication.rs`.
//!
//! * A job is one row of `registry_jobs`: `spec` (JSON, written once) and `runtime` (JSON),
//!   like SQLite's. A REST write commits before it returns (PostgreSQL's commit is durable by
//!   default: `synchronous_commit = on`), so an acknowledged job or cancel is in the database.
//! * Runtimes are never overwritten blindly: [`PgStore::merge_runtimes`] reads each row
//!   `FOR UPDATE`, merges in only the subtasks this replica changed ([`merge_runtime`]) and
//!   writes the result, so two replicas whose agents report different subtasks of one job keep
//!   both changes.
//! * Deletions leave a row in `registry_deleted_jobs` (a day long) for the other replicas' pulls,
//!   and delete the job's stored flame graph runs and leases (`flamegraph/shared.rs`) in the
//!   same transaction.
//! * Task managers are rows of `registry_taskmanagers`: the registration at once, then only
//!   when the replica vouching for an agent changes (`vouched_by`, migration 0003): each
//!   replica refreshes one row of its own in `registry_replicas` instead of a heartbeat time per
//!   agent ([`PgStore::vouch`], see `replication.rs`). Every read of an agent ([`TM_SELECT`])
//!   gives it the later of its own heartbeat time and what its replica vouches for.
//! * Every row is stamped with the writing transaction's id (`changed_xid`, `xid8`), which the
//!   change feed ([`PgStore::pull`]) reads by.

use super::error::RegistryError;
use super::job::{Job, JobRuntime, JobSpec};
use super::store::{JobStore, Pulled, RuntimeChange, Sync, merge_runtime};
use super::taskmanager::{HostFacts, TaskManager};
use crate::database::{Database, DatabaseError};
use flamegrid_model::clock::now_ms;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_postgres::Row;

/// A runtime change owned for the database thread: job id, runtime, the changed subtasks
/// (`None`: all of them).
type OwnedChange = (String, JobRuntime, Option<Vec<(usize, usize)>>);

/// How long a deleted job's tombstone is kept for the other replicas' pulls.
const TOMBSTONE_MS: i64 = 24 * 3600 * 1000;

/// The PostgreSQL store (see the module docs).
#[derive(Debug)]
pub struct PgStore {
    db: Database,
    /// The oldest transaction id still running at the last pull (`pg_snapshot_xmin`), as text:
    /// the next pull re-reads every row stamped at or above it. `None` before the first load.
    cursor: std::sync::Mutex<Option<String>>,
    /// The jobs handed to memory (loaded, inserted, pulled): a pulled change of any other job
    /// carries its spec.
    known: std::sync::Mutex<HashSet<String>>,
}

/// A read-only snapshot (repeatable read) and the cursor it starts the change feed at: the
/// oldest transaction still running (`pg_snapshot_xmin`), as text. Every row the snapshot
/// cannot see yet is stamped at or above it, so the next pull, reading from it, misses none.
async fn snapshot_with_cursor(
    client: &mut deadpool_postgres::Object,
) -> Result<(deadpool_postgres::Transaction<'_>, String), DatabaseError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(query)?;
    let cursor: String = tx
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await
        .map_err(query)?
        .get(0);
    Ok((tx, cursor))
}

fn query(e: tokio_postgres::Error) -> DatabaseError {
    crate::database::query_failed(e)
}

fn bad(message: String) -> DatabaseError {
    DatabaseError::Query {
        url: String::new(),
        message,
    }
}

fn storage(e: DatabaseError) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, RegistryError> {
    serde_json::to_string(value)
        .map_err(|e| RegistryError::Storage(format!("cannot encode a job: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    id: &str,
    text: &str,
) -> Result<T, DatabaseError> {
    serde_json::from_str(text).map_err(|e| bad(format!("{what} of {id}: {e}")))
}

/// A stored task manager; its monotonic heartbeat instant is derived from the stored wall-clock
/// time (an agent last heard of long ago is as old in memory).
/// How every query reads agents: the stored row, with `last_heartbeat_ms` the later of the
/// agent's own and the time until which the replica vouching for it says it heartbeat.
const TM_SELECT: &str = "SELECT t.id, t.address, t.host, t.agent_pid, t.registered_ms, \
     GREATEST(t.last_heartbeat_ms, COALESCE(r.seen_ms - r.vouch_ms, 0)) AS last_heartbeat_ms, \
     t.peer_ip, t.tls_identity, t.vouched_by \
     FROM registry_taskmanagers AS t LEFT JOIN registry_replicas AS r ON r.id = t.vouched_by";

fn taskmanager_of(row: &Row) -> Result<TaskManager, DatabaseError> {
    let id: String = row.get("id");
    let host: HostFacts = decode("host", &id, row.get("host"))?;
    let last_heartbeat_ms: i64 = row.get("last_heartbeat_ms");
    let peer_ip: Option<String> = row.get("peer_ip");
    Ok(TaskManager {
        address: row.get("address"),
        host,
        agent_pid: u32::try_from(row.get::<_, i64>("agent_pid")).unwrap_or(0),
        registered_ms: row.get("registered_ms"),
        last_heartbeat_ms,
        last_heartbeat: instant_of(last_heartbeat_ms),
        metrics: Default::default(),
        peer_ip: peer_ip.and_then(|ip| ip.parse().ok()),
        tls_identity: row.get("tls_identity"),
        vouched_by: row.get("vouched_by"),
        id,
    })
}

/// The monotonic instant of a wall-clock time in the past (now, if it is in the future).
pub fn instant_of(ms: i64) -> Instant {
    let ago = Duration::from_millis(u64::try_from(now_ms().saturating_sub(ms)).unwrap_or(0));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

impl PgStore {
    /// The registry's store on `db` (already migrated by [`Database::connect`]).
    pub fn new(db: Database) -> Self {
        PgStore {
            db,
            cursor: std::sync::Mutex::new(None),
            known: std::sync::Mutex::new(HashSet::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl JobStore for PgStore {
    fn load_all(&self) -> Result<Vec<Job>, RegistryError> {
        let (cursor, rows) = self
            .db
            .blocking(|mut client| async move {
                let (tx, cursor) = snapshot_with_cursor(&mut client).await?;
                let rows = tx
                    .query(
                        "SELECT id, spec, runtime FROM registry_jobs ORDER BY seq",
                        &[],
                    )
                    .await
                    .map_err(query)?;
                let mut jobs = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: String = row.get(0);
                    let spec: JobSpec = decode("spec", &id, row.get(1))?;
                    let runtime: JobRuntime = decode("runtime", &id, row.get(2))?;
                    jobs.push(Job { spec, runtime });
                }
                tx.commit().await.map_err(query)?;
                Ok((cursor, jobs))
            })
            .map_err(storage)?;
        *self.cursor() = Some(cursor);
        *self.known() = rows.iter().map(|j| j.spec.id.clone()).collect();
        Ok(rows)
    }

    fn insert(&mut self, job: &Job, created_ms: i64) -> Result<(), RegistryError> {
        let (id, name) = (job.spec.id.clone(), job.spec.name.clone());
        let spec = to_json(&job.spec)?;
        let runtime = to_json(&job.runtime)?;
        let inserted = id.clone();
        self.db
            .blocking(move |client| async move {
                client
                    .execute(
                        "INSERT INTO registry_jobs (id, name, spec, runtime, created_ms) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&id, &name, &spec, &runtime, &created_ms],
                    )
                    .await
                    .map_err(query)?;
                Ok(())
            })
            .map_err(storage)?;
        self.known().insert(inserted);
        Ok(())
    }

    fn update_runtimes(
        &mut self,
        runtimes: &[(&str, &JobRuntime)],
        sync: Sync,
    ) -> Result<(), RegistryError> {
        let changes: Vec<RuntimeChange<'_>> = runtimes
            .iter()
            .map(|(id, runtime)| RuntimeChange {
                id,
                runtime,
                changed: None,
            })
            .collect();
        self.merge_runtimes(&changes, sync)
    }

    fn merge_runtimes(
        &mut self,
        changes: &[RuntimeChange<'_>],
        _sync: Sync,
    ) -> Result<(), RegistryError> {
        // Owned copies for the database thread; only the changed subtasks matter, but the
        // runtime is small next to the spec and merged whole by position.
        let owned: Vec<OwnedChange> = changes
            .iter()
            .map(|c| {
                (
                    c.id.to_string(),
                    c.runtime.clone(),
                    c.changed.map(<[_]>::to_vec),
                )
            })
            .collect();
        self.db
            .blocking(move |mut client| async move {
                let tx = client.transaction().await.map_err(query)?;
                // Locked in id order: two replicas flushing the same jobs never deadlock.
                let mut owned = owned;
                owned.sort_by(|a, b| a.0.cmp(&b.0));
                for (id, local, changed) in &owned {
                    let Some(row) = tx
                        .query_opt("SELECT runtime FROM registry_jobs WHERE id = $1 FOR UPDATE", &[id])
                        .await
                        .map_err(query)?
                    else {
                        continue; // deleted meanwhile: never brought back
                    };
                    let mut stored: JobRuntime = decode("runtime", id, row.get(0))?;
                    merge_runtime(&mut stored, local, changed.as_deref());
                    let text = serde_json::to_string(&stored).map_err(|e| bad(e.to_string()))?;
                    tx.execute(
                        "UPDATE registry_jobs SET runtime = $1, changed_xid = pg_current_xact_id() WHERE id = $2",
                        &[&text, id],
                    )
                    .await
                    .map_err(query)?;
                }
                tx.commit().await.map_err(query)
            })
            .map_err(storage)
    }

    fn delete(&mut self, ids: &[String]) -> Result<(), RegistryError> {
        let ids = ids.to_vec();
        let removed = ids.clone();
        self.db
            .blocking(move |mut client| async move {
                let tx = client.transaction().await.map_err(query)?;
                let now = now_ms();
                tx.execute("DELETE FROM registry_jobs WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(query)?;
                // Their flame graphs go too (flamegraph/shared.rs): stored runs and leases.
                tx.execute("DELETE FROM flamegraph_runs WHERE job_id = ANY($1)", &[&ids])
                    .await
                    .map_err(query)?;
                tx.execute(
                    "DELETE FROM flamegraph_leases WHERE split_part(key, '/', 1) = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(query)?;
                tx.execute(
                    "INSERT INTO registry_deleted_jobs (id, deleted_ms) SELECT unnest($1::text[]), $2 \
                     ON CONFLICT (id) DO UPDATE SET deleted_ms = EXCLUDED.deleted_ms, \
                     changed_xid = pg_current_xact_id()",
                    &[&ids, &now],
                )
                .await
                .map_err(query)?;
                tx.execute(
                    "DELETE FROM registry_deleted_jobs WHERE deleted_ms < $1",
                    &[&(now - TOMBSTONE_MS)],
                )
                .await
                .map_err(query)?;
                tx.commit().await.map_err(query)
            })
            .map_err(storage)?;
        let mut known = self.known();
        for id in removed {
            known.remove(&id);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "{} (shared; replica {})",
            self.db.describe(),
            self.db.replica_id()
        )
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn load_one(&mut self, id: &str) -> Result<Option<Job>, RegistryError> {
        let id = id.to_string();
        let job = self
            .db
            .blocking(move |client| async move {
                let Some(row) = client
                    .query_opt(
                        "SELECT spec, runtime FROM registry_jobs WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(query)?
                else {
                    return Ok(None);
                };
                let spec: JobSpec = decode("spec", &id, row.get(0))?;
                let runtime: JobRuntime = decode("runtime", &id, row.get(1))?;
                Ok(Some(Job { spec, runtime }))
            })
            .map_err(storage)?;
        if let Some(job) = &job {
            self.known().insert(job.spec.id.clone());
        }
        Ok(job)
    }

    fn pull(&mut self) -> Result<Option<Pulled>, RegistryError> {
        let Some(cursor) = self.cursor().clone() else {
            return Ok(None); // not loaded yet: load_all reads everything
        };
        let known: HashSet<String> = self.known().clone();
        let (next, pulled) = self
            .db
            .blocking(move |mut client| async move {
                let (tx, next) = snapshot_with_cursor(&mut client).await?;
                let rows = tx
                    .query(
                        "SELECT id, runtime FROM registry_jobs WHERE changed_xid >= $1::text::xid8 ORDER BY seq",
                        &[&cursor],
                    )
                    .await
                    .map_err(query)?;
                let mut pulled = Pulled::default();
                let mut unknown: Vec<String> = Vec::new();
                for row in &rows {
                    let id: String = row.get(0);
                    let runtime: JobRuntime = decode("runtime", &id, row.get(1))?;
                    if !known.contains(&id) {
                        unknown.push(id.clone());
                    }
                    pulled.jobs.push((None, id, runtime));
                }
                if !unknown.is_empty() {
                    let specs = tx
                        .query("SELECT id, spec FROM registry_jobs WHERE id = ANY($1)", &[&unknown])
                        .await
                        .map_err(query)?;
                    for row in specs {
                        let id: String = row.get(0);
                        let spec: JobSpec = decode("spec", &id, row.get(1))?;
                        if let Some(job) = pulled.jobs.iter_mut().find(|j| j.1 == id) {
                            job.0 = Some(spec);
                        }
                    }
                }
                pulled.deleted = tx
                    .query(
                        "SELECT id FROM registry_deleted_jobs WHERE changed_xid >= $1::text::xid8",
                        &[&cursor],
                    )
                    .await
                    .map_err(query)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for row in tx
                    .query(
                        &format!("{TM_SELECT} WHERE t.changed_xid >= $1::text::xid8"),
                        &[&cursor],
                    )
                    .await
                    .map_err(query)?
                {
                    pulled.taskmanagers.push(taskmanager_of(&row)?);
                }
                pulled.replicas = tx
                    .query(
                        "SELECT id, seen_ms - vouch_ms FROM registry_replicas \
                         WHERE changed_xid >= $1::text::xid8",
                        &[&cursor],
                    )
                    .await
                    .map_err(query)?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                tx.commit().await.map_err(query)?;
                Ok((next, pulled))
            })
            .map_err(storage)?;
        *self.cursor() = Some(next);
        let mut known = self.known();
        for (spec, id, _) in &pulled.jobs {
            if spec.is_some() {
                known.insert(id.clone());
            }
        }
        for id in &pulled.deleted {
            known.remove(id);
        }
        Ok(Some(pulled))
    }

    fn load_taskmanagers(&mut self) -> Result<Vec<TaskManager>, RegistryError> {
        self.db
            .blocking(|client| async move {
                let rows = client
                    .query(&format!("{TM_SELECT} ORDER BY t.id"), &[])
                    .await
                    .map_err(query)?;
                rows.iter().map(taskmanager_of).collect()
            })
            .map_err(storage)
    }

    fn load_taskmanager(&mut self, id: &str) -> Result<Option<TaskManager>, RegistryError> {
        let id = id.to_string();
        self.db
            .blocking(move |client| async move {
                client
                    .query_opt(&format!("{TM_SELECT} WHERE t.id = $1"), &[&id])
                    .await
                    .map_err(query)?
                    .as_ref()
                    .map(taskmanager_of)
                    .transpose()
            })
            .map_err(storage)
    }

    fn put_taskmanager(&mut self, tm: &TaskManager) -> Result<(), RegistryError> {
        let host = to_json(&tm.host)?;
        let (id, address) = (tm.id.clone(), tm.address.clone());
        let pid = i64::from(tm.agent_pid);
        let (registered, beat) = (tm.registered_ms, tm.last_heartbeat_ms);
        let peer_ip = tm.peer_ip.map(|ip| ip.to_string());
        let tls = tm.tls_identity.clone();
        // The registering replica vouches for the agent from here on (it heartbeats here).
        let replica = self.db.replica_id().to_string();
        self.db
            .blocking(move |client| async move {
                client
                    .execute(
                        "INSERT INTO registry_taskmanagers \
                         (id, address, host, agent_pid, registered_ms, last_heartbeat_ms, peer_ip, tls_identity, vouched_by) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, host = EXCLUDED.host, \
                         agent_pid = EXCLUDED.agent_pid, registered_ms = EXCLUDED.registered_ms, \
                         last_heartbeat_ms = GREATEST(registry_taskmanagers.last_heartbeat_ms, EXCLUDED.last_heartbeat_ms), \
                         peer_ip = EXCLUDED.peer_ip, tls_identity = EXCLUDED.tls_identity, \
                         vouched_by = EXCLUDED.vouched_by, changed_xid = pg_current_xact_id()",
                        &[&id, &address, &host, &pid, &registered, &beat, &peer_ip, &tls, &replica],
                    )
                    .await
                    .map_err(query)?;
                Ok(())
            })
            .map_err(storage)
    }

    fn replica_id(&self) -> Option<&str> {
        Some(self.db.replica_id())
    }

    fn vouch(
        &mut self,
        seen_ms: i64,
        vouch_ms: i64,
        claims: &[(&str, i64)],
        releases: &[(&str, i64)],
    ) -> Result<usize, RegistryError> {
        let replica = self.db.replica_id().to_string();
        let owned = |list: &[(&str, i64)]| -> (Vec<String>, Vec<i64>) {
            list.iter().map(|(id, ms)| (id.to_string(), *ms)).unzip()
        };
        let (claim_ids, claim_ms) = owned(claims);
        let (release_ids, release_ms) = owned(releases);
        self.db
            .blocking(move |mut client| async move {
                let tx = client.transaction().await.map_err(query)?;
                tx.execute(
                    "INSERT INTO registry_replicas (id, seen_ms, vouch_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms, \
                     vouch_ms = EXCLUDED.vouch_ms, changed_xid = pg_current_xact_id()",
                    &[&replica, &seen_ms, &vouch_ms],
                )
                .await
                .map_err(query)?;
                let mut written = 0;
                if !claim_ids.is_empty() {
                    written += tx
                        .execute(
                            "UPDATE registry_taskmanagers AS t SET vouched_by = $1, \
                             last_heartbeat_ms = GREATEST(t.last_heartbeat_ms, b.ms), \
                             changed_xid = pg_current_xact_id() \
                             FROM unnest($2::text[], $3::bigint[]) AS b(id, ms) \
                             WHERE t.id = b.id AND t.vouched_by IS DISTINCT FROM $1",
                            &[&replica, &claim_ids, &claim_ms],
                        )
                        .await
                        .map_err(query)?;
                }
                if !release_ids.is_empty() {
                    // Only agents still vouched for here: one that moved is the other
                    // replica's now.
                    written += tx
                        .execute(
                            "UPDATE registry_taskmanagers AS t SET vouched_by = NULL, \
                             last_heartbeat_ms = GREATEST(t.last_heartbeat_ms, b.ms), \
                             changed_xid = pg_current_xact_id() \
                             FROM unnest($2::text[], $3::bigint[]) AS b(id, ms) \
                             WHERE t.id = b.id AND t.vouched_by = $1",
                            &[&replica, &release_ids, &release_ms],
                        )
                        .await
                        .map_err(query)?;
                }
                // Rows of replicas gone for a day (each process has an id of its own).
                tx.execute(
                    "DELETE FROM registry_replicas WHERE seen_ms < $1",
                    &[&(seen_ms - TOMBSTONE_MS)],
                )
                .await
                .map_err(query)?;
                tx.commit().await.map_err(query)?;
                Ok(usize::try_from(written).unwrap_or(usize::MAX))
            })
            .map_err(storage)
    }
}
