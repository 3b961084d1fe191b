//! Older runs kept packed: a run's stored-format body plus the little the history list needs.
//!
//! The cache ([`super::cache`]) keeps the last `--flamegraph-history` runs per key, but only
//! the latest of each key is read often (polls, freshness, JSON memos). A vertex run of ten
//! thousand subtasks is some 20 MB decoded and one or two MB packed, so once a newer run of its key
//! lands, the cache keeps it as a [`PackedRun`]: the body [`super::stored::encode`] writes
//! (format 3, the one the shared database holds) and a summary read without decoding: run id,
//! start and end, which subtasks delivered (as ranges, usually one), samples and threads per
//! graph type over the run and per subtask (what `.../flamegraph/history` lists for a vertex and
//! for each of its subtasks), and how many subtasks are missing (their reasons are in the body).
//! Everything else (`?at=`, the differential graph's `base`, exports of a past run, a subtask
//! entry's graph) decodes the body on demand, off the cache's lock ([`PackedRun::unpack`]).
//!
//! [`RunInfo`] is what the cache's history list gives for any kept run, packed or not.

use super::profile::{Snapshot, SubtaskProfile};
use super::stored;
use flamegrid_model::GraphType;

/// What the history list shows of a kept run, read without decoding it: the same figures for
/// a run kept decoded and for one kept packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The run id (ordered across runs and replicas).
    pub run_id: u64,
    /// When the run started, ms since the epoch.
    pub start_ms: i64,
    /// When the run ended: Flink's `endTimestamp`, what `?at=` and `base` take.
    pub end_ms: i64,
    /// Subtasks that delivered.
    pub subtasks: usize,
    /// Subtasks that should have delivered and did not (their reasons are in the run).
    pub missing: usize,
    /// Whether the cache keeps the run packed (reading its graph decodes it).
    pub packed: bool,
    /// Samples per graph type (FULL, ON_CPU, OFF_CPU).
    samples: [u64; 3],
    /// Threads with samples per graph type.
    threads: [usize; 3],
}

impl RunInfo {
    /// The figures of a decoded run (a pass over its profiles, no tree).
    pub fn of(snapshot: &Snapshot) -> RunInfo {
        RunInfo {
            run_id: snapshot.run_id,
            start_ms: snapshot.start_ms,
            end_ms: snapshot.end_ms,
            subtasks: snapshot.subtasks.len(),
            missing: snapshot.missing.len(),
            packed: false,
            samples: GraphType::ALL.map(|ty| snapshot.sample_count(ty)),
            threads: GraphType::ALL.map(|ty| snapshot.thread_count(ty)),
        }
    }

    /// The same figures, as of the run decoded (`packed` false): what a packed run listed
    /// before it was packed (tests compare them).
    #[cfg(test)]
    pub(crate) fn into_decoded(mut self) -> RunInfo {
        self.packed = false;
        self
    }

    /// Samples accepted by `ty`, over the run's subtasks ([`Snapshot::sample_count`]).
    pub fn sample_count(&self, ty: GraphType) -> u64 {
        self.samples[slot(ty)]
    }

    /// Threads with samples accepted by `ty` ([`Snapshot::thread_count`]).
    pub fn thread_count(&self, ty: GraphType) -> usize {
        self.threads[slot(ty)]
    }
}

fn slot(ty: GraphType) -> usize {
    match ty {
        GraphType::Full => 0,
        GraphType::OnCpu => 1,
        GraphType::OffCpu => 2,
    }
}

/// A run of delivered subtask indexes: `first..=last`, the `position`-th delivered subtask
/// being `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexRange {
    first: u32,
    last: u32,
    position: u32,
}

/// One subtask's figures in a packed run: samples, then threads, per graph type. `u32` each
/// (a subtask's samples of one run are far fewer), saturating: 24 bytes per subtask.
type SubtaskCounts = [u32; 6];

fn counts_of(profile: &SubtaskProfile) -> SubtaskCounts {
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let mut counts = [0; 6];
    for (i, ty) in GraphType::ALL.into_iter().enumerate() {
        counts[i] = narrow(profile.sample_count(ty));
        counts[3 + i] = narrow(profile.thread_count(ty) as u64);
    }
    counts
}

/// A run kept packed; see the module docs. Immutable once made: shared as `Arc` by the
/// vertex entry it was packed for and the subtask entries made from it.
pub struct PackedRun {
    info: RunInfo,
    /// The delivered subtasks, ascending.
    delivered: Box<[IndexRange]>,
    /// Per delivered subtask, in the same order: its figures.
    counts: Box<[SubtaskCounts]>,
    /// The run as [`stored::encode`] writes it.
    body: Box<[u8]>,
}

impl std::fmt::Debug for PackedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedRun")
            .field("info", &self.info)
            .field("ranges", &self.delivered.len())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl PackedRun {
    /// Packs `snapshot`: CPU work proportional to the run (about a tenth of a second at
    /// ten thousand subtasks), to be done off the cache's lock and off the async workers.
    pub fn pack(snapshot: &Snapshot) -> Result<PackedRun, String> {
        let body = stored::encode(snapshot)?.into_boxed_slice();
        let mut delivered: Vec<IndexRange> = Vec::new();
        let mut counts = Vec::with_capacity(snapshot.subtasks.len());
        for (position, (&index, profile)) in snapshot.subtasks.iter().enumerate() {
            match delivered.last_mut() {
                Some(r) if r.last.checked_add(1) == Some(index) => r.last = index,
                _ => delivered.push(IndexRange {
                    first: index,
                    last: index,
                    position: u32::try_from(position).map_err(|e| e.to_string())?,
                }),
            }
            counts.push(counts_of(profile));
        }
        let mut info = RunInfo::of(snapshot);
        info.packed = true;
        Ok(PackedRun {
            info,
            delivered: delivered.into_boxed_slice(),
            counts: counts.into_boxed_slice(),
            body,
        })
    }

    /// The run, decoded: a snapshot equal to the one packed, its profiles sharing one names
    /// table. CPU work like [`PackedRun::pack`]; an error (never a panic) for a body that does
    /// not read back, which a body this process packed cannot be.
    pub fn unpack(&self) -> Result<Snapshot, String> {
        stored::decode(self.info.run_id, &self.body)
    }

    /// The run's figures, as the history list of its vertex shows them.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// Where subtask `index` is among the delivered ones, if it delivered.
    fn position(&self, index: u32) -> Option<usize> {
        let i = self.delivered.partition_point(|r| r.last < index);
        let r = self.delivered.get(i)?;
        (r.first <= index).then(|| (r.position + (index - r.first)) as usize)
    }

    /// Whether subtask `index` delivered in this run.
    pub fn holds(&self, index: u32) -> bool {
        self.position(index).is_some()
    }

    /// The figures of subtask `index`'s part of the run (what its own history list shows, as
    /// [`Snapshot::subtask_part`] would give), if it delivered.
    pub fn part_info(&self, index: u32) -> Option<RunInfo> {
        let c = self.counts.get(self.position(index)?)?;
        Some(RunInfo {
            subtasks: 1,
            missing: 0,
            samples: [c[0], c[1], c[2]].map(u64::from),
            threads: [c[3], c[4], c[5]].map(|n| n as usize),
            ..self.info.clone()
        })
    }

    /// Bytes held: the body, the summary and the struct itself (what the cache counts for it).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.body.len()
            + std::mem::size_of_val(&*self.delivered)
            + std::mem::size_of_val(&*self.counts)
    }

    /// The body's length (the stored format's size of the run).
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// A packed run whose body is `body` as is (tests: a corrupt body must read as an error).
    #[cfg(test)]
    pub(crate) fn with_body(mut self, body: Vec<u8>) -> PackedRun {
        self.body = body.into_boxed_slice();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flamegraph::profile::tests::{snapshot, spin_and_sleep};

    #[test]
    fn a_packed_run_keeps_its_figures_and_reads_back_equal() {
        let s = snapshot(
            4,
            &[
                (0, spin_and_sleep(3)),
                (1, spin_and_sleep(1)),
                (5, spin_and_sleep(2)),
            ],
            &[2, 3],
        );
        let p = PackedRun::pack(&s).unwrap();
        assert_eq!(p.delivered.len(), 2, "0..=1 and 5..=5");
        let info = p.info();
        assert!(info.packed);
        assert_eq!(
            RunInfo {
                packed: false,
                ..info.clone()
            },
            RunInfo::of(&s)
        );
        assert_eq!((info.subtasks, info.missing), (3, 2));
        for index in 0..7 {
            assert_eq!(p.holds(index), s.subtasks.contains_key(&index), "{index}");
            let part = s.subtask_part(index).map(|part| RunInfo {
                packed: true,
                ..RunInfo::of(&part)
            });
            assert_eq!(p.part_info(index), part, "{index}");
        }
        assert_eq!(p.unpack().unwrap(), s);
        assert!(p.approx_bytes() > p.body_len());
    }

    #[test]
    fn a_corrupt_body_is_an_error_not_a_panic() {
        let s = snapshot(4, &[(0, spin_and_sleep(3))], &[]);
        let p = PackedRun::pack(&s).unwrap();
        let mut cut = p.body.to_vec();
        cut.truncate(cut.len() / 2);
        let p = p.with_body(cut);
        assert!(p.unpack().is_err());
        assert!(p.holds(0), "the summary is still read");
    }
}
