//! Flink's two state machines, as flamegrid uses them.
//!
//! Flink clients read two vocabularies: `ExecutionState` for a subtask (and, aggregated, for a
//! vertex or a task manager's share of a vertex) and `JobStatus` for a job. flamegrid runs no
//! tasks, so it maps what it *observes* onto those names:
//!
//! ```text
//!  POST /jobs ──▶ CREATED ─▶ SCHEDULED ─▶ DEPLOYING      (all at registration: the subtask is
//!                                                         already placed on a live agent)
//!  watch list sent to the agent ──▶ INITIALIZING
//!  agent reports "alive"        ──▶ RUNNING
//!  agent reports "gone"         ──▶ FINISHED  (FAILED if it never ran: the process was not there)
//!  agent misses heartbeats      ──▶ FAILED
//!  PATCH /jobs/:jobid           ──▶ CANCELED
//! ```
//!
//! A vertex's state is the aggregate of its subtasks' states by Flink's rule
//! ([`aggregate_execution_states`]); a job's status follows from its subtasks' states
//! ([`JobStatus::from_subtask_states`]): RUNNING, then FAILING from the first FAILED subtask
//! while others still run (they are still sampled), FAILED once every subtask has ended;
//! FINISHED when all finished; CANCELED by `PATCH` (also from FAILING, as in Flink). Every
//! transition is stamped with wall-clock milliseconds, because Flink's JSON reports a timestamp
//! per state (`timestamps`, `status-duration`, `start-time`, `end-time`).

use serde::{Deserialize, Serialize};

/// The state of one subtask (Flink's `ExecutionState`), in Flink's declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionState {
    /// Registered, not yet placed.
    Created,
    /// Placed on a task manager.
    Scheduled,
    /// Being handed to the task manager.
    Deploying,
    /// Observed alive by its agent.
    Running,
    /// Its process or threads are gone.
    Finished,
    /// Being canceled (flamegrid cancels instantly, so this is never observed).
    Canceling,
    /// Canceled through `PATCH /jobs/:jobid`.
    Canceled,
    /// Its agent was lost, or its process never existed.
    Failed,
    /// Flink only (recovery); never used by flamegrid.
    Reconciling,
    /// The agent was told to watch it; no liveness report yet.
    Initializing,
}

impl ExecutionState {
    /// Every state in Flink's declaration order: the order of the keys Flink writes.
    pub const ALL: [ExecutionState; 10] = [
        ExecutionState::Created,
        ExecutionState::Scheduled,
        ExecutionState::Deploying,
        ExecutionState::Running,
        ExecutionState::Finished,
        ExecutionState::Canceling,
        ExecutionState::Canceled,
        ExecutionState::Failed,
        ExecutionState::Reconciling,
        ExecutionState::Initializing,
    ];

    /// The upper-case name Flink writes (`"RUNNING"`).
    pub fn name(self) -> &'static str {
        match self {
            ExecutionState::Created => "CREATED",
            ExecutionState::Scheduled => "SCHEDULED",
            ExecutionState::Deploying => "DEPLOYING",
            ExecutionState::Running => "RUNNING",
            ExecutionState::Finished => "FINISHED",
            ExecutionState::Canceling => "CANCELING",
            ExecutionState::Canceled => "CANCELED",
            ExecutionState::Failed => "FAILED",
            ExecutionState::Reconciling => "RECONCILING",
            ExecutionState::Initializing => "INITIALIZING",
        }
    }

    /// Position in [`ExecutionState::ALL`]; indexes per-state timestamp arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// FINISHED, CANCELED and FAILED: nothing happens to such a subtask any more, and Flink's
    /// flame graph handler answers `-1` for it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionState::Finished | ExecutionState::Canceled | ExecutionState::Failed
        )
    }

    /// RUNNING or INITIALIZING: the states in which Flink samples a task (FLINK-33042).
    pub fn is_sampleable(self) -> bool {
        matches!(self, ExecutionState::Running | ExecutionState::Initializing)
    }
}

/// Flink's aggregate of subtask states (`ExecutionJobVertex.getAggregateExecutionState`):
/// any FAILED → FAILED; else any CANCELING → CANCELING; else any CANCELED → CANCELED; else any
/// INITIALIZING → INITIALIZING; else any RUNNING → RUNNING; else any FINISHED → FINISHED when all
/// are, RUNNING when only some are; else CREATED.
pub fn aggregate_execution_states(
    states: impl IntoIterator<Item = ExecutionState>,
) -> ExecutionState {
    let mut counts = [0usize; 10];
    let mut total = 0usize;
    for s in states {
        counts[s.index()] += 1;
        total += 1;
    }
    let has = |s: ExecutionState| counts[s.index()] > 0;
    if has(ExecutionState::Failed) {
        ExecutionState::Failed
    } else if has(ExecutionState::Canceling) {
        ExecutionState::Canceling
    } else if has(ExecutionState::Canceled) {
        ExecutionState::Canceled
    } else if has(ExecutionState::Initializing) {
        ExecutionState::Initializing
    } else if has(ExecutionState::Running) {
        ExecutionState::Running
    } else if has(ExecutionState::Finished) {
        if counts[ExecutionState::Finished.index()] == total {
            ExecutionState::Finished
        } else {
            ExecutionState::Running
        }
    } else {
        ExecutionState::Created
    }
}

/// The status of a job (Flink's `JobStatus`), in Flink's declaration order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Accepted, not yet created.
    Initializing,
    /// Created, not yet scheduled.
    Created,
    /// Scheduled: some subtask may still be starting.
    Running,
    /// A subtask failed (agent lost, or process missing at start) while others still run.
    Failing,
    /// A subtask failed and every subtask has ended.
    Failed,
    /// Flink only (flamegrid cancels instantly).
    Cancelling,
    /// Canceled through `PATCH /jobs/:jobid`.
    Canceled,
    /// Every subtask finished.
    Finished,
    /// Flink only.
    Restarting,
    /// Flink only.
    Suspended,
    /// Flink only.
    Reconciling,
}

impl JobStatus {
    /// Every status in Flink's declaration order.
    pub const ALL: [JobStatus; 11] = [
        JobStatus::Initializing,
        JobStatus::Created,
        JobStatus::Running,
        JobStatus::Failing,
        JobStatus::Failed,
        JobStatus::Cancelling,
        JobStatus::Canceled,
        JobStatus::Finished,
        JobStatus::Restarting,
        JobStatus::Suspended,
        JobStatus::Reconciling,
    ];

    /// The upper-case name Flink writes.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Initializing => "INITIALIZING",
            JobStatus::Created => "CREATED",
            JobStatus::Running => "RUNNING",
            JobStatus::Failing => "FAILING",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelling => "CANCELLING",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Finished => "FINISHED",
            JobStatus::Restarting => "RESTARTING",
            JobStatus::Suspended => "SUSPENDED",
            JobStatus::Reconciling => "RECONCILING",
        }
    }

    /// Position in [`JobStatus::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// FINISHED, CANCELED, FAILED (Flink's "globally terminal" states).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Finished | JobStatus::Canceled | JobStatus::Failed
        )
    }

    /// The job status that its subtasks' states imply (for a job not canceled):
    ///
    /// * some subtask FAILED and some other is still not terminal → FAILING: Flink never shows
    ///   a terminal job with running tasks, and flamegrid keeps sampling those tasks;
    /// * some subtask FAILED and all are terminal → FAILED;
    /// * otherwise the aggregate of the subtask states (Flink's vertex rule) decides: CANCELED,
    ///   FINISHED when every subtask finished, RUNNING while any is still placed or running (a
    ///   job whose subtasks are still being placed is RUNNING, as in Flink once it is
    ///   scheduled).
    pub fn from_subtask_states(
        states: impl IntoIterator<Item = ExecutionState> + Clone,
    ) -> JobStatus {
        let all_terminal = states.clone().into_iter().all(ExecutionState::is_terminal);
        match aggregate_execution_states(states) {
            ExecutionState::Failed if all_terminal => JobStatus::Failed,
            ExecutionState::Failed => JobStatus::Failing,
            ExecutionState::Canceling => JobStatus::Cancelling,
            ExecutionState::Canceled => JobStatus::Canceled,
            ExecutionState::Finished => JobStatus::Finished,
            _ => JobStatus::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutionState::*;

    #[test]
    fn aggregate_follows_flinks_precedence() {
        assert_eq!(
            aggregate_execution_states([Running, Failed, Canceled]),
            Failed
        );
        assert_eq!(aggregate_execution_states([Running, Canceled]), Canceled);
        assert_eq!(
            aggregate_execution_states([Running, Initializing]),
            Initializing
        );
        assert_eq!(aggregate_execution_states([Running, Finished]), Running);
        assert_eq!(aggregate_execution_states([Finished, Finished]), Finished);
        assert_eq!(aggregate_execution_states([Deploying, Created]), Created);
        assert_eq!(aggregate_execution_states([]), Created);
    }

    #[test]
    fn one_failed_subtask_makes_the_job_failing_until_all_have_ended() {
        let job = |states: &[ExecutionState]| JobStatus::from_subtask_states(states.to_vec());
        assert_eq!(job(&[Running, Failed]), JobStatus::Failing);
        assert_eq!(job(&[Deploying, Failed, Finished]), JobStatus::Failing);
        assert_eq!(job(&[Finished, Failed]), JobStatus::Failed);
        assert_eq!(job(&[Failed, Failed]), JobStatus::Failed);
        assert!(!JobStatus::Failing.is_terminal() && JobStatus::Failed.is_terminal());
        assert_eq!(job(&[Running, Finished]), JobStatus::Running);
        assert_eq!(job(&[Finished, Finished]), JobStatus::Finished);
        assert_eq!(job(&[Deploying, Initializing]), JobStatus::Running);
    }

    #[test]
    fn names_and_indexes_follow_declaration_order() {
        for (i, s) in ExecutionState::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.name())
            );
        }
        for (i, s) in JobStatus::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.name())
            );
        }
    }
}
