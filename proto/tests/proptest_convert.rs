//! Property tests: a `SampleResponse` from an agent is input from outside the process, so
//! `subtask_sample_set` must answer any contents with a value or an error, never a panic, and
//! must reject every index that a sample reaches past its table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use flamegrid_proto::convert::subtask_sample_set;
use flamegrid_proto::v1;
use proptest::prelude::*;

fn response() -> impl Strategy<Value = v1::SampleResponse> {
    let frame = (0u32..8, 0u32..8, any::<bool>()).prop_map(|(name, module, inlined)| v1::Frame {
        name,
        module,
        inlined,
    });
    let thread = (any::<u32>(), any::<u32>(), 0u32..8).prop_map(|(pid, tid, name)| v1::Thread {
        pid,
        tid,
        name,
    });
    let sample = (
        0u32..6,
        any::<i64>(),
        any::<i32>(),
        prop::collection::vec(0u32..10, 0..6),
        any::<bool>(),
    )
        .prop_map(
            |(thread, timestamp_ms, state, stack, truncated)| v1::Sample {
                thread,
                timestamp_ms,
                state,
                stack,
                truncated,
            },
        );
    let subtask = (
        prop::collection::vec(thread, 0..5),
        prop::collection::vec(sample, 0..6),
    )
        .prop_map(|(threads, samples)| v1::SubtaskSamples {
            subtask_key: "v/0".to_string(),
            threads,
            samples,
            ..Default::default()
        });
    (
        prop::collection::vec(".{0,6}", 0..6),
        prop::collection::vec(frame, 0..8),
        prop::collection::vec(subtask, 1..3),
    )
        .prop_map(|(strings, frames, subtasks)| v1::SampleResponse {
            strings,
            frames,
            subtasks,
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random indexes: never a panic; a thread or frame index that a sample reaches past its
    /// table is an error.
    #[test]
    fn random_indexes_never_panic_and_out_of_range_is_rejected(resp in response()) {
        for sub in &resp.subtasks {
            let result = subtask_sample_set(&resp, sub);
            let reached_bad = sub.samples.iter().any(|s| {
                (s.thread as usize) >= sub.threads.len()
                    || s.stack.iter().any(|&f| (f as usize) >= resp.frames.len())
            });
            if reached_bad {
                prop_assert!(result.is_err(), "out-of-range index accepted");
            }
        }
    }
}
