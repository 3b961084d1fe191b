//! What a sampling run leaves in the cache: per subtask, its samples folded by distinct stack.
//!
//! Flink keeps every sample of a run and rebuilds the tree on each request. flamegrid folds each
//! subtask's samples once, on arrival, into [`SubtaskProfile`]: a table of distinct
//! `(state, truncated, stack)` triples with a count, over a table of distinct frame names. A
//! spinning thread sampled 1000 times is one row with count 1000, so cached memory grows with the
//! number of distinct stacks, not with the number of samples, and every view (FULL / ON_CPU /
//! OFF_CPU tree, folded text, SVG) is a quick pass over a few rows. The state stays in the row,
//! so one run serves all three types: the filter is applied when answering, as in Flink.
//!
//! Each row also keeps how its count splits over the threads that were sampled in it
//! ([`StackCount::threads`]): the pprof export labels every sample with its thread. The split
//! rides along in the row instead of being part of the row's key, so the number of rows (and the
//! cost of every other view) stays what it is without it, while the fold is still exact per
//! thread.
//!
//! **One names table per run.** A vertex of ten thousand subtasks shares most of its frame
//! names, so the frame names of a run are kept once, in a [`NameTable`] shared by all its
//! profiles; each profile keeps its own short list of ids into it ([`ProfileNames`], what its
//! stacks index), four bytes a name instead of a copy of every name. The answers of a run are
//! folded on their own tasks as they arrive, each interning its new names in the run's
//! [`RunNames`] under one short lock per subtask; the table is frozen when the run lands
//! ([`FoldedSubtask::into_profile`]). A profile folded on its own ([`SubtaskProfile::from_set`],
//! [`SubtaskProfile::from_wire`], or read back from the shared database) has a table of its own.
//! Each profile also keeps its sample count per graph type, so the history list of a big vertex
//! does not add up every row on every poll.
//!
//! A [`Snapshot`] is one run's result: the profiles of the subtasks that delivered, the ones that
//! are missing, and when the run ended. It is immutable and shared (`Arc`) between the cache
//! entry of the vertex and those of its subtasks. (Its rendered JSON is memoised by the cache,
//! which counts it in its memory bound: see [`super::cache`].)

use crate::missing::Missing;
use flamegrid_model::tree::TreeBuilder;
use flamegrid_model::{FlameNode, GraphType, SampleSet, SampledThread, ThreadState, folded};
use flamegrid_proto::convert::{
    AnswerBudget, ConvertError, check_sample_thread, cut_name, kept_stack, state_from_wire,
    wire_frame, wire_string, wire_threads,
};
use flamegrid_proto::v1;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// `count` samples that had the same state and stack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StackCount {
    /// The threads' state in those samples.
    pub state: ThreadState,
    /// The stack was cut at the depth limit (drawn under `[truncated]`).
    pub truncated: bool,
    /// Indexes into [`SubtaskProfile::names`], outermost frame first.
    pub frames: Box<[u32]>,
    /// How many samples.
    pub count: u64,
    /// How `count` splits over threads: (index into [`SubtaskProfile::threads`], samples),
    /// ascending by thread, every count nonzero, summing to `count`. Kept for exports that label
    /// samples by thread (pprof); the other views only read `count`.
    pub threads: Box<[(u32, u64)]>,
}

/// The frame names of one run (or of one profile folded on its own), shared by its profiles as
/// `Arc`; see the module docs. Immutable once made.
#[derive(Debug, Default)]
pub struct NameTable {
    names: Vec<String>,
}

impl NameTable {
    /// A table of `names` (a run's, read back from the shared database: [`super::stored`]).
    pub fn new(names: Vec<String>) -> Self {
        NameTable { names }
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name with table id `id`.
    pub fn get(&self, id: u32) -> Option<&String> {
        self.names.get(id as usize)
    }

    /// Rough heap footprint in bytes, for the cache's memory bound (counted once per table,
    /// however many profiles share it).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .names
                .iter()
                .map(|n| n.capacity() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

/// A profile's distinct frame names: ids into a [`NameTable`] that may be shared with the other
/// profiles of its run. Index `i` is what [`StackCount::frames`] holds; read it with
/// [`ProfileNames::get`] or [`ProfileNames::iter`], like a list of names. Two are equal when they
/// list the same names in the same order, whatever their tables.
#[derive(Debug, Clone)]
pub struct ProfileNames {
    table: Arc<NameTable>,
    ids: Box<[u32]>,
}

impl ProfileNames {
    /// Names in a table of their own.
    pub fn own(names: Vec<String>) -> Self {
        let ids = (0..names.len() as u32).collect();
        ProfileNames {
            table: Arc::new(NameTable { names }),
            ids,
        }
    }

    /// The names `ids` of `table` (a table shared by a run read back from the shared database);
    /// the first id outside the table is an error.
    pub fn in_table(table: Arc<NameTable>, ids: Box<[u32]>) -> Result<Self, u32> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.len()) {
            return Err(bad);
        }
        Ok(ProfileNames { table, ids })
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Name `i` of this profile (what a frame index of its stacks names).
    pub fn get(&self, i: usize) -> Option<&String> {
        self.table.get(*self.ids.get(i)?)
    }

    /// The names in profile order.
    pub fn iter(&self) -> impl Iterator<Item = &String> + '_ {
        self.ids.iter().filter_map(|&id| self.table.get(id))
    }

    /// The table the names live in (shared by the profiles of a run).
    pub fn table(&self) -> &Arc<NameTable> {
        &self.table
    }

    /// The table ids of the names, in profile order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl PartialEq for ProfileNames {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ProfileNames {}

impl serde::Serialize for ProfileNames {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// The names of one run while its answers come in, interned by the answers' tasks as they fold
/// them (see the module docs); [`RunNames::finish`] freezes them into the run's [`NameTable`].
#[derive(Debug, Default)]
pub struct RunNames {
    inner: Mutex<Interner>,
}

/// Names by text, each with its id (ids dense from 0). Each name is kept once, as the map's
/// key, and moved into the table when the run lands.
///
/// Hashed with foldhash, seeded per process: every new name of every answer is looked up
/// here, about a million lookups for a run of 10,000 subtasks, and SipHash (std's default)
/// was a third of the cost of taking in an answer. The seed keeps a hostile agent from
/// choosing names that collide.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<String, u32, foldhash::fast::RandomState>,
}

impl RunNames {
    /// An interner with room for `names` names without growing: a run of a vertex has about
    /// as many distinct names as the vertex's previous run.
    pub fn with_capacity(names: usize) -> Self {
        RunNames {
            inner: Mutex::new(Interner {
                ids: HashMap::with_capacity_and_hasher(names, Default::default()),
            }),
        }
    }

    /// The table ids of `names`, the new ones interned: one lock for all of them (the
    /// answers of a run are folded on several threads at once).
    fn intern_all<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<u32> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        names
            .map(|name| {
                if let Some(&id) = inner.ids.get(name) {
                    return id;
                }
                let id = inner.ids.len() as u32;
                inner.ids.insert(name.to_owned(), id);
                id
            })
            .collect()
    }

    /// The run's names as one shared table; what was interned so far (every answer of the
    /// run has been folded when it lands). The interner is emptied; its names are moved into
    /// the table, not copied.
    pub fn finish(&self) -> Arc<NameTable> {
        let ids = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut inner.ids)
        };
        let mut names = vec![String::new(); ids.len()];
        for (name, id) in ids {
            if let Some(slot) = names.get_mut(id as usize) {
                *slot = name;
            }
        }
        Arc::new(NameTable { names })
    }
}

/// What the fold of one answer keeps across its subtasks ([`SubtaskProfile::fold_wire`]): the
/// run's name id of every wire frame already resolved, so that a name is cut, hashed and
/// interned once per answer rather than once per subtask. Fresh (default) for every answer.
#[derive(Default)]
pub struct AnswerNames {
    by_frame: Option<FrameNames>,
}

/// Hashes the name ids this module hands out itself (dense, from 0): a multiply, not SipHash,
/// which only inputs from outside need.
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A subtask's samples as folded while its run is in flight: a [`SubtaskProfile`] whose names
/// are ids into the run's [`RunNames`], not yet frozen into its table.
#[derive(Debug)]
pub struct FoldedSubtask {
    ids: Box<[u32]>,
    stacks: Vec<StackCount>,
    threads: Vec<SampledThread>,
    thread_counts: [usize; 3],
}

impl FoldedSubtask {
    /// The profile, its names in `table` (the frozen [`RunNames`] it was folded with).
    pub fn into_profile(self, table: &Arc<NameTable>) -> SubtaskProfile {
        SubtaskProfile::assemble(
            ProfileNames {
                table: Arc::clone(table),
                ids: self.ids,
            },
            self.stacks,
            self.threads,
            self.thread_counts,
        )
    }
}

/// One subtask's samples of one run, folded by distinct stack; see the module docs. Serialized
/// with its names in full: how the first format of a stored run held it ([`super::stored`]
/// still reads that format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskProfile {
    /// Distinct frame names (ids into the run's shared table).
    pub names: ProfileNames,
    /// Distinct stacks with their counts, sorted by frames so that building a tree walks shared
    /// prefixes back to back.
    pub stacks: Vec<StackCount>,
    /// The threads sampled for this subtask (process id, thread id, name), indexed by
    /// [`StackCount::threads`].
    pub threads: Vec<SampledThread>,
    /// Distinct threads with at least one sample accepted by each type (FULL, ON_CPU, OFF_CPU).
    thread_counts: [usize; 3],
    /// Samples accepted by each type (FULL, ON_CPU, OFF_CPU): the sums of `stacks`.
    sample_counts: [u64; 3],
}

/// A profile as stored (serialized): its names in full.
#[derive(serde::Serialize)]
struct StoredProfileRef<'a> {
    names: &'a ProfileNames,
    stacks: &'a [StackCount],
    threads: &'a [SampledThread],
    thread_counts: [usize; 3],
}

/// A profile as read back.
#[derive(serde::Deserialize)]
struct StoredProfile {
    names: Vec<String>,
    stacks: Vec<StackCount>,
    threads: Vec<SampledThread>,
    thread_counts: [usize; 3],
}

impl serde::Serialize for SubtaskProfile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredProfileRef {
            names: &self.names,
            stacks: &self.stacks,
            threads: &self.threads,
            thread_counts: self.thread_counts,
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for SubtaskProfile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let p = StoredProfile::deserialize(deserializer)?;
        SubtaskProfile::from_parts(
            ProfileNames::own(p.names),
            p.stacks,
            p.threads,
            p.thread_counts,
        )
        .map_err(serde::de::Error::custom)
    }
}

/// What a row of [`SubtaskProfile::stacks`] is folded by: state, truncated, frames.
type RowKey = (ThreadState, bool, Box<[u32]>);

fn type_slot(ty: GraphType) -> usize {
    match ty {
        GraphType::Full => 0,
        GraphType::OnCpu => 1,
        GraphType::OffCpu => 2,
    }
}

impl SubtaskProfile {
    /// A profile of parts read back from the shared database ([`super::stored`]): every frame
    /// of its stacks must name one of `names` and every thread split one of `threads`, or it is
    /// refused (a corrupt row is an error, never a wrong graph or a panic later).
    pub fn from_parts(
        names: ProfileNames,
        stacks: Vec<StackCount>,
        threads: Vec<SampledThread>,
        thread_counts: [usize; 3],
    ) -> Result<Self, String> {
        for s in &stacks {
            if let Some(&f) = s.frames.iter().find(|&&f| f as usize >= names.len()) {
                return Err(format!(
                    "a stack names frame {f} of a profile of {} names",
                    names.len()
                ));
            }
            if let Some(&(t, _)) = s.threads.iter().find(|(t, _)| *t as usize >= threads.len()) {
                return Err(format!(
                    "a stack names thread {t} of a profile of {} threads",
                    threads.len()
                ));
            }
        }
        Ok(SubtaskProfile::assemble(
            names,
            stacks,
            threads,
            thread_counts,
        ))
    }

    /// A profile of its parts, its sample counts per type added up once.
    fn assemble(
        names: ProfileNames,
        stacks: Vec<StackCount>,
        threads: Vec<SampledThread>,
        thread_counts: [usize; 3],
    ) -> Self {
        let sample_counts = GraphType::ALL.map(|ty| {
            stacks
                .iter()
                .filter(|s| ty.accepts(s.state))
                .map(|s| s.count)
                .sum()
        });
        SubtaskProfile {
            names,
            stacks,
            threads,
            thread_counts,
            sample_counts,
        }
    }

    /// Folds a subtask's sample set.
    pub fn from_set(set: &SampleSet) -> SubtaskProfile {
        let mut names: Vec<String> = Vec::new();
        let mut name_ids: HashMap<&str, u32> = HashMap::new();
        let frame_to_name: Vec<u32> = set
            .frames
            .iter()
            .map(|f| {
                *name_ids.entry(f.name.as_str()).or_insert_with(|| {
                    names.push(f.name.clone());
                    (names.len() - 1) as u32
                })
            })
            .collect();
        // Per row: samples per thread. A row rarely has more than a few threads, and samples
        // arrive grouped by thread, so a short vector checked from its end beats a map.
        let mut counts: HashMap<RowKey, Vec<(u32, u64)>> = HashMap::new();
        for s in &set.samples {
            if s.state == ThreadState::Terminated {
                continue; // in no view
            }
            let frames: Box<[u32]> = s
                .stack
                .iter()
                .filter_map(|&f| frame_to_name.get(f as usize).copied())
                .collect();
            let per_thread = counts.entry((s.state, s.truncated, frames)).or_default();
            match per_thread.iter_mut().rev().find(|(t, _)| *t == s.thread) {
                Some((_, n)) => *n += 1,
                None => per_thread.push((s.thread, 1)),
            }
        }
        let mut stacks: Vec<StackCount> = counts
            .into_iter()
            .map(|((state, truncated, frames), mut per_thread)| {
                per_thread.sort_unstable();
                StackCount {
                    state,
                    truncated,
                    frames,
                    count: per_thread.iter().map(|(_, n)| n).sum(),
                    threads: per_thread.into_boxed_slice(),
                }
            })
            .collect();
        stacks.sort_by(|a, b| {
            (a.truncated, &a.frames, a.state).cmp(&(b.truncated, &b.frames, b.state))
        });
        let thread_counts = GraphType::ALL.map(|ty| set.thread_count(ty));
        SubtaskProfile::assemble(
            ProfileNames::own(names),
            stacks,
            set.threads.clone(),
            thread_counts,
        )
    }

    /// Folds one subtask of an agent's answer straight from the wire: the same profile as
    /// [`SubtaskProfile::from_set`] of [`subtask_sample_set_within`]'s set, within the same
    /// bounds, charged to the same `budget` and failing on the same bad indexes, without the
    /// set in between (no frame, module or per-sample stack copied: only the distinct names
    /// and the distinct stacks are). What a run does with each answer as it arrives.
    ///
    /// [`subtask_sample_set_within`]: flamegrid_proto::convert::subtask_sample_set_within
    pub fn from_wire(
        resp: &v1::SampleResponse,
        sub: &v1::SubtaskSamples,
        budget: &mut AnswerBudget,
    ) -> Result<SubtaskProfile, ConvertError> {
        let names = RunNames::default();
        let folded = Self::fold_wire(resp, sub, budget, &names, &mut AnswerNames::default())?;
        Ok(folded.into_profile(&names.finish()))
    }

    /// [`SubtaskProfile::from_wire`] within a run: the names interned in the run's `run_names`
    /// (see the module docs), the profile made once the run lands. `answer` carries what the
    /// subtasks of one answer share (each wire frame's name is resolved once per answer).
    pub fn fold_wire(
        resp: &v1::SampleResponse,
        sub: &v1::SubtaskSamples,
        budget: &mut AnswerBudget,
        run_names: &RunNames,
        answer: &mut AnswerNames,
    ) -> Result<FoldedSubtask, ConvertError> {
        // Counts first, before anything is allocated for this subtask.
        budget.charge_subtask(sub)?;
        let max_depth = budget.limits().max_depth;
        let max_name = budget.limits().max_name_bytes;
        let in_run = answer
            .by_frame
            .get_or_insert_with(|| FrameNames::for_answer(resp));
        // The subtask's distinct wire frames, in order of first use: their run ids, once known
        // (`u32::MAX` until then). Frames that differ only in module or inlining have the same
        // name (text), hence the same run id: they are merged into one name below, as
        // `from_set` folds them.
        let mut names: Vec<u32> = Vec::new();
        // The names new to the answer, interned together under one lock at the end (the
        // answers of a run are folded on several threads at once): (index in `names`, text).
        let mut pending: Vec<(usize, Cow<'_, str>)> = Vec::new();
        // The wire frame of each entry of `names`.
        let mut wires: Vec<u32> = Vec::new();
        let mut frame_names = FrameNames::for_answer(resp);
        // Every sample's kept stack, as name ids, back to back; rows refer to ranges of it.
        let mut flat: Vec<u32> = Vec::new();
        // (truncated, start, end, state, thread) per sample that shows in some view.
        let mut rows: Vec<(bool, u32, u32, ThreadState, u32)> =
            Vec::with_capacity(sub.samples.len());
        let mut seen = vec![[false; 3]; sub.threads.len()];
        for s in &sub.samples {
            check_sample_thread(sub, s)?;
            let (kept, cut) = kept_stack(&s.stack, max_depth);
            let start = flat.len();
            for &f in kept {
                let id = match frame_names.get(f) {
                    Some(id) => id,
                    None => {
                        let wire = wire_frame(resp, f)?;
                        let raw = wire_string(resp, wire.name)?;
                        budget.charge_name(raw)?;
                        budget.charge_name(wire_string(resp, wire.module)?)?;
                        let id = names.len() as u32;
                        wires.push(f);
                        match in_run.get(f) {
                            Some(run_id) => names.push(run_id),
                            None => {
                                let name = if raw.len() <= max_name {
                                    Cow::Borrowed(raw)
                                } else {
                                    Cow::Owned(cut_name(raw, max_name))
                                };
                                pending.push((names.len(), name));
                                names.push(u32::MAX);
                            }
                        }
                        frame_names.insert(f, id);
                        id
                    }
                };
                flat.push(id);
            }
            let state = state_from_wire(s.state);
            if let Some(slots) = seen.get_mut(s.thread as usize) {
                for ty in GraphType::ALL {
                    slots[type_slot(ty)] |= ty.accepts(state);
                }
            }
            if state == ThreadState::Terminated {
                continue; // in no view
            }
            rows.push((
                s.truncated || cut,
                start as u32,
                flat.len() as u32,
                state,
                s.thread,
            ));
        }
        let threads = wire_threads(resp, sub, budget)?;
        if !pending.is_empty() {
            let run_ids = run_names.intern_all(pending.iter().map(|(_, name)| name.as_ref()));
            for ((index, _), run_id) in pending.iter().zip(run_ids) {
                if let Some(slot) = names.get_mut(*index) {
                    *slot = run_id;
                }
            }
        }
        // The answer's other subtasks find these frames resolved.
        for (index, _) in &pending {
            if let (Some(&f), Some(&run_id)) = (wires.get(*index), names.get(*index)) {
                in_run.insert(f, run_id);
            }
        }
        let names = merge_same_names(names, &mut flat);
        // Rows in the profile's order (truncated, frames, state), then by thread: equal rows
        // are adjacent, and each row's threads ascending.
        let frames_of = |r: &(bool, u32, u32, ThreadState, u32)| &flat[r.1 as usize..r.2 as usize];
        rows.sort_unstable_by(|a, b| {
            (a.0, frames_of(a), a.3, a.4).cmp(&(b.0, frames_of(b), b.3, b.4))
        });
        let mut stacks: Vec<StackCount> = Vec::new();
        let mut per_thread: Vec<(u32, u64)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            match per_thread.last_mut() {
                Some((t, n)) if *t == row.4 => *n += 1,
                _ => per_thread.push((row.4, 1)),
            }
            let next = rows.get(i + 1);
            if next.is_none_or(|n| (n.0, frames_of(n), n.3) != (row.0, frames_of(row), row.3)) {
                stacks.push(StackCount {
                    state: row.3,
                    truncated: row.0,
                    frames: frames_of(row).into(),
                    count: per_thread.iter().map(|(_, n)| n).sum(),
                    threads: std::mem::take(&mut per_thread).into_boxed_slice(),
                });
            }
        }
        let thread_counts =
            GraphType::ALL.map(|ty| seen.iter().filter(|s| s[type_slot(ty)]).count());
        Ok(FoldedSubtask {
            ids: names,
            stacks,
            threads,
            thread_counts,
        })
    }

    /// Samples accepted by `ty`.
    pub fn sample_count(&self, ty: GraphType) -> u64 {
        self.sample_counts[type_slot(ty)]
    }

    /// Threads with at least one sample accepted by `ty`.
    pub fn thread_count(&self, ty: GraphType) -> usize {
        self.thread_counts[type_slot(ty)]
    }

    /// Rough heap footprint in bytes, for the cache's memory bound. Over-estimates rather than
    /// under-estimates.
    /// The names table is not in it (it may be shared by a whole run): see
    /// [`NameTable::approx_bytes`].
    pub fn approx_bytes(&self) -> usize {
        let names = self.names.len() * 4 + 16;
        let stacks: usize = self
            .stacks
            .iter()
            .map(|s| s.frames.len() * 4 + s.threads.len() * 16 + std::mem::size_of::<StackCount>())
            .sum();
        let threads: usize = self
            .threads
            .iter()
            .map(|t| t.name.capacity() + std::mem::size_of::<SampledThread>())
            .sum();
        names + stacks + threads + std::mem::size_of::<Self>()
    }
}

/// Merges the entries of `names` (run ids, one per wire frame of a subtask, in order of first
/// use) that are the same name, keeping the first, and renumbers `flat` (indexes into `names`)
/// to match: frames that differ only in module or inlining are one name, as
/// [`SubtaskProfile::from_set`] folds them. They are rare, so a sorted copy first checks that
/// there is anything to merge.
fn merge_same_names(names: Vec<u32>, flat: &mut [u32]) -> Box<[u32]> {
    let mut sorted = names.clone();
    sorted.sort_unstable();
    if sorted.windows(2).all(|w| w[0] != w[1]) {
        return names.into_boxed_slice();
    }
    let mut first: HashMap<u32, u32, IdHash> =
        HashMap::with_capacity_and_hasher(names.len(), IdHash);
    let mut merged: Vec<u32> = Vec::with_capacity(names.len());
    let remap: Vec<u32> = names
        .iter()
        .map(|&run_id| {
            *first.entry(run_id).or_insert_with(|| {
                merged.push(run_id);
                (merged.len() - 1) as u32
            })
        })
        .collect();
    for f in flat.iter_mut() {
        if let Some(&id) = remap.get(*f as usize) {
            *f = id;
        }
    }
    merged.into_boxed_slice()
}

/// Wire frame index → a subtask's name id while one answer is folded: a plain vector over the
/// answer's frames when they are few (an agent interns its frames per answer, so they are:
/// no hashing per frame of every sample), a map otherwise (an answer cannot make the fold
/// allocate per frame it merely declares).
enum FrameNames {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, u32>),
}

/// Most frames in an answer for [`FrameNames::Dense`].
const DENSE_FRAMES: usize = 1 << 14;

impl FrameNames {
    fn for_answer(resp: &v1::SampleResponse) -> Self {
        if resp.frames.len() <= DENSE_FRAMES {
            FrameNames::Dense(vec![u32::MAX; resp.frames.len()])
        } else {
            FrameNames::Sparse(HashMap::new())
        }
    }

    fn get(&self, frame: u32) -> Option<u32> {
        match self {
            FrameNames::Dense(v) => v.get(frame as usize).copied().filter(|&i| i != u32::MAX),
            FrameNames::Sparse(m) => m.get(&frame).copied(),
        }
    }

    fn insert(&mut self, frame: u32, id: u32) {
        match self {
            FrameNames::Dense(v) => {
                if let Some(slot) = v.get_mut(frame as usize) {
                    *slot = id;
                }
            }
            FrameNames::Sparse(m) => {
                m.insert(frame, id);
            }
        }
    }
}

/// The result of one sampling run; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The run's request id (increasing): a per-subtask cache entry is only replaced by a newer
    /// run's data.
    pub run_id: u64,
    /// When the run started, ms since the epoch (coordinator clock).
    pub start_ms: i64,
    /// When the last agent answered, ms since the epoch: the JSON `endTimestamp`.
    pub end_ms: i64,
    /// Profiles of the subtasks that delivered, by index.
    pub subtasks: BTreeMap<u32, Arc<SubtaskProfile>>,
    /// Subtasks that should have delivered and did not, ascending, each with why (failed or
    /// late agent, per-subtask failure, agent gone before it confirmed the subtask; see
    /// [`super::missing`]).
    pub missing: Missing,
}

impl Snapshot {
    /// Flink's tree for `ty` over every subtask of the snapshot.
    pub fn tree(&self, ty: GraphType) -> FlameNode {
        let mut b = TreeBuilder::new();
        let mut scratch: Vec<u32> = Vec::new();
        // Builder ids by table id, for the table of the profiles at hand: a run's profiles
        // share one, so each name is looked up once per tree, not once per subtask.
        let mut table: Option<&Arc<NameTable>> = None;
        let mut by_table: Vec<u32> = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        for profile in self.subtasks.values() {
            let names = &profile.names;
            if !table.is_some_and(|t| Arc::ptr_eq(t, names.table())) {
                table = Some(names.table());
                by_table.clear();
                by_table.resize(names.table().len(), u32::MAX);
            }
            ids.clear();
            for &id in names.ids() {
                // Every id is in its table (a run's table is frozen after its last fold).
                let name = names.table().get(id).map_or("", String::as_str);
                match by_table.get_mut(id as usize) {
                    Some(slot) => {
                        if *slot == u32::MAX {
                            *slot = b.name_id(name);
                        }
                        ids.push(*slot);
                    }
                    None => ids.push(b.name_id(name)),
                }
            }
            for s in profile.stacks.iter().filter(|s| ty.accepts(s.state)) {
                scratch.clear();
                if s.truncated {
                    scratch.push(b.truncated_id());
                }
                scratch.extend(
                    s.frames
                        .iter()
                        .filter_map(|&f| ids.get(f as usize).copied()),
                );
                b.add_stack(&scratch, s.count);
            }
        }
        b.finish()
    }

    /// Distinct stacks for `ty` as folded lines (frame names sanitised, `[truncated]` first for
    /// cut stacks) with their counts, merged across subtasks. Ordered by frame path (like
    /// [`folded::to_folded`]), so stacks sharing a prefix are adjacent: inferno can then merge
    /// them without sorting again. Empty stacks are left out: a folded line needs a frame.
    pub fn folded_lines(&self, ty: GraphType) -> Vec<(String, u64)> {
        let mut paths: BTreeMap<Vec<&str>, u64> = BTreeMap::new();
        for profile in self.subtasks.values() {
            for s in profile
                .stacks
                .iter()
                .filter(|s| ty.accepts(s.state) && !s.frames.is_empty())
            {
                let marker = s.truncated.then_some(flamegrid_model::TRUNCATED_FRAME);
                let frames = s
                    .frames
                    .iter()
                    .filter_map(|&f| profile.names.get(f as usize).map(String::as_str));
                *paths
                    .entry(marker.into_iter().chain(frames).collect())
                    .or_insert(0) += s.count;
            }
        }
        paths
            .into_iter()
            .map(|(path, count)| {
                let mut line = String::new();
                for (i, name) in path.into_iter().enumerate() {
                    if i > 0 {
                        line.push(';');
                    }
                    if name.contains([';', '\n', '\r']) {
                        line.push_str(&folded::sanitize(name));
                    } else {
                        line.push_str(name);
                    }
                }
                (line, count)
            })
            .collect()
    }

    /// The collapsed-stack text for `ty`: one `a;b;c COUNT` line per distinct stack.
    pub fn folded(&self, ty: GraphType) -> String {
        let mut out = String::new();
        for (stack, count) in self.folded_lines(ty) {
            out.push_str(&stack);
            out.push(' ');
            out.push_str(&count.to_string());
            out.push('\n');
        }
        out
    }

    /// Samples accepted by `ty`, over all subtasks.
    pub fn sample_count(&self, ty: GraphType) -> u64 {
        self.subtasks.values().map(|p| p.sample_count(ty)).sum()
    }

    /// Threads with samples accepted by `ty`, over all subtasks.
    pub fn thread_count(&self, ty: GraphType) -> usize {
        self.subtasks.values().map(|p| p.thread_count(ty)).sum()
    }

    /// Names of frames that appear only in off-CPU samples: the SVG colours them cool.
    pub fn off_cpu_only_names(&self) -> Vec<&str> {
        let mut on: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut off: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for p in self.subtasks.values() {
            for s in &p.stacks {
                let set = if GraphType::OffCpu.accepts(s.state) {
                    &mut off
                } else {
                    &mut on
                };
                set.extend(
                    s.frames
                        .iter()
                        .filter_map(|&f| p.names.get(f as usize).map(String::as_str)),
                );
            }
        }
        let mut only: Vec<&str> = off.difference(&on).copied().collect();
        only.sort_unstable();
        only
    }

    /// The snapshot of one subtask of this run, sharing its profile: what a whole-vertex run
    /// leaves in the per-subtask entries. `None` when that subtask delivered nothing.
    pub fn subtask_part(&self, index: u32) -> Option<Snapshot> {
        let profile = self.subtasks.get(&index)?;
        Some(Snapshot {
            run_id: self.run_id,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            subtasks: BTreeMap::from([(index, Arc::clone(profile))]),
            missing: Missing::new(),
        })
    }

    /// Rough heap footprint in bytes (shared profiles counted in full, so the cache's bound is
    /// conservative).
    pub fn approx_bytes(&self) -> usize {
        let mut tables: Vec<&Arc<NameTable>> = Vec::new();
        for p in self.subtasks.values() {
            if tables
                .last()
                .is_none_or(|t| !Arc::ptr_eq(t, p.names.table()))
            {
                tables.push(p.names.table());
            }
        }
        tables.sort_unstable_by_key(|t| Arc::as_ptr(t));
        tables.dedup_by(|a, b| Arc::ptr_eq(a, b));
        std::mem::size_of::<Self>()
            + self.missing.len() * 48
            + tables.iter().map(|t| t.approx_bytes()).sum::<usize>()
            + self
                .subtasks
                .values()
                .map(|p| p.approx_bytes() + 48)
                .sum::<usize>()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flamegrid_model::{Frame, SampleSetBuilder, SampledThread};
    use flamegrid_proto::convert::WireLimits;

    /// A set with two threads: one spinning (`main;spin`), one sleeping (`main;sleep`).
    pub(crate) fn spin_and_sleep(samples: u32) -> SampleSet {
        let spin = SampledThread {
            pid: 1,
            tid: 2,
            name: "spin-0".into(),
        };
        let sleep = SampledThread {
            pid: 1,
            tid: 3,
            name: "sleep-0".into(),
        };
        let mut b = SampleSetBuilder::new();
        for i in 0..samples {
            let f = |n: &[&str]| n.iter().map(|x| Frame::named(*x)).collect::<Vec<_>>();
            b.push(
                &spin,
                i as i64,
                ThreadState::Runnable,
                f(&["main", "spin"]),
                false,
            );
            b.push(
                &sleep,
                i as i64,
                ThreadState::TimedWaiting,
                f(&["main", "sleep"]),
                false,
            );
        }
        b.finish()
    }

    /// `stacks` samples of one thread, each stack `main` over two names nobody else has (they
    /// deflate poorly): a profile whose stored body is hundreds of KB.
    pub(crate) fn bulky_set(stacks: u32) -> SampleSet {
        use flamegrid_model::ThreadState;
        let thread = SampledThread {
            pid: 1,
            tid: 1,
            name: "bulky".into(),
        };
        let mut b = SampleSetBuilder::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut name = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            Frame::named(format!("op_{x:016x}"))
        };
        for i in 0..stacks {
            let frames = vec![Frame::named("main"), name(), name()];
            b.push(&thread, i64::from(i), ThreadState::Runnable, frames, false);
        }
        b.finish()
    }

    pub(crate) fn snapshot(run_id: u64, sets: &[(u32, SampleSet)], missing: &[u32]) -> Snapshot {
        Snapshot {
            run_id,
            start_ms: 1,
            end_ms: 1000 + run_id as i64,
            subtasks: sets
                .iter()
                .map(|(i, s)| (*i, Arc::new(SubtaskProfile::from_set(s))))
                .collect(),
            missing: missing
                .iter()
                .map(|&i| (i, crate::missing::MissingReason::AgentUnreachable))
                .collect(),
        }
    }

    #[test]
    fn folding_keeps_counts_and_serves_all_types() {
        let snap = snapshot(1, &[(0, spin_and_sleep(10)), (1, spin_and_sleep(5))], &[2]);
        assert_eq!(
            snap.subtasks[&0].stacks.len(),
            2,
            "20 samples fold into 2 rows"
        );
        let full = snap.tree(GraphType::Full);
        assert_eq!(full.value, 30);
        assert_eq!(full.find_path(&["main", "spin"]).map(|n| n.value), Some(15));
        let on = snap.tree(GraphType::OnCpu);
        assert_eq!(on.value, 15);
        assert!(!on.contains("sleep"));
        let off = snap.tree(GraphType::OffCpu);
        assert!(off.contains("sleep") && !off.contains("spin"));
        assert_eq!(
            snap.folded(GraphType::Full),
            "main;sleep 15\nmain;spin 15\n"
        );
        assert_eq!(snap.sample_count(GraphType::OnCpu), 15);
        assert_eq!(snap.thread_count(GraphType::Full), 4);
        assert_eq!(snap.thread_count(GraphType::OffCpu), 2);
        assert_eq!(snap.off_cpu_only_names(), ["sleep"]);
    }

    #[test]
    fn tree_matches_the_model_fold_of_the_raw_samples() {
        let set = spin_and_sleep(7);
        let snap = snapshot(1, &[(0, set.clone())], &[]);
        for ty in GraphType::ALL {
            assert_eq!(snap.tree(ty), FlameNode::build([&set], ty));
            assert_eq!(snap.folded(ty), folded::to_folded([&set], ty));
        }
    }

    #[test]
    fn folded_lines_keep_shared_prefixes_adjacent() {
        let t = SampledThread {
            pid: 1,
            tid: 1,
            name: "t".into(),
        };
        let mut b = SampleSetBuilder::new();
        let f = |n: &[&str]| n.iter().map(|x| Frame::named(*x)).collect::<Vec<_>>();
        // As strings "a;b c;d" sorts between "a;b" and "a;b;z"; as paths it does not.
        for stack in [&["a", "b"][..], &["a", "b", "z"], &["a", "b c", "d"]] {
            b.push(&t, 0, ThreadState::Runnable, f(stack), false);
        }
        let lines: Vec<String> = snapshot(1, &[(0, b.finish())], &[])
            .folded_lines(GraphType::Full)
            .into_iter()
            .map(|l| l.0)
            .collect();
        assert_eq!(lines, ["a;b", "a;b;z", "a;b c;d"]);
    }

    #[test]
    fn rows_keep_their_split_over_threads() {
        let threads = [0u32, 1].map(|i| SampledThread {
            pid: 1,
            tid: 10 + i,
            name: format!("worker-{i}"),
        });
        let mut b = SampleSetBuilder::new();
        let f = |n: &[&str]| n.iter().map(|x| Frame::named(*x)).collect::<Vec<_>>();
        // Both threads in the same stack (3 + 1 samples), thread 1 once elsewhere.
        for t in [0, 1, 0, 0] {
            b.push(
                &threads[t],
                0,
                ThreadState::Runnable,
                f(&["main", "work"]),
                false,
            );
        }
        b.push(
            &threads[1],
            0,
            ThreadState::Waiting,
            f(&["main", "park"]),
            false,
        );
        let set = b.finish();
        let profile = SubtaskProfile::from_set(&set);
        assert_eq!(
            profile.stacks.len(),
            2,
            "one row per (state, stack), not per thread"
        );
        let work = profile
            .stacks
            .iter()
            .find(|s| s.state == ThreadState::Runnable)
            .unwrap();
        assert_eq!(work.count, 4);
        let by_name: Vec<(&str, u64)> = work
            .threads
            .iter()
            .map(|&(t, n)| (profile.threads[t as usize].name.as_str(), n))
            .collect();
        assert_eq!(by_name, [("worker-0", 3), ("worker-1", 1)]);
        for s in &profile.stacks {
            assert_eq!(s.threads.iter().map(|t| t.1).sum::<u64>(), s.count);
        }
    }

    #[test]
    fn subtask_part_shares_the_profile() {
        let snap = snapshot(3, &[(0, spin_and_sleep(2)), (1, spin_and_sleep(3))], &[]);
        let part = snap.subtask_part(1).unwrap();
        assert_eq!(part.end_ms, snap.end_ms);
        assert_eq!(part.tree(GraphType::Full).value, 6);
        assert!(Arc::ptr_eq(&part.subtasks[&1], &snap.subtasks[&1]));
        assert!(snap.subtask_part(5).is_none());
    }

    /// A generated sample: thread, state, truncated, stack.
    type WireSample = (u8, i32, bool, Vec<u8>);

    /// An answer of `subtasks` from generated parts: names (some sharing a text, some over a
    /// small name limit), frames over them, and per subtask threads and samples whose indexes
    /// are mostly, not always, in range.
    fn wire_answer(
        names: &[u8],
        frames: &[(u8, u8, bool)],
        subtasks: &[(u8, Vec<WireSample>)],
    ) -> v1::SampleResponse {
        let mut resp = v1::SampleResponse {
            strings: std::iter::once(String::new())
                .chain(
                    names
                        .iter()
                        .map(|&n| format!("fn_{}", "x".repeat(n as usize % 7))),
                )
                .collect(),
            ..Default::default()
        };
        let strings = resp.strings.len() as u32 + 1; // one past the end now and then
        resp.frames = frames
            .iter()
            .map(|&(name, module, inlined)| v1::Frame {
                name: u32::from(name) % strings,
                module: u32::from(module) % strings,
                inlined,
            })
            .collect();
        let frames = resp.frames.len() as u32 + 1;
        resp.subtasks = subtasks
            .iter()
            .enumerate()
            .map(|(i, (threads, samples))| v1::SubtaskSamples {
                subtask_key: format!("k/{i}"),
                threads: (0..u32::from(*threads % 4))
                    .map(|t| v1::Thread {
                        pid: 1,
                        tid: t,
                        name: t % strings,
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|(thread, state, truncated, stack)| v1::Sample {
                        thread: u32::from(*thread % 5),
                        timestamp_ms: 0,
                        state: *state % 8,
                        stack: stack.iter().map(|&f| u32::from(f) % frames).collect(),
                        truncated: *truncated,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        resp
    }

    proptest::proptest! {
        #[test]
        fn folding_from_the_wire_equals_folding_the_converted_set(
            names in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            frames in proptest::collection::vec(proptest::prelude::any::<(u8, u8, bool)>(), 0..16),
            subtasks in proptest::collection::vec(
                (proptest::prelude::any::<u8>(), proptest::collection::vec(
                    (proptest::prelude::any::<u8>(), 0i32..8, proptest::prelude::any::<bool>(),
                     proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9)),
                    0..12)),
                1..4),
            max_depth in 1u32..6,
            tight in proptest::prelude::any::<bool>(),
        ) {
            let resp = wire_answer(&names, &frames, &subtasks);
            let mut limits = WireLimits::with_max_depth(max_depth);
            limits.max_name_bytes = 6; // cuts some names, so that cut names fold together
            if tight {
                limits.max_records = 20;
                limits.max_name_bytes_per_answer = 40;
            }
            let mut direct = AnswerBudget::new(limits);
            let mut via_set = AnswerBudget::new(limits);
            for sub in &resp.subtasks {
                let folded = SubtaskProfile::from_wire(&resp, sub, &mut direct);
                let expected = flamegrid_proto::convert::subtask_sample_set_within(
                    &resp, sub, &mut via_set,
                )
                .map(|set| SubtaskProfile::from_set(&set));
                match (folded, expected) {
                    (Ok(got), Ok(want)) => proptest::prop_assert_eq!(got, want),
                    (Err(_), Err(_)) => {}
                    (got, want) => proptest::prop_assert!(false, "{got:?} != {want:?}"),
                }
            }
        }
    }
}
