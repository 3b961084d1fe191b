//! Conversions between the interned wire form and [`flamegrid_model`].
//!
//! Going out (agent side), [`SampleResponseBuilder`] interns every string and frame once per
//! response, whatever the number of subtasks. Coming in (coordinator side),
//! [`subtask_sample_set`] checks every index before building a [`SampleSet`], so a buggy or
//! hostile agent produces an error, never a panic.

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
        });
    }

    /// Records that one subtask could not be sampled, and why.
    pub fn add_error(&mut self, subtask_key: &str, error: impl Into<String>) {
        self.resp.subtasks.push(v1::SubtaskSamples {
            subtask_key: subtask_key.to_string(),
            error: error.into(),
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

/// Rebuilds one subtask's [`SampleSet`] from a response, checking every index.
pub fn subtask_sample_set(
    resp: &v1::SampleResponse,
    sub: &v1::SubtaskSamples,
) -> Result<SampleSet, ConvertError> {
    let string = |i: u32| {
        resp.strings
            .get(i as usize)
            .cloned()
            .ok_or(ConvertError::IndexOutOfRange {
                what: "string",
                index: i,
                len: resp.strings.len(),
            })
    };
    // Only the frames this subtask uses are copied, renumbered densely.
    let mut frame_map: HashMap<u32, u32> = HashMap::new();
    let mut frames = Vec::new();
    let mut samples = Vec::with_capacity(sub.samples.len());
    for s in &sub.samples {
        if s.thread as usize >= sub.threads.len() {
            return Err(ConvertError::IndexOutOfRange {
                what: "thread",
                index: s.thread,
                len: sub.threads.len(),
            });
        }
        let mut stack = Vec::with_capacity(s.stack.len());
        for &f in &s.stack {
            let id = match frame_map.get(&f) {
                Some(&id) => id,
                None => {
                    let wire =
                        resp.frames
                            .get(f as usize)
                            .ok_or(ConvertError::IndexOutOfRange {
                                what: "frame",
                                index: f,
                                len: resp.frames.len(),
                            })?;
                    frames.push(Frame {
                        name: string(wire.name)?,
                        module: string(wire.module)?,
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
            truncated: s.truncated,
        });
    }
    let threads = sub
        .threads
        .iter()
        .map(|t| {
            Ok(SampledThread {
                pid: t.pid,
                tid: t.tid,
                name: string(t.name)?,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
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
