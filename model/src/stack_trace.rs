//! Thread samples and their stacks.
//!
//! A *sample* is one observation of one thread: when it was taken, the thread's scheduler state,
//! and its user-space call stack. Samples of one sampling run are collected in a [`SampleSet`],
//! which interns frames and threads so that memory grows with the number of *distinct* frames,
//! not with the number of samples (a 100-sample run of 64 threads repeats the same few hundred
//! frames thousands of times).
//!
//! Stacks are stored **outermost frame first** (`_start`/`clone3` … `main` … leaf), the order in
//! which flame graphs and folded stacks are read, so no view has to reverse them.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Name of the synthetic frame placed above the innermost frames of a stack that was cut at the
/// depth limit. Flink silently drops the outermost frames; flamegrid keeps the innermost ones (the
/// ones that say where the time goes) and marks the cut so the picture does not lie.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// A thread's state at the instant of a sample, in Flink's (Java's) vocabulary so that the FULL /
/// ON_CPU / OFF_CPU views mean the same thing as in Flink's dashboard.
///
/// The mapping from Linux states (`/proc/<pid>/task/<tid>/stat`) is in
/// [`ThreadState::from_proc_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ThreadState {
    /// Not started yet. Never produced for native threads; kept for parity with Flink.
    New,
    /// Running or runnable (`R`): on CPU.
    Runnable,
    /// Uninterruptible sleep (`D`), usually disk or kernel locks.
    Blocked,
    /// Sleeping without a timeout (`S`), or stopped (`T`, `t`).
    Waiting,
    /// Sleeping with a timeout (`S` in nanosleep, or futex/poll/epoll/select with a timeout).
    TimedWaiting,
    /// Zombie or dead (`Z`, `X`): dropped from trees.
    Terminated,
}

impl ThreadState {
    /// All states, in declaration order.
    pub const ALL: [ThreadState; 6] = [
        ThreadState::New,
        ThreadState::Runnable,
        ThreadState::Blocked,
        ThreadState::Waiting,
        ThreadState::TimedWaiting,
        ThreadState::Terminated,
    ];

    /// Maps a Linux scheduler state letter onto Flink's names.
    ///
    /// `timed` says whether a sleeping thread waits with a timeout (the caller works that out,
    /// e.g. from `/proc/<pid>/task/<tid>/syscall`); it only matters for `S`. Unknown letters
    /// (`I` idle kernel threads, `W`, `P`, ...) count as `Waiting`, the least surprising choice.
    pub fn from_proc_state(state: char, timed: bool) -> ThreadState {
        match state {
            'R' => ThreadState::Runnable,
            'S' if timed => ThreadState::TimedWaiting,
            'S' => ThreadState::Waiting,
            'D' => ThreadState::Blocked,
            'T' | 't' => ThreadState::Waiting,
            'Z' | 'X' | 'x' => ThreadState::Terminated,
            _ => ThreadState::Waiting,
        }
    }

    /// The Java enum name (`RUNNABLE`, `TIMED_WAITING`, ...), as Flink writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadState::New => "NEW",
            ThreadState::Runnable => "RUNNABLE",
            ThreadState::Blocked => "BLOCKED",
            ThreadState::Waiting => "WAITING",
            ThreadState::TimedWaiting => "TIMED_WAITING",
            ThreadState::Terminated => "TERMINATED",
        }
    }
}

impl fmt::Display for ThreadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ThreadState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown thread state {s:?}"))
    }
}

/// Which samples a flame graph shows: Flink's `type` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GraphType {
    /// Every sample (Flink's dashboard calls it "Mixed").
    #[default]
    Full,
    /// `RUNNABLE` and `NEW` samples.
    OnCpu,
    /// `WAITING`, `TIMED_WAITING` and `BLOCKED` samples.
    OffCpu,
}

/// The error for a `type` value that is not FULL, ON_CPU or OFF_CPU (in any letter case).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown flame graph type {0:?}: expected one of FULL, ON_CPU, OFF_CPU")]
pub struct ParseGraphTypeError(pub String);

impl GraphType {
    /// All types, in Flink's order.
    pub const ALL: [GraphType; 3] = [GraphType::Full, GraphType::OnCpu, GraphType::OffCpu];

    /// Whether a sample in `state` belongs in this view. `TERMINATED` samples belong in none:
    /// a thread that is gone has no stack worth drawing.
    pub fn accepts(self, state: ThreadState) -> bool {
        match self {
            GraphType::Full => state != ThreadState::Terminated,
            GraphType::OnCpu => matches!(state, ThreadState::Runnable | ThreadState::New),
            GraphType::OffCpu => matches!(
                state,
                ThreadState::Waiting | ThreadState::TimedWaiting | ThreadState::Blocked
            ),
        }
    }

    /// The upper-case wire name (`FULL`, `ON_CPU`, `OFF_CPU`).
    pub fn as_str(self) -> &'static str {
        match self {
            GraphType::Full => "FULL",
            GraphType::OnCpu => "ON_CPU",
            GraphType::OffCpu => "OFF_CPU",
        }
    }
}

impl fmt::Display for GraphType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GraphType {
    type Err = ParseGraphTypeError;
    /// Case-insensitive, and `-` is accepted for `_` (`on-cpu` as the agent's CLI spells it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().replace('-', "_");
        GraphType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(&norm))
            .ok_or_else(|| ParseGraphTypeError(s.to_string()))
    }
}

/// One frame of a call stack.
///
/// `name` is what trees aggregate on: the demangled function name without argument lists or
/// Rust hashes (`demo::Worker<unsigned long>::recurse`), so the same function merges across
/// threads and hosts. When no symbol is known it is `module+0xoffset`, or `[unknown]` when even
/// the module is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frame {
    /// Demangled function name (see the type docs).
    pub name: String,
    /// File name of the module (executable or shared object) the frame's address lies in, e.g.
    /// `libc.so.6`; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// True for a function that the compiler inlined into its caller: DWARF still knows it, so it
    /// is shown as its own frame, but no real call happened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    /// A frame for a function name alone.
    pub fn named(name: impl Into<String>) -> Frame {
        Frame {
            name: name.into(),
            module: String::new(),
            inlined: false,
        }
    }
}

/// A thread that appears in a [`SampleSet`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampledThread {
    /// Process id (thread group id) as seen by the agent.
    pub pid: u32,
    /// Kernel thread id.
    pub tid: u32,
    /// The thread's name (`/proc/<pid>/task/<tid>/comm`) when it was first sampled.
    pub name: String,
}

/// One observation of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSample {
    /// Index into [`SampleSet::threads`].
    pub thread: u32,
    /// Wall-clock time of the observation, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Scheduler state at that instant.
    pub state: ThreadState,
    /// Indexes into [`SampleSet::frames`], **outermost frame first**. Empty when the stack could
    /// not be read (the state is still worth counting, as Flink counts empty stacks at the root).
    pub stack: Vec<u32>,
    /// True when the stack was deeper than the depth limit: `stack` then holds the innermost
    /// frames only, and views put them under a [`TRUNCATED_FRAME`] node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The samples of one sampling run (or of one subtask of it), with frames and threads interned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleSet {
    /// Distinct frames; samples refer to them by index.
    pub frames: Vec<Frame>,
    /// Distinct threads; samples refer to them by index.
    pub threads: Vec<SampledThread>,
    /// The samples, in the order they were taken.
    pub samples: Vec<ThreadSample>,
}

impl SampleSet {
    /// The frames of a sample's stack, outermost first. Out-of-range indexes (only possible in a
    /// hand-built or corrupted set) are skipped rather than panicking.
    pub fn stack_frames<'a>(
        &'a self,
        sample: &'a ThreadSample,
    ) -> impl Iterator<Item = &'a Frame> + 'a {
        sample
            .stack
            .iter()
            .filter_map(move |&i| self.frames.get(i as usize))
    }

    /// The thread a sample belongs to, if the index is valid.
    pub fn thread_of(&self, sample: &ThreadSample) -> Option<&SampledThread> {
        self.threads.get(sample.thread as usize)
    }

    /// Checks that every index in the set points at an existing frame or thread. Sets that come
    /// from the network are validated once on arrival so views can index without checks.
    pub fn validate(&self) -> Result<(), String> {
        for (i, s) in self.samples.iter().enumerate() {
            if s.thread as usize >= self.threads.len() {
                return Err(format!(
                    "sample {i} names thread {} of {}",
                    s.thread,
                    self.threads.len()
                ));
            }
            if let Some(&f) = s.stack.iter().find(|&&f| f as usize >= self.frames.len()) {
                return Err(format!(
                    "sample {i} names frame {f} of {}",
                    self.frames.len()
                ));
            }
        }
        Ok(())
    }

    /// Number of distinct threads that have at least one sample accepted by `ty`.
    pub fn thread_count(&self, ty: GraphType) -> usize {
        let mut seen = vec![false; self.threads.len()];
        for s in self.samples.iter().filter(|s| ty.accepts(s.state)) {
            if let Some(slot) = seen.get_mut(s.thread as usize) {
                *slot = true;
            }
        }
        seen.into_iter().filter(|&b| b).count()
    }

    /// Number of samples accepted by `ty`.
    pub fn sample_count(&self, ty: GraphType) -> usize {
        self.samples.iter().filter(|s| ty.accepts(s.state)).count()
    }

    /// Appends every sample of `other`, re-interning its frames and threads.
    pub fn extend_from(&mut self, other: &SampleSet) {
        let mut b = SampleSetBuilder::from_set(std::mem::take(self));
        b.extend_from(other);
        *self = b.finish();
    }
}

/// Builds a [`SampleSet`], interning frames and threads as samples are added.
#[derive(Debug, Default)]
pub struct SampleSetBuilder {
    set: SampleSet,
    frame_ids: HashMap<Frame, u32>,
    thread_ids: HashMap<(u32, u32), u32>,
}

impl SampleSetBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that continues an existing set.
    pub fn from_set(set: SampleSet) -> Self {
        let frame_ids = set
            .frames
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, f)| (f, i as u32))
            .collect();
        let thread_ids = set
            .threads
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.pid, t.tid), i as u32))
            .collect();
        SampleSetBuilder {
            set,
            frame_ids,
            thread_ids,
        }
    }

    /// The index of `frame`, adding it if it is new.
    pub fn intern_frame(&mut self, frame: Frame) -> u32 {
        if let Some(&i) = self.frame_ids.get(&frame) {
            return i;
        }
        let i = self.set.frames.len() as u32;
        self.set.frames.push(frame.clone());
        self.frame_ids.insert(frame, i);
        i
    }

    /// The index of the thread `(pid, tid)`, adding it with `name` if it is new.
    pub fn intern_thread(&mut self, pid: u32, tid: u32, name: &str) -> u32 {
        if let Some(&i) = self.thread_ids.get(&(pid, tid)) {
            return i;
        }
        let i = self.set.threads.len() as u32;
        self.set.threads.push(SampledThread {
            pid,
            tid,
            name: name.to_string(),
        });
        self.thread_ids.insert((pid, tid), i);
        i
    }

    /// Adds a sample whose stack is given as frames, outermost first.
    pub fn push(
        &mut self,
        thread: &SampledThread,
        timestamp_ms: i64,
        state: ThreadState,
        stack_outermost_first: impl IntoIterator<Item = Frame>,
        truncated: bool,
    ) {
        let thread = self.intern_thread(thread.pid, thread.tid, &thread.name);
        let stack = stack_outermost_first
            .into_iter()
            .map(|f| self.intern_frame(f))
            .collect();
        self.set.samples.push(ThreadSample {
            thread,
            timestamp_ms,
            state,
            stack,
            truncated,
        });
    }

    /// Adds every sample of `other`, re-interning its frames and threads.
    pub fn extend_from(&mut self, other: &SampleSet) {
        let frame_map: Vec<u32> = other
            .frames
            .iter()
            .map(|f| self.intern_frame(f.clone()))
            .collect();
        let thread_map: Vec<u32> = other
            .threads
            .iter()
            .map(|t| self.intern_thread(t.pid, t.tid, &t.name))
            .collect();
        for s in &other.samples {
            let Some(&thread) = thread_map.get(s.thread as usize) else {
                continue;
            };
            let stack = s
                .stack
                .iter()
                .filter_map(|&f| frame_map.get(f as usize).copied())
                .collect();
            self.set.samples.push(ThreadSample {
                thread,
                timestamp_ms: s.timestamp_ms,
                state: s.state,
                stack,
                truncated: s.truncated,
            });
        }
    }

    /// Number of samples so far.
    pub fn len(&self) -> usize {
        self.set.samples.len()
    }

    /// True when no sample was added.
    pub fn is_empty(&self) -> bool {
        self.set.samples.is_empty()
    }

    /// The finished set.
    pub fn finish(self) -> SampleSet {
        self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_states_map_onto_flink_names() {
        assert_eq!(
            ThreadState::from_proc_state('R', false),
            ThreadState::Runnable
        );
        assert_eq!(
            ThreadState::from_proc_state('S', false),
            ThreadState::Waiting
        );
        assert_eq!(
            ThreadState::from_proc_state('S', true),
            ThreadState::TimedWaiting
        );
        assert_eq!(
            ThreadState::from_proc_state('D', false),
            ThreadState::Blocked
        );
        assert_eq!(
            ThreadState::from_proc_state('t', false),
            ThreadState::Waiting
        );
        assert_eq!(
            ThreadState::from_proc_state('Z', false),
            ThreadState::Terminated
        );
    }

    #[test]
    fn graph_type_parses_any_case_and_filters() {
        assert_eq!("on_cpu".parse::<GraphType>(), Ok(GraphType::OnCpu));
        assert_eq!("Off-CPU".parse::<GraphType>(), Ok(GraphType::OffCpu));
        assert_eq!("full".parse::<GraphType>(), Ok(GraphType::Full));
        assert!("cpu".parse::<GraphType>().is_err());
        assert!(GraphType::OnCpu.accepts(ThreadState::Runnable));
        assert!(!GraphType::OnCpu.accepts(ThreadState::Waiting));
        assert!(GraphType::OffCpu.accepts(ThreadState::TimedWaiting));
        assert!(!GraphType::Full.accepts(ThreadState::Terminated));
    }

    #[test]
    fn builder_interns_frames_and_threads() {
        let t = SampledThread {
            pid: 1,
            tid: 2,
            name: "w".into(),
        };
        let mut b = SampleSetBuilder::new();
        b.push(
            &t,
            1,
            ThreadState::Runnable,
            [Frame::named("main"), Frame::named("f")],
            false,
        );
        b.push(
            &t,
            2,
            ThreadState::Runnable,
            [Frame::named("main"), Frame::named("g")],
            false,
        );
        let set = b.finish();
        assert_eq!(set.frames.len(), 3);
        assert_eq!(set.threads.len(), 1);
        assert_eq!(set.samples[1].stack, vec![0, 2]);
        assert!(set.validate().is_ok());
        let mut merged = set.clone();
        merged.extend_from(&set);
        assert_eq!(merged.samples.len(), 4);
        assert_eq!(merged.frames.len(), 3);
    }
}
