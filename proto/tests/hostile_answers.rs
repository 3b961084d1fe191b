//! Answers no honest agent sends, converted on arrival (issue 12, finding 2): a stack two
//! million frames deep, names of megabytes, more samples than the coordinator takes from one
//! answer. Each is cut or refused by `subtask_sample_set_within` before anything else sees it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use flamegrid_proto::convert::{
    AnswerBudget, ConvertError, MAX_NAME_BYTES, WireLimits, cut_name, subtask_sample_set,
    subtask_sample_set_within,
};
use flamegrid_proto::v1;

/// An answer with `strings`, one frame per string (frame i names string i), and one subtask
/// whose samples have these stacks (thread 0).
fn answer(strings: Vec<String>, stacks: Vec<Vec<u32>>) -> v1::SampleResponse {
    let frames = (0..strings.len() as u32)
        .map(|i| v1::Frame {
            name: i,
            module: 0,
            inlined: false,
        })
        .collect();
    v1::SampleResponse {
        request_id: 1,
        strings,
        frames,
        subtasks: vec![v1::SubtaskSamples {
            subtask_key: "j/v/0".into(),
            threads: vec![v1::Thread {
                pid: 1,
                tid: 1,
                name: 0,
            }],
            samples: stacks
                .into_iter()
                .map(|stack| v1::Sample {
                    thread: 0,
                    state: v1::ThreadState::Runnable as i32,
                    stack,
                    ..Default::default()
                })
                .collect(),
            error: String::new(),
            failure: 0,
        }],
        start_ms: 1,
        end_ms: 2,
    }
}

#[test]
fn a_two_million_frame_stack_keeps_its_innermost_frames_marked_truncated() {
    let strings = vec!["".into(), "outer".into(), "middle".into(), "leaf".into()];
    let mut stack = vec![1u32; 2_000_000];
    stack.extend([2, 3]);
    let resp = answer(strings, vec![stack]);
    let set = subtask_sample_set_within(
        &resp,
        &resp.subtasks[0],
        &mut AnswerBudget::new(WireLimits::with_max_depth(100)),
    )
    .unwrap();
    let sample = &set.samples[0];
    assert_eq!(sample.stack.len(), 100, "cut at the run's depth");
    assert!(sample.truncated, "a cut stack is marked");
    let names: Vec<&str> = set.stack_frames(sample).map(|f| f.name.as_str()).collect();
    assert_eq!(&names[97..], ["outer", "middle", "leaf"], "innermost kept");

    // Without a run's depth, the contract's bound (1024) applies.
    let set = subtask_sample_set(&resp, &resp.subtasks[0]).unwrap();
    assert_eq!(set.samples[0].stack.len(), 1024);
    assert!(set.samples[0].truncated);
}

#[test]
fn frames_cut_off_are_never_looked_at_but_kept_ones_are_checked() {
    let strings = vec!["".into(), "leaf".into()];
    // A bad index in the part that is cut off: it goes with the cut.
    let resp = answer(strings.clone(), vec![vec![9999, 9999, 1]]);
    let limits = WireLimits::with_max_depth(1);
    let set = subtask_sample_set_within(&resp, &resp.subtasks[0], &mut AnswerBudget::new(limits))
        .unwrap();
    assert_eq!(set.frames[0].name, "leaf");
    // A bad index among the kept frames is an error, not a panic.
    let resp = answer(strings, vec![vec![1, 9999]]);
    assert!(matches!(
        subtask_sample_set_within(&resp, &resp.subtasks[0], &mut AnswerBudget::new(limits)),
        Err(ConvertError::IndexOutOfRange { what: "frame", .. })
    ));
}

#[test]
fn megabyte_names_are_cut_at_a_character_boundary() {
    let huge = "é".repeat(3 << 20); // 6 MiB of two-byte characters
    let resp = answer(vec!["".into(), huge.clone()], vec![vec![1]]);
    let set = subtask_sample_set(&resp, &resp.subtasks[0]).unwrap();
    let name = &set.frames[0].name;
    assert!(name.len() <= MAX_NAME_BYTES, "{} bytes", name.len());
    assert!(name.ends_with('…') && name.starts_with("éé"));
    assert_eq!(cut_name("short", 10), "short");
    assert_eq!(cut_name("abcdefghij", 6), "abc…");
}

#[test]
fn one_huge_string_named_by_many_frames_is_refused_once_the_name_budget_is_spent() {
    // 2,000 frames all naming the same 1 MiB string: copied per frame, that would be 2 GB; cut
    // to 4 KiB each it is 8 MiB, over this test's 1 MiB budget.
    let big = "x".repeat(1 << 20);
    let mut resp = answer(vec!["".into(), big], vec![(1..=2000).collect()]);
    resp.frames = (0..=2000)
        .map(|_| v1::Frame {
            name: 1,
            module: 0,
            inlined: false,
        })
        .collect();
    let limits = WireLimits {
        max_name_bytes_per_answer: 1 << 20,
        ..WireLimits::default()
    };
    let err = subtask_sample_set_within(&resp, &resp.subtasks[0], &mut AnswerBudget::new(limits))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConvertError::OverBudget {
                what: "name bytes",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn samples_and_frames_are_bounded_per_answer_across_its_subtasks() {
    let strings = vec!["".into(), "f".into()];
    let resp = answer(strings, vec![vec![1; 10]; 100]);
    let limits = WireLimits {
        max_records: 250,
        ..WireLimits::default()
    };
    let mut budget = AnswerBudget::new(limits);
    // 101 records (100 samples + 1 thread) each: two subtasks fit, the third does not.
    for _ in 0..2 {
        subtask_sample_set_within(&resp, &resp.subtasks[0], &mut budget).unwrap();
    }
    let err = subtask_sample_set_within(&resp, &resp.subtasks[0], &mut budget).unwrap_err();
    assert!(err.to_string().contains("samples and threads"), "{err}");

    let limits = WireLimits {
        max_stack_entries: 999,
        ..WireLimits::default()
    };
    let err = subtask_sample_set_within(&resp, &resp.subtasks[0], &mut AnswerBudget::new(limits))
        .unwrap_err();
    assert!(err.to_string().contains("stack frames"), "{err}");
}
