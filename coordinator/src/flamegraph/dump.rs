//! Thread dumps in Flink's `ThreadDumpInfo` shape, with a jstack-like text per thread.
//!
//! The agent takes one deep sample of every thread it watches (the `ThreadDump` RPC); this module
//! turns that answer into `{"threadInfos":[{"threadName","stringifiedThreadInfo"}]}`. The text
//! follows what a JVM prints, so people (and Flink's dashboard, which shows it verbatim) read it
//! the same way:
//!
//! ```text
//! "spin-0" Id=4243 RUNNABLE
//! <TAB>at spin_inner (spinner)
//! <TAB>at spin_outer (spinner)
//! <TAB>...
//!
//! ```
//!
//! Frames are printed innermost first, as jstack does (the model stores them outermost first);
//! `(module)` follows a frame when the module is known; a stack cut at the depth limit ends with
//! `\t...`; each block ends with an empty line. A thread matched by several selectors appears
//! once.

use flamegrid_proto::convert::{AnswerBudget, WireLimits, subtask_sample_set_within};
use flamegrid_proto::v1;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One thread of a thread dump, as Flink serialises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadInfo {
    /// The thread's name.
    pub thread_name: String,
    /// The jstack-like text block.
    pub stringified_thread_info: String,
}

/// Flink's `ThreadDumpInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadDumpInfo {
    /// One entry per thread, ordered by process and thread id.
    pub thread_infos: Vec<ThreadInfo>,
}

/// Builds the dump from an agent's `ThreadDump` answer. Subtasks the agent could not dump, and
/// subtasks whose answer does not hold together, are skipped (with a log line). The answer is
/// bounded as it is read, like a sampling answer: stacks cut at [`super::THREAD_DUMP_MAX_DEPTH`],
/// names and counts within [`WireLimits`].
pub fn thread_dump_info(resp: &v1::SampleResponse) -> ThreadDumpInfo {
    let mut by_thread: BTreeMap<(u32, u32), ThreadInfo> = BTreeMap::new();
    let mut budget = AnswerBudget::new(WireLimits::with_max_depth(super::THREAD_DUMP_MAX_DEPTH));
    for sub in &resp.subtasks {
        if !sub.error.is_empty() {
            tracing::debug!(key = %sub.subtask_key, error = %sub.error, "thread dump: subtask skipped");
            continue;
        }
        let set = match subtask_sample_set_within(resp, sub, &mut budget) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(key = %sub.subtask_key, error = %e, "thread dump: bad answer skipped");
                continue;
            }
        };
        for sample in &set.samples {
            let Some(thread) = set.thread_of(sample) else {
                continue;
            };
            if by_thread.contains_key(&(thread.pid, thread.tid)) {
                continue; // a thread is shown once
            }
            let mut text = format!("\"{}\" Id={} {}\n", thread.name, thread.tid, sample.state);
            let frames: Vec<_> = set.stack_frames(sample).collect();
            for frame in frames.iter().rev() {
                if frame.module.is_empty() {
                    let _ = writeln!(text, "\tat {}", frame.name);
                } else {
                    let _ = writeln!(text, "\tat {} ({})", frame.name, frame.module);
                }
            }
            if sample.truncated {
                text.push_str("\t...\n");
            }
            text.push('\n');
            by_thread
                .entry((thread.pid, thread.tid))
                .or_insert(ThreadInfo {
                    thread_name: thread.name.clone(),
                    stringified_thread_info: text,
                });
        }
    }
    ThreadDumpInfo {
        thread_infos: by_thread.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
    use flamegrid_proto::SampleResponseBuilder;

    #[test]
    fn jstack_like_text_innermost_first_deduplicated() {
        let t = SampledThread {
            pid: 10,
            tid: 11,
            name: "sleep-0".into(),
        };
        let mut b = SampleSetBuilder::new();
        let main = Frame {
            name: "main".into(),
            module: "prog".into(),
            inlined: false,
        };
        b.push(
            &t,
            1,
            ThreadState::TimedWaiting,
            [main, Frame::named("sleep_inner")],
            true,
        );
        let set = b.finish();
        let mut rb = SampleResponseBuilder::new(0);
        rb.add_subtask("a", &set);
        rb.add_subtask("b", &set);
        rb.add_error("c", "gone");
        let dump = thread_dump_info(&rb.finish(0, 0));
        assert_eq!(dump.thread_infos.len(), 1);
        assert_eq!(
            dump.thread_infos[0].stringified_thread_info,
            "\"sleep-0\" Id=11 TIMED_WAITING\n\tat sleep_inner\n\tat main (prog)\n\t...\n\n"
        );
        let json = serde_json::to_string(&dump).unwrap();
        assert!(
            json.starts_with(r#"{"threadInfos":[{"threadName":"sleep-0","stringifiedThreadInfo":"#)
        );
    }
}
