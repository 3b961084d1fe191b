//! Fan-out of sampling requests to agents (to be written). The types below are the contract
//! between the registry (which knows where each subtask runs) and the flame graph service.

use flamegrid_proto::v1::ThreadSelector;

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

/// One subtask, as the flame graph service sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtaskSampling {
    /// The subtask's index.
    pub index: u32,
    /// The subtask is FINISHED, CANCELED or FAILED.
    pub terminal: bool,
    /// Where to sample it: `Some` only while it is RUNNING or INITIALIZING on a live agent.
    pub target: Option<SubtaskTarget>,
}
