//! Building blocks of Flink's JSON shapes that several resources share: per-state counts, the
//! I/O metrics block (flamegrid moves no records, so it is all zeros), statistics summaries and
//! the subtask entry of `/jobs/:jobid/vertices/:vertexid`.
//!
//! Key names and key order follow Flink's own answers (`flink-rest.md` §7 and its appendix).

use crate::registry::job::{Job, SubtaskRuntime};
use crate::registry::{ExecutionState, JobStatus};
use serde_json::{Map, Value, json};

/// The version string flamegrid answers with where Flink writes its own version: the Flink REST
/// dialect it follows, so version-checking clients accept it.
pub const FLINK_VERSION: &str = "2.3.0";

/// Flink's `start-time`, `end-time` and `duration` of a group of subtasks (a vertex, or a
/// vertex's subtasks on one task manager): the earliest start (-1 if none started), the latest
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
    let mut counts = [0u64; 10];
    for s in states {
        counts[s.index()] += 1;
    }
    let mut m = Map::new();
    for s in ExecutionState::ALL {
        m.insert(s.name().into(), json!(counts[s.index()]));
    }
    Value::Object(m)
}

/// `/jobs/overview`'s `tasks`: lower-case state names plus `total`.
pub fn task_counts_lower(states: impl IntoIterator<Item = ExecutionState>) -> Value {
    let mut counts = [0u64; 10];
    let mut total = 0u64;
    for s in states {
        counts[s.index()] += 1;
        total += 1;
    }
    let mut m = Map::new();
    m.insert("total".into(), json!(total));
    for s in ExecutionState::ALL {
        m.insert(s.name().to_ascii_lowercase(), json!(counts[s.index()]));
    }
    Value::Object(m)
}

/// `{"INITIALIZING": ms, ...}` with all eleven job statuses.
pub fn job_timestamps(job: &Job) -> Value {
    let mut m = Map::new();
    for s in JobStatus::ALL {
        m.insert(s.name().into(), json!(job.runtime.timestamps[s.index()]));
    }
    Value::Object(m)
}

/// Flink's IOMetricsInfo. flamegrid observes threads, not records, so every counter is 0 and
/// marked complete.
pub fn io_metrics() -> Value {
    json!({
        "read-bytes": 0, "read-bytes-complete": true,
        "write-bytes": 0, "write-bytes-complete": true,
        "read-records": 0, "read-records-complete": true,
        "write-records": 0, "write-records-complete": true,
        "accumulated-backpressured-time": 0,
        "accumulated-idle-time": 0,
        "accumulated-busy-time": 0.0
    })
}

/// `{min, max, avg, sum, median, p25, p75, p95}` of some values (all 0 when there are none),
/// as Flink's `StatsSummaryDto` writes them.
pub fn stats(values: &[i64]) -> Value {
    if values.is_empty() {
        return json!({"min": 0, "max": 0, "avg": 0, "sum": 0, "median": 0, "p25": 0, "p75": 0, "p95": 0});
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
    json!({
        "min": v[0], "max": v[v.len() - 1], "avg": sum / v.len() as i64, "sum": sum,
        "median": pct(0.5), "p25": pct(0.25), "p75": pct(0.75), "p95": pct(0.95)
    })
}

/// The states whose durations Flink reports per subtask (`status-duration`).
pub const DURATION_STATES: [ExecutionState; 5] = [
    ExecutionState::Created,
    ExecutionState::Scheduled,
    ExecutionState::Deploying,
    ExecutionState::Initializing,
    ExecutionState::Running,
];

/// Flink's `aggregated` block over some subtasks: I/O metrics (zeros) and status durations.
pub fn aggregated<'a>(
    subtasks: impl IntoIterator<Item = &'a SubtaskRuntime> + Clone,
    now: i64,
) -> Value {
    let zeros: Vec<i64> = subtasks.clone().into_iter().map(|_| 0).collect();
    let mut metrics = Map::new();
    for key in [
        "read-bytes",
        "write-bytes",
        "read-records",
        "write-records",
        "accumulated-backpressured-time",
        "accumulated-busy-time",
        "accumulated-idle-time",
    ] {
        metrics.insert(key.into(), stats(&zeros));
    }
    let mut durations = Map::new();
    for s in DURATION_STATES {
        let values: Vec<i64> = subtasks
            .clone()
            .into_iter()
            .map(|t| t.time_in(s, now))
            .collect();
        durations.insert(s.name().into(), stats(&values));
    }
    json!({"metrics": metrics, "status-duration": durations})
}

/// One entry of a vertex's `subtasks` (Flink's SubtaskExecutionAttemptDetailsInfo).
pub fn subtask_entry(
    index: usize,
    subtask: &SubtaskRuntime,
    taskmanager_id: &str,
    now: i64,
) -> Value {
    let mut durations = Map::new();
    for s in DURATION_STATES {
        durations.insert(s.name().into(), json!(subtask.time_in(s, now)));
    }
    json!({
        "subtask": index,
        "status": subtask.status.name(),
        "attempt": 0,
        "endpoint": subtask.endpoint,
        "start-time": subtask.start_time(),
        "end-time": subtask.end_time(),
        "duration": subtask.duration(now),
        "metrics": io_metrics(),
        "taskmanager-id": taskmanager_id,
        "status-duration": durations,
        "start_time": subtask.start_time(),
    })
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
        assert_eq!(
            task_counts_lower([ExecutionState::Failed])["total"],
            json!(1)
        );
    }
}
