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
//!   is served at once with the same `endTimestamp`. Those subtask entries are made lazily: a
//!   run is stored as one entry, and a subtask's entry takes the kept vertex runs that hold it
//!   when it is first read (any read: lookup, peek, history, `at`), sharing their profiles
//!   (or, for a packed run, the packed run). A vertex of ten thousand subtasks thus costs one
//!   entry per run to store, and one per subtask somebody looks at. Dropping a ticket without
//!   completing it stores nothing, so the next request retries; the pending mark is cleared
//!   either way, even if the run task panicked.
//! * A run in which no subtask delivered (every agent failed, every process refused or gone) is
//!   not a graph: it is kept aside as the key's last failure ([`GraphCache::last_failure`]), so
//!   the views can say why there is nothing, or why the graph they still serve is older (see
//!   [`super::missing`]), while the entry (and its freshness) stays as it was and the next
//!   request retries. A run that delivers clears it. At
//!   most [`CacheLimits::max_entries`] failures are kept, swept like entries.
//! * Whoever wants to wait for the run in flight (the SVG and folded views do, briefly) gets a
//!   [`tokio::sync::watch::Receiver`] from [`GraphCache::pending_run`]; the run's sender is dropped
//!   when the run ends, which wakes every receiver.
//! * Entries not read for the cleanup interval are dropped: swept on access (at most every
//!   tenth of the interval) and by a periodic task ([`GraphCache::spawn_sweeper`], every tenth of
//!   the interval, at least every second), so an idle coordinator frees them too.
//!
//! **History.** An entry is not one snapshot but the last [`CacheLimits::history`] runs for its
//! key, newest first (ordered by run id, so a late vertex run never hides a newer subtask run).
//! The newest is what [`GraphCache::lookup`] serves and what decides freshness; the older ones
//! are there for [`GraphCache::history`] (the `.../flamegraph/history` list) and
//! [`GraphCache::at`] (`?at=<endTimestamp>` and the differential graph's `base`). Looking at
//! history is a read: it keeps the entry alive like any other. When a new run lands, the
//! oldest run beyond the limit is dropped; when an entry is evicted or swept, its whole history
//! goes with it.
//!
//! **Only the latest run is decoded.** A vertex run of ten thousand subtasks is tens of MB of
//! profiles, so ten of them cannot be kept as they are. When a newer run lands and pushes a
//! run down into history (or a late run is filed behind a newer one), that run is kept
//! **packed** ([`super::packed::PackedRun`]): the body of the shared database's format
//! ([`super::stored`], a tenth of the decoded size or less) and a summary read without decoding
//! (run id, times, which subtasks delivered, samples and threads per type over the run and per
//! subtask). Packing is CPU work of up to a second at that size, so it is never done
//! under the lock nor on an async worker: runs to pack are queued under the lock and packed,
//! one at a time, on a thread of their own at a low priority once it is released (on the
//! caller's thread outside a tokio runtime), then swapped in under the lock. Until then the
//! run stays decoded (and counted so); a run dropped meanwhile is skipped (the queue holds it
//! weakly), and the run's subtask entries that shared its profiles are swapped to the packed
//! run too, so no subtask entry keeps a packed run's profiles alive. Runs smaller than
//! [`CacheLimits::pack_from_bytes`] (`--flamegraph-pack-from-kib`, 256 KiB: a vertex of a few
//! subtasks, a subtask's own run) stay decoded.
//!
//! The history list ([`GraphCache::history`], [`RunInfo`]) reads the summaries, decoding
//! nothing. A read that needs the graph of a packed run (`at`, the `base` of a diff, an
//! export of a past run, the latest of a subtask entry made from a packed vertex run) decodes
//! it on demand, off the lock (with the async worker handed over, `block_in_place`); the
//! decoding is kept for the next read of the same run (polls of one `?at=` or `base`), one run
//! at most, counted in the bound, dropped first when the bound is reached, when nobody read it
//! for a sweep period, or with its run. A subtask entry made from a packed vertex run shares
//! the packed run itself, so the vertex's history does not get decoded to list a subtask's.
//!
//! **JSON memo.** Flink's dashboard polls the JSON endpoint every few seconds per open tab,
//! and a kept run never changes: the cache keeps the rendered JSON text per run and graph type
//! ([`GraphCache::json`]), rendered on the first request, so a poll is a copy of a pointer (a
//! big text is kept gzipped: see [`super::json::render_cached`]).
//! Polls read a key's latest run, so a run's memos go when a newer run of its key lands: a
//! past run (`?at=`, history) is rendered when asked, and ten kept runs of a big vertex do not
//! keep ten rendered texts of megabytes each. A
//! text is about 40 bytes per tree node, far more than the folded profile it is drawn from
//! (about 16 times for 10 k distinct stacks), so memos are counted like everything else, and
//! they are the first thing to go: they can always be rendered again.
//!
//! **Memory given back.** Runs pushed out of history, swept, evicted or forgotten are freed
//! after the cache's lock is released, not under it: freeing a vertex run of ten thousand
//! profiles must not hold up every reader of the cache. A decoded run swapped for its packing
//! is freed on the packer's thread. Freeing a big run is followed by [`trim`] (at most every
//! two seconds, off the lock): the allocator is asked to give free pages back, or the
//! process's RSS would stay at its high-water mark.
//!
//! **Memory bound.** The cache counts what it really holds. A vertex run's subtask entries hold
//! the very profiles of the vertex snapshot (`Arc`s, see [`Snapshot::subtask_part`]), and a
//! profile kept by several entries or runs is counted once: the cache keeps a reference count
//! per distinct profile (by address) and adds its [`SubtaskProfile::approx_bytes`] when the first
//! holder arrives and subtracts it when the last one goes. A packed run counts its body and
//! summary ([`super::packed::PackedRun::approx_bytes`]) the same way, once however many
//! entries (its vertex's, its subtasks') hold it; swapping a decoded run for its packing takes
//! the decoded run's bytes off and puts the packed ones on. Each kept run adds its own small
//! wrapper, each entry its bookkeeping, each memoised JSON text its length (capacity) plus a
//! little, and the one packed run kept decoded for reads its decoded size. The bound,
//! [`CacheLimits::max_bytes`] (default 256 MiB), holds after every operation:
//!
//! * a memo is stored only if it fits, after dropping other memos (least recently read first);
//!   otherwise the text is served without being kept (runs are never evicted for a memo);
//!   likewise the decoding of a packed run is kept only if it fits;
//! * when a run lands and the total (memos included) exceeds `max_bytes`, or the number of kept
//!   runs (over all keys and their history) exceeds [`CacheLimits::max_entries`] (default [`DEFAULT_MAX_ENTRIES`]),
//!   the decoding kept for reads and memos go first, then the least recently read entries,
//!   history and all, then the oldest runs of the keys just written (never their latest).
//!   Each step costs one pass (a sort, a heap), not one pass per run dropped: a vertex run
//!   writes one key per subtask, ten thousand of them at fleet scale.
//!
//! One exception: a single run that is by itself larger than `max_bytes` (a vertex run with the
//! subtask entries it fills) is still cached, alone, after everything else is evicted, with a
//! warning in the log. Refusing it would leave its key at `-3` and start another full sampling
//! run on every poll. Its JSON is then not memoised. So the cache holds at most
//! `max(max_bytes, the largest single run)`, memos included. Folding by distinct stack (see
//! [`super::profile`]) keeps real entries small: tens of kilobytes for a typical vertex.

use super::packed::{PackedRun, RunInfo};
use super::profile::{Snapshot, SubtaskProfile};
use axum::body::Bytes;
use flamegrid_model::GraphType;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

/// The largest `--flamegraph-history` accepted: a bound on the bookkeeping per key, so a typo
/// (an extra zero or three) cannot turn the cache into a store.
pub const MAX_HISTORY: usize = 1000;

/// Default bound of the runs kept ([`CacheLimits::max_entries`]). A vertex run counts once
/// for the vertex and once per subtask entry made from it (when that subtask is read), so a
/// vertex of 10,000 subtasks whose every subtask was looked at is 10,001 runs: the bound leaves
/// room for the history of several such vertices (the byte bound is the one that binds first)
/// while still bounding the cache's bookkeeping.
pub const DEFAULT_MAX_ENTRIES: usize = 1 << 18;

/// Timing and size limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// A snapshot older than this is stale: the next read starts a new run.
    pub refresh: Duration,
    /// An entry not read for this long is dropped.
    pub cleanup: Duration,
    /// Upper bound of the estimated bytes held by all entries, history and JSON memos included
    /// (see the module docs for the one exception: a single run larger than this).
    pub max_bytes: usize,
    /// Upper bound of the number of runs kept, over all entries and their history.
    pub max_entries: usize,
    /// Runs kept per key, the latest included (`--flamegraph-history`); 0 and 1 both mean
    /// "only the latest".
    pub history: usize,
    /// A run pushed down into history is kept packed (see the module docs) when it holds at
    /// least this many bytes decoded; smaller ones (a vertex of a few subtasks, a subtask's
    /// own run) stay decoded, where packing would save little. 0 packs every run.
    pub pack_from_bytes: usize,
}

/// Default [`CacheLimits::pack_from_bytes`]: ten decoded runs of a smaller key hold at most a
/// few MB, and packing one costs about what it saves in memory in CPU time.
pub const DEFAULT_PACK_FROM_BYTES: usize = 256 * 1024;

impl CacheLimits {
    /// Default size bounds (and a history of 10 runs) with the given refresh and cleanup
    /// intervals.
    pub fn new(refresh: Duration, cleanup: Duration) -> Self {
        CacheLimits {
            refresh,
            cleanup,
            max_bytes: 256 * 1024 * 1024,
            max_entries: DEFAULT_MAX_ENTRIES,
            history: 10,
            pack_from_bytes: DEFAULT_PACK_FROM_BYTES,
        }
    }

    /// Runs kept per key: at least the latest, at most [`MAX_HISTORY`].
    pub fn runs_per_key(&self) -> usize {
        self.history.clamp(1, MAX_HISTORY)
    }

    /// How often the periodic sweeper runs: a tenth of the cleanup interval, at least a second
    /// (so an entry outlives its cleanup interval by at most a tenth of it, or a second).
    pub fn sweep_period(&self) -> Duration {
        (self.cleanup / 10).max(Duration::from_secs(1))
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

/// A kept run, as an entry holds it (see the module docs, "History").
#[derive(Debug, Clone)]
enum Kept {
    /// Decoded: every key's latest run, runs smaller than [`CacheLimits::pack_from_bytes`],
    /// and a run pushed down into history until it is packed.
    Decoded(Arc<Snapshot>),
    /// An older run of the key, packed.
    Packed(Arc<PackedRun>),
    /// Subtask `.1`'s part of a packed vertex run (an entry made from it, or whose part of
    /// the run was decoded until the vertex run was packed): shares the vertex's packed run.
    Part(Arc<PackedRun>, u32),
}

impl Kept {
    fn run_id(&self) -> u64 {
        match self {
            Kept::Decoded(s) => s.run_id,
            Kept::Packed(p) | Kept::Part(p, _) => p.info().run_id,
        }
    }

    fn end_ms(&self) -> i64 {
        match self {
            Kept::Decoded(s) => s.end_ms,
            Kept::Packed(p) | Kept::Part(p, _) => p.info().end_ms,
        }
    }

    /// Whether subtask `index` delivered in this run.
    fn holds(&self, index: u32) -> bool {
        match self {
            Kept::Decoded(s) => s.subtasks.contains_key(&index),
            Kept::Packed(p) => p.holds(index),
            Kept::Part(_, i) => *i == index,
        }
    }

    /// Subtask `index`'s part of this run, as its subtask entry keeps it: sharing the
    /// profile of a decoded run ([`Snapshot::subtask_part`]) or the packed run itself.
    fn part(&self, index: u32) -> Option<Kept> {
        match self {
            Kept::Decoded(s) => s.subtask_part(index).map(|p| Kept::Decoded(Arc::new(p))),
            Kept::Packed(p) => p.holds(index).then(|| Kept::Part(Arc::clone(p), index)),
            Kept::Part(_, i) => (*i == index).then(|| self.clone()),
        }
    }

    /// What the history list shows of it.
    fn info(&self) -> RunInfo {
        match self {
            Kept::Decoded(s) => RunInfo::of(s),
            Kept::Packed(p) => p.info().clone(),
            Kept::Part(p, index) => p.part_info(*index).unwrap_or_else(|| p.info().clone()),
        }
    }
}

/// A packed run's identity while the cache holds it, like [`profile_address`].
fn packed_address(packed: &Arc<PackedRun>) -> usize {
    Arc::as_ptr(packed) as usize
}

/// Bytes counted per packed run or part an entry holds, beside the packed run itself (counted
/// once, however many entries share it).
const PACKED_REF_BYTES: usize = 32;

#[derive(Debug)]
struct Entry {
    /// Kept runs, newest (highest run id) first; never empty.
    runs: VecDeque<Kept>,
    /// When the newest run landed: decides freshness.
    landed: Instant,
    last_read: Instant,
    /// Bytes of the entry's own bookkeeping (not of its runs).
    overhead: usize,
}

impl Entry {
    fn latest(&self) -> &Kept {
        // `runs` is never empty: an entry is created with its first run and dropped with its
        // last. Index 0 exists.
        &self.runs[0]
    }
}

/// Bookkeeping bytes counted per memoised JSON text, on top of its capacity.
const MEMO_OVERHEAD: usize = 64;

/// A kept run (an `Arc<Snapshot>`), as the cache tracks it: how many entries hold it, and its
/// memoised JSON texts per graph type.
#[derive(Debug)]
struct HeldRun {
    holders: usize,
    memo: [Option<Bytes>; 3],
    /// Counted bytes of `memo`.
    memo_bytes: usize,
    /// When a memo of this run was last served: the least recently read memo goes first.
    memo_read: Instant,
    /// A newer run of its key has landed: its JSON is no longer memoised (see the module docs).
    superseded: bool,
    /// The bytes its first holder added (its profiles, names and wrapper): whether it is big
    /// enough to be packed once it is history.
    bytes: usize,
}

/// A run to pack: its key, and the run, held weakly: a run dropped from the cache before its
/// turn (pushed out, evicted, swept, forgotten) is freed at once, not kept alive by the queue.
type PackJob = (GraphKey, Weak<Snapshot>);

/// The one packed run kept decoded for the `?at=` and `base` polls that read it (see the
/// module docs, "Memory bound").
#[derive(Debug)]
struct Recent {
    /// The packed run it is the decoding of ([`packed_address`]).
    packed: usize,
    snapshot: Arc<Snapshot>,
    bytes: usize,
    read: Instant,
}

fn type_slot(ty: GraphType) -> usize {
    match ty {
        GraphType::Full => 0,
        GraphType::OnCpu => 1,
        GraphType::OffCpu => 2,
    }
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<GraphKey, Entry>,
    pending: HashMap<GraphKey, watch::Sender<()>>,
    /// Estimated bytes held, memos included; see the module docs.
    bytes: usize,
    /// Runs kept over all entries.
    runs: usize,
    /// Distinct profiles and names tables held, by address: (holders, bytes).
    profiles: HashMap<usize, (usize, usize)>,
    /// Kept runs, by the address of their snapshot (stable while the cache holds an `Arc` to it).
    held: HashMap<usize, HeldRun>,
    /// The part of `bytes` that is JSON memos.
    memo_bytes: usize,
    /// The last run of a key in which no subtask delivered, and when it ended (see the module
    /// docs); only for keys whose last run failed.
    failures: HashMap<GraphKey, (Instant, Arc<Snapshot>)>,
    last_sweep: Instant,
    /// Runs let go of under the lock, dropped once it is released ([`GraphCache::locked`]):
    /// freeing a vertex run of ten thousand subtask profiles must not hold up every reader.
    released: Vec<Kept>,
    /// Decoded runs pushed down into history under the lock, packed once it is released
    /// ([`GraphCache::locked`], [`GraphCache::pack`]): (key, run).
    to_pack: Vec<PackJob>,
    /// The packed run last decoded for a read, if it is still kept and fits the bound.
    recent: Option<Recent>,
}

impl Inner {
    /// The run in flight that will fill `key`: one for `key` itself or, for a subtask, one for
    /// its whole vertex (a vertex run fills every subtask entry).
    fn run_filling(&self, key: &GraphKey) -> Option<&watch::Sender<()>> {
        self.pending
            .get(key)
            .or_else(|| key.subtask.and_then(|_| self.pending.get(&key.vertex())))
    }

    /// Counts one more holder of `run` (a kept run of some entry).
    fn hold(&mut self, run: &Kept) {
        self.runs += 1;
        let snapshot = match run {
            Kept::Decoded(s) => s,
            Kept::Packed(p) | Kept::Part(p, _) => {
                // The packed run once, however many entries (its vertex's, its subtasks') hold it.
                self.bytes += PACKED_REF_BYTES
                    + hold_part(&mut self.profiles, packed_address(p), || p.approx_bytes());
                return;
            }
        };
        let mut added = run_overhead(snapshot);
        let mut last_table = None;
        for profile in snapshot.subtasks.values() {
            added += hold_part(&mut self.profiles, profile_address(profile), || {
                profile.approx_bytes()
            });
            // A run's profiles share one names table: counted once per run held (and once
            // per profile of another run that shares it, which none does).
            let table = profile.names.table();
            if last_table != Some(Arc::as_ptr(table)) {
                last_table = Some(Arc::as_ptr(table));
                added += hold_part(&mut self.profiles, Arc::as_ptr(table) as usize, || {
                    table.approx_bytes()
                });
            }
        }
        self.bytes += added;
        let held = self
            .held
            .entry(snapshot_address(snapshot))
            .or_insert_with(|| HeldRun {
                holders: 0,
                memo: Default::default(),
                memo_bytes: 0,
                memo_read: Instant::now(),
                superseded: false,
                bytes: added,
            });
        held.holders += 1;
    }

    /// Counts one holder of `run` less; the last one takes its memos along (and, for a packed
    /// run, its decoding kept for reads).
    fn release(&mut self, run: &Kept) {
        self.released.push(run.clone());
        self.runs = self.runs.saturating_sub(1);
        let snapshot = match run {
            Kept::Decoded(s) => s,
            Kept::Packed(p) | Kept::Part(p, _) => {
                let address = packed_address(p);
                let freed = release_part(&mut self.profiles, address);
                self.bytes = self.bytes.saturating_sub(PACKED_REF_BYTES + freed);
                if !self.profiles.contains_key(&address)
                    && self.recent.as_ref().is_some_and(|r| r.packed == address)
                {
                    self.drop_recent();
                }
                return;
            }
        };
        let address = snapshot_address(snapshot);
        if let Some(run) = self.held.get_mut(&address) {
            run.holders -= 1;
            if run.holders == 0 {
                self.forget_memos(address);
                self.held.remove(&address);
            }
        }
        self.bytes = self.bytes.saturating_sub(run_overhead(snapshot));
        let mut last_table = None;
        for profile in snapshot.subtasks.values() {
            let freed = release_part(&mut self.profiles, profile_address(profile));
            self.bytes = self.bytes.saturating_sub(freed);
            let table = Arc::as_ptr(profile.names.table());
            if last_table != Some(table) {
                last_table = Some(table);
                let freed = release_part(&mut self.profiles, table as usize);
                self.bytes = self.bytes.saturating_sub(freed);
            }
        }
    }

    /// Lets go of the decoding kept for reads, if any (freed once the lock is released).
    fn drop_recent(&mut self) -> bool {
        match self.recent.take() {
            Some(recent) => {
                self.bytes = self.bytes.saturating_sub(recent.bytes);
                self.released.push(Kept::Decoded(recent.snapshot));
                true
            }
            None => false,
        }
    }

    /// Swaps `key`'s run `decoded` for `packed`, its packing, if `key` still keeps it and not
    /// as its latest; and so the subtask entries' parts of it (which share its profiles), so
    /// that no subtask entry keeps the run's profiles alive. Returns whether it swapped.
    fn swap_packed(
        &mut self,
        key: &GraphKey,
        decoded: &Arc<Snapshot>,
        packed: &Arc<PackedRun>,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let Some(i) = entry
            .runs
            .iter()
            .position(|r| matches!(r, Kept::Decoded(s) if Arc::ptr_eq(s, decoded)))
        else {
            return false; // dropped meanwhile (pushed out, evicted, swept, forgotten)
        };
        if i == 0 {
            return false; // the latest stays decoded
        }
        let new = Kept::Packed(Arc::clone(packed));
        let old = std::mem::replace(&mut entry.runs[i], new.clone());
        // Held before the old one is released: nothing shared is counted out and in again.
        self.hold(&new);
        self.release(&old);
        if key.subtask.is_some() {
            return true;
        }
        // The subtask entries of the vertex holding a part of this run: a pass over the fewer
        // of the entries and the run's subtasks (ten thousand lookups at most, one key reused).
        let parts: Vec<GraphKey> = if self.entries.len() <= decoded.subtasks.len() {
            self.entries
                .keys()
                .filter(|k| {
                    k.subtask.is_some_and(|i| decoded.subtasks.contains_key(&i))
                        && k.job_id == key.job_id
                        && k.vertex_id == key.vertex_id
                })
                .cloned()
                .collect()
        } else {
            let mut probe = key.clone();
            let mut found = Vec::new();
            for &index in decoded.subtasks.keys() {
                probe.subtask = Some(index);
                if self.entries.contains_key(&probe) {
                    found.push(probe.clone());
                }
            }
            found
        };
        for part_key in parts {
            let Some(index) = part_key.subtask else {
                continue;
            };
            let Some(profile) = decoded.subtasks.get(&index) else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(&part_key) else {
                continue;
            };
            let mut swapped = Vec::new();
            for run in entry.runs.iter_mut() {
                let shares = matches!(run, Kept::Decoded(s) if s.run_id == decoded.run_id
                    && s.subtasks.get(&index).is_some_and(|p| Arc::ptr_eq(p, profile)));
                if shares {
                    let part = Kept::Part(Arc::clone(packed), index);
                    swapped.push((std::mem::replace(run, part.clone()), part));
                }
            }
            for (old, new) in swapped {
                self.hold(&new);
                self.release(&old);
            }
        }
        true
    }

    /// Drops the memos of the run at `address` (it stays kept).
    fn forget_memos(&mut self, address: usize) {
        if let Some(run) = self.held.get_mut(&address) {
            run.memo = Default::default();
            self.bytes = self.bytes.saturating_sub(run.memo_bytes);
            self.memo_bytes = self.memo_bytes.saturating_sub(run.memo_bytes);
            run.memo_bytes = 0;
        }
    }

    /// Drops the memos of the run whose memos were read least recently, other than `except`'s;
    /// false when there is none.
    fn forget_lru_memos(&mut self, except: Option<usize>) -> bool {
        let victim = self
            .held
            .iter()
            .filter(|(a, r)| r.memo_bytes > 0 && Some(**a) != except)
            .min_by_key(|(_, r)| r.memo_read)
            .map(|(a, _)| *a);
        match victim {
            Some(address) => {
                self.forget_memos(address);
                true
            }
            None => false,
        }
    }

    /// Removes `key`'s entry and everything it holds.
    fn drop_entry(&mut self, key: &GraphKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(entry.overhead);
            for run in &entry.runs {
                self.release(run);
            }
        }
    }
}

/// Counts one more holder of the shared part (a profile or a names table) at `address` in
/// `parts` (holders, bytes); returns the bytes it adds: its size for the first holder, else 0.
fn hold_part(
    parts: &mut HashMap<usize, (usize, usize)>,
    address: usize,
    bytes: impl FnOnce() -> usize,
) -> usize {
    let slot = parts.entry(address).or_insert((0, 0));
    slot.0 += 1;
    if slot.0 == 1 {
        slot.1 = bytes();
        slot.1
    } else {
        0
    }
}

/// Counts one holder of the part at `address` less; returns the bytes freed: its size when it
/// was the last holder, else 0.
fn release_part(parts: &mut HashMap<usize, (usize, usize)>, address: usize) -> usize {
    let Some(slot) = parts.get_mut(&address) else {
        return 0;
    };
    slot.0 -= 1;
    if slot.0 > 0 {
        return 0;
    }
    let freed = slot.1;
    parts.remove(&address);
    freed
}

/// Drops `released` runs: on a blocking thread of the current tokio runtime when this takes
/// the last holder of a big run (a vertex run of thousands of profiles takes milliseconds to
/// free, which is not the business of the request or run that happened to push it out), else
/// here. Either way, freeing that much gives memory back to the system ([`trim`]).
fn give_back(released: Vec<Kept>) {
    let last = |r: &Kept| match r {
        Kept::Decoded(s) => Arc::strong_count(s) == 1,
        Kept::Packed(p) | Kept::Part(p, _) => Arc::strong_count(p) == 1,
    };
    let profiles: usize = released
        .iter()
        .filter(|r| last(r))
        .map(|r| match r {
            Kept::Decoded(s) => s.subtasks.len(),
            Kept::Packed(_) | Kept::Part(..) => 0,
        })
        .sum();
    if profiles < GIVE_BACK_ASIDE {
        drop(released);
        return;
    }
    let free = move || {
        drop(released);
        trim();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(free)),
        Err(_) => free(),
    }
}

/// Gives the memory freed by a big run back to the system. The coordinator's binary allocates
/// with mimalloc (see its `main.rs`), which purges freed pages by itself; `mi_collect` also
/// hands back what the calling thread's heap and abandoned heaps hold free. glibc's malloc
/// (SQLite's and other C code's allocations; every allocation of a test or bench binary)
/// keeps freed small blocks in its arenas: `malloc_trim(0)` returns their free pages. Both
/// walk their heaps, so this runs off the cache's lock (callers: the thread that frees a big
/// run, the packer), at most every two seconds. Does nothing with `FLAMEGRID_MALLOC_TRIM=0`
/// in the environment (to measure what it gives back).
pub fn trim() {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("FLAMEGRID_MALLOC_TRIM").is_ok_and(|v| v == "0")) {
        return;
    }
    {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < TRIM_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    // SAFETY: `mi_collect` frees only what mimalloc's heaps hold free, from any thread.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of glibc's own arenas; it takes their
    // locks and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lowers the calling thread's scheduling priority (nice 10, Linux): for the packer, whose
/// work can wait. Best effort: nothing happens elsewhere or when it is refused.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` has no preconditions; `setpriority` on this thread's own id changes only
    // its nice value (on Linux, `PRIO_PROCESS` with a thread id applies to that thread).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// The shortest time between two [`trim`]s.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Runs `f`, CPU work of milliseconds or a blocking wait, without holding up an async worker:
/// on a worker of a multi-threaded tokio runtime, the worker's other tasks move to another
/// thread meanwhile ([`tokio::task::block_in_place`]); anywhere else (a current-thread runtime,
/// a blocking thread, no runtime), it just runs.
pub(crate) fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Profiles freed at once from which [`give_back`] frees them on a blocking thread.
const GIVE_BACK_ASIDE: usize = 256;

/// A profile's identity while the cache holds it: its address (stable while an `Arc` to it is
/// alive, and the cache holds one for as long as it counts it).
fn profile_address(profile: &Arc<SubtaskProfile>) -> usize {
    Arc::as_ptr(profile) as usize
}

/// A kept run's identity while the cache holds it, like [`profile_address`].
fn snapshot_address(snapshot: &Arc<Snapshot>) -> usize {
    Arc::as_ptr(snapshot) as usize
}

/// Bytes of a kept run apart from its profiles: the snapshot itself, its missing list, and the
/// map nodes pointing at the profiles.
fn run_overhead(snapshot: &Snapshot) -> usize {
    std::mem::size_of::<Snapshot>() + snapshot.missing.len() * 48 + snapshot.subtasks.len() * 48
}

/// The cache; see the module docs. Shared as `Arc<GraphCache>`.
#[derive(Debug)]
pub struct GraphCache {
    limits: CacheLimits,
    inner: Mutex<Inner>,
    /// The cache itself, for the packer thread.
    me: Weak<GraphCache>,
    /// Packings handed out and not finished yet ([`GraphCache::packing`]).
    packing: AtomicUsize,
    /// Runs waiting to be packed, oldest first, and whether a packer is taking them: one at a
    /// time, so that runs landing faster than they are packed queue up instead of packing in
    /// parallel on every core.
    queue: Mutex<(VecDeque<PackJob>, bool)>,
}

impl GraphCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Arc<Self> {
        Arc::new_cyclic(|me| GraphCache {
            me: Weak::clone(me),
            packing: AtomicUsize::new(0),
            queue: Mutex::new((VecDeque::new(), false)),
            limits,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                pending: HashMap::new(),
                bytes: 0,
                runs: 0,
                profiles: HashMap::new(),
                held: HashMap::new(),
                memo_bytes: 0,
                failures: HashMap::new(),
                last_sweep: Instant::now(),
                released: Vec::new(),
                to_pack: Vec::new(),
                recent: None,
            }),
        })
    }

    /// The limits the cache was made with.
    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // (every update is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the locked state, then drops the runs it let go of once the lock is
    /// released: the memory of a run pushed out of history (or swept, evicted, forgotten) is
    /// given back outside the lock, by the caller.
    /// Runs pushed down into history are packed the same way, after the lock is released
    /// ([`GraphCache::pack`]).
    fn locked<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.lock();
        let result = f(&mut inner);
        let released = std::mem::take(&mut inner.released);
        let to_pack = std::mem::take(&mut inner.to_pack);
        drop(inner);
        give_back(released);
        self.pack(to_pack);
        result
    }

    /// Packs `runs` (decoded runs pushed down into history) and swaps each for its packing in
    /// its key's entry, one run at a time in landing order: within a tokio runtime on a thread
    /// of its own at a low priority (packing a vertex run of ten thousand subtasks is CPU work
    /// of a fraction of a second), outside one here, on the caller's thread (tests, benches).
    /// A run dropped from the cache before its turn is skipped.
    fn pack(&self, runs: Vec<PackJob>) {
        if runs.is_empty() {
            return;
        }
        let Some(cache) = self.me.upgrade() else {
            return;
        };
        self.packing.fetch_add(runs.len(), Ordering::SeqCst);
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.0.extend(runs);
            if queue.1 {
                return; // the packer at work takes them
            }
            queue.1 = true;
        }
        let work = move || {
            loop {
                let next = {
                    let mut queue = cache.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let next = queue.0.pop_front();
                    if next.is_none() {
                        queue.1 = false;
                    }
                    next
                };
                let Some((key, run)) = next else { break };
                if let Some(run) = run.upgrade() {
                    cache.pack_one(&key, run);
                }
                cache.packing.fetch_sub(1, Ordering::SeqCst);
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return work();
        }
        // Its own thread, at a low priority: packing must not slow down the next run's answers
        // (a run's own CPU is what the time to graph is made of), only use what they leave.
        let spawned = std::thread::Builder::new()
            .name("flamegrid-packer".into())
            .spawn(move || {
                lower_priority();
                work();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to pack flame graph runs: kept decoded");
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            self.packing.fetch_sub(queue.0.len(), Ordering::SeqCst);
            queue.0.clear();
            queue.1 = false;
        }
    }

    /// Packs one run of `key` and swaps it in ([`Inner::swap_packed`]); then frees the decoded
    /// run, here (off the lock), and gives the memory back ([`trim`]).
    fn pack_one(&self, key: &GraphKey, run: Arc<Snapshot>) {
        let packed = match PackedRun::pack(&run) {
            Ok(packed) => Arc::new(packed),
            Err(e) => {
                tracing::warn!(?key, run = run.run_id, error = %e, "flame graph run not packed: kept decoded");
                return;
            }
        };
        if packed.approx_bytes() >= run.approx_bytes() {
            return; // nothing to save (a run of a few tiny profiles)
        }
        let swapped = self.locked(|inner| inner.swap_packed(key, &run, &packed));
        if swapped {
            tracing::debug!(
                ?key,
                run = run.run_id,
                subtasks = run.subtasks.len(),
                packed_bytes = packed.approx_bytes(),
                "flame graph run packed"
            );
        }
        let big = run.subtasks.len() >= GIVE_BACK_ASIDE;
        drop(run);
        if swapped && big {
            trim();
        }
    }

    /// Packings handed to the packer thread and not finished yet: runs pushed down into history
    /// are still decoded until this is 0 (tests and measurements wait for it).
    pub fn packing(&self) -> usize {
        self.packing.load(Ordering::SeqCst)
    }

    /// `kept` decoded: as it is, or its packed run decoded off the lock (on a multi-threaded
    /// runtime, with the worker handed over to the other tasks meanwhile), from the decoding
    /// kept for reads when it is that run's. `None` (logged) when a packed body does not read
    /// back, which one this process packed cannot do.
    fn unpack(&self, kept: Kept) -> Option<Arc<Snapshot>> {
        let (packed, part) = match kept {
            Kept::Decoded(s) => return Some(s),
            Kept::Packed(p) => (p, None),
            Kept::Part(p, index) => (p, Some(index)),
        };
        let address = packed_address(&packed);
        let kept = {
            let mut inner = self.lock();
            inner
                .recent
                .as_mut()
                .filter(|r| r.packed == address)
                .map(|r| {
                    r.read = Instant::now();
                    Arc::clone(&r.snapshot)
                })
        };
        let whole = match kept {
            Some(whole) => whole,
            None => {
                let decoded = off_the_workers(|| {
                    packed.unpack().map(|s| {
                        let bytes = s.approx_bytes();
                        (Arc::new(s), bytes)
                    })
                });
                let (whole, bytes) = match decoded {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        tracing::error!(run = packed.info().run_id, error = %e, "a packed flame graph run does not read back");
                        return None;
                    }
                };
                self.locked(|inner| self.keep_recent(inner, address, &whole, bytes));
                whole
            }
        };
        match part {
            None => Some(whole),
            Some(index) => whole.subtask_part(index).map(Arc::new),
        }
    }

    /// Keeps `decoded`, the decoding of the packed run at `address`, for the next reads of it,
    /// in place of the one kept before, if that run is still kept and it fits the bound.
    fn keep_recent(
        &self,
        inner: &mut Inner,
        address: usize,
        decoded: &Arc<Snapshot>,
        bytes: usize,
    ) {
        if !inner.profiles.contains_key(&address) {
            return; // dropped from the cache meanwhile
        }
        inner.drop_recent();
        if inner.bytes + bytes > self.limits.max_bytes {
            return;
        }
        inner.bytes += bytes;
        inner.recent = Some(Recent {
            packed: address,
            snapshot: Arc::clone(decoded),
            bytes,
            read: Instant::now(),
        });
    }

    /// The cached snapshot for `key` (even stale), and a ticket to start a run when it is
    /// missing or stale and no run that would fill it is in flight. Never waits.
    pub fn lookup(self: &Arc<Self>, key: &GraphKey) -> Lookup {
        self.lookup_with(key, false)
    }

    /// Like [`GraphCache::lookup`], but with `refresh` a ticket is handed out even when the
    /// cached snapshot is fresh (`?refresh=true`): the refresh interval is ignored, the
    /// one-run-in-flight rule is not. Never waits.
    pub fn lookup_with(self: &Arc<Self>, key: &GraphKey, refresh: bool) -> Lookup {
        let now = Instant::now();
        let (cached, ticket) = self.locked(|inner| self.lookup_locked(inner, key, refresh, now));
        Lookup {
            cached: cached.and_then(|kept| self.unpack(kept)),
            ticket,
        }
    }

    fn lookup_locked(
        self: &Arc<Self>,
        inner: &mut Inner,
        key: &GraphKey,
        refresh: bool,
        now: Instant,
    ) -> (Option<Kept>, Option<RunTicket>) {
        self.sweep(inner, now);
        self.materialize(inner, key);
        let (cached, fresh) = match inner.entries.get_mut(key) {
            Some(e) => {
                e.last_read = now;
                (
                    Some(e.latest().clone()),
                    now.duration_since(e.landed) < self.limits.refresh,
                )
            }
            None => (None, false),
        };
        let covered = inner.run_filling(key).is_some();
        let ticket = if (fresh && !refresh) || covered {
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
        (cached, ticket)
    }

    /// A receiver that wakes (with an error from `changed()`) when the run that will fill `key`
    /// ends; `None` when no such run is in flight.
    pub fn pending_run(&self, key: &GraphKey) -> Option<watch::Receiver<()>> {
        self.lock().run_filling(key).map(watch::Sender::subscribe)
    }

    /// Whether a run that will fill `key` is in flight: one for `key` itself or, for a subtask,
    /// one for its whole vertex. What the `X-Flamegrid-Sampling` header reports.
    pub fn sampling(&self, key: &GraphKey) -> bool {
        self.lock().run_filling(key).is_some()
    }

    /// The last run of `key` in which no subtask delivered, when no run has delivered since:
    /// why there is nothing to show (its `missing` says, per subtask). Never starts a run.
    pub fn last_failure(&self, key: &GraphKey) -> Option<Arc<Snapshot>> {
        self.lock().failures.get(key).map(|(_, s)| Arc::clone(s))
    }

    /// The cached snapshot for `key` without touching freshness or starting anything.
    pub fn peek(&self, key: &GraphKey) -> Option<Arc<Snapshot>> {
        let kept = self.locked(|inner| {
            self.materialize(inner, key);
            inner.entries.get(key).map(|e| e.latest().clone())
        });
        self.unpack(kept?)
    }

    /// The latest run of `key` when it is kept decoded, without decoding anything (`None`
    /// also when it is packed: the latest of a subtask entry made from a packed vertex run):
    /// for hints that are not worth a decoding, like the names a new run will meet.
    pub fn peek_decoded(&self, key: &GraphKey) -> Option<Arc<Snapshot>> {
        self.locked(|inner| {
            self.materialize(inner, key);
            match inner.entries.get(key).map(Entry::latest) {
                Some(Kept::Decoded(s)) => Some(Arc::clone(s)),
                _ => None,
            }
        })
    }

    /// What the history list shows of the kept runs of `key`, newest first (empty when nothing
    /// is cached): read from every run as kept, packed or not, without decoding any. A read:
    /// it keeps the entry from being swept or evicted as unused. Never starts a run.
    pub fn history(&self, key: &GraphKey) -> Vec<RunInfo> {
        let now = Instant::now();
        self.locked(|inner| {
            self.sweep(inner, now);
            self.materialize(inner, key);
            match inner.entries.get_mut(key) {
                Some(e) => {
                    e.last_read = now;
                    e.runs.iter().map(Kept::info).collect()
                }
                None => Vec::new(),
            }
        })
    }

    /// The kept run of `key` that ended at `end_ms` (the newest such, should two share a
    /// millisecond), decoded if it is kept packed (off the lock; see the module docs). A read,
    /// like [`GraphCache::history`]; never starts a run.
    pub fn at(&self, key: &GraphKey, end_ms: i64) -> Option<Arc<Snapshot>> {
        let now = Instant::now();
        let found = self.locked(|inner| {
            self.sweep(inner, now);
            self.materialize(inner, key);
            let e = inner.entries.get_mut(key)?;
            let found = e.runs.iter().find(|r| r.end_ms() == end_ms).cloned()?;
            e.last_read = now;
            Some(found)
        });
        self.unpack(found?)
    }

    /// The JSON answer of `snapshot` for `ty` as kept (the text, or the text gzipped: see
    /// [`super::json::render_cached`]): the memoised one when there is one, else `render`'s,
    /// memoised when `snapshot` is the latest run of a key the cache keeps and it fits the
    /// budget (see the module docs). `render` is told whether its text is meant to be kept.
    /// Rendering happens outside the lock.
    pub fn json<T: Into<Vec<u8>>>(
        &self,
        snapshot: &Arc<Snapshot>,
        ty: GraphType,
        render: impl FnOnce(bool) -> T,
    ) -> Bytes {
        let address = snapshot_address(snapshot);
        let slot = type_slot(ty);
        // Whether the text is for keeping (`render` is told, so it makes what is worth
        // keeping, or just what is asked).
        let memoisable = {
            let mut inner = self.lock();
            match inner.held.get_mut(&address) {
                Some(run) => {
                    if let Some(text) = &run.memo[slot] {
                        run.memo_read = Instant::now();
                        return text.clone();
                    }
                    !run.superseded
                }
                None => false,
            }
        };
        let text: Vec<u8> = render(memoisable).into();
        if !memoisable {
            return Bytes::from(text); // not kept, or a past run: rendered when asked
        }
        let cost = text.capacity() + MEMO_OVERHEAD;
        let text = Bytes::from(text);
        let mut inner = self.lock();
        // Not (or no longer) kept: nothing to attach the memo to. (While the caller holds
        // `snapshot`, no other run can have its address.)
        match inner.held.get(&address) {
            None => return text,
            Some(run) if run.superseded => return text, // a past run: rendered when asked
            Some(run) => {
                if let Some(rendered) = &run.memo[slot] {
                    return rendered.clone(); // another request rendered it meanwhile
                }
            }
        }
        while inner.bytes + cost > self.limits.max_bytes && inner.forget_lru_memos(Some(address)) {}
        if inner.bytes + cost > self.limits.max_bytes {
            tracing::debug!(
                bytes = cost,
                held = inner.bytes,
                max = self.limits.max_bytes,
                "flame graph JSON not memoised: over the cache budget"
            );
            return text;
        }
        inner.bytes += cost;
        inner.memo_bytes += cost;
        if let Some(run) = inner.held.get_mut(&address) {
            run.memo[slot] = Some(text.clone());
            run.memo_bytes += cost;
            run.memo_read = Instant::now();
        }
        text
    }

    /// The part of [`GraphCache::usage`]'s bytes that is memoised JSON.
    pub fn memo_bytes(&self) -> usize {
        self.lock().memo_bytes
    }

    /// Number of entries (keys), and their estimated bytes: history and JSON memos included,
    /// the total [`CacheLimits::max_bytes`] bounds.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    /// Number of runs kept over all entries (what [`CacheLimits::max_entries`] bounds).
    pub fn kept_runs(&self) -> usize {
        self.lock().runs
    }

    fn finish_run(&self, key: &GraphKey, snapshot: Option<Arc<Snapshot>>) {
        let now = Instant::now();
        self.locked(|inner| self.finish_run_locked(inner, key, snapshot, now));
    }

    fn finish_run_locked(
        &self,
        inner: &mut Inner,
        key: &GraphKey,
        snapshot: Option<Arc<Snapshot>>,
        now: Instant,
    ) {
        if let Some(failed) = snapshot.as_ref().filter(|s| s.subtasks.is_empty()) {
            // Nothing delivered: not a graph, only why (see the module docs).
            inner
                .failures
                .insert(key.clone(), (now, Arc::clone(failed)));
            while inner.failures.len() > self.limits.max_entries {
                let oldest = inner
                    .failures
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                let Some(oldest) = oldest else { break };
                inner.failures.remove(&oldest);
            }
            inner.pending.remove(key);
            return;
        }
        if let Some(snapshot) = snapshot {
            self.store(inner, key, snapshot, now, true);
        }
        // Dropping the sender wakes everyone waiting for this run; they find the entry in place.
        inner.pending.remove(key);
    }

    /// Stores a run that delivered under `key` (and, for a vertex run, the subtask entries it
    /// fills), as landed at `landed`; `read` counts it as a read of those entries (a run this
    /// replica asked for) rather than a copy another replica made (see [`super::shared`]).
    fn store(
        &self,
        inner: &mut Inner,
        key: &GraphKey,
        snapshot: Arc<Snapshot>,
        landed: Instant,
        read: bool,
    ) {
        inner.failures.remove(key);
        if key.subtask.is_none() && !inner.failures.is_empty() {
            // The subtasks it delivered have delivered since their last failure. One pass over
            // the failures (few), not one key per subtask (ten thousand at fleet scale).
            inner.failures.retain(|k, _| {
                k.job_id != key.job_id
                    || k.vertex_id != key.vertex_id
                    || k.subtask
                        .is_none_or(|i| !snapshot.subtasks.contains_key(&i))
            });
        }
        // The subtask entries of a vertex run are made when first read
        // (`GraphCache::materialize`), not here: storing a run costs one entry, not one per subtask.
        self.insert(inner, key.clone(), Kept::Decoded(snapshot), landed, read);
        self.evict(inner, std::slice::from_ref(key));
    }

    /// For a subtask `key`, files into its entry the kept runs of its vertex that hold the
    /// subtask and are not there yet (see the module docs: subtask entries are made lazily).
    /// Does nothing for a vertex key, or when the vertex holds nothing newer for it.
    fn materialize(&self, inner: &mut Inner, key: &GraphKey) {
        let Some(index) = key.subtask else { return };
        let keep = self.limits.runs_per_key();
        let (vertex_runs, vertex_landed) = match inner.entries.get(&key.vertex()) {
            Some(v) => (
                v.runs
                    .iter()
                    .filter(|r| r.holds(index))
                    .cloned()
                    .collect::<Vec<_>>(),
                v.landed,
            ),
            None => return,
        };
        let Some(newest) = vertex_runs.first().map(Kept::run_id) else {
            return;
        };
        let (kept, full_from): (Vec<u64>, u64) = match inner.entries.get(key) {
            Some(e) => (
                e.runs.iter().map(Kept::run_id).collect(),
                if e.runs.len() >= keep {
                    e.runs.back().map_or(0, Kept::run_id)
                } else {
                    0
                },
            ),
            None => (Vec::new(), 0),
        };
        // Oldest first, so that the vertex's latest (if the subtask has nothing newer) ends up
        // first with the vertex's landing time, which decides freshness. An older vertex run
        // counts as landed a refresh interval ago (stale): the vertex entry keeps one landing
        // time only.
        let stale = Instant::now()
            .checked_sub(self.limits.refresh)
            .unwrap_or(vertex_landed);
        let mut inserted = false;
        for run in vertex_runs.into_iter().rev() {
            let run_id = run.run_id();
            if kept.contains(&run_id) || run_id < full_from {
                continue;
            }
            // A packed vertex run gives a part sharing the packed run: nothing is decoded.
            let Some(part) = run.part(index) else {
                continue;
            };
            let landed = if run_id == newest {
                vertex_landed
            } else {
                stale.min(vertex_landed)
            };
            self.insert(inner, key.clone(), part, landed, false);
            inserted = true;
        }
        if inserted {
            // The subtask's own vertex is spared too: it is what the entry was made from.
            self.evict(inner, &[key.clone(), key.vertex()]);
        }
    }

    /// Stores a run another replica (or this one, before a restart) made, read from the shared
    /// database: like a run of this replica that delivered, but landed `age` ago (so freshness
    /// counts from when it was stored, as on every replica), without touching the run in flight
    /// for `key`, and without counting as a read. A run already kept (same run id) is left
    /// as it is, memos and all. Ignores a run in which nothing delivered.
    pub fn land_stored(&self, key: &GraphKey, snapshot: Arc<Snapshot>, age: Duration) {
        if snapshot.subtasks.is_empty() {
            return;
        }
        let now = Instant::now();
        let landed = now.checked_sub(age).unwrap_or(now);
        self.locked(|inner| {
            self.materialize(inner, key);
            let kept = inner
                .entries
                .get(key)
                .is_some_and(|e| e.runs.iter().any(|r| r.run_id() == snapshot.run_id));
            if kept {
                return; // already here (this replica's own run, or read before): memos stay
            }
            self.store(inner, key, snapshot, landed, false);
        })
    }

    /// Whether `key` has an entry (a kept run) now; no read, no sweep.
    pub fn holds(&self, key: &GraphKey) -> bool {
        self.locked(|inner| {
            self.materialize(inner, key);
            inner.entries.contains_key(key)
        })
    }

    /// The distinct `(job, vertex)` pairs of the entries held now (vertex and subtask keys
    /// alike): what a replica follows in the shared database.
    pub fn held_vertices(&self) -> Vec<(String, String)> {
        let inner = self.lock();
        let set: HashSet<(&str, &str)> = inner
            .entries
            .keys()
            .map(|k| (k.job_id.as_str(), k.vertex_id.as_str()))
            .collect();
        set.into_iter()
            .map(|(j, v)| (j.to_string(), v.to_string()))
            .collect()
    }

    /// Adds `run` to `key`'s runs in run-id order (replacing a run with the same id) and
    /// drops the oldest runs beyond the history limit. A decoded run that ends up below the
    /// latest (the latest it pushed down, or itself, filed behind a newer one) is handed to
    /// [`GraphCache::pack`] when it is big enough ([`CacheLimits::pack_from_bytes`]).
    fn insert(&self, inner: &mut Inner, key: GraphKey, run: Kept, now: Instant, read: bool) {
        inner.hold(&run);
        let keep = self.limits.runs_per_key();
        let overhead = std::mem::size_of::<Entry>() + 3 * key.job_id.len();
        if !inner.entries.contains_key(&key) {
            inner.bytes += overhead;
        }
        let created = Instant::now();
        let entry = inner.entries.entry(key.clone()).or_insert_with(|| Entry {
            runs: VecDeque::new(),
            landed: now,
            last_read: created,
            overhead,
        });
        if read {
            entry.last_read = now;
        }
        let mut released = Vec::new();
        // The run that was the key's latest until this one: its JSON memos go (see the module
        // docs: memos are for polls, which read the latest).
        let mut superseded = None;
        // Where the run that is now history, if any, sits.
        let history_at = match entry.runs.iter().position(|r| r.run_id() <= run.run_id()) {
            Some(i) if entry.runs[i].run_id() == run.run_id() => {
                released.push(std::mem::replace(&mut entry.runs[i], run));
                if i == 0 {
                    entry.landed = now;
                }
                (i > 0).then_some(i)
            }
            Some(i) => {
                entry.runs.insert(i, run);
                if i == 0 {
                    entry.landed = now;
                    superseded = entry.runs.get(1).cloned();
                    Some(1)
                } else {
                    Some(i)
                }
            }
            None => {
                if entry.runs.is_empty() {
                    entry.landed = now;
                }
                entry.runs.push_back(run);
                Some(entry.runs.len() - 1).filter(|&i| i > 0)
            }
        };
        let history = history_at
            .filter(|&i| i < keep)
            .and_then(|i| match entry.runs.get(i) {
                Some(Kept::Decoded(s)) => Some(Arc::clone(s)),
                _ => None,
            });
        while entry.runs.len() > keep {
            if let Some(old) = entry.runs.pop_back() {
                released.push(old);
            }
        }
        for old in released {
            inner.release(&old);
        }
        if let Some(Kept::Decoded(s)) = superseded {
            let address = snapshot_address(&s);
            inner.forget_memos(address);
            if let Some(run) = inner.held.get_mut(&address) {
                run.superseded = true;
            }
        }
        if let Some(run) = history {
            // Big enough, and holding profiles of its own: a subtask's part of a decoded vertex
            // run (which adds nothing but its wrapper) goes packed with the vertex run.
            let big = inner.held.get(&snapshot_address(&run)).is_some_and(|h| {
                h.bytes >= self.limits.pack_from_bytes && h.bytes > run_overhead(&run)
            });
            if big {
                inner.to_pack.push((key, Arc::downgrade(&run)));
            }
        }
    }

    /// Restores the bounds after a run landed in the `keep` keys: drops JSON memos (least
    /// recently read first), then evicts least recently read entries other than `keep`, then
    /// drops the oldest runs of the `keep` keys (never their latest). If that is still over the
    /// byte budget, the run alone is larger than it: it stays, alone, with a warning (see the
    /// module docs).
    fn evict(&self, inner: &mut Inner, keep: &[GraphKey]) {
        let over = |inner: &Inner| {
            inner.bytes > self.limits.max_bytes || inner.runs > self.limits.max_entries
        };
        if !over(inner) {
            return;
        }
        // The decoding kept for reads first, then memos: all can be made again.
        if over(inner) {
            inner.drop_recent();
        }
        while over(inner) && inner.forget_lru_memos(None) {}
        if over(inner) {
            // Least recently read first; sorted once, so a vertex run of ten thousand subtasks
            // (as many keys written) costs one pass, not one pass per victim.
            let written: HashSet<&GraphKey> = keep.iter().collect();
            let mut victims: Vec<(Instant, GraphKey)> = inner
                .entries
                .iter()
                .filter(|(k, _)| !written.contains(k))
                .map(|(k, e)| (e.last_read, k.clone()))
                .collect();
            victims.sort_unstable_by_key(|(read, _)| *read);
            for (_, victim) in victims {
                if !over(inner) {
                    break;
                }
                inner.drop_entry(&victim);
            }
        }
        // Then the oldest runs of the keys written, from the key with the most runs, so they
        // are trimmed evenly (a heap, so each trimmed run costs a logarithm, not a pass).
        let mut longest: BinaryHeap<(usize, usize)> = BinaryHeap::new();
        if over(inner) {
            longest.extend(
                keep.iter()
                    .enumerate()
                    .filter_map(|(i, k)| inner.entries.get(k).map(|e| (e.runs.len(), i)))
                    .filter(|(n, _)| *n > 1),
            );
        }
        while over(inner) {
            let Some((_, i)) = longest.pop() else { break };
            let Some(entry) = inner.entries.get_mut(&keep[i]) else {
                continue;
            };
            let Some(oldest) = entry.runs.pop_back() else {
                continue;
            };
            let left = entry.runs.len();
            inner.release(&oldest);
            if left > 1 {
                longest.push((left, i));
            }
        }
        if inner.bytes > self.limits.max_bytes {
            tracing::warn!(
                key = ?keep.first(),
                bytes = inner.bytes,
                max = self.limits.max_bytes,
                "flame graph run larger than the whole cache budget (--flamegraph-* settings \
                 sample too much); cached alone so that polls do not resample it"
            );
        }
    }

    /// Drops every entry not read for the cleanup interval, now (the periodic sweeper's call;
    /// reads also sweep, at most every tenth of the interval). Returns how many it dropped.
    pub fn sweep_now(&self) -> usize {
        self.locked(|inner| self.sweep_expired(inner, Instant::now()))
    }

    /// Starts the periodic sweeper on the current tokio runtime: every
    /// [`CacheLimits::sweep_period`] it calls [`GraphCache::sweep_now`], so entries nobody reads
    /// are freed even when no request comes. It holds the cache only weakly and ends once the
    /// cache is gone; abort the handle to stop it sooner. Must be called within a runtime.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cache: Weak<GraphCache> = Arc::downgrade(self);
        let period = self.limits.sweep_period();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(cache) = cache.upgrade() else { return };
                let dropped = cache.sweep_now();
                if dropped > 0 {
                    tracing::debug!(dropped, "flame graph cache: unread entries swept");
                }
            }
        })
    }

    /// Drops every entry of `job_id` (its vertices and subtasks, all kept runs and memos): the
    /// registry removed the job (`--job-retention-s`), so nobody may read its graphs any more.
    /// A run still in flight for it lands into an entry nobody reads, which the sweeper frees.
    /// Returns how many entries it dropped.
    pub fn forget_job(&self, job_id: &str) -> usize {
        self.locked(|inner| {
            let keys: Vec<GraphKey> = inner
                .entries
                .keys()
                .filter(|k| k.job_id == job_id)
                .cloned()
                .collect();
            for key in &keys {
                inner.drop_entry(key);
            }
            inner.failures.retain(|k, _| k.job_id != job_id);
            keys.len()
        })
    }

    /// Drops entries not read for the cleanup interval; runs at most every tenth of it.
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        if now.duration_since(inner.last_sweep) < self.limits.cleanup / 10 {
            return;
        }
        self.sweep_expired(inner, now);
    }

    /// Drops the entries not read for the cleanup interval; returns how many.
    fn sweep_expired(&self, inner: &mut Inner, now: Instant) -> usize {
        inner.last_sweep = now;
        let cleanup = self.limits.cleanup;
        let expired: Vec<GraphKey> = inner
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.last_read) >= cleanup)
            .map(|(k, _)| k.clone())
            .collect();
        let dropped = expired.len();
        inner
            .failures
            .retain(|_, (at, _)| now.duration_since(*at) < cleanup);
        // The decoding kept for reads goes once nobody polled it for a sweep period.
        if inner
            .recent
            .as_ref()
            .is_some_and(|r| now.duration_since(r.read) >= self.limits.sweep_period())
        {
            inner.drop_recent();
        }
        for key in expired {
            inner.drop_entry(&key);
        }
        dropped
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

    /// Stores the run's snapshot (and, for a vertex run, its subtasks') and ends the run;
    /// returns the snapshot as stored.
    pub fn complete(mut self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.done = true;
        let snapshot = Arc::new(snapshot);
        self.cache
            .finish_run(&self.key, Some(Arc::clone(&snapshot)));
        snapshot
    }

    /// The cache this ticket fills.
    pub fn cache(&self) -> &Arc<GraphCache> {
        &self.cache
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
    use super::super::profile::{NameTable, ProfileNames};
    use super::super::stored;
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
        // A run in which nothing delivered is kept aside with its reasons, not as a graph:
        // the next read retries, and a run that delivers clears it.
        again.ticket.unwrap().complete(snapshot(2, &[], &[0, 1]));
        let failed = c.last_failure(&key(None)).expect("the failure is kept");
        assert_eq!(failed.missing.len(), 2);
        let retry = c.lookup(&key(None));
        assert!(retry.cached.is_none() && retry.ticket.is_some(), "retried");
        retry
            .ticket
            .unwrap()
            .complete(snapshot(3, &[(0, spin_and_sleep(1))], &[1]));
        assert!(c.last_failure(&key(None)).is_none());
        assert!(
            c.peek(&key(Some(0))).is_some(),
            "subtask 0's entry, made when read"
        );
        assert_eq!(c.forget_job(&"j".repeat(32)), 2);
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
        assert_eq!(
            c.usage().0,
            1,
            "the vertex entry; subtask 0's is made when read"
        );
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
    }

    #[test]
    fn a_run_larger_than_the_budget_is_kept_alone_and_not_rerun() {
        let mut tiny = CacheLimits::new(Duration::from_secs(60), Duration::from_secs(600));
        tiny.max_bytes = 10;
        let c = GraphCache::new(tiny);
        c.lookup(&key(Some(7))).ticket.unwrap().complete(snapshot(
            1,
            &[(7, spin_and_sleep(1))],
            &[],
        ));
        assert_eq!(c.usage().0, 1);
        c.lookup(&key(None))
            .ticket
            .unwrap()
            .complete(snapshot(2, &[(0, spin_and_sleep(1))], &[]));
        assert!(c.peek(&key(Some(7))).is_none(), "everything else evicted");
        assert_eq!(
            c.usage().0,
            1,
            "the vertex run (its subtask entries are made when read)"
        );
        let again = c.lookup(&key(None));
        assert_eq!(again.cached.map(|s| s.run_id), Some(2));
        assert!(
            again.ticket.is_none(),
            "fresh: polls do not start another run"
        );
        // Its JSON is served, but not memoised over the budget.
        let s = c.peek(&key(None)).unwrap();
        let text = c.json(&s, GraphType::Full, |_| "x".repeat(100));
        assert_eq!(text.len(), 100);
        assert_eq!(c.memo_bytes(), 0);
    }

    #[test]
    fn json_memos_are_counted_and_the_bound_holds_with_them() {
        // Room for a few runs and a few memos, not for everything.
        let one = snapshot(1, &[(0, spin_and_sleep(1))], &[]).approx_bytes();
        let mut limits = limits_with_history(3);
        limits.max_bytes = 6 * (one + 1024);
        let c = GraphCache::new(limits);
        let render = |s: &Arc<Snapshot>, ty: GraphType| {
            super::super::json::render(&super::super::GraphAnswer::Ready(Arc::clone(s)), ty)
        };
        let mut memoised_once = false;
        for round in 0..40u64 {
            let k = key(Some((round % 9) as u32));
            if let Some(t) = c.lookup(&k).ticket {
                t.complete(snapshot(
                    round,
                    &[((round % 9) as u32, spin_and_sleep(50))],
                    &[],
                ));
            }
            for run in c.history(&k) {
                let s = c.at(&k, run.end_ms).unwrap();
                for ty in GraphType::ALL {
                    // Big texts: a tree's JSON is many times its folded profile.
                    let text = c.json(&s, ty, |_| render(&s, ty).repeat(40));
                    assert_eq!(text, render(&s, ty).repeat(40).as_bytes());
                    let (_, bytes) = c.usage();
                    assert!(bytes <= limits.max_bytes, "{bytes} > {}", limits.max_bytes);
                    memoised_once |= c.memo_bytes() > 0;
                }
            }
        }
        assert!(memoised_once, "memos were kept (and counted) when they fit");
        // The counted memo bytes cover the texts held.
        let c = GraphCache::new(limits_with_history(3));
        land(&c, [1]);
        let s = c.peek(&key(None)).unwrap();
        let before = c.usage().1;
        let text = c.json(&s, GraphType::Full, |_| render(&s, GraphType::Full));
        assert!(c.memo_bytes() >= text.len());
        assert_eq!(c.usage().1, before + c.memo_bytes());
        // A run's memos go with the run: replaced by newer runs beyond the history, all is freed.
        land(&c, [2, 3, 4]);
        assert_eq!(c.memo_bytes(), 0, "run 1 left the history with its memo");
    }

    #[test]
    fn a_runs_json_memo_goes_when_a_newer_run_of_its_key_lands() {
        let c = GraphCache::new(limits_with_history(3));
        land(&c, [1]);
        let first = c.peek(&key(None)).unwrap();
        let text = c.json(&first, GraphType::Full, |_| "x".repeat(1000));
        assert!(
            c.memo_bytes() >= text.len(),
            "the latest run's JSON is memoised"
        );
        land(&c, [2]);
        assert_eq!(
            c.memo_bytes(),
            0,
            "run 1 is no longer the latest: its memo went"
        );
        assert_eq!(
            run_ids(&c, &key(None)),
            [2, 1],
            "the run itself is still kept"
        );
        // Asked again (`?at=`), it is rendered and served, not kept.
        let again = c.json(&first, GraphType::Full, |_| "y".repeat(10));
        assert_eq!(&again[..], "y".repeat(10).as_bytes());
        assert_eq!(c.memo_bytes(), 0);
    }

    #[test]
    fn sweep_now_drops_expired_entries_without_a_read() {
        let c = GraphCache::new(CacheLimits::new(Duration::from_secs(60), Duration::ZERO));
        c.lookup(&key(None))
            .ticket
            .unwrap()
            .complete(snapshot(1, &[(0, spin_and_sleep(1))], &[]));
        assert_eq!(c.usage().0, 1);
        assert_eq!(c.sweep_now(), 1);
        assert_eq!((c.usage(), c.kept_runs(), c.memo_bytes()), ((0, 0), 0, 0));
        let fresh = cache();
        land_fresh(&fresh);
        assert_eq!(fresh.sweep_now(), 0, "read recently: kept");
        assert_eq!(
            CacheLimits::new(Duration::ZERO, Duration::ZERO).sweep_period(),
            Duration::from_secs(1)
        );
        assert_eq!(cache().limits().sweep_period(), Duration::from_secs(60));
    }

    fn land_fresh(c: &Arc<GraphCache>) {
        c.lookup(&key(None))
            .ticket
            .unwrap()
            .complete(snapshot(1, &[(0, spin_and_sleep(1))], &[]));
    }

    #[tokio::test]
    async fn the_periodic_sweeper_frees_an_idle_cache_and_ends_with_it() {
        // Cleanup interval 0: every entry is expired at once; the sweeper runs every second.
        let c = GraphCache::new(CacheLimits::new(Duration::from_secs(60), Duration::ZERO));
        let sweeper = c.spawn_sweeper();
        land_fresh(&c);
        assert!(c.usage().0 > 0);
        // Nobody reads the cache: only the sweeper can free it. Polled, with a hang guard.
        let mut freed = false;
        for _ in 0..600 {
            if c.usage() == (0, 0) {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(freed, "the periodic sweeper never ran");
        assert!(!sweeper.is_finished());
        drop(c);
        tokio::time::timeout(Duration::from_secs(30), sweeper)
            .await
            .expect("the sweeper ends once the cache is gone")
            .unwrap();
    }

    fn limits_with_history(history: usize) -> CacheLimits {
        let mut limits = CacheLimits::new(Duration::ZERO, Duration::from_secs(600));
        limits.history = history;
        limits
    }

    /// Lands runs `ids` for the whole vertex, one after the other.
    fn land(c: &Arc<GraphCache>, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            c.lookup(&key(None))
                .ticket
                .expect("stale: a refresh starts")
                .complete(snapshot(id, &[(0, spin_and_sleep(1))], &[]));
        }
    }

    fn run_ids(c: &GraphCache, k: &GraphKey) -> Vec<u64> {
        c.history(k).iter().map(|s| s.run_id).collect()
    }

    #[test]
    fn history_keeps_the_last_n_runs_newest_first() {
        let c = GraphCache::new(limits_with_history(3));
        land(&c, 1..=5);
        assert_eq!(run_ids(&c, &key(None)), [5, 4, 3]);
        assert_eq!(run_ids(&c, &key(Some(0))), [5, 4, 3], "subtask keys too");
        assert_eq!(c.kept_runs(), 6);
        assert_eq!(c.at(&key(None), 1003).map(|s| s.run_id), Some(3));
        assert!(c.at(&key(None), 1002).is_none(), "dropped as the oldest");
        assert_eq!(c.peek(&key(None)).map(|s| s.run_id), Some(5));
    }

    #[test]
    fn history_of_zero_or_one_keeps_only_the_latest() {
        for n in [0, 1] {
            let c = GraphCache::new(limits_with_history(n));
            land(&c, 1..=3);
            assert_eq!(run_ids(&c, &key(None)), [3], "history {n}");
            assert_eq!(c.kept_runs(), 1, "subtask 0's entry is made when read");
            assert_eq!(run_ids(&c, &key(Some(0))), [3], "history {n}");
            assert_eq!(c.kept_runs(), 2);
        }
        let mut huge = limits_with_history(usize::MAX);
        assert_eq!(huge.runs_per_key(), MAX_HISTORY);
        huge.history = 7;
        assert_eq!(huge.runs_per_key(), 7);
    }

    #[test]
    fn subtask_entries_share_the_vertex_profiles_and_count_them_once() {
        let c = GraphCache::new(limits_with_history(10));
        land(&c, [1]);
        let vertex = c.peek(&key(None)).unwrap();
        let sub = c.peek(&key(Some(0))).unwrap();
        assert!(Arc::ptr_eq(&vertex.subtasks[&0], &sub.subtasks[&0]));
        let profile =
            vertex.subtasks[&0].approx_bytes() + vertex.subtasks[&0].names.table().approx_bytes();
        let (_, bytes) = c.usage();
        let bookkeeping = run_overhead(&vertex)
            + run_overhead(&sub)
            + 2 * (std::mem::size_of::<Entry>() + 3 * 32);
        assert_eq!(bytes, profile + bookkeeping, "one profile, counted once");
        // Dropping every holder frees every byte.
        let mut tiny = limits_with_history(10);
        tiny.cleanup = Duration::ZERO;
        let c = GraphCache::new(tiny);
        land(&c, [1, 2]);
        assert!(c.usage().1 > 0);
        assert!(c.history(&key(None)).is_empty(), "swept: history goes too");
        assert_eq!((c.usage(), c.kept_runs()), ((0, 0), 0));
    }

    #[test]
    fn an_older_vertex_run_is_filed_behind_a_newer_subtask_run() {
        let c = GraphCache::new(limits_with_history(10));
        c.lookup(&key(Some(0))).ticket.unwrap().complete(snapshot(
            7,
            &[(0, spin_and_sleep(1))],
            &[],
        ));
        land(&c, [6]);
        assert_eq!(run_ids(&c, &key(Some(0))), [7, 6]);
    }

    #[test]
    fn eviction_drops_history_and_counts_every_kept_run() {
        // Runs bound: 4. Subtask 5 (two runs of its own) and the vertex key with its subtask 0
        // (one run each, subtask 0's made when read) fill it; the vertex's next run evicts the
        // least recently read key, subtask 5, history and all, and spares the key it writes.
        let mut limits = limits_with_history(10);
        limits.max_entries = 4;
        let c = GraphCache::new(limits);
        for id in [1, 2] {
            c.lookup(&key(Some(5))).ticket.unwrap().complete(snapshot(
                id,
                &[(5, spin_and_sleep(1))],
                &[],
            ));
        }
        land(&c, [3]);
        assert!(c.peek(&key(Some(0))).is_some());
        assert_eq!(c.kept_runs(), 4);
        land(&c, [4]);
        assert_eq!(c.kept_runs(), 3, "subtask 5 evicted");
        assert_eq!(run_ids(&c, &key(Some(5))), Vec::<u64>::new(), "evicted");
        assert_eq!(run_ids(&c, &key(None)), [4, 3], "the key written is kept");
        assert_eq!(run_ids(&c, &key(Some(0))), [4, 3]);
        assert_eq!(c.kept_runs(), 4);
        // Alone over the bound, a subtask entry and the vertex it is made from lose their
        // oldest runs, evenly (the vertex run first evicted subtask 0, least recently read).
        land(&c, [5]);
        assert_eq!(run_ids(&c, &key(Some(0))), [5, 4]);
        assert_eq!(run_ids(&c, &key(None)), [5, 4]);
        assert_eq!(c.kept_runs(), 4);
        // The byte bound trims the written key's own history when it alone is too big.
        let one = snapshot(1, &[(0, spin_and_sleep(1))], &[]).approx_bytes();
        let mut limits = limits_with_history(10);
        limits.max_bytes = 2 * one + 1024;
        let c = GraphCache::new(limits);
        land(&c, 1..=6);
        let (_, bytes) = c.usage();
        assert!(bytes <= limits.max_bytes, "{bytes}");
        let kept = run_ids(&c, &key(None));
        assert!(kept.len() < 6 && kept[0] == 6, "{kept:?}");
    }

    #[test]
    fn a_run_pushed_out_of_history_is_given_back_and_the_cache_stays_flat() {
        let c = GraphCache::new(limits_with_history(2));
        land(&c, [1]);
        assert_eq!(
            c.kept_runs(),
            1,
            "a vertex run is one entry until a subtask is read"
        );
        let first = c.peek(&key(None)).unwrap();
        let part = c.peek(&key(Some(0))).unwrap();
        assert!(Arc::ptr_eq(&part.subtasks[&0], &first.subtasks[&0]));
        let run = Arc::downgrade(&first);
        let profile = Arc::downgrade(&first.subtasks[&0]);
        let table = Arc::downgrade(first.subtasks[&0].names.table());
        drop((first, part));
        let mut usage = Vec::new();
        for id in 2..=6 {
            land(&c, [id]);
            assert!(c.peek(&key(Some(0))).is_some());
            usage.push((c.usage(), c.kept_runs()));
        }
        // Run 1 left the vertex's history and then subtask 0's: nothing holds it any more.
        assert!(run.upgrade().is_none(), "the run is freed");
        assert!(profile.upgrade().is_none() && table.upgrade().is_none());
        assert!(usage.iter().all(|u| *u == usage[0]), "{usage:?}");
        assert_eq!(usage[0], ((2, usage[0].0.1), 4));
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

    #[test]
    fn forgetting_a_job_frees_all_its_entries_and_only_them() {
        let c = cache();
        land_fresh(&c);
        let other = GraphKey {
            job_id: "f".repeat(32),
            ..key(None)
        };
        c.lookup(&other)
            .ticket
            .unwrap()
            .complete(snapshot(9, &[(0, spin_and_sleep(1))], &[]));
        let before = c.usage().1;
        assert!(c.forget_job(&key(None).job_id) >= 1);
        assert!(c.peek(&key(None)).is_none() && c.peek(&key(Some(0))).is_none());
        assert!(c.peek(&other).is_some(), "another job's graph stays");
        assert!(c.usage().1 < before, "its bytes are released");
        assert_eq!(c.forget_job("unknown"), 0);
    }

    /// History `n`, every run pushed down packed (whatever its size) when `pack`, none when not.
    fn packing_limits(n: usize, pack: bool) -> CacheLimits {
        let mut limits = limits_with_history(n);
        limits.pack_from_bytes = if pack { 0 } else { usize::MAX };
        limits
    }

    /// A vertex run of subtasks 0, 1 and 4 (2 and 3 missing), `id` samples deep.
    fn vertex_run(id: u64) -> Snapshot {
        let n = id as u32;
        snapshot(
            id,
            &[
                (0, spin_and_sleep(n + 2)),
                (1, spin_and_sleep(n)),
                (4, spin_and_sleep(1)),
            ],
            &[2, 3],
        )
    }

    /// Lands `runs` for the whole vertex, one after the other.
    fn land_runs(c: &Arc<GraphCache>, runs: &[Snapshot]) {
        for run in runs {
            c.lookup_with(&key(None), true)
                .ticket
                .expect("a refresh starts")
                .complete(run.clone());
        }
    }

    /// How `k`'s runs are kept, newest first: `D`ecoded, `P`acked, or a packed `p`art.
    fn kinds(c: &GraphCache, k: &GraphKey) -> String {
        c.lock().entries.get(k).map_or(String::new(), |e| {
            e.runs
                .iter()
                .map(|r| match r {
                    Kept::Decoded(_) => 'D',
                    Kept::Packed(_) => 'P',
                    Kept::Part(..) => 'p',
                })
                .collect()
        })
    }

    #[test]
    fn older_runs_are_kept_packed_and_read_back_as_they_were() {
        let runs: Vec<Snapshot> = (1..=3).map(vertex_run).collect();
        let c = GraphCache::new(packing_limits(10, true));
        land_runs(&c, &runs);
        assert_eq!(
            c.packing(),
            0,
            "outside a runtime, packed on the landing thread"
        );
        assert_eq!(
            kinds(&c, &key(None)),
            "DPP",
            "the latest decoded, two packed"
        );
        // The history lists all three with the figures they had decoded.
        let history = c.history(&key(None));
        let expected: Vec<RunInfo> = runs.iter().rev().map(RunInfo::of).collect();
        assert_eq!(
            history
                .iter()
                .map(|r| RunInfo::clone(r).into_decoded())
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            history.iter().map(|r| r.packed).collect::<Vec<_>>(),
            [false, true, true]
        );
        for ty in GraphType::ALL {
            assert_eq!(history[2].sample_count(ty), runs[0].sample_count(ty));
            assert_eq!(history[2].thread_count(ty), runs[0].thread_count(ty));
        }
        // `at` of a packed run decodes it: equal to the run that landed, names shared again.
        for (i, run) in runs.iter().enumerate() {
            let back = c.at(&key(None), run.end_ms).unwrap();
            assert_eq!(*back, *run);
            let tables: Vec<_> = back.subtasks.values().map(|p| p.names.table()).collect();
            assert!(i == 2 || tables.windows(2).all(|t| Arc::ptr_eq(t[0], t[1])));
        }
        // The latest is what polls get, decoded and memoised as before.
        let latest = c.peek(&key(None)).unwrap();
        assert_eq!(*latest, runs[2]);
        c.json(&latest, GraphType::Full, |_| "x".repeat(100));
        assert!(c.memo_bytes() > 0);
        // The decoding kept for the next `at` of the same run is counted, and goes with it.
        let before = c.usage().1;
        let again = c.at(&key(None), runs[0].end_ms).unwrap();
        assert_eq!(c.usage().1, before, "served from the decoding kept");
        assert!(c.lock().recent.is_some());
        land_runs(&c, &(4..=13).map(vertex_run).collect::<Vec<_>>());
        assert!(
            c.lock().recent.is_none(),
            "run 1 left the history, its decoding too"
        );
        drop(again);
        assert_eq!(kinds(&c, &key(None)), "DPPPPPPPPP");
    }

    #[test]
    fn a_subtask_entry_made_from_a_packed_vertex_run_equals_the_decoded_one() {
        let runs: Vec<Snapshot> = (1..=3).map(vertex_run).collect();
        let packed = GraphCache::new(packing_limits(10, true));
        let decoded = GraphCache::new(packing_limits(10, false));
        // Subtask 1 read after run 1 (its part shares run 1's profile), then runs 2 and 3.
        for c in [&packed, &decoded] {
            land_runs(c, &runs[..1]);
            assert!(c.peek(&key(Some(1))).is_some());
            land_runs(c, &runs[1..]);
        }
        assert_eq!(kinds(&decoded, &key(None)), "DDD");
        assert_eq!(kinds(&packed, &key(None)), "DPP");
        for index in [0, 1, 4] {
            let k = key(Some(index));
            let plain =
                |h: Vec<RunInfo>| h.into_iter().map(RunInfo::into_decoded).collect::<Vec<_>>();
            assert_eq!(
                plain(packed.history(&k)),
                plain(decoded.history(&k)),
                "{index}"
            );
            assert_eq!(packed.history(&k).len(), 3);
            for run in &runs {
                let (a, b) = (packed.at(&k, run.end_ms), decoded.at(&k, run.end_ms));
                assert_eq!(a, b, "subtask {index}, run {}", run.run_id);
                assert_eq!(
                    a.unwrap().subtasks.keys().copied().collect::<Vec<_>>(),
                    [index]
                );
            }
            assert_eq!(packed.peek(&k), decoded.peek(&k));
        }
        assert!(
            packed.peek_decoded(&key(Some(1))).is_some(),
            "the latest is decoded"
        );
        // Subtask 1's part of run 1, decoded when it was read, went packed with the vertex
        // run: no subtask entry keeps a packed run's profiles alive.
        assert_eq!(kinds(&packed, &key(Some(1))), "Dpp");
        assert_eq!(
            kinds(&packed, &key(Some(0))),
            "Dpp",
            "made from the packed runs"
        );
        let (_, unpacked) = decoded.usage();
        let (_, bytes) = packed.usage();
        assert!(bytes < unpacked, "{bytes} >= {unpacked}");
        // Every byte is given back once the entries go.
        assert_eq!(packed.forget_job(&key(None).job_id), 4);
        assert_eq!((packed.usage(), packed.kept_runs()), ((0, 0), 0));
        assert!(packed.lock().profiles.is_empty() && packed.lock().held.is_empty());
    }

    #[test]
    fn a_packed_run_frees_the_decoded_one_and_small_runs_stay_decoded() {
        let c = GraphCache::new(packing_limits(10, true));
        land_runs(&c, &[vertex_run(1)]);
        let first = c.peek(&key(None)).unwrap();
        assert!(c.peek(&key(Some(0))).is_some());
        let profile = Arc::downgrade(&first.subtasks[&0]);
        let run = Arc::downgrade(&first);
        drop(first);
        land_runs(&c, &[vertex_run(2)]);
        assert!(run.upgrade().is_none() && profile.upgrade().is_none());
        // The default threshold leaves small runs decoded.
        let c = GraphCache::new(limits_with_history(10));
        land_runs(&c, &[vertex_run(1), vertex_run(2)]);
        assert_eq!(kinds(&c, &key(None)), "DD");
    }

    #[test]
    fn a_corrupt_packed_run_reads_as_none_not_a_panic() {
        let c = GraphCache::new(packing_limits(10, true));
        land_runs(&c, &[vertex_run(1), vertex_run(2)]);
        {
            let mut inner = c.lock();
            let entry = inner.entries.get_mut(&key(None)).unwrap();
            let Kept::Packed(p) = &entry.runs[1] else {
                panic!("run 1 is packed")
            };
            let mut cut = PackedRun::pack(&vertex_run(1)).unwrap();
            let body = stored::encode(&vertex_run(1)).unwrap();
            cut = cut.with_body(body[..body.len() / 2].to_vec());
            assert_eq!(p.info().run_id, 1);
            // Same figures, so the accounting is the same; a body that does not inflate.
            let corrupt = Kept::Packed(Arc::new(cut));
            let old = std::mem::replace(&mut entry.runs[1], corrupt.clone());
            inner.hold(&corrupt);
            inner.release(&old);
        }
        assert!(c.at(&key(None), 1001).is_none());
        assert_eq!(c.history(&key(None)).len(), 2, "still listed");
        assert!(
            c.at(&key(Some(0)), 1001).is_none(),
            "nor its subtask's part"
        );
        assert!(c.at(&key(None), 1002).is_some());
    }

    #[test]
    fn the_estimate_of_ten_runs_of_ten_thousand_subtasks_falls_when_packed() {
        // The fanout bench's runs: 10,000 subtasks, 20 samples of 30 frames each, names shared
        // per run. Each run its own profiles and table (deep copies of one run).
        let base = fleet_run(10_000);
        let runs: Vec<Snapshot> = (1..=10)
            .map(|id| Snapshot {
                run_id: id,
                end_ms: 1000 + id as i64,
                subtasks: base
                    .subtasks
                    .iter()
                    .map(|(&i, p)| (i, Arc::new(SubtaskProfile::clone(p))))
                    .collect(),
                ..base.clone()
            })
            .collect();
        let mut estimates = Vec::new();
        for pack in [false, true] {
            let mut limits = limits_with_history(10);
            limits.max_bytes = usize::MAX;
            if !pack {
                limits.pack_from_bytes = usize::MAX;
            }
            let c = GraphCache::new(limits);
            land_runs(&c, &runs);
            assert_eq!(c.history(&key(None)).len(), 10);
            assert_eq!(
                kinds(&c, &key(None)).matches('P').count(),
                if pack { 9 } else { 0 }
            );
            estimates.push(c.usage().1);
        }
        let (decoded, packed) = (estimates[0], estimates[1]);
        eprintln!(
            "10 runs of 10,000 subtasks: {decoded} bytes decoded, {packed} packed ({:.2} x less); one run {} bytes decoded",
            decoded as f64 / packed as f64,
            base.approx_bytes()
        );
        // Measured: 4.96 x (44 MB a run decoded; one decoded, nine packed at about a ninth).
        assert!(packed * 3 < decoded, "{packed} vs {decoded}");
    }

    /// A vertex run of `subtasks` like the fanout bench's (see `benches/fanout.rs`).
    fn fleet_run(subtasks: u32) -> Snapshot {
        use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
        let set = |index: u32| {
            let thread = SampledThread {
                pid: 1000 + index / 10,
                tid: 20_000 + index,
                name: format!("worker-{index}"),
            };
            let mut b = SampleSetBuilder::new();
            for s in 0..20u32 {
                let leaf = (index * 7 + s * 17) % 500;
                let stack = (0..25)
                    .map(|d| Frame::named(format!("base_{}_{d}", index % 8)))
                    .chain((0..5).map(|d| Frame::named(format!("leaf_{leaf}_{d}"))));
                let state = if s % 5 == 0 {
                    ThreadState::Waiting
                } else {
                    ThreadState::Runnable
                };
                b.push(&thread, i64::from(s), state, stack, false);
            }
            b.finish()
        };
        let sets: Vec<(u32, _)> = (0..subtasks).map(|i| (i, set(i))).collect();
        let s = snapshot(1, &sets, &[]);
        // One names table for the run, as a run folds its answers into.
        let mut names: Vec<String> = Vec::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let ids: Vec<Box<[u32]>> = s
            .subtasks
            .values()
            .map(|p| {
                p.names
                    .iter()
                    .map(|n| {
                        *ids.entry(n.clone()).or_insert_with(|| {
                            names.push(n.clone());
                            names.len() as u32 - 1
                        })
                    })
                    .collect()
            })
            .collect();
        let table = Arc::new(NameTable::new(names));
        let subtasks = s
            .subtasks
            .iter()
            .zip(ids)
            .map(|((&i, p), ids)| {
                let names = ProfileNames::in_table(Arc::clone(&table), ids).unwrap();
                let counts = GraphType::ALL.map(|ty| p.thread_count(ty));
                let profile =
                    SubtaskProfile::from_parts(names, p.stacks.clone(), p.threads.clone(), counts)
                        .unwrap();
                (i, Arc::new(profile))
            })
            .collect();
        Snapshot { subtasks, ..s }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_runtime_runs_are_packed_on_a_thread_of_their_own_after_landing() {
        let runs: Vec<Snapshot> = (1..=3).map(vertex_run).collect();
        let c = GraphCache::new(packing_limits(10, true));
        land_runs(&c, &runs);
        for _ in 0..1000 {
            if c.packing() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.packing(), 0);
        assert_eq!(kinds(&c, &key(None)), "DPP");
        // Read on a worker: decoded with the worker handed over (`block_in_place`).
        assert_eq!(*c.at(&key(None), runs[0].end_ms).unwrap(), runs[0]);
        // A run dropped before its packing is done is not put back.
        let c = GraphCache::new(packing_limits(1, true));
        land_runs(&c, &runs);
        assert_eq!(c.kept_runs(), 1);
        for _ in 0..1000 {
            if c.packing() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!((kinds(&c, &key(None)).as_str(), c.kept_runs()), ("D", 1));
    }
}
