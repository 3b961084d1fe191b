//! One sampling run: fan out to the agents, fold what came back, store it in the cache.
//!
//! A run is started by whoever got a [`RunTicket`] from the cache and is executed on its own
//! task, so the request that triggered it returns at once (Flink's endpoint never blocks). The
//! ticket travels with the task: completing it stores the snapshot, and if the task ends any
//! other way (even a panic) dropping the ticket clears the "in flight" mark so the next request
//! retries.
//!
//! A run in which no subtask delivered is completed too: the cache keeps it aside as the key's
//! last failure (not as a graph, so the next request retries), and every view says why from its
//! reasons per subtask (see [`super::missing`]) instead of "retry". Subtasks that could not even
//! be asked (their agent is gone: `absent`) are listed beside the ones that failed, and every
//! run with absent subtasks logs one line naming them all with their reasons.

use super::cache::RunTicket;
use super::profile::{Snapshot, SubtaskProfile};
use crate::fanout::FanOut;
use crate::missing::{self, Missing};
use crate::sampling::{SamplingParams, SubtaskTarget};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of runs, readable by tests and metrics: how many started, landed, failed.
#[derive(Debug, Default)]
pub struct RunCounters {
    /// Runs started (fan-outs sent).
    pub started: AtomicU64,
    /// Runs whose snapshot was stored.
    pub completed: AtomicU64,
    /// Runs where no subtask delivered anything (kept aside for their reasons, not as a graph).
    pub failed: AtomicU64,
    /// How long finished runs took, fan-out to stored snapshot (`/metrics`).
    pub durations: flamegrid_proto::prometheus::Histogram,
}

impl RunCounters {
    /// Current values: (started, completed, failed).
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Executes one run for `ticket`'s key over `targets` and stores the result; `absent` are the
/// subtasks that should have been sampled but could not be asked (see
/// [`crate::sampling::VertexSampling::absent`]).
pub async fn execute(
    fanout: Arc<FanOut>,
    counters: Arc<RunCounters>,
    params: SamplingParams,
    ticket: RunTicket,
    targets: Vec<SubtaskTarget>,
    absent: Missing,
) {
    let began = std::time::Instant::now();
    let key = ticket.key().clone();
    let prefix = format!("{}/{}", key.job_id, key.vertex_id);
    let outcome = if targets.is_empty() {
        crate::fanout::FanOutOutcome {
            request_id: fanout.new_request_id(),
            start_ms: flamegrid_model::clock::now_ms(),
            end_ms: flamegrid_model::clock::now_ms(),
            ..Default::default()
        }
    } else {
        fanout.sample(&prefix, &targets, params).await
    };
    let mut missing = absent;
    missing.extend(outcome.missing.iter().map(|(&i, &r)| (i, r)));
    if !missing.is_empty() {
        // One line per run: which subtasks are absent and why (the agents' own words, which
        // may name users or processes, only in `failures`, for the operator).
        let delivered = outcome.sets.len();
        tracing::warn!(
            job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask, delivered,
            absent = %missing::describe(&missing), failures = ?outcome.failures,
            "flame graph run: subtasks absent"
        );
    }
    if outcome.sets.is_empty() {
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }
    let snapshot = Snapshot {
        run_id: outcome.request_id,
        start_ms: outcome.start_ms,
        end_ms: outcome.end_ms,
        subtasks: outcome
            .sets
            .iter()
            .map(|(&i, set)| (i, Arc::new(SubtaskProfile::from_set(set))))
            .collect(),
        missing,
    };
    tracing::debug!(
        job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask, run = snapshot.run_id,
        samples = snapshot.sample_count(flamegrid_model::GraphType::Full), "flame graph run landed"
    );
    let delivered = !snapshot.subtasks.is_empty();
    ticket.complete(snapshot);
    if delivered {
        counters.completed.fetch_add(1, Ordering::Relaxed);
    }
    counters.durations.observe(began.elapsed());
}
