//! The sampling domain: what the coordinator samples, as the registry describes it and the
//! fan-out and the flame graphs use it. A vertex ([`VertexSampling`]) is a list of subtasks
//! ([`SubtaskSampling`]), each with where it runs ([`SubtaskTarget`]: the agent and the threads)
//! or why it cannot be sampled; a run takes [`SamplingParams`] (Flink's `rest.flamegraph.*`).
//!
//! These are plain values with no RPC in them: the registry builds them, [`crate::fanout`] turns
//! them into one call per agent, [`crate::flamegraph`] decides from them what to answer.

use crate::missing::{Missing, MissingReason};
use flamegrid_proto::v1::ThreadSelector;
use std::time::Duration;

/// Where and what to sample for one subtask.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtaskTarget {
    /// The subtask's index within its vertex.
    pub subtask_index: u32,
    /// The task manager (agent) id the subtask runs on.
    pub taskmanager_id: String,
    /// The agent's Sampling service address, e.g. `http://127.0.0.1:6122`.
    pub agent_address: String,
    /// The threads to sample; `subtask_key` is filled by the fan-out.
    pub selector: ThreadSelector,
    /// Whether the agent has confirmed the subtask (a heartbeat since the job was registered).
    /// An unconfirmed subtask is sampled all the same (sampling is the best liveness check: a
    /// graph right after `POST /jobs`), but if its agent cannot be reached it is reported
    /// [`MissingReason::NeverConfirmed`].
    pub confirmed: bool,
}

/// Everything the flame graph service needs to know about a vertex, as the registry sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct VertexSampling {
    /// The job's name (for SVG titles).
    pub job_name: String,
    /// The vertex's name.
    pub vertex_name: String,
    /// Number of subtasks.
    pub parallelism: u32,
    /// The vertex's aggregate state is FINISHED, CANCELED or FAILED (Flink answers -1).
    pub vertex_terminal: bool,
    /// One entry per subtask, index order.
    pub subtasks: Vec<SubtaskSampling>,
}

impl VertexSampling {
    /// The subtasks that can be sampled now: all of them, or only `subtask` when given. Subtasks
    /// without a target (terminal, or their agent is gone) are left out; the ones that are not
    /// terminal are listed by [`VertexSampling::absent`].
    pub fn targets(&self, subtask: Option<u32>) -> Vec<SubtaskTarget> {
        self.subtasks
            .iter()
            .filter(|s| subtask.is_none_or(|i| s.index == i))
            .filter_map(|s| s.target.clone())
            .collect()
    }

    /// The subtasks (all, or only `subtask`) that cannot be sampled, and why: not terminal,
    /// but their agent is not registered; or ended for a reason (FAILED, or FINISHED because
    /// the process vanished). A run lists them as missing, so a graph of the others never looks
    /// whole, and a terminated vertex says why it has nothing to sample.
    pub fn absent(&self, subtask: Option<u32>) -> Missing {
        self.subtasks
            .iter()
            .filter(|s| subtask.is_none_or(|i| s.index == i))
            .filter_map(|s| s.absent.map(|reason| (s.index, reason)))
            .collect()
    }

    /// Whether the answer for the whole vertex (`None`) or one subtask is "terminated" (-1):
    /// Flink checks the vertex's aggregate state, or that one subtask's state.
    pub fn is_terminal(&self, subtask: Option<u32>) -> bool {
        match subtask {
            None => self.vertex_terminal,
            Some(i) => self
                .subtasks
                .iter()
                .find(|s| s.index == i)
                .is_some_and(|s| s.terminal),
        }
    }
}

/// One subtask, as the flame graph service sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtaskSampling {
    /// The subtask's index.
    pub index: u32,
    /// The subtask is FINISHED, CANCELED or FAILED.
    pub terminal: bool,
    /// Where to sample it: `Some` while it is not terminal and its agent is registered.
    pub target: Option<SubtaskTarget>,
    /// Why the subtask has no target: its agent is gone, or it ended for a reason the registry
    /// kept (process not found, outside the allow-list, agent lost, ...). `None` while it can be
    /// sampled, and for a subtask that finished or was canceled.
    pub absent: Option<MissingReason>,
}

/// The knobs of one sampling run (Flink's `rest.flamegraph.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingParams {
    /// Samples per thread.
    pub num_samples: u32,
    /// Delay between two samples of a thread, in ms.
    pub delay_ms: u32,
    /// Frames kept per stack (the innermost ones).
    pub max_depth: u32,
}

impl SamplingParams {
    /// How long the agents need at least: `num_samples × delay`.
    pub fn sampling_window(&self) -> Duration {
        Duration::from_millis(u64::from(self.num_samples) * u64::from(self.delay_ms))
    }
}
