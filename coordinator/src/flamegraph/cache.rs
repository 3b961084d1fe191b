//! The flame graph cache and its coalescing rules, after Flink's `VertexThreadInfoTracker`.
//!
//! Flink's dashboard polls the flame graph of the open vertex every few seconds, and several
//! people may look at the same vertex. Sampling is expensive (a run takes `num_samples × delay`,
//! 5 s by default, and stops threads), so every request must **not** start a run. The rules:
//!
//! * Entries are kept per `(job, vertex)` and per `(job, vertex, subtask)` ([`GraphKey`]).
//! * [`GraphCache::lookup`] never waits: it returns the cached snapshot (even a stale one) and,
//!   when there is none or it is older than the refresh interval, hands the caller a
//!   [`RunTicket`] — the right and duty to start one run. While a run is in flight for a key,
//!   nobody else gets a ticket for it: **one run in flight per key**. A subtask request also gets
//!   no ticket while a run for its whole vertex is in flight, since that run will fill it.
//! * [`RunTicket::complete`] stores the run's snapshot. A whole-vertex run also fills the entries
//!   of the subtasks it delivered (unless they hold a newer run), so a later per-subtask request
//!   is served at once with the same `endTimestamp`. Dropping a ticket without completing it (the
//!   run failed: every agent failed or nothing was running) stores nothing, so the next request
//!   retries; the pending mark is cleared either way, even if the run task panicked.
//! * Whoever wants to wait for the run in flight (the SVG and folded views do, briefly) gets a
//!   [`tokio::sync::watch::Receiver`] from [`GraphCache::pending_run`]; the run's sender is dropped
//!   when the run ends, which wakes every receiver.
//! * Entries not read for the cleanup interval are dropped (swept lazily on access).
//!
//! **Memory bound.** Each entry's size is estimated with [`Snapshot::approx_bytes`] (profiles
//! shared between a vertex entry and its subtask entries are counted in each, so the estimate is
//! an upper bound). When the total exceeds [`CacheLimits::max_bytes`] or the entry count exceeds
//! [`CacheLimits::max_entries`], the least recently read entries are evicted until both hold. A
//! single snapshot larger than the whole budget is not cached at all. So the memory the cache
//! holds is at most `max_bytes` (default 256 MiB) plus the bookkeeping of `max_entries` (default
//! 4096) keys. Folding by distinct stack (see [`super::profile`]) keeps real entries small: tens of
//! kilobytes for a typical vertex.

use super::profile::Snapshot;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What a cache entry is for: a whole vertex (`subtask: None`) or one subtask of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GraphKey {
    /// The job id (32 hex).
    pub job_id: String,
    /// The vertex id (32 hex).
    pub vertex_id: String,
    /// The subtask index, or `None` for all subtasks.
    pub subtask: Option<u32>,
}

impl GraphKey {
    /// The key of the whole vertex this key belongs to.
    pub fn vertex(&self) -> GraphKey {
        GraphKey {
            job_id: self.job_id.clone(),
            vertex_id: self.vertex_id.clone(),
            subtask: None,
        }
    }

    /// The key of subtask `index` of this key's vertex.
    pub fn subtask(&self, index: u32) -> GraphKey {
        GraphKey {
            job_id: self.job_id.clone(),
            vertex_id: self.vertex_id.clone(),
            subtask: Some(index),
        }
    }
}

/// Timing and size limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// A snapshot older than this is stale: the next read starts a new run.
    pub refresh: Duration,
    /// An entry not read for this long is dropped.
    pub cleanup: Duration,
    /// Upper bound of the estimated bytes held by all entries.
    pub max_bytes: usize,
    /// Upper bound of the number of entries.
    pub max_entries: usize,
}

impl CacheLimits {
    /// Default size bounds with the given refresh and cleanup intervals.
    pub fn new(refresh: Duration, cleanup: Duration) -> Self {
        CacheLimits {
            refresh,
            cleanup,
            max_bytes: 256 * 1024 * 1024,
            max_entries: 4096,
        }
    }
}

/// What [`GraphCache::lookup`] found.
#[derive(Debug)]
pub struct Lookup {
    /// The cached snapshot, possibly stale.
    pub cached: Option<Arc<Snapshot>>,
    /// Present when the caller must start a run for the key (and complete or drop the ticket).
    pub ticket: Option<RunTicket>,
}

#[derive(Debug)]
struct Entry {
    snapshot: Arc<Snapshot>,
    landed: Instant,
    last_read: Instant,
    bytes: usize,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<GraphKey, Entry>,
    pending: HashMap<GraphKey, watch::Sender<()>>,
    bytes: usize,
    last_sweep: Instant,
}

/// The cache; see the module docs. Shared as `Arc<GraphCache>`.
#[derive(Debug)]
pub struct GraphCache {
    limits: CacheLimits,
    inner: Mutex<Inner>,
}

impl GraphCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Arc<Self> {
        Arc::new(GraphCache {
            limits,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                pending: HashMap::new(),
                bytes: 0,
                last_sweep: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // (every update is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached snapshot for `key` (even stale), and a ticket to start a run when it is
    /// missing or stale and no run that would fill it is in flight. Never waits.
    pub fn lookup(self: &Arc<Self>, key: &GraphKey) -> Lookup {
        let now = Instant::now();
        let mut inner = self.lock();
        self.sweep(&mut inner, now);
        let (cached, fresh) = match inner.entries.get_mut(key) {
            Some(e) => {
                e.last_read = now;
                (
                    Some(Arc::clone(&e.snapshot)),
                    now.duration_since(e.landed) < self.limits.refresh,
                )
            }
            None => (None, false),
        };
        let covered = inner.pending.contains_key(key)
            || (key.subtask.is_some() && inner.pending.contains_key(&key.vertex()));
        let ticket = if fresh || covered {
            None
        } else {
            let (tx, _) = watch::channel(());
            inner.pending.insert(key.clone(), tx);
            Some(RunTicket {
                cache: Arc::clone(self),
                key: key.clone(),
                done: false,
            })
        };
        Lookup { cached, ticket }
    }

    /// A receiver that wakes (with an error from `changed()`) when the run that will fill `key`
    /// ends; `None` when no such run is in flight.
    pub fn pending_run(&self, key: &GraphKey) -> Option<watch::Receiver<()>> {
        let inner = self.lock();
        inner
            .pending
            .get(key)
            .or_else(|| key.subtask.and_then(|_| inner.pending.get(&key.vertex())))
            .map(watch::Sender::subscribe)
    }

    /// The cached snapshot for `key` without touching freshness or starting anything.
    pub fn peek(&self, key: &GraphKey) -> Option<Arc<Snapshot>> {
        self.lock()
            .entries
            .get(key)
            .map(|e| Arc::clone(&e.snapshot))
    }

    /// Number of entries, and their estimated bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    fn finish_run(&self, key: &GraphKey, snapshot: Option<Arc<Snapshot>>) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(snapshot) = snapshot {
            if key.subtask.is_none() {
                for &index in snapshot.subtasks.keys() {
                    let sub_key = key.subtask(index);
                    let newer_exists = inner
                        .entries
                        .get(&sub_key)
                        .is_some_and(|e| e.snapshot.run_id > snapshot.run_id);
                    if !newer_exists && let Some(part) = snapshot.subtask_part(index) {
                        self.insert(&mut inner, sub_key, Arc::new(part), now);
                    }
                }
            }
            self.insert(&mut inner, key.clone(), snapshot, now);
            self.evict(&mut inner, key);
        }
        // Dropping the sender wakes everyone waiting for this run; they find the entry in place.
        inner.pending.remove(key);
    }

    fn insert(&self, inner: &mut Inner, key: GraphKey, snapshot: Arc<Snapshot>, now: Instant) {
        let bytes = snapshot.approx_bytes() + std::mem::size_of::<Entry>() + 3 * key.job_id.len();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.bytes;
        }
        if bytes > self.limits.max_bytes {
            tracing::warn!(
                ?key,
                bytes,
                max = self.limits.max_bytes,
                "flame graph larger than the cache budget; not cached"
            );
            return;
        }
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                snapshot,
                landed: now,
                last_read: now,
                bytes,
            },
        );
    }

    /// Evicts least recently read entries (never `keep`) until both bounds hold.
    fn evict(&self, inner: &mut Inner, keep: &GraphKey) {
        while inner.bytes > self.limits.max_bytes || inner.entries.len() > self.limits.max_entries {
            let victim = inner
                .entries
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, e)| e.last_read)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(e) = inner.entries.remove(&victim) {
                inner.bytes -= e.bytes;
            }
        }
    }

    /// Drops entries not read for the cleanup interval; runs at most every tenth of it.
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        if now.duration_since(inner.last_sweep) < self.limits.cleanup / 10 {
            return;
        }
        inner.last_sweep = now;
        let cleanup = self.limits.cleanup;
        let mut freed = 0;
        inner.entries.retain(|_, e| {
            let keep = now.duration_since(e.last_read) < cleanup;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        inner.bytes -= freed;
    }
}

/// The right and duty to run one sampling run for a key; see the module docs.
#[derive(Debug)]
pub struct RunTicket {
    cache: Arc<GraphCache>,
    key: GraphKey,
    done: bool,
}

impl RunTicket {
    /// The key this run fills.
    pub fn key(&self) -> &GraphKey {
        &self.key
    }

    /// Stores the run's snapshot (and, for a vertex run, its subtasks') and ends the run.
    pub fn complete(mut self, snapshot: Snapshot) {
        self.done = true;
        self.cache.finish_run(&self.key, Some(Arc::new(snapshot)));
    }
}

impl Drop for RunTicket {
    fn drop(&mut self) {
        if !self.done {
            self.cache.finish_run(&self.key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;

    fn key(subtask: Option<u32>) -> GraphKey {
        GraphKey {
            job_id: "j".repeat(32),
            vertex_id: "v".repeat(32),
            subtask,
        }
    }

    fn cache() -> Arc<GraphCache> {
        GraphCache::new(CacheLimits::new(
            Duration::from_secs(60),
            Duration::from_secs(600),
        ))
    }

    #[test]
    fn one_run_in_flight_per_key() {
        let c = cache();
        let first = c.lookup(&key(None));
        assert!(first.cached.is_none());
        let ticket = first.ticket.expect("first reader starts the run");
        let second = c.lookup(&key(None));
        assert!(
            second.cached.is_none() && second.ticket.is_none(),
            "second reader is coalesced"
        );
        // A subtask of a vertex whose run is in flight waits for that run too.
        assert!(c.lookup(&key(Some(0))).ticket.is_none());
        ticket.complete(snapshot(1, &[(0, spin_and_sleep(3))], &[]));
        let third = c.lookup(&key(None));
        assert_eq!(third.cached.map(|s| s.run_id), Some(1));
        assert!(third.ticket.is_none(), "fresh entry: no new run");
    }

    #[test]
    fn vertex_run_fills_subtask_entries_but_not_newer_ones() {
        let c = cache();
        let sub1 = c.lookup(&key(Some(1))).ticket.unwrap();
        sub1.complete(snapshot(5, &[(1, spin_and_sleep(1))], &[]));
        let t = c.lookup(&key(None)).ticket.unwrap();
        t.complete(snapshot(
            4,
            &[(0, spin_and_sleep(2)), (1, spin_and_sleep(2))],
            &[2],
        ));
        let s0 = c.lookup(&key(Some(0)));
        assert!(s0.ticket.is_none(), "filled by the vertex run, fresh");
        assert_eq!(s0.cached.map(|s| (s.run_id, s.end_ms)), Some((4, 1004)));
        assert_eq!(
            c.peek(&key(Some(1))).map(|s| s.run_id),
            Some(5),
            "newer subtask run kept"
        );
        let s2 = c.lookup(&key(Some(2)));
        assert!(
            s2.cached.is_none() && s2.ticket.is_some(),
            "missing subtask gets its own run"
        );
    }

    #[test]
    fn failed_run_stores_nothing_and_the_next_read_retries() {
        let c = cache();
        drop(c.lookup(&key(None)).ticket.unwrap());
        let again = c.lookup(&key(None));
        assert!(again.cached.is_none() && again.ticket.is_some());
    }

    #[test]
    fn stale_entries_are_served_while_a_new_run_starts() {
        let c = GraphCache::new(CacheLimits::new(Duration::ZERO, Duration::from_secs(600)));
        c.lookup(&key(None))
            .ticket
            .unwrap()
            .complete(snapshot(1, &[(0, spin_and_sleep(1))], &[]));
        let l = c.lookup(&key(None));
        assert_eq!(
            l.cached.map(|s| s.run_id),
            Some(1),
            "stale data still served"
        );
        assert!(l.ticket.is_some(), "and a refresh starts");
        assert!(
            c.lookup(&key(None)).ticket.is_none(),
            "only one refresh at a time"
        );
    }

    #[test]
    fn unread_entries_are_cleaned_up() {
        let c = GraphCache::new(CacheLimits::new(Duration::from_secs(60), Duration::ZERO));
        c.lookup(&key(None))
            .ticket
            .unwrap()
            .complete(snapshot(1, &[(0, spin_and_sleep(1))], &[]));
        assert_eq!(c.usage().0, 2, "vertex entry + subtask 0");
        let l = c.lookup(&key(None));
        assert!(l.cached.is_none(), "expired before the read");
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn memory_bound_evicts_least_recently_read() {
        let one = snapshot(1, &[(0, spin_and_sleep(1))], &[]).approx_bytes();
        let mut limits = CacheLimits::new(Duration::from_secs(60), Duration::from_secs(600));
        limits.max_entries = 2;
        let c = GraphCache::new(limits);
        for i in 0..5u32 {
            let k = key(Some(i));
            c.lookup(&k).ticket.unwrap().complete(snapshot(
                u64::from(i),
                &[(i, spin_and_sleep(1))],
                &[],
            ));
        }
        let (entries, bytes) = c.usage();
        assert_eq!(entries, 2);
        assert!(bytes <= 2 * (one + 512));
        assert!(c.peek(&key(Some(4))).is_some() && c.peek(&key(Some(0))).is_none());
        let mut tiny = limits;
        tiny.max_bytes = 10;
        let c = GraphCache::new(tiny);
        c.lookup(&key(None))
            .ticket
            .unwrap()
            .complete(snapshot(1, &[(0, spin_and_sleep(1))], &[]));
        assert_eq!(c.usage(), (0, 0), "a snapshot over the budget is not kept");
    }

    #[tokio::test]
    async fn waiters_wake_when_the_run_ends() {
        let c = cache();
        let ticket = c.lookup(&key(None)).ticket.unwrap();
        let mut rx = c
            .pending_run(&key(Some(0)))
            .expect("subtask waits on the vertex run");
        let waiter = tokio::spawn(async move { rx.changed().await.is_err() });
        ticket.complete(snapshot(1, &[(0, spin_and_sleep(1))], &[]));
        assert!(waiter.await.unwrap(), "sender dropped at completion");
        assert!(c.pending_run(&key(None)).is_none());
        assert!(c.peek(&key(Some(0))).is_some());
    }
}
