//! One sampling run: fan out to the agents, fold what came back, store it in the cache.
//!
//! A run is started by whoever got a [`RunTicket`] from the cache and is executed on its own
//! task, so the request that triggered it returns at once (Flink's endpoint never blocks). The
//! ticket travels with the task: completing it stores the snapshot, and if the task ends any
//! other way (every agent failed, nothing delivered, even a panic) dropping the ticket clears the
//! "in flight" mark so the next request retries.

use super::cache::RunTicket;
use super::profile::{Snapshot, SubtaskProfile};
use crate::fanout::{FanOut, SamplingParams, SubtaskTarget};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of runs, readable by tests and metrics: how many started, landed, failed.
#[derive(Debug, Default)]
pub struct RunCounters {
    /// Runs started (fan-outs sent).
    pub started: AtomicU64,
    /// Runs whose snapshot was stored.
    pub completed: AtomicU64,
    /// Runs where no subtask delivered anything: nothing stored.
    pub failed: AtomicU64,
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

/// Executes one run for `ticket`'s key over `targets` and stores the result.
pub async fn execute(
    fanout: Arc<FanOut>,
    counters: Arc<RunCounters>,
    params: SamplingParams,
    ticket: RunTicket,
    targets: Vec<SubtaskTarget>,
) {
    let key = ticket.key().clone();
    let prefix = format!("{}/{}", key.job_id, key.vertex_id);
    let outcome = fanout.sample(&prefix, &targets, params).await;
    if outcome.sets.is_empty() {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask,
            failures = ?outcome.failures,
            "Failed to gather a thread info sample: no subtask delivered samples; nothing cached"
        );
        return; // dropping the ticket clears the in-flight mark
    }
    if !outcome.missing.is_empty() {
        tracing::warn!(
            job = %key.job_id, vertex = %key.vertex_id, missing = ?outcome.missing,
            failures = ?outcome.failures, "flame graph run is partial"
        );
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
        missing: outcome.missing.iter().copied().collect(),
    };
    tracing::debug!(
        job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask, run = snapshot.run_id,
        samples = snapshot.sample_count(flamegrid_model::GraphType::Full), "flame graph run landed"
    );
    ticket.complete(snapshot);
    counters.completed.fetch_add(1, Ordering::Relaxed);
}
