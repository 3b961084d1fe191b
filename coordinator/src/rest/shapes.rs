//! Building blocks of Flink's JSON shapes that several resources share: per-state counts, the
//! I/O metrics block (flamegrid moves no records, so it is all zeros), statistics summaries and
//! the subtask entry of `/jobs/:jobid/vertices/:vertexid`.
//!
//! Every shape is a plain struct deriving `Serialize` *and* `utoipa::ToSchema`: the same type
//! that writes the answer describes it in `/openapi.json` (see `rest/openapi.rs`), so the
//! document cannot drift from what is served. Key names and key order (the struct's field
//! order) follow Flink's own answers (`flink-rest.md` §7 and its appendix). The older helpers
//! that return `serde_json::Value` are kept for callers outside this module and are built from
//! the typed shapes.

// The fields of these shapes are Flink's JSON keys, named and ordered as in flink-rest.md §7;
// each struct's doc says which answer it is, so the fields go without a doc of their own.
#![allow(missing_docs)]

use crate::registry::job::{Job, SubtaskRuntime};
use crate::registry::{ExecutionState, JobStatus};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The version string flamegrid answers with where Flink writes its own version: the Flink REST
/// dialect it follows, so version-checking clients accept it.
pub const FLINK_VERSION: &str = "2.3.0";

/// Turns a typed shape into a `Value` for the callers that still build JSON by hand. The shapes
/// are plain structs of numbers and strings, whose serialisation cannot fail; `Null` is the
/// harmless answer if it ever did.
pub fn to_value<T: Serialize>(shape: &T) -> Value {
    serde_json::to_value(shape).unwrap_or(Value::Null)
}

/// `{"CREATED": n, ...}`: how many subtasks (or vertices) are in each of the ten execution
/// states, upper-case keys in Flink's declaration order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ExecutionStateCounts {
    pub created: u64,
    pub scheduled: u64,
    pub deploying: u64,
    pub running: u64,
    pub finished: u64,
    pub canceling: u64,
    pub canceled: u64,
    pub failed: u64,
    pub reconciling: u64,
    pub initializing: u64,
}

impl ExecutionStateCounts {
    /// Counts `states`.
    pub fn of(states: impl IntoIterator<Item = ExecutionState>) -> Self {
        let mut c = ExecutionStateCounts::default();
        for s in states {
            *c.slot(s) += 1;
        }
        c
    }

    fn slot(&mut self, s: ExecutionState) -> &mut u64 {
        match s {
            ExecutionState::Created => &mut self.created,
            ExecutionState::Scheduled => &mut self.scheduled,
            ExecutionState::Deploying => &mut self.deploying,
            ExecutionState::Running => &mut self.running,
            ExecutionState::Finished => &mut self.finished,
            ExecutionState::Canceling => &mut self.canceling,
            ExecutionState::Canceled => &mut self.canceled,
            ExecutionState::Failed => &mut self.failed,
            ExecutionState::Reconciling => &mut self.reconciling,
            ExecutionState::Initializing => &mut self.initializing,
        }
    }
}

/// `/jobs/overview`'s `tasks`: `total`, then one lower-case key per execution state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct TaskCounts {
    pub total: u64,
    #[serde(flatten)]
    #[schema(inline)]
    pub states: LowerCaseStateCounts,
}

/// The ten per-state counts with the lower-case keys `/jobs/overview` uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct LowerCaseStateCounts {
    pub created: u64,
    pub scheduled: u64,
    pub deploying: u64,
    pub running: u64,
    pub finished: u64,
    pub canceling: u64,
    pub canceled: u64,
    pub failed: u64,
    pub reconciling: u64,
    pub initializing: u64,
}

impl TaskCounts {
    /// Counts `states`.
    pub fn of(states: impl IntoIterator<Item = ExecutionState>) -> Self {
        let mut total = 0;
        let c = ExecutionStateCounts::of(states.into_iter().inspect(|_| total += 1));
        TaskCounts {
            total,
            states: LowerCaseStateCounts {
                created: c.created,
                scheduled: c.scheduled,
                deploying: c.deploying,
                running: c.running,
                finished: c.finished,
                canceling: c.canceling,
                canceled: c.canceled,
                failed: c.failed,
                reconciling: c.reconciling,
                initializing: c.initializing,
            },
        }
    }
}

/// `{"INITIALIZING": ms, ...}`: when the job entered each of the eleven job statuses (0 if
/// never), in Flink's declaration order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct JobTimestamps {
    pub initializing: i64,
    pub created: i64,
    pub running: i64,
    pub failing: i64,
    pub failed: i64,
    pub cancelling: i64,
    pub canceled: i64,
    pub finished: i64,
    pub restarting: i64,
    pub suspended: i64,
    pub reconciling: i64,
}

impl JobTimestamps {
    /// The job's status timestamps.
    pub fn of(job: &Job) -> Self {
        let t = |s: JobStatus| job.runtime.timestamps[s.index()];
        JobTimestamps {
            initializing: t(JobStatus::Initializing),
            created: t(JobStatus::Created),
            running: t(JobStatus::Running),
            failing: t(JobStatus::Failing),
            failed: t(JobStatus::Failed),
            cancelling: t(JobStatus::Cancelling),
            canceled: t(JobStatus::Canceled),
            finished: t(JobStatus::Finished),
            restarting: t(JobStatus::Restarting),
            suspended: t(JobStatus::Suspended),
            reconciling: t(JobStatus::Reconciling),
        }
    }
}

/// When a subtask entered each of the ten execution states (0 if never), for `subtasktimes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ExecutionStateTimestamps {
    pub created: i64,
    pub scheduled: i64,
    pub deploying: i64,
    pub running: i64,
    pub finished: i64,
    pub canceling: i64,
    pub canceled: i64,
    pub failed: i64,
    pub reconciling: i64,
    pub initializing: i64,
}

impl ExecutionStateTimestamps {
    /// The subtask's state timestamps.
    pub fn of(s: &SubtaskRuntime) -> Self {
        let t = |x: ExecutionState| s.timestamp(x);
        ExecutionStateTimestamps {
            created: t(ExecutionState::Created),
            scheduled: t(ExecutionState::Scheduled),
            deploying: t(ExecutionState::Deploying),
            running: t(ExecutionState::Running),
            finished: t(ExecutionState::Finished),
            canceling: t(ExecutionState::Canceling),
            canceled: t(ExecutionState::Canceled),
            failed: t(ExecutionState::Failed),
            reconciling: t(ExecutionState::Reconciling),
            initializing: t(ExecutionState::Initializing),
        }
    }
}

/// Flink's time span of a group of subtasks: the earliest start (-1 if none started), the latest
/// end once every subtask is terminal (-1 before), and end-or-now minus start (-1 if never
/// started).
pub fn time_span<'a>(
    subtasks: impl IntoIterator<Item = &'a SubtaskRuntime>,
    now: i64,
) -> (i64, i64, i64) {
    let subtasks: Vec<&SubtaskRuntime> = subtasks.into_iter().collect();
    let start = subtasks
        .iter()
        .map(|s| s.start_time())
        .filter(|t| *t > 0)
        .min()
        .unwrap_or(-1);
    let all_terminal = subtasks.iter().all(|s| s.status.is_terminal());
    let end = if all_terminal {
        subtasks.iter().map(|s| s.end_time()).max().unwrap_or(-1)
    } else {
        -1
    };
    let duration = if start < 0 {
        -1
    } else {
        (if end < 0 { now } else { end }) - start
    };
    (start, end, duration)
}

/// Flink's `flink-revision` / `flink-commit` slot, naming flamegrid instead.
pub fn revision() -> String {
    format!("flamegrid-{} @ unknown", env!("CARGO_PKG_VERSION"))
}

/// `{"CREATED": n, ...}` with all ten execution states, upper-case keys.
pub fn execution_state_counts(states: impl IntoIterator<Item = ExecutionState>) -> Value {
    to_value(&ExecutionStateCounts::of(states))
}

/// `/jobs/overview`'s `tasks`: lower-case state names plus `total`.
pub fn task_counts_lower(states: impl IntoIterator<Item = ExecutionState>) -> Value {
    to_value(&TaskCounts::of(states))
}

/// `{"INITIALIZING": ms, ...}` with all eleven job statuses.
pub fn job_timestamps(job: &Job) -> Value {
    to_value(&JobTimestamps::of(job))
}

/// Flink's IOMetricsInfo. flamegrid observes threads, not records, so every counter is 0 and
/// marked complete.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct IoMetrics {
    pub read_bytes: u64,
    pub read_bytes_complete: bool,
    pub write_bytes: u64,
    pub write_bytes_complete: bool,
    pub read_records: u64,
    pub read_records_complete: bool,
    pub write_records: u64,
    pub write_records_complete: bool,
    pub accumulated_backpressured_time: u64,
    pub accumulated_idle_time: u64,
    pub accumulated_busy_time: f64,
}

impl IoMetrics {
    /// All zeros, all complete.
    pub const ZERO: IoMetrics = IoMetrics {
        read_bytes: 0,
        read_bytes_complete: true,
        write_bytes: 0,
        write_bytes_complete: true,
        read_records: 0,
        read_records_complete: true,
        write_records: 0,
        write_records_complete: true,
        accumulated_backpressured_time: 0,
        accumulated_idle_time: 0,
        accumulated_busy_time: 0.0,
    };
}

/// Flink's IOMetricsInfo as a `Value` (see [`IoMetrics`]).
pub fn io_metrics() -> Value {
    to_value(&IoMetrics::ZERO)
}

/// `{min, max, avg, sum, median, p25, p75, p95}` of some values (all 0 when there are none), as
/// Flink's `StatsSummaryDto` writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatsSummary {
    pub min: i64,
    pub max: i64,
    pub avg: i64,
    pub sum: i64,
    pub median: i64,
    pub p25: i64,
    pub p75: i64,
    pub p95: i64,
}

impl StatsSummary {
    /// The summary of `values`.
    pub fn of(values: &[i64]) -> Self {
        if values.is_empty() {
            return StatsSummary::default();
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let sum: i64 = v.iter().sum();
        let pct = |p: f64| -> i64 {
            // Linear interpolation between closest ranks.
            let rank = p * (v.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            (v[lo] as f64 + (v[hi] - v[lo]) as f64 * (rank - lo as f64)).round() as i64
        };
        StatsSummary {
            min: v[0],
            max: v[v.len() - 1],
            avg: sum / v.len() as i64,
            sum,
            median: pct(0.5),
            p25: pct(0.25),
            p75: pct(0.75),
            p95: pct(0.95),
        }
    }
}

/// [`StatsSummary`] as a `Value`.
pub fn stats(values: &[i64]) -> Value {
    to_value(&StatsSummary::of(values))
}

/// The states whose durations Flink reports per subtask (`status-duration`).
pub const DURATION_STATES: [ExecutionState; 5] = [
    ExecutionState::Created,
    ExecutionState::Scheduled,
    ExecutionState::Deploying,
    ExecutionState::Initializing,
    ExecutionState::Running,
];

/// Milliseconds one subtask spent in each of the [`DURATION_STATES`] (Flink's
/// `status-duration` of a subtask).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct StatusDurations {
    pub created: i64,
    pub scheduled: i64,
    pub deploying: i64,
    pub initializing: i64,
    pub running: i64,
}

impl StatusDurations {
    /// The subtask's time in each state at `now`.
    pub fn of(s: &SubtaskRuntime, now: i64) -> Self {
        let t = |x| s.time_in(x, now);
        StatusDurations {
            created: t(ExecutionState::Created),
            scheduled: t(ExecutionState::Scheduled),
            deploying: t(ExecutionState::Deploying),
            initializing: t(ExecutionState::Initializing),
            running: t(ExecutionState::Running),
        }
    }
}

/// Summaries over a group of subtasks of the time spent in each of the [`DURATION_STATES`]
/// (Flink's `status-duration` of a vertex or task manager group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct StatusDurationStats {
    pub created: StatsSummary,
    pub scheduled: StatsSummary,
    pub deploying: StatsSummary,
    pub initializing: StatsSummary,
    pub running: StatsSummary,
}

/// Summaries of the I/O counters over a group of subtasks (all zero: flamegrid moves no records).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct AggregatedIoMetrics {
    pub read_bytes: StatsSummary,
    pub write_bytes: StatsSummary,
    pub read_records: StatsSummary,
    pub write_records: StatsSummary,
    pub accumulated_backpressured_time: StatsSummary,
    pub accumulated_busy_time: StatsSummary,
    pub accumulated_idle_time: StatsSummary,
}

/// Flink's `aggregated` block over some subtasks: I/O metrics (zeros) and status durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Aggregated {
    pub metrics: AggregatedIoMetrics,
    #[serde(rename = "status-duration")]
    pub status_duration: StatusDurationStats,
}

impl Aggregated {
    /// The block over `subtasks` at `now`.
    pub fn of<'a>(
        subtasks: impl IntoIterator<Item = &'a SubtaskRuntime> + Clone,
        now: i64,
    ) -> Self {
        let zeros: Vec<i64> = subtasks.clone().into_iter().map(|_| 0).collect();
        let z = StatsSummary::of(&zeros);
        Aggregated {
            metrics: AggregatedIoMetrics {
                read_bytes: z,
                write_bytes: z,
                read_records: z,
                write_records: z,
                accumulated_backpressured_time: z,
                accumulated_busy_time: z,
                accumulated_idle_time: z,
            },
            status_duration: {
                let summary = |s: ExecutionState| {
                    let values: Vec<i64> = subtasks
                        .clone()
                        .into_iter()
                        .map(|t| t.time_in(s, now))
                        .collect();
                    StatsSummary::of(&values)
                };
                StatusDurationStats {
                    created: summary(ExecutionState::Created),
                    scheduled: summary(ExecutionState::Scheduled),
                    deploying: summary(ExecutionState::Deploying),
                    initializing: summary(ExecutionState::Initializing),
                    running: summary(ExecutionState::Running),
                }
            },
        }
    }
}

/// [`Aggregated`] as a `Value`.
pub fn aggregated<'a>(
    subtasks: impl IntoIterator<Item = &'a SubtaskRuntime> + Clone,
    now: i64,
) -> Value {
    to_value(&Aggregated::of(subtasks, now))
}

/// One subtask of a vertex (Flink's SubtaskExecutionAttemptDetailsInfo): what
/// `/jobs/:jobid/vertices/:vertexid` lists and `.../subtasks/:subtaskindex` answers.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SubtaskEntry {
    pub subtask: usize,
    pub status: ExecutionState,
    pub attempt: u32,
    pub endpoint: String,
    #[serde(rename = "start-time")]
    pub start_time: i64,
    #[serde(rename = "end-time")]
    pub end_time: i64,
    pub duration: i64,
    pub metrics: IoMetrics,
    #[serde(rename = "taskmanager-id")]
    pub taskmanager_id: String,
    #[serde(rename = "status-duration")]
    pub status_duration: StatusDurations,
    /// Flink writes the start time twice, once under this older key.
    #[serde(rename = "start_time")]
    pub start_time_legacy: i64,
}

impl SubtaskEntry {
    /// The entry of subtask `index`, placed on `taskmanager_id`, at `now`.
    pub fn of(index: usize, subtask: &SubtaskRuntime, taskmanager_id: &str, now: i64) -> Self {
        SubtaskEntry {
            subtask: index,
            status: subtask.status,
            attempt: 0,
            endpoint: subtask.endpoint.clone(),
            start_time: subtask.start_time(),
            end_time: subtask.end_time(),
            duration: subtask.duration(now),
            metrics: IoMetrics::ZERO,
            taskmanager_id: taskmanager_id.to_string(),
            status_duration: StatusDurations::of(subtask, now),
            start_time_legacy: subtask.start_time(),
        }
    }
}

/// [`SubtaskEntry`] as a `Value`.
pub fn subtask_entry(
    index: usize,
    subtask: &SubtaskRuntime,
    taskmanager_id: &str,
    now: i64,
) -> Value {
    to_value(&SubtaskEntry::of(index, subtask, taskmanager_id, now))
}

/// HTML-escapes a name for the plan's `description`, as Flink does.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br/>"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_of_values() {
        assert_eq!(stats(&[1, 2, 3, 4])["median"], json!(3));
        assert_eq!(stats(&[10])["p95"], json!(10));
        assert_eq!(stats(&[])["sum"], json!(0));
        assert_eq!(stats(&[5, 1])["min"], json!(1));
    }

    #[test]
    fn counts_have_every_state() {
        let v = execution_state_counts([ExecutionState::Running, ExecutionState::Running]);
        assert_eq!(v.as_object().unwrap().len(), 10);
        assert_eq!(v["RUNNING"], json!(2));
        let lower = task_counts_lower([ExecutionState::Failed]);
        assert_eq!(lower["total"], json!(1));
        assert_eq!(lower["failed"], json!(1));
        assert_eq!(lower.as_object().unwrap().len(), 11);
    }
}
