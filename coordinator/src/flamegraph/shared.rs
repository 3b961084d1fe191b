//! Flame graph runs shared by replicated coordinators (`--database-url`, issue 16).
//!
//! Several coordinators on one PostgreSQL database answer every flame graph request alike, and
//! sample each key (`(job, vertex)` or `(job, vertex, subtask)`) once for all of them. Each
//! replica keeps its own [`super::cache`] (coalescing, history, memos, the memory bound, all as
//! without a database); what they share lives in two tables (migration
//! `0002_flamegraph_runs.sql`):
//!
//! * **Stored runs** (`flamegraph_runs`): every run that delivered, per key, with its run id,
//!   `endTimestamp`, the subtasks it holds and the snapshot itself (its folded profiles and
//!   missing subtasks, as JSON, deflated). The last `--flamegraph-history` runs per key are kept,
//!   older ones are deleted when a run is stored. A vertex run serves its subtasks too. Runs in
//!   which nothing delivered are not stored: they stay in the replica that ran them (its
//!   "why" answers), and the next request anywhere samples again.
//! * **Leases** (`flamegraph_leases`): one row per key being sampled, naming the replica that
//!   runs it ([`crate::database::Database::replica_id`]) and until when (`--flamegraph-lease-s`,
//!   database clock). Taken atomically: inserted, or updated only when expired or by its own
//!   holder. A replica's next run of a key takes the lease again while its previous run is
//!   still being stored (encoding and writing a run of ten thousand subtasks takes a while),
//!   so the next run does not wait for that store; every taking moves the expiry forward, and
//!   a store or release drops the lease only if it still has the expiry its own run took
//!   ([`Lease`]), so an earlier run never drops the next one's lease.
//!
//! Run ids come from one database sequence, so they are ordered across replicas (the cache
//! orders runs, and compares a subtask's own run with its vertex's, by run id).
//!
//! ## What each replica does
//!
//! When its cache hands out a [`RunTicket`] (nothing cached, stale, or `?refresh=true`), the
//! replica does not sample straight away ([`execute`]):
//!
//! 1. It reads the key's stored runs newer than what it holds (the whole kept history when it
//!    holds nothing: this is how history and `?at=` survive a restart) into its cache, aged by
//!    when they were stored, so freshness counts the same on every replica. If one of them is
//!    fresh (stored within the refresh interval; for `?refresh=true`, stored after the request),
//!    that is the answer: no run.
//! 2. Otherwise it tries to take the key's lease. If it gets it, it checks the stored runs once
//!    more (the previous holder stores its run and drops its lease in one transaction, so a run
//!    that has just landed is seen here), then takes a run id from the sequence, samples,
//!    stores the result, and drops the lease in the same transaction.
//! 3. If another replica holds the lease, it does not sample: the key stays "sampling" (the
//!    ticket is held, `X-Flamegrid-Sampling: true`) and it polls the database every
//!    [`POLL`] until the holder's run lands (step 1 answers) or the lease expires (step 2 takes
//!    it).
//!
//! A **follower** task ([`spawn_follower`]) polls every [`POLL`] for runs stored by anyone on the
//! vertices the replica holds in its cache, and lands them there. So within one dashboard poll
//! every replica serves the same latest run: the same `endTimestamp` and the same tree. It also
//! drops from the cache every job the shared registry no longer has (expired or deleted on any
//! replica: [`GraphCache::forget_job`]); the replica that removes a job deletes its stored runs
//! and leases in the same transaction (`registry/postgres.rs`).
//! [`super::FlameGraphService::history`] and [`super::FlameGraphService::kept_run`] read a key's
//! stored runs when the cache holds none for it.
//!
//! ## What a crash costs
//!
//! A replica killed mid-run leaves its lease behind: the other replicas wait for it to expire
//! (at most `--flamegraph-lease-s`, taken at the start of the run), then the next one to be
//! asked samples: a graph is served again within lease + sampling window + deadline. The dead
//! replica's run is lost; stored runs are not. A lease shorter than a run (window + grace)
//! would let a second replica sample while the first still runs: keep it longer than that.
//!
//! If the database cannot be reached, no run starts (the ticket is dropped and the next request
//! tries again): cached graphs are still served, stale.

use super::cache::{GraphCache, GraphKey, RunTicket};
use super::profile::Snapshot;
use super::run::{self, RunCounters};
use super::stored::{decode, encode};
use crate::database::{Database, DatabaseError};
use crate::fanout::FanOut;
use crate::missing::Missing;
use crate::sampling::{SamplingParams, SubtaskTarget};
use deadpool_postgres::Object;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often a replica waiting for another one's run, and the follower, look at the database.
pub const POLL: Duration = Duration::from_millis(400);

/// How far back the follower looks again, so that a run committed late (after a newer one it
/// has already read) is not missed.
const FOLLOW_OVERLAP_MS: i64 = 5_000;

/// The database clock in ms, in SQL: leases and freshness are judged by one clock.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// The shared database as the flame graph service uses it, with the lease length.
#[derive(Debug, Clone)]
pub struct SharedRuns {
    db: Database,
    lease: Duration,
    /// Runs this replica stored since the follower last looked (run id, stored ms): already in
    /// its cache, so the follower does not read them back (at 10,000 subtasks a run is
    /// megabytes to inflate and parse).
    own: Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
}

/// A lease this replica took on a key ([`SharedRuns::try_lease`]): the key and the expiry it
/// was taken with, which tells it from a later taking of the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    expires_ms: i64,
}

/// A run read back from the database.
#[derive(Debug, Clone)]
pub struct StoredRun {
    /// The key it is stored under.
    pub key: GraphKey,
    /// The run, for the key asked for (a vertex run read for a subtask is cut to it).
    pub snapshot: Arc<Snapshot>,
    /// When it was stored (database clock, ms).
    pub stored_ms: i64,
    /// How long ago it was stored.
    pub age: Duration,
}

/// `key` as stored: `job/vertex` or `job/vertex/subtask`.
pub fn key_text(key: &GraphKey) -> String {
    match key.subtask {
        Some(i) => format!("{}/{}/{i}", key.job_id, key.vertex_id),
        None => format!("{}/{}", key.job_id, key.vertex_id),
    }
}

/// The key [`key_text`] wrote, or `None` for anything else.
pub fn parse_key(text: &str) -> Option<GraphKey> {
    let mut parts = text.split('/');
    let job_id = parts.next()?.to_string();
    let vertex_id = parts.next()?.to_string();
    let subtask = match parts.next() {
        Some(i) => Some(i.parse().ok()?),
        None => None,
    };
    if parts.next().is_some() || job_id.is_empty() || vertex_id.is_empty() {
        return None;
    }
    Some(GraphKey {
        job_id,
        vertex_id,
        subtask,
    })
}

/// A failed query, with the driver's whole cause.
fn query_error(e: tokio_postgres::Error) -> DatabaseError {
    crate::database::query_failed(e)
}

/// A row of `flamegraph_runs` as read (run_id, key, stored_ms, age_ms, body), its body not yet
/// decoded: decoding a big run is CPU work, done off both the database's thread and the async
/// runtime ([`decode_all`]).
struct RawRun {
    run_id: i64,
    key: String,
    stored_ms: i64,
    age_ms: i64,
    body: Vec<u8>,
}

impl RawRun {
    /// The row's columns.
    fn of(row: &tokio_postgres::Row) -> RawRun {
        RawRun {
            run_id: row.get(0),
            key: row.get(1),
            stored_ms: row.get(2),
            age_ms: row.get(3),
            body: row.get(4),
        }
    }

    /// The run as a [`StoredRun`] for `wanted` (cut to its subtask when the row is a vertex
    /// run); `None`, logged, when it cannot be read.
    fn decode(self, wanted: Option<&GraphKey>) -> Option<StoredRun> {
        let RawRun {
            run_id,
            key,
            stored_ms,
            age_ms,
            body,
        } = self;
        let Some(stored_key) = parse_key(&key) else {
            tracing::warn!(run_id, %key, "stored flame graph run with a malformed key: skipped");
            return None;
        };
        let snapshot = match decode(run_id.max(0) as u64, &body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "stored flame graph run unreadable: skipped");
                return None;
            }
        };
        let (key, snapshot) = match (wanted, stored_key.subtask) {
            (Some(w), None) if w.subtask.is_some() => {
                let index = w.subtask?;
                (w.clone(), snapshot.subtask_part(index)?)
            }
            _ => (stored_key, snapshot),
        };
        Some(StoredRun {
            key,
            snapshot: Arc::new(snapshot),
            stored_ms,
            age: Duration::from_millis(age_ms.max(0) as u64),
        })
    }
}

/// `raws` decoded (see [`RawRun::decode`]) on a blocking thread of the current runtime, in
/// their order; the unreadable ones left out.
async fn decode_all(raws: Vec<RawRun>, wanted: Option<GraphKey>) -> Vec<StoredRun> {
    if raws.is_empty() {
        return Vec::new();
    }
    let work = move || {
        raws.into_iter()
            .filter_map(|r| r.decode(wanted.as_ref()))
            .collect()
    };
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "decoding stored flame graph runs failed");
        Vec::new()
    })
}

/// How many bytes of run bodies a pooled connection may carry (send or receive) and still go
/// back to the pool; see [`done_with`].
const BULKY_BYTES: usize = 256 * 1024;

/// Gives `client` back to the pool, or closes its connection when it has just carried `bytes`
/// of run bodies. A connection keeps the buffers it grew to the largest message it sent or
/// received for as long as it lives: measured at a vertex of 10,000 subtasks (bodies of about
/// 1.5 MB), some 4.5 MB per connection that stored or read a run, and a pool of 16 whose
/// connections take turns would keep them all. A new connection for the next run costs a few
/// milliseconds, once per run at most.
fn done_with(client: Object, bytes: usize) {
    if bytes >= BULKY_BYTES {
        drop(Object::take(client));
    }
}

/// The stored runs for `wanted` with a run id above `after`, newest first, at most `limit`: its
/// own and, for a subtask, those of its vertex that hold it (cut to it). `client` is done with
/// afterwards ([`done_with`]).
async fn kept_rows(
    client: Object,
    wanted: &GraphKey,
    limit: usize,
    after: u64,
) -> Result<Vec<RawRun>, DatabaseError> {
    let own = key_text(wanted);
    let vertex = key_text(&wanted.vertex());
    let index = wanted.subtask.map(|i| i as i32).unwrap_or(-1);
    let limit = limit.max(1) as i64;
    let after = after.min(i64::MAX as u64) as i64;
    let rows = client
        .query(
            &format!(
                "SELECT run_id, key, stored_ms, {NOW_MS} - stored_ms, body \
                 FROM flamegraph_runs \
                 WHERE run_id > $4 AND (key = $1 OR (key = $2 AND $3 = ANY(delivered))) \
                 ORDER BY run_id DESC LIMIT $5"
            ),
            &[&own, &vertex, &index, &after, &limit],
        )
        .await
        .map_err(query_error)?;
    let raws: Vec<RawRun> = rows.iter().map(RawRun::of).collect();
    drop(rows);
    done_with(client, raws.iter().map(|r| r.body.len()).sum());
    Ok(raws)
}

impl SharedRuns {
    /// The flame graph side of `db`, with leases of `lease`.
    pub fn new(db: Database, lease: Duration) -> SharedRuns {
        SharedRuns {
            db,
            own: Arc::default(),
            lease: lease.max(Duration::from_secs(1)),
        }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The database clock, ms.
    pub async fn now_ms(&self) -> Result<i64, DatabaseError> {
        self.db
            .run(|client| async move {
                let row = client
                    .query_one(&format!("SELECT {NOW_MS}"), &[])
                    .await
                    .map_err(query_error)?;
                Ok(row.get::<_, i64>(0))
            })
            .await
    }

    /// The stored runs for `key` with a run id above `after`, newest first, at most `limit`:
    /// its own and, for a subtask, those of its vertex that hold it (cut to it).
    pub async fn kept(
        &self,
        key: &GraphKey,
        limit: usize,
        after: u64,
    ) -> Result<Vec<StoredRun>, DatabaseError> {
        let wanted = key.clone();
        let raws = self
            .db
            .run(move |client| async move { kept_rows(client, &wanted, limit, after).await })
            .await?;
        Ok(decode_all(raws, Some(key.clone())).await)
    }

    /// Takes `key`'s lease for this replica if nobody holds it, its holder's has expired, or
    /// this replica holds it itself (its previous run of the key is still being stored: the
    /// next run need not wait for that); the lease taken, or `None`.
    pub async fn try_lease(&self, key: &GraphKey) -> Result<Option<Lease>, DatabaseError> {
        let key = key_text(key);
        let holder = self.db.replica_id().to_string();
        let lease_ms = self.lease.as_millis().min(i64::MAX as u128) as i64;
        self.db
            .run(move |client| async move {
                // Every take moves the expiry forward, so each lease taken has its own expiry:
                // what the store or release of an earlier run of this replica names, and
                // does not match once the lease has been taken again.
                let row = client
                    .query_opt(
                        &format!(
                            "INSERT INTO flamegraph_leases (key, holder, expires_ms) \
                             VALUES ($1, $2, {NOW_MS} + $3) \
                             ON CONFLICT (key) DO UPDATE \
                             SET holder = EXCLUDED.holder, \
                                 expires_ms = GREATEST(EXCLUDED.expires_ms, flamegraph_leases.expires_ms + 1) \
                             WHERE flamegraph_leases.expires_ms < {NOW_MS} \
                                OR flamegraph_leases.holder = EXCLUDED.holder \
                             RETURNING expires_ms"
                        ),
                        &[&key, &holder, &lease_ms],
                    )
                    .await
                    .map_err(query_error)?;
                Ok(row.map(|row| Lease {
                    key,
                    expires_ms: row.get(0),
                }))
            })
            .await
    }

    /// Drops `lease` unless it has been taken again since (by another replica once expired,
    /// or by this replica's next run of its key).
    pub async fn release(&self, lease: &Lease) -> Result<(), DatabaseError> {
        let Lease { key, expires_ms } = lease.clone();
        let holder = self.db.replica_id().to_string();
        self.db
            .run(move |client| async move {
                client
                    .execute(
                        "DELETE FROM flamegraph_leases \
                         WHERE key = $1 AND holder = $2 AND expires_ms = $3",
                        &[&key, &holder, &expires_ms],
                    )
                    .await
                    .map_err(query_error)?;
                Ok(())
            })
            .await
    }

    /// A new run id, ordered across replicas.
    pub async fn next_run_id(&self) -> Result<u64, DatabaseError> {
        self.db
            .run(|client| async move {
                let row = client
                    .query_one("SELECT nextval('flamegraph_run_ids')", &[])
                    .await
                    .map_err(query_error)?;
                Ok(row.get::<_, i64>(0).max(0) as u64)
            })
            .await
    }

    /// Stores `snapshot` (a run that delivered) under `key`, deletes the key's runs beyond the
    /// newest `history`, and drops `lease` (unless taken again since), in one transaction. A run of
    /// a job removed from the registry meanwhile (a tombstone in `registry_deleted_jobs`) is
    /// not stored: nobody may read it any more. The run is encoded on a blocking thread (at
    /// ten thousand subtasks that is about a tenth of a second of CPU).
    pub async fn store(
        &self,
        key: &GraphKey,
        snapshot: &Arc<Snapshot>,
        history: usize,
        lease: &Lease,
    ) -> Result<(), DatabaseError> {
        let own = key_text(key);
        let run = Arc::clone(snapshot);
        let body = tokio::task::spawn_blocking(move || encode(&run))
            .await
            .map_err(|e| format!("encoding the run failed: {e}"))
            .and_then(|encoded| encoded)
            .map_err(|message| self.db.query_error(message))?;
        let vertex = key_text(&key.vertex());
        let job = key.job_id.clone();
        let body_bytes = body.len();
        let delivered: Vec<i32> = snapshot.subtasks.keys().map(|&i| i as i32).collect();
        let run_id = snapshot.run_id.min(i64::MAX as u64) as i64;
        let end_ms = snapshot.end_ms;
        let keep = history.max(1) as i64;
        let holder = self.db.replica_id().to_string();
        let lease_expires_ms = lease.expires_ms;
        let stored = self
            .db
            .run(move |mut client| async move {
                let tx = client.transaction().await.map_err(query_error)?;
                let stored: Option<i64> = tx
                    .query_opt(
                        &format!(
                            "INSERT INTO flamegraph_runs \
                             (run_id, key, vertex_key, job_id, delivered, end_ms, stored_ms, body) \
                             SELECT $1, $2, $3, $4, $5, $6, {NOW_MS}, $7 \
                             WHERE NOT EXISTS (SELECT 1 FROM registry_deleted_jobs WHERE id = $4) \
                             ON CONFLICT (run_id) DO NOTHING RETURNING stored_ms"
                        ),
                        &[&run_id, &own, &vertex, &job, &delivered, &end_ms, &body],
                    )
                    .await
                    .map_err(query_error)?
                    .map(|row| row.get(0));
                tx.execute(
                    "DELETE FROM flamegraph_runs WHERE key = $1 AND run_id NOT IN \
                     (SELECT run_id FROM flamegraph_runs WHERE key = $1 ORDER BY run_id DESC LIMIT $2)",
                    &[&own, &keep],
                )
                .await
                .map_err(query_error)?;
                tx.execute(
                    "DELETE FROM flamegraph_leases WHERE key = $1 AND holder = $2 AND expires_ms = $3",
                    &[&own, &holder, &lease_expires_ms],
                )
                .await
                .map_err(query_error)?;
                tx.commit().await.map_err(query_error)?;
                done_with(client, body_bytes);
                Ok(stored)
            })
            .await?;
        if let Some(stored_ms) = stored {
            self.own
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((run_id, stored_ms));
        }
        Ok(())
    }

    /// The runs this replica stored since the last call (run id, stored ms), for the follower.
    fn take_own(&self) -> Vec<(i64, i64)> {
        std::mem::take(&mut *self.own.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs stored at or after `since_ms` (database clock) on the `vertices` (job, vertex)
    /// given, other than the run ids in `seen`, oldest first; and the database clock now.
    pub async fn stored_since(
        &self,
        vertices: &[(String, String)],
        since_ms: i64,
        seen: Vec<i64>,
    ) -> Result<(Vec<StoredRun>, i64), DatabaseError> {
        let vertices: Vec<String> = vertices.iter().map(|(j, v)| format!("{j}/{v}")).collect();
        let (raws, now) = self
            .db
            .run(move |client| async move {
                let now: i64 = client
                    .query_one(&format!("SELECT {NOW_MS}"), &[])
                    .await
                    .map_err(query_error)?
                    .get(0);
                if vertices.is_empty() {
                    return Ok((Vec::new(), now));
                }
                let rows = client
                    .query(
                        &format!(
                            "SELECT run_id, key, stored_ms, {NOW_MS} - stored_ms, body \
                             FROM flamegraph_runs \
                             WHERE vertex_key = ANY($1) AND stored_ms >= $2 AND NOT (run_id = ANY($3)) \
                             ORDER BY run_id"
                        ),
                        &[&vertices, &since_ms, &seen],
                    )
                    .await
                    .map_err(query_error)?;
                let raws: Vec<RawRun> = rows.iter().map(RawRun::of).collect();
                drop(rows);
                done_with(client, raws.iter().map(|r| r.body.len()).sum());
                Ok((raws, now))
            })
            .await?;
        Ok((decode_all(raws, None).await, now))
    }

    /// Of `jobs`, those the shared registry removed (expired or deleted by any replica: a
    /// tombstone in `registry_deleted_jobs`, kept a day): their graphs must go from every
    /// replica's cache.
    pub async fn gone_jobs(&self, jobs: Vec<String>) -> Result<Vec<String>, DatabaseError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .run(move |client| async move {
                let rows = client
                    .query(
                        "SELECT id FROM registry_deleted_jobs WHERE id = ANY($1)",
                        &[&jobs],
                    )
                    .await
                    .map_err(query_error)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await
    }

    /// The stored runs of `key` (at most `history`), read into `cache` when it holds nothing
    /// for `key`: a synchronous read for the history views, blocking the calling thread (in
    /// place, on a multi-threaded runtime) for one query.
    pub fn load_if_absent(&self, cache: &GraphCache, key: &GraphKey, history: usize) {
        if cache.holds(key) {
            return;
        }
        let wanted = key.clone();
        let read = move || {
            self.db
                .blocking(move |client| async move { kept_rows(client, &wanted, history, 0).await })
        };
        // On a single-threaded runtime (tests) or none, this blocks in place: the database has
        // a runtime of its own, so waiting for it here cannot deadlock.
        let runs = super::cache::off_the_workers(read);
        match runs {
            Ok(runs) => {
                for r in runs.into_iter().rev().filter_map(|r| r.decode(Some(key))) {
                    cache.land_stored(&r.key, r.snapshot, r.age);
                }
            }
            Err(e) => tracing::warn!(error = %e, ?key, "cannot read the stored flame graph runs"),
        }
    }
}

/// What a replicated run needs beside its ticket.
#[derive(Debug)]
pub struct RunContext {
    /// The shared database.
    pub shared: Arc<SharedRuns>,
    /// The fan-out to the agents.
    pub fanout: Arc<FanOut>,
    /// The service's run counters.
    pub counters: Arc<RunCounters>,
    /// Samples, delay, depth.
    pub params: SamplingParams,
    /// The refresh interval: a stored run younger than this is fresh.
    pub refresh: Duration,
    /// Runs kept per key.
    pub history: usize,
    /// The run's deadline (window + grace): with the lease, how long a waiting replica waits.
    pub deadline: Duration,
}

/// The run for `ticket` on a replicated coordinator; see the module docs. `forced` is
/// `?refresh=true`: only a run stored after the request counts as fresh.
pub async fn execute(
    ctx: RunContext,
    ticket: RunTicket,
    targets: Vec<SubtaskTarget>,
    absent: Missing,
    forced: bool,
) {
    let key = ticket.key().clone();
    let mut lease = None;
    if let Err(e) = execute_inner(&ctx, ticket, targets, absent, forced, &mut lease).await {
        // The ticket is gone with the error: the next request tries again.
        tracing::warn!(error = %e, job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask,
            "flame graph run not started or not stored: the shared database failed");
        if let Some(lease) = lease {
            let _ = ctx.shared.release(&lease).await;
        }
    }
}

async fn execute_inner(
    ctx: &RunContext,
    ticket: RunTicket,
    targets: Vec<SubtaskTarget>,
    absent: Missing,
    forced: bool,
    lease: &mut Option<Lease>,
) -> Result<(), DatabaseError> {
    let key = ticket.key().clone();
    let cache = Arc::clone(ticket.cache());
    let shared = &ctx.shared;
    let asked = shared.now_ms().await?;
    let min_stored = asked.saturating_sub(ctx.refresh.as_millis().min(i64::MAX as u128) as i64);
    // A run that answers this request: for a forced refresh (`?refresh=true`) one that started
    // after it was asked (a run of this or another replica still being stored when the request
    // came is older than the request, however late it is stored); otherwise one stored within
    // the refresh interval.
    let answers = |r: &StoredRun| {
        if forced {
            r.snapshot.start_ms >= asked
        } else {
            r.stored_ms >= min_stored
        }
    };
    // Everything kept when the cache holds nothing for the key, else only what is newer.
    let mut after = cache.peek(&key).map(|s| s.run_id).unwrap_or(0);
    let give_up = Instant::now() + 2 * (shared.lease() + ctx.deadline) + Duration::from_secs(5);
    // Lands the stored runs newer than `after`; whether one is fresh.
    let catch_up = |after: &mut u64, runs: Vec<StoredRun>| {
        let mut fresh = false;
        for r in runs.into_iter().rev() {
            *after = (*after).max(r.snapshot.run_id);
            fresh |= answers(&r);
            cache.land_stored(&r.key, r.snapshot, r.age);
        }
        fresh
    };
    loop {
        let runs = shared.kept(&key, ctx.history, after).await?;
        if catch_up(&mut after, runs) {
            return Ok(()); // someone's fresh run: no sampling (dropping the ticket ends it)
        }
        if let Some(taken) = shared.try_lease(&key).await? {
            let taken = lease.insert(taken);
            // The last holder stores and drops its lease in one transaction: look once more.
            let runs = shared.kept(&key, ctx.history, after).await?;
            if runs.iter().any(answers) {
                shared.release(taken).await?;
                catch_up(&mut after, runs);
                return Ok(());
            }
            catch_up(&mut after, runs);
            let run_id = shared.next_run_id().await?;
            let n = ctx.counters.started.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(
                runs_started = n, job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask,
                subtasks = targets.len(), run = run_id, replica = %shared.database().replica_id(),
                "flamegraph run started"
            );
            let snapshot = run::execute_as(
                Arc::clone(&ctx.fanout),
                Arc::clone(&ctx.counters),
                ctx.params,
                ticket,
                targets,
                absent,
                Some(run_id),
            )
            .await;
            if snapshot.subtasks.is_empty() {
                shared.release(taken).await?;
            } else {
                shared.store(&key, &snapshot, ctx.history, taken).await?;
            }
            return Ok(());
        }
        if Instant::now() > give_up {
            tracing::warn!(job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask,
                "flame graph run: another replica's lease neither ended nor expired in time; giving up for now");
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts the follower on the current runtime: every [`POLL`] it lands in `cache` the runs
/// stored (by any replica) on the vertices the cache holds. It holds the cache weakly and ends
/// with it; abort the handle to stop it sooner.
pub fn spawn_follower(
    shared: Arc<SharedRuns>,
    cache: Weak<GraphCache>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut since: Option<i64> = None;
        // Run ids already landed, with when they were stored: not read again.
        let mut seen: HashMap<i64, i64> = HashMap::new();
        loop {
            tokio::time::sleep(POLL).await;
            let Some(held) = cache.upgrade().map(|c| c.held_vertices()) else {
                return;
            };
            let from = since.unwrap_or(i64::MAX);
            seen.extend(shared.take_own()); // this replica's own runs are in its cache already
            let ids: Vec<i64> = seen.keys().copied().collect();
            match shared.stored_since(&held, from, ids).await {
                Ok((runs, now)) => {
                    let Some(cache) = cache.upgrade() else { return };
                    for r in runs {
                        seen.insert(r.snapshot.run_id as i64, r.stored_ms);
                        cache.land_stored(&r.key, r.snapshot, r.age);
                    }
                    let next = now - FOLLOW_OVERLAP_MS;
                    seen.retain(|_, stored| *stored >= next);
                    since = Some(next);
                }
                Err(e) => tracing::warn!(error = %e, "flame graph follower: database read failed"),
            }
            // After landing (a gone job's runs are deleted with it, so none lands again).
            let jobs: BTreeSet<String> = held.into_iter().map(|(job, _)| job).collect();
            match shared.gone_jobs(jobs.into_iter().collect()).await {
                Ok(gone) => {
                    let Some(cache) = cache.upgrade() else { return };
                    for job in gone {
                        let dropped = cache.forget_job(&job);
                        tracing::debug!(%job, dropped, "flame graphs of a job gone from the shared registry dropped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "flame graph follower: database read failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_and_malformed_ones_are_refused() {
        for key in [
            GraphKey {
                job_id: "a".repeat(32),
                vertex_id: "b".repeat(32),
                subtask: None,
            },
            GraphKey {
                job_id: "a".repeat(32),
                vertex_id: "b".repeat(32),
                subtask: Some(12),
            },
        ] {
            assert_eq!(parse_key(&key_text(&key)), Some(key));
        }
        assert_eq!(parse_key("a/b/c"), None);
        assert_eq!(parse_key("a/b/1/2"), None);
        assert_eq!(parse_key("a"), None);
    }

    /// A connection that stored or read a big run is closed instead of going back to the pool
    /// (it would keep buffers of the run's size); a small run's goes back. Needs PostgreSQL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_carried_a_big_run_is_closed_not_pooled() {
        use super::super::profile::tests::{bulky_set, snapshot, spin_and_sleep};
        let Some(db) = flamegrid_testkit::postgres::scratch_database("shared_bulky") else {
            return;
        };
        let shared = SharedRuns::new(
            Database::connect(&db.url).unwrap(),
            Duration::from_secs(3600),
        );
        let key = GraphKey {
            job_id: "a".repeat(32),
            vertex_id: "b".repeat(32),
            subtask: None,
        };
        let open = || shared.database().pool_status().open;
        let small = Arc::new(snapshot(1, &[(0, spin_and_sleep(3))], &[]));
        let lease = shared.try_lease(&key).await.unwrap().unwrap();
        shared.store(&key, &small, 10, &lease).await.unwrap();
        let pooled = open();
        assert!(
            pooled >= 1,
            "the small run's connection went back to the pool"
        );

        let big = Arc::new(snapshot(2, &[(0, bulky_set(30_000))], &[]));
        let body = encode(&big).unwrap().len();
        assert!(
            body >= BULKY_BYTES,
            "the test's run is not big: {body} bytes"
        );
        let lease = shared.try_lease(&key).await.unwrap().unwrap();
        assert_eq!(open(), pooled);
        shared.store(&key, &big, 10, &lease).await.unwrap();
        assert_eq!(
            open(),
            pooled - 1,
            "the connection that stored {body} bytes was pooled"
        );

        // Reading it back takes a connection and closes it too; what is read is the run.
        let kept = shared.kept(&key, 10, 0).await.unwrap();
        let ids: Vec<u64> = kept.iter().map(|r| r.snapshot.run_id).collect();
        assert_eq!(ids, [2, 1]);
        assert_eq!(*kept[0].snapshot, *big);
        assert_eq!(
            open(),
            pooled - 1,
            "the connection that read the big run was pooled"
        );
    }
}
