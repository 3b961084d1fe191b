//! Conversions between the interned wire form and [`flamegrid_model`].
//!
//! Going out (agent side), [`SampleResponseBuilder`] interns every string and frame once per
//! response, whatever the number of subtasks. Coming in (coordinator side),
//! [`subtask_sample_set_within`] checks every index before building a [`SampleSet`], so a buggy
//! or hostile agent produces an error, never a panic.
//!
//! ## Everything read from the wire is bounded here, before anything else uses it
//!
//! An agent is another host: it may be buggy, compromised or simply not ours. The gRPC message
//! limit bounds the *bytes* of an answer, but not what those bytes expand into: a 64 MiB answer
//! can hold one stack two million frames deep (a recursive walk over it overflows any thread's
//! stack), one string of 60 MB named by every frame (copied per frame, gigabytes), or millions of
//! tiny samples (each a heap allocation once converted). So the conversion applies
//! [`WireLimits`], through an [`AnswerBudget`] shared by all subtasks of one answer:
//!
//! * **Depth.** A stack deeper than the run's `max_depth` (the coordinator's
//!   `--flamegraph-max-depth`, at most [`MAX_DEPTH`]) keeps its innermost `max_depth` frames and
//!   is marked truncated, exactly as an agent cuts it: views draw it under `[truncated]`. The
//!   cut frames are never looked at.
//! * **Names.** Frame, module and thread names longer than [`MAX_NAME_BYTES`] are cut (at a
//!   character boundary, ending in `…`), and the bytes of all names copied out of one answer
//!   are bounded by [`MAX_NAME_BYTES_PER_ANSWER`].
//! * **Counts.** Samples plus threads per answer are bounded by [`MAX_RECORDS_PER_ANSWER`], and
//!   the frames of all stacks (after the depth cut) by [`MAX_STACK_ENTRIES_PER_ANSWER`]. These are
//!   checked before any allocation for the subtask; a subtask over the remaining budget is a
//!   [`ConvertError::OverBudget`] (the coordinator reports it missing), never a partial set.
//!
//! The bounds are far above what a real agent sends (1000 samples of 64 threads 100 frames deep
//! is 64 000 records and 6.4 M stack entries), so they only ever cut a hostile answer.

use crate::v1;
use flamegrid_model::{Frame, SampleSet, SampledThread, ThreadSample, ThreadState};
use std::collections::HashMap;

/// A wire message that does not hold together (an index out of range, an unknown enum value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An index points past the end of the table it refers to.
    #[error("{what} index {index} out of range (table has {len})")]
    IndexOutOfRange {
        /// Which table (`string`, `frame`, `thread`).
        what: &'static str,
        /// The bad index.
        index: u32,
        /// The table's length.
        len: usize,
    },
    /// The answer holds more than the coordinator takes from one answer (see [`WireLimits`]).
    #[error("answer too large: {what} over the bound of {limit}")]
    OverBudget {
        /// What ran over (`samples and threads`, `stack frames`, `name bytes`).
        what: &'static str,
        /// The bound.
        limit: usize,
    },
}

/// Deepest stack the wire contract allows (`SampleRequest.max_depth` is 1..=1024).
pub const MAX_DEPTH: usize = 1024;
/// Longest frame, module or thread name kept from an answer, in bytes. Demangled C++ template
/// names run to a few KB; nothing legitimate is longer.
pub const MAX_NAME_BYTES: usize = 4096;
/// Most name bytes copied out of one answer, all names together.
pub const MAX_NAME_BYTES_PER_ANSWER: usize = 64 << 20;
/// Most samples plus threads taken from one answer (1000 samples of 1000 threads).
pub const MAX_RECORDS_PER_ANSWER: usize = 1_000_000;
/// Most stack entries (frame references, after the depth cut) taken from one answer: 64 MiB of
/// `u32`, the same order as the largest answer the coordinator decodes.
pub const MAX_STACK_ENTRIES_PER_ANSWER: usize = 16 << 20;

/// The bounds [`subtask_sample_set_within`] applies; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Frames kept per stack, the innermost ones; a deeper stack is cut and marked truncated.
    pub max_depth: usize,
    /// Longest name kept, in bytes.
    pub max_name_bytes: usize,
    /// Name bytes per answer.
    pub max_name_bytes_per_answer: usize,
    /// Samples plus threads per answer.
    pub max_records: usize,
    /// Stack entries per answer, after the depth cut.
    pub max_stack_entries: usize,
}

impl Default for WireLimits {
    /// The contract's bounds: depth [`MAX_DEPTH`] and the per-answer constants.
    fn default() -> Self {
        WireLimits {
            max_depth: MAX_DEPTH,
            max_name_bytes: MAX_NAME_BYTES,
            max_name_bytes_per_answer: MAX_NAME_BYTES_PER_ANSWER,
            max_records: MAX_RECORDS_PER_ANSWER,
            max_stack_entries: MAX_STACK_ENTRIES_PER_ANSWER,
        }
    }
}

impl WireLimits {
    /// The default bounds with stacks cut at `max_depth` frames (clamped to 1..=[`MAX_DEPTH`]):
    /// what a run that asked for `max_depth` accepts.
    pub fn with_max_depth(max_depth: u32) -> Self {
        WireLimits {
            max_depth: (max_depth as usize).clamp(1, MAX_DEPTH),
            ..WireLimits::default()
        }
    }
}

/// What is left of one answer's [`WireLimits`] while its subtasks are converted one by one.
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    limits: WireLimits,
    records_left: usize,
    entries_left: usize,
    name_bytes_left: usize,
}

impl AnswerBudget {
    /// The full budget of one answer.
    pub fn new(limits: WireLimits) -> Self {
        AnswerBudget {
            limits,
            records_left: limits.max_records,
            entries_left: limits.max_stack_entries,
            name_bytes_left: limits.max_name_bytes_per_answer,
        }
    }

    /// The limits this budget applies.
    pub fn limits(&self) -> &WireLimits {
        &self.limits
    }

    /// A name read from the wire, cut to the name limit and charged to the answer.
    pub fn name(&mut self, raw: &str) -> Result<String, ConvertError> {
        let name = cut_name(raw, self.limits.max_name_bytes);
        self.charge_name_bytes(name.len())?;
        Ok(name)
    }

    /// Charges a name read from the wire to the answer without copying it: what
    /// [`AnswerBudget::name`] charges (e.g. for a module name a fold does not keep).
    pub fn charge_name(&mut self, raw: &str) -> Result<(), ConvertError> {
        if raw.len() <= self.limits.max_name_bytes {
            self.charge_name_bytes(raw.len())
        } else {
            self.charge_name_bytes(cut_name(raw, self.limits.max_name_bytes).len())
        }
    }

    fn charge_name_bytes(&mut self, len: usize) -> Result<(), ConvertError> {
        self.name_bytes_left =
            self.name_bytes_left
                .checked_sub(len)
                .ok_or(ConvertError::OverBudget {
                    what: "name bytes",
                    limit: self.limits.max_name_bytes_per_answer,
                })?;
        Ok(())
    }

    /// Checks one subtask's counts against what is left of the answer's budget and charges
    /// them: samples plus threads, and stack entries after the depth cut. Called before
    /// anything is allocated for the subtask; an error charges nothing.
    pub fn charge_subtask(&mut self, sub: &v1::SubtaskSamples) -> Result<(), ConvertError> {
        let max_depth = self.limits.max_depth.max(1);
        let records = sub.samples.len().saturating_add(sub.threads.len());
        let entries = sub.samples.iter().fold(0usize, |n, s| {
            n.saturating_add(s.stack.len().min(max_depth))
        });
        if records > self.records_left {
            return Err(ConvertError::OverBudget {
                what: "samples and threads",
                limit: self.limits.max_records,
            });
        }
        if entries > self.entries_left {
            return Err(ConvertError::OverBudget {
                what: "stack frames",
                limit: self.limits.max_stack_entries,
            });
        }
        self.records_left -= records;
        self.entries_left -= entries;
        Ok(())
    }
}

/// String `index` of an answer's string table, or an error naming the bad index.
pub fn wire_string(resp: &v1::SampleResponse, index: u32) -> Result<&str, ConvertError> {
    resp.strings
        .get(index as usize)
        .map(String::as_str)
        .ok_or(ConvertError::IndexOutOfRange {
            what: "string",
            index,
            len: resp.strings.len(),
        })
}

/// Frame `index` of an answer's frame table, or an error naming the bad index.
pub fn wire_frame(resp: &v1::SampleResponse, index: u32) -> Result<&v1::Frame, ConvertError> {
    resp.frames
        .get(index as usize)
        .ok_or(ConvertError::IndexOutOfRange {
            what: "frame",
            index,
            len: resp.frames.len(),
        })
}

/// A subtask's threads as the model's, their names charged to `budget`.
pub fn wire_threads(
    resp: &v1::SampleResponse,
    sub: &v1::SubtaskSamples,
    budget: &mut AnswerBudget,
) -> Result<Vec<SampledThread>, ConvertError> {
    sub.threads
        .iter()
        .map(|t| {
            Ok(SampledThread {
                pid: t.pid,
                tid: t.tid,
                name: budget.name(wire_string(resp, t.name)?)?,
            })
        })
        .collect()
}

/// Checks that a sample names one of its subtask's threads, or an error naming the bad index.
pub fn check_sample_thread(
    sub: &v1::SubtaskSamples,
    sample: &v1::Sample,
) -> Result<(), ConvertError> {
    if sample.thread as usize >= sub.threads.len() {
        return Err(ConvertError::IndexOutOfRange {
            what: "thread",
            index: sample.thread,
            len: sub.threads.len(),
        });
    }
    Ok(())
}

/// The part of a wire stack (outermost frame first) that is kept under a depth limit: its
/// innermost `max_depth` frames, as an agent cuts it, and whether anything was cut.
pub fn kept_stack(stack: &[u32], max_depth: usize) -> (&[u32], bool) {
    let cut = stack.len().saturating_sub(max_depth.max(1));
    (&stack[cut..], cut > 0)
}

/// `raw` if it fits in `max` bytes, else its longest prefix (at a character boundary) that fits
/// with a trailing `…`.
pub fn cut_name(raw: &str, max: usize) -> String {
    if raw.len() <= max {
        return raw.to_string();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &raw[..end])
}

impl From<ThreadState> for v1::ThreadState {
    fn from(s: ThreadState) -> Self {
        match s {
            ThreadState::New => v1::ThreadState::New,
            ThreadState::Runnable => v1::ThreadState::Runnable,
            ThreadState::Blocked => v1::ThreadState::Blocked,
            ThreadState::Waiting => v1::ThreadState::Waiting,
            ThreadState::TimedWaiting => v1::ThreadState::TimedWaiting,
            ThreadState::Terminated => v1::ThreadState::Terminated,
        }
    }
}

/// The model state of a wire state. An unspecified or unknown value (from a newer agent) counts
/// as `WAITING`: it still shows in FULL graphs without claiming CPU time.
pub fn state_from_wire(raw: i32) -> ThreadState {
    match v1::ThreadState::try_from(raw) {
        Ok(v1::ThreadState::New) => ThreadState::New,
        Ok(v1::ThreadState::Runnable) => ThreadState::Runnable,
        Ok(v1::ThreadState::Blocked) => ThreadState::Blocked,
        Ok(v1::ThreadState::TimedWaiting) => ThreadState::TimedWaiting,
        Ok(v1::ThreadState::Terminated) => ThreadState::Terminated,
        Ok(v1::ThreadState::Waiting) | Ok(v1::ThreadState::Unspecified) | Err(_) => {
            ThreadState::Waiting
        }
    }
}

/// Builds a [`v1::SampleResponse`] from per-subtask [`SampleSet`]s, interning strings and frames
/// across all of them.
#[derive(Debug)]
pub struct SampleResponseBuilder {
    resp: v1::SampleResponse,
    string_ids: HashMap<String, u32>,
    frame_ids: HashMap<Frame, u32>,
}

impl SampleResponseBuilder {
    /// A builder for the answer to request `request_id`.
    pub fn new(request_id: u64) -> Self {
        let mut b = SampleResponseBuilder {
            resp: v1::SampleResponse {
                request_id,
                ..Default::default()
            },
            string_ids: HashMap::new(),
            frame_ids: HashMap::new(),
        };
        b.string("");
        b
    }

    fn string(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.resp.strings.len() as u32;
        self.resp.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn frame(&mut self, f: &Frame) -> u32 {
        if let Some(&i) = self.frame_ids.get(f) {
            return i;
        }
        let wire = v1::Frame {
            name: self.string(&f.name),
            module: self.string(&f.module),
            inlined: f.inlined,
        };
        let i = self.resp.frames.len() as u32;
        self.resp.frames.push(wire);
        self.frame_ids.insert(f.clone(), i);
        i
    }

    /// Adds the samples of one subtask.
    pub fn add_subtask(&mut self, subtask_key: &str, set: &SampleSet) {
        let frame_map: Vec<u32> = set.frames.iter().map(|f| self.frame(f)).collect();
        let threads = set
            .threads
            .iter()
            .map(|t| v1::Thread {
                pid: t.pid,
                tid: t.tid,
                name: self.string(&t.name),
            })
            .collect();
        let samples = set
            .samples
            .iter()
            .map(|s| v1::Sample {
                thread: s.thread,
                timestamp_ms: s.timestamp_ms,
                state: v1::ThreadState::from(s.state) as i32,
                stack: s
                    .stack
                    .iter()
                    .filter_map(|&f| frame_map.get(f as usize).copied())
                    .collect(),
                truncated: s.truncated,
            })
            .collect();
        self.resp.subtasks.push(v1::SubtaskSamples {
            subtask_key: subtask_key.to_string(),
            threads,
            samples,
            error: String::new(),
            failure: v1::SubtaskFailure::Unspecified as i32,
        });
    }

    /// Records that one subtask could not be sampled, and why, without saying which kind of
    /// failure it is (the coordinator then shows only that the agent could not sample it).
    /// Prefer [`SampleResponseBuilder::add_failure`].
    pub fn add_error(&mut self, subtask_key: &str, error: impl Into<String>) {
        self.add_failure(subtask_key, error, v1::SubtaskFailure::Unspecified);
    }

    /// Records that one subtask could not be sampled: `error` for the coordinator's log,
    /// `failure` (a fixed vocabulary) for what its users are shown.
    pub fn add_failure(
        &mut self,
        subtask_key: &str,
        error: impl Into<String>,
        failure: v1::SubtaskFailure,
    ) {
        self.resp.subtasks.push(v1::SubtaskSamples {
            subtask_key: subtask_key.to_string(),
            error: error.into(),
            failure: failure as i32,
            ..Default::default()
        });
    }

    /// The finished response, stamped with the sampling window.
    pub fn finish(mut self, start_ms: i64, end_ms: i64) -> v1::SampleResponse {
        self.resp.start_ms = start_ms;
        self.resp.end_ms = end_ms;
        self.resp
    }
}

/// Rebuilds one subtask's [`SampleSet`] from a response within the contract's default bounds
/// ([`WireLimits::default`], a budget of its own); see [`subtask_sample_set_within`].
pub fn subtask_sample_set(
    resp: &v1::SampleResponse,
    sub: &v1::SubtaskSamples,
) -> Result<SampleSet, ConvertError> {
    subtask_sample_set_within(resp, sub, &mut AnswerBudget::new(WireLimits::default()))
}

/// Rebuilds one subtask's [`SampleSet`] from a response, checking every index it uses, cutting
/// stacks and names to `budget`'s limits and charging what it takes to `budget` (shared by the
/// answer's subtasks). An error leaves nothing half-built; see the module docs.
pub fn subtask_sample_set_within(
    resp: &v1::SampleResponse,
    sub: &v1::SubtaskSamples,
    budget: &mut AnswerBudget,
) -> Result<SampleSet, ConvertError> {
    let max_depth = budget.limits.max_depth.max(1);
    // Counts first, before anything is allocated for this subtask.
    budget.charge_subtask(sub)?;
    let string = |i: u32| wire_string(resp, i);
    // Only the frames this subtask uses are copied, renumbered densely.
    let mut frame_map: HashMap<u32, u32> = HashMap::new();
    let mut frames = Vec::new();
    let mut samples = Vec::with_capacity(sub.samples.len());
    for s in &sub.samples {
        check_sample_thread(sub, s)?;
        // Outermost first: a stack over the depth keeps its innermost frames, as an agent
        // cuts it, and the frames cut off are never looked at.
        let (kept, cut) = kept_stack(&s.stack, max_depth);
        let mut stack = Vec::with_capacity(kept.len());
        for &f in kept {
            let id = match frame_map.get(&f) {
                Some(&id) => id,
                None => {
                    let wire = wire_frame(resp, f)?;
                    let name = budget.name(string(wire.name)?)?;
                    let module = budget.name(string(wire.module)?)?;
                    frames.push(Frame {
                        name,
                        module,
                        inlined: wire.inlined,
                    });
                    let id = (frames.len() - 1) as u32;
                    frame_map.insert(f, id);
                    id
                }
            };
            stack.push(id);
        }
        samples.push(ThreadSample {
            thread: s.thread,
            timestamp_ms: s.timestamp_ms,
            state: state_from_wire(s.state),
            stack,
            truncated: s.truncated || cut,
        });
    }
    let threads = wire_threads(resp, sub, budget)?;
    Ok(SampleSet {
        frames,
        threads,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamegrid_model::SampleSetBuilder;

    #[test]
    fn round_trip_interns_across_subtasks() {
        let t = SampledThread {
            pid: 7,
            tid: 8,
            name: "spinner-0".into(),
        };
        let mut b = SampleSetBuilder::new();
        b.push(
            &t,
            5,
            ThreadState::Runnable,
            [Frame::named("main"), Frame::named("spin")],
            true,
        );
        let set = b.finish();
        let mut rb = SampleResponseBuilder::new(42);
        rb.add_subtask("a", &set);
        rb.add_subtask("b", &set);
        rb.add_error("c", "process 99 is gone");
        let resp = rb.finish(1, 2);
        assert_eq!(resp.frames.len(), 2, "frames interned once across subtasks");
        for sub in &resp.subtasks[..2] {
            assert_eq!(subtask_sample_set(&resp, sub).unwrap(), set);
        }
        assert_eq!(resp.subtasks[2].error, "process 99 is gone");
    }

    #[test]
    fn bad_indexes_are_errors_not_panics() {
        let mut resp = v1::SampleResponse::default();
        resp.subtasks.push(v1::SubtaskSamples {
            threads: vec![v1::Thread {
                pid: 1,
                tid: 1,
                name: 0,
            }],
            samples: vec![v1::Sample {
                thread: 0,
                stack: vec![3],
                ..Default::default()
            }],
            ..Default::default()
        });
        let sub = resp.subtasks[0].clone();
        assert!(matches!(
            subtask_sample_set(&resp, &sub),
            Err(ConvertError::IndexOutOfRange { what: "frame", .. })
        ));
    }
}
