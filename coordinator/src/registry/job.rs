//! A registered job: what the user asked for ([`JobSpec`], immutable once accepted) and what
//! flamegrid has observed since ([`JobRuntime`], [`SubtaskRuntime`]).
//!
//! The split matters for the store: the spec is written once, in the same transaction that
//! acknowledges `POST /jobs`; the runtime part is rewritten on every state transition. Both are
//! plain serde types so that the SQLite row is the JSON of these structs and nothing else.

use super::state::{ExecutionState, JobStatus, aggregate_execution_states};
use crate::missing::MissingReason;
use serde::{Deserialize, Serialize};

/// How a subtask names its process: by pid, or by the kernel's name for it (`comm`), which is
/// re-resolved at sampling time so a restarted worker is found again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRef {
    /// `/proc/<pid>`.
    Pid(u32),
    /// `/proc/*/comm` equal to this.
    ProcessName(String),
}

/// One parallel instance of a vertex: which threads of which process on which task manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskSpec {
    /// The task manager (agent) id that runs it.
    pub taskmanager: String,
    /// The process.
    pub process: ProcessRef,
    /// Threads by id; empty means "not selected by id".
    pub tids: Vec<u32>,
    /// Threads whose name matches this regex as a whole; `None` means "not selected by name".
    pub thread_name: Option<String>,
}

/// One operator of the job graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexSpec {
    /// 32 lower-case hex digits, like Flink's `JobVertexID`; also the plan node id.
    pub id: String,
    /// Display name (`"Source: spinner"`).
    pub name: String,
    /// Indexes of upstream vertices (always earlier in `JobSpec::vertices`): the plan's edges.
    pub inputs: Vec<usize>,
    /// One entry per subtask; its length is the parallelism.
    pub subtasks: Vec<SubtaskSpec>,
}

impl VertexSpec {
    /// Flink's parallelism: the number of subtasks.
    pub fn parallelism(&self) -> usize {
        self.subtasks.len()
    }
}

/// What `POST /jobs` registered, after validation. Vertices are in topological order because
/// `inputs` may only name earlier vertices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// 32 lower-case hex digits, like Flink's `JobID`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The vertices, upstream first.
    pub vertices: Vec<VertexSpec>,
}

/// What flamegrid knows about one subtask now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskRuntime {
    /// Current state.
    pub status: ExecutionState,
    /// When each state was entered (ms since the epoch), indexed by [`ExecutionState::index`];
    /// 0 for states never reached, as Flink writes them.
    pub timestamps: [i64; 10],
    /// `host:port` of its task manager when the job was registered (Flink's `endpoint`).
    pub endpoint: String,
    /// Why it failed, for `/jobs/:jobid/exceptions`.
    pub failure: Option<String>,
    /// Why it cannot be sampled any more, in the flame graph's fixed words: set when it ends
    /// FAILED (process not found, outside the allow-list, agent lost, ...) or FINISHED because
    /// its process or threads vanished, so every flame graph view keeps naming it after the
    /// heartbeat that ended it. `None` while it runs, when canceled, and in rows stored before
    /// the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent: Option<MissingReason>,
    /// The pid the agent last resolved (0 before the first report).
    pub pid: u32,
    /// How many threads its selector matched at the last report.
    pub threads: u32,
}

impl SubtaskRuntime {
    /// A subtask just placed on a live task manager: CREATED, SCHEDULED and DEPLOYING at `now`.
    pub fn placed(endpoint: String, now: i64) -> Self {
        let mut timestamps = [0; 10];
        for s in [
            ExecutionState::Created,
            ExecutionState::Scheduled,
            ExecutionState::Deploying,
        ] {
            timestamps[s.index()] = now;
        }
        SubtaskRuntime {
            status: ExecutionState::Deploying,
            timestamps,
            endpoint,
            failure: None,
            absent: None,
            pid: 0,
            threads: 0,
        }
    }

    /// Moves to `to` at `now`, unless already terminal or already there. Returns whether the
    /// state changed (so the caller knows to persist).
    pub fn transition(&mut self, to: ExecutionState, now: i64) -> bool {
        if self.status.is_terminal() || self.status == to {
            return false;
        }
        self.status = to;
        self.timestamps[to.index()] = now;
        true
    }

    /// When the state was entered, 0 if never.
    pub fn timestamp(&self, s: ExecutionState) -> i64 {
        self.timestamps[s.index()]
    }

    /// Flink's `start-time`: the DEPLOYING timestamp, or -1.
    pub fn start_time(&self) -> i64 {
        match self.timestamp(ExecutionState::Deploying) {
            0 => -1,
            t => t,
        }
    }

    /// Flink's `end-time`: the terminal state's timestamp, or -1 while not terminal.
    pub fn end_time(&self) -> i64 {
        if self.status.is_terminal() {
            self.timestamp(self.status)
        } else {
            -1
        }
    }

    /// Flink's `duration`: end (or now) minus start, -1 if never started.
    pub fn duration(&self, now: i64) -> i64 {
        let start = self.start_time();
        if start < 0 {
            return -1;
        }
        let end = self.end_time();
        (if end < 0 { now } else { end }) - start
    }

    /// The order in which a subtask passes the states that Flink's `status-duration` covers.
    /// Spelled out because Flink's enum declaration order (and so [`ExecutionState::index`])
    /// puts INITIALIZING last, after the terminal states, while a subtask passes it between
    /// DEPLOYING and RUNNING.
    pub const LIFECYCLE: [ExecutionState; 5] = [
        ExecutionState::Created,
        ExecutionState::Scheduled,
        ExecutionState::Deploying,
        ExecutionState::Initializing,
        ExecutionState::Running,
    ];

    /// Time spent in `state` (Flink's `status-duration` entry), walking [`Self::LIFECYCLE`]
    /// and then the terminal state: a state lasts from its own timestamp to the timestamp of
    /// the next state it was followed by (the next stamped one, not earlier than its own), or
    /// to `now` while it is the current state; 0 for a state never entered.
    ///
    /// States stamped at the same instant (CREATED, SCHEDULED and DEPLOYING all at placement)
    /// therefore last 0 ms, except the last of them, which lasts until the next transition:
    /// the durations of one subtask add up to `now` (or its end) minus its CREATED stamp.
    /// Terminal states have no duration (Flink reports none for them).
    pub fn time_in(&self, state: ExecutionState, now: i64) -> i64 {
        let entered = self.timestamp(state);
        if entered == 0 || state.is_terminal() {
            return 0;
        }
        if self.status == state {
            return (now - entered).max(0);
        }
        let Some(position) = Self::LIFECYCLE.iter().position(|s| *s == state) else {
            // CANCELING and RECONCILING: never entered by flamegrid.
            return 0;
        };
        let terminal = [
            ExecutionState::Finished,
            ExecutionState::Canceled,
            ExecutionState::Failed,
        ]
        .into_iter()
        .map(|s| self.timestamp(s))
        .filter(|t| *t != 0)
        .min();
        let left = Self::LIFECYCLE[position + 1..]
            .iter()
            .map(|s| self.timestamp(*s))
            .chain(terminal)
            .find(|t| *t != 0 && *t >= entered);
        match left {
            Some(t) => t - entered,
            // Left for a state that carries no stamp: nothing to measure against.
            None => 0,
        }
    }
}

/// What flamegrid knows about a job as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRuntime {
    /// Current status (derived from the subtasks, or CANCELED).
    pub status: JobStatus,
    /// When each status was entered, indexed by [`JobStatus::index`]; 0 if never.
    pub timestamps: [i64; 11],
    /// When the last change happened (Flink's `last-modification`).
    pub last_modification: i64,
    /// Per vertex, per subtask.
    pub subtasks: Vec<Vec<SubtaskRuntime>>,
}

/// A registered job: spec plus runtime. Cloned out of the registry for the REST layer, so that
/// handlers never hold the registry's lock while they build JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// What was registered.
    pub spec: JobSpec,
    /// What was observed since.
    pub runtime: JobRuntime,
}

impl Job {
    /// A job accepted at `now`: INITIALIZING, CREATED and RUNNING (scheduled), every subtask
    /// placed on its task manager, whose endpoints `endpoint_of` gives.
    pub fn accepted(spec: JobSpec, now: i64, endpoint_of: impl Fn(&str) -> String) -> Self {
        let subtasks = spec
            .vertices
            .iter()
            .map(|v| {
                v.subtasks
                    .iter()
                    .map(|s| SubtaskRuntime::placed(endpoint_of(&s.taskmanager), now))
                    .collect()
            })
            .collect();
        let mut timestamps = [0; 11];
        for s in [
            JobStatus::Initializing,
            JobStatus::Created,
            JobStatus::Running,
        ] {
            timestamps[s.index()] = now;
        }
        Job {
            spec,
            runtime: JobRuntime {
                status: JobStatus::Running,
                timestamps,
                last_modification: now,
                subtasks,
            },
        }
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Index of the vertex with this id.
    pub fn vertex_index(&self, vertex_id: &str) -> Option<usize> {
        self.spec.vertices.iter().position(|v| v.id == vertex_id)
    }

    /// A vertex's aggregate state (Flink's rule).
    pub fn vertex_status(&self, vertex: usize) -> ExecutionState {
        aggregate_execution_states(self.runtime.subtasks[vertex].iter().map(|s| s.status))
    }

    /// Flink's job `start-time`: the INITIALIZING timestamp.
    pub fn start_time(&self) -> i64 {
        self.runtime.timestamps[JobStatus::Initializing.index()]
    }

    /// Flink's job `end-time`: -1 unless globally terminal.
    pub fn end_time(&self) -> i64 {
        if self.runtime.status.is_terminal() {
            self.runtime.timestamps[self.runtime.status.index()]
        } else {
            -1
        }
    }

    /// Flink's job `duration`: (end or now) minus start.
    pub fn duration(&self, now: i64) -> i64 {
        let end = self.end_time();
        (if end < 0 { now } else { end }) - self.start_time()
    }

    /// Re-derives the job status from the subtasks after a change and stamps a new status
    /// (see [`JobStatus::from_subtask_states`]: one FAILED subtask makes the job FAILING while
    /// others still run, FAILED once all have ended). A terminal job stays as it is. Returns
    /// whether the status changed.
    pub fn refresh_status(&mut self, now: i64) -> bool {
        self.runtime.last_modification = now;
        if self.runtime.status.is_terminal() {
            return false;
        }
        let status = JobStatus::from_subtask_states(
            self.runtime.subtasks.iter().flatten().map(|s| s.status),
        );
        if status == self.runtime.status {
            return false;
        }
        self.runtime.status = status;
        self.runtime.timestamps[status.index()] = now;
        true
    }

    /// [`Job::refresh_status`] after subtasks of this job moved only to INITIALIZING or RUNNING
    /// (a heartbeat's watch list or liveness), without a pass over every subtask while the job
    /// is RUNNING: such moves cannot change a RUNNING job's status (it has no FAILED, CANCELING
    /// or CANCELED subtask, the moves add none, and a subtask that now runs means not all have
    /// finished). A job of 100,000 subtasks starting on 1,000 agents otherwise paid that pass,
    /// under the registry's lock, on each of their first 2,000 heartbeats. Returns whether the
    /// status changed.
    pub fn refresh_status_after_start(&mut self, now: i64) -> bool {
        if self.runtime.status == JobStatus::Running {
            self.runtime.last_modification = now;
            return false;
        }
        self.refresh_status(now)
    }

    /// Cancels every subtask that is not terminal yet and marks the job CANCELED (from RUNNING
    /// or FAILING alike: Flink's FAILING → CANCELLING → CANCELED; flamegrid passes CANCELLING
    /// in the same instant, so both are stamped with `now`).
    pub fn cancel(&mut self, now: i64) {
        for s in self.runtime.subtasks.iter_mut().flatten() {
            s.transition(ExecutionState::Canceled, now);
        }
        self.runtime.timestamps[JobStatus::Cancelling.index()] = now;
        self.runtime.timestamps[JobStatus::Canceled.index()] = now;
        self.runtime.status = JobStatus::Canceled;
        self.runtime.last_modification = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtask_times_follow_transitions() {
        let mut s = SubtaskRuntime::placed("h:1".into(), 1000);
        assert_eq!(s.start_time(), 1000);
        assert!(s.transition(ExecutionState::Initializing, 1100));
        assert!(s.transition(ExecutionState::Running, 1300));
        assert!(!s.transition(ExecutionState::Running, 1400));
        assert_eq!(s.time_in(ExecutionState::Initializing, 2000), 200);
        assert_eq!(s.time_in(ExecutionState::Running, 2000), 700);
        assert!(s.transition(ExecutionState::Finished, 1500));
        assert!(
            !s.transition(ExecutionState::Running, 1600),
            "terminal states are final"
        );
        assert_eq!((s.end_time(), s.duration(9999)), (1500, 500));
        assert_eq!(s.time_in(ExecutionState::Running, 9999), 200);
    }

    /// A job of two one-subtask vertices, accepted at 1000.
    fn two_vertex_job() -> Job {
        let subtask = SubtaskSpec {
            taskmanager: "tm".into(),
            process: ProcessRef::Pid(1),
            tids: Vec::new(),
            thread_name: None,
        };
        let vertex = |id: char| VertexSpec {
            id: id.to_string().repeat(32),
            name: id.to_string(),
            inputs: Vec::new(),
            subtasks: vec![subtask.clone()],
        };
        let spec = JobSpec {
            id: "f".repeat(32),
            name: "j".into(),
            vertices: vec![vertex('a'), vertex('b')],
        };
        Job::accepted(spec, 1000, |_| "h:1".into())
    }

    #[test]
    fn a_failed_subtask_makes_the_job_failing_then_failed_once_all_ended() {
        let mut job = two_vertex_job();
        for v in 0..2 {
            job.runtime.subtasks[v][0].transition(ExecutionState::Running, 1100);
        }
        assert!(!job.refresh_status(1100));
        job.runtime.subtasks[0][0].transition(ExecutionState::Failed, 1200);
        assert!(job.refresh_status(1200));
        assert_eq!(job.runtime.status, JobStatus::Failing);
        assert_eq!(job.runtime.timestamps[JobStatus::Failing.index()], 1200);
        assert_eq!((job.end_time(), job.duration(1500)), (-1, 500));
        // The other vertex keeps running (and being sampled) meanwhile.
        assert_eq!(job.vertex_status(1), ExecutionState::Running);
        job.runtime.subtasks[1][0].transition(ExecutionState::Finished, 1300);
        assert!(job.refresh_status(1300));
        assert_eq!(job.runtime.status, JobStatus::Failed);
        assert_eq!((job.end_time(), job.duration(9999)), (1300, 300));
    }

    proptest::proptest! {
        /// What [`Job::refresh_status_after_start`] skips: whatever the states of a RUNNING
        /// job's subtasks, moving any of them to INITIALIZING or RUNNING leaves it RUNNING.
        #[test]
        fn a_running_job_stays_running_when_subtasks_start(
            states in proptest::collection::vec(0..ExecutionState::ALL.len(), 1..40),
            moves in proptest::collection::vec((0..40usize, proptest::prelude::any::<bool>()), 1..8),
        ) {
            let mut states: Vec<ExecutionState> =
                states.into_iter().map(|i| ExecutionState::ALL[i]).collect();
            if JobStatus::from_subtask_states(states.clone()) == JobStatus::Running {
                for (at, running) in moves {
                    let n = states.len();
                    states[at % n] = if running {
                        ExecutionState::Running
                    } else {
                        ExecutionState::Initializing
                    };
                }
                proptest::prop_assert_eq!(
                    JobStatus::from_subtask_states(states.clone()),
                    JobStatus::Running,
                    "{:?}",
                    states
                );
            }
        }
    }

    #[test]
    fn refresh_after_start_skips_only_running_jobs() {
        let mut job = two_vertex_job();
        job.runtime.subtasks[0][0].transition(ExecutionState::Running, 1100);
        assert!(!job.refresh_status_after_start(1100));
        assert_eq!(job.runtime.status, JobStatus::Running);
        assert_eq!(job.runtime.last_modification, 1100);
        // A FAILING job is derived again as before: the other subtask's start changes nothing,
        // and its end makes the job FAILED.
        job.runtime.subtasks[0][0].transition(ExecutionState::Failed, 1200);
        assert!(job.refresh_status(1200));
        job.runtime.subtasks[1][0].transition(ExecutionState::Running, 1300);
        assert!(!job.refresh_status_after_start(1300));
        assert_eq!(job.runtime.status, JobStatus::Failing);
        job.runtime.subtasks[1][0].transition(ExecutionState::Finished, 1400);
        assert!(job.refresh_status(1400));
        assert_eq!(job.runtime.status, JobStatus::Failed);
    }

    #[test]
    fn a_failing_job_can_be_canceled() {
        let mut job = two_vertex_job();
        job.runtime.subtasks[0][0].transition(ExecutionState::Failed, 1200);
        job.refresh_status(1200);
        assert_eq!(job.runtime.status, JobStatus::Failing);
        job.cancel(1400);
        assert_eq!(job.runtime.status, JobStatus::Canceled);
        assert_eq!(job.end_time(), 1400);
        assert_eq!(job.runtime.subtasks[0][0].status, ExecutionState::Failed);
        assert_eq!(job.runtime.subtasks[1][0].status, ExecutionState::Canceled);
        assert!(!job.refresh_status(1500), "CANCELED is final");
    }

    /// The durations of one subtask, in [`SubtaskRuntime::LIFECYCLE`] order.
    fn durations(s: &SubtaskRuntime, now: i64) -> Vec<i64> {
        SubtaskRuntime::LIFECYCLE
            .iter()
            .map(|state| s.time_in(*state, now))
            .collect()
    }

    #[test]
    fn states_stamped_together_last_zero_and_durations_add_up() {
        // CREATED, SCHEDULED and DEPLOYING share the placement stamp: only DEPLOYING (the last
        // of them) lasts, until INITIALIZING.
        let mut s = SubtaskRuntime::placed("h:1".into(), 1000);
        assert_eq!(durations(&s, 1500), [0, 0, 500, 0, 0]);
        assert!(s.transition(ExecutionState::Initializing, 5952));
        assert!(s.transition(ExecutionState::Running, 6000));
        assert_eq!(durations(&s, 7000), [0, 0, 4952, 48, 1000]);
        assert_eq!(durations(&s, 7000).iter().sum::<i64>(), 7000 - 1000);
        // INITIALIZING is last in Flink's enum but not in the lifecycle: RUNNING, not a
        // terminal state, ends it.
        assert!(s.transition(ExecutionState::Failed, 6500));
        assert_eq!(durations(&s, 9999), [0, 0, 4952, 48, 500]);
        assert_eq!(s.time_in(ExecutionState::Failed, 9999), 0);
        assert_eq!(durations(&s, 9999).iter().sum::<i64>(), s.end_time() - 1000);
    }

    #[test]
    fn skipped_states_count_zero_and_the_previous_one_lasts_until_the_next_stamp() {
        // An agent that reports a subtask alive before it was ever handed out (after a
        // coordinator restart): DEPLOYING → RUNNING, no INITIALIZING.
        let mut s = SubtaskRuntime::placed("h:1".into(), 1000);
        assert!(s.transition(ExecutionState::Running, 1200));
        assert_eq!(durations(&s, 1300), [0, 0, 200, 0, 100]);
        // Lost before any report: DEPLOYING → FAILED.
        let mut lost = SubtaskRuntime::placed("h:1".into(), 1000);
        assert!(lost.transition(ExecutionState::Failed, 4000));
        assert_eq!(durations(&lost, 9000), [0, 0, 3000, 0, 0]);
        // Equal stamps further down the chain: INITIALIZING and RUNNING in the same millisecond.
        let mut quick = SubtaskRuntime::placed("h:1".into(), 1000);
        assert!(quick.transition(ExecutionState::Initializing, 1100));
        assert!(quick.transition(ExecutionState::Running, 1100));
        assert_eq!(durations(&quick, 1400), [0, 0, 100, 0, 300]);
    }
}
