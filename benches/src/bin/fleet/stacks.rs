//! Synthetic answers: the `SampleResponse` a real agent would send for a run, with stacks of a
//! configurable depth and breadth instead of sampled ones.
//!
//! The shape of the message is the real agent's (`flamegrid_proto::convert::SampleResponseBuilder`):
//! strings and frames interned once per message, one `SubtaskSamples` per selector in request
//! order, one thread per subtask, `num_samples` samples `delay` apart, stacks outermost frame
//! first. Only the content is made up:
//!
//! * subtask `i` (its index, the last part of its `subtask_key`) uses `breadth` distinct stacks,
//!   sample `k` taking stack `(i × breadth + k mod breadth) mod pool`, so the vertex's graph has
//!   `min(pool, subtasks × breadth)` distinct stacks;
//! * stack `s` is `depth` frames deep: `main`, `sim::worker_loop`, then one frame per level
//!   chosen by the low bits of `s` (a binary tree, so stacks share prefixes as real ones do),
//!   and a leaf naming `s` itself, so distinct ids are distinct stacks at any depth;
//! * even stacks are RUNNABLE (on-CPU), odd ones TIMED_WAITING (off-CPU).
//!
//! Building is cheap (each distinct stack's frame indexes are computed once per message), since
//! the simulator shares the machine's cores with the coordinator it measures.

use flamegrid_proto::v1;
use std::collections::HashMap;

/// What the synthetic stacks look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackShape {
    /// Frames per stack (at least 3: `main`, `sim::worker_loop`, the leaf).
    pub depth: usize,
    /// Distinct stacks per subtask.
    pub breadth: usize,
    /// Distinct stacks in the whole vertex at most.
    pub pool: usize,
}

/// The subtask index at the end of a `subtask_key` (`<job>/<vertex>/<index>`), or a hash of the
/// key when it has none, so any key gets stable stacks.
fn subtask_index(key: &str) -> u64 {
    key.rsplit('/')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| {
            key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        })
}

/// Interns strings and frames of one message, like the real agent's builder.
struct Interner {
    resp: v1::SampleResponse,
    strings: HashMap<String, u32>,
    frames: HashMap<u32, u32>,
    stacks: HashMap<u64, Vec<u32>>,
}

impl Interner {
    fn string(&mut self, s: String) -> u32 {
        if let Some(&i) = self.strings.get(&s) {
            return i;
        }
        let i = self.resp.strings.len() as u32;
        self.resp.strings.push(s.clone());
        self.strings.insert(s, i);
        i
    }

    fn frame(&mut self, name: String, module: u32) -> u32 {
        // Every frame name is distinct per level, so a frame is interned by its name.
        let name = self.string(name);
        if let Some(&i) = self.frames.get(&name) {
            return i;
        }
        let i = self.resp.frames.len() as u32;
        self.resp.frames.push(v1::Frame {
            name,
            module,
            inlined: false,
        });
        self.frames.insert(name, i);
        i
    }

    /// The frame indexes of stack `s`, outermost first.
    fn stack(&mut self, s: u64, shape: StackShape, module: u32) -> Vec<u32> {
        if let Some(stack) = self.stacks.get(&s) {
            return stack.clone();
        }
        let depth = shape.depth.max(3);
        let mut names = Vec::with_capacity(depth);
        names.push("main".to_owned());
        names.push("sim::worker_loop".to_owned());
        for level in 2..depth - 1 {
            let bits = (level - 1).min(40);
            names.push(format!("sim::level{level}::op{}", s & ((1u64 << bits) - 1)));
        }
        names.push(format!("sim::leaf_{s}"));
        let stack: Vec<u32> = names.into_iter().map(|n| self.frame(n, module)).collect();
        self.stacks.insert(s, stack.clone());
        stack
    }
}

/// The answer to `req`: every selector sampled `num_samples` times, starting at `start_ms`.
/// Returns it with the number of samples it holds.
pub fn answer(
    req: &v1::SampleRequest,
    shape: StackShape,
    start_ms: i64,
) -> (v1::SampleResponse, u64) {
    let mut interner = Interner {
        resp: v1::SampleResponse {
            request_id: req.request_id,
            ..Default::default()
        },
        strings: HashMap::new(),
        frames: HashMap::new(),
        stacks: HashMap::new(),
    };
    interner.string(String::new());
    let module = interner.string("flamegrid-fleet".to_owned());
    let breadth = shape.breadth.max(1) as u64;
    let pool = shape.pool.max(1) as u64;
    let delay = i64::from(req.delay_ms);
    let mut total = 0u64;
    for sel in &req.selectors {
        let index = subtask_index(&sel.subtask_key);
        let pid = match sel.process {
            Some(v1::thread_selector::Process::Pid(pid)) => pid,
            _ => 1,
        };
        let name = interner.string(format!("sim-{index}"));
        let samples = (0..u64::from(req.num_samples))
            .map(|k| {
                let s = (index.wrapping_mul(breadth) + k % breadth) % pool;
                let state = if s & 1 == 0 {
                    v1::ThreadState::Runnable
                } else {
                    v1::ThreadState::TimedWaiting
                };
                v1::Sample {
                    thread: 0,
                    timestamp_ms: start_ms + k as i64 * delay,
                    state: state as i32,
                    stack: interner.stack(s, shape, module),
                    truncated: false,
                }
            })
            .collect::<Vec<_>>();
        total += samples.len() as u64;
        interner.resp.subtasks.push(v1::SubtaskSamples {
            subtask_key: sel.subtask_key.clone(),
            threads: vec![v1::Thread {
                pid,
                tid: pid,
                name,
            }],
            samples,
            error: String::new(),
            failure: v1::SubtaskFailure::Unspecified as i32,
        });
    }
    let mut resp = interner.resp;
    resp.start_ms = start_ms;
    resp.end_ms = start_ms + i64::from(req.num_samples.saturating_sub(1)) * delay;
    (resp, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamegrid_proto::convert::subtask_sample_set;

    fn request(keys: &[&str], n: u32) -> v1::SampleRequest {
        v1::SampleRequest {
            request_id: 7,
            selectors: keys
                .iter()
                .map(|k| v1::ThreadSelector {
                    subtask_key: (*k).to_owned(),
                    process: Some(v1::thread_selector::Process::Pid(4242)),
                    ..Default::default()
                })
                .collect(),
            num_samples: n,
            delay_ms: 50,
            max_depth: 100,
        }
    }

    #[test]
    fn answers_convert_like_real_ones_with_the_asked_shape() {
        let shape = StackShape {
            depth: 30,
            breadth: 4,
            pool: 1000,
        };
        let req = request(&["j/v/0", "j/v/1"], 20);
        let (resp, total) = answer(&req, shape, 1_000);
        assert_eq!(total, 40);
        assert_eq!(
            (resp.request_id, resp.start_ms, resp.end_ms),
            (7, 1_000, 1_950)
        );
        assert_eq!(resp.strings[0], "");
        let mut distinct = std::collections::HashSet::new();
        for sub in &resp.subtasks {
            let set = subtask_sample_set(&resp, sub).unwrap();
            assert_eq!(set.samples.len(), 20);
            for s in &set.samples {
                let names: Vec<&str> = set.stack_frames(s).map(|f| f.name.as_str()).collect();
                assert_eq!(names.len(), 30);
                assert_eq!(names[0], "main");
                distinct.insert(names.join(";"));
            }
        }
        assert_eq!(
            distinct.len(),
            8,
            "4 distinct stacks per subtask, none shared"
        );
        // Frames are interned once per message.
        let names: std::collections::HashSet<u32> = resp.frames.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), resp.frames.len());
    }

    #[test]
    fn the_pool_bounds_the_distinct_stacks() {
        let shape = StackShape {
            depth: 5,
            breadth: 3,
            pool: 2,
        };
        let (resp, _) = answer(&request(&["a/b/0", "a/b/1", "odd-key"], 6), shape, 0);
        let leaves: std::collections::HashSet<u32> = resp
            .subtasks
            .iter()
            .flat_map(|s| s.samples.iter().filter_map(|x| x.stack.last().copied()))
            .collect();
        assert_eq!(leaves.len(), 2);
    }
}
