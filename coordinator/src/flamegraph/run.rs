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
use super::profile::{AnswerNames, FoldedSubtask, RunNames, Snapshot, SubtaskProfile};
use crate::fanout::{FanOut, FanOutOutcome, SubtaskFold};
use crate::missing::{self, Missing};
use crate::sampling::{SamplingParams, SubtaskTarget};
use flamegrid_proto::convert::{AnswerBudget, ConvertError};
use flamegrid_proto::v1;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of runs, readable by tests and metrics: how many started, landed, failed, and how
/// the last run went (dispatch spread, the coordinator's own time after the last answer).
#[derive(Debug, Default)]
pub struct RunCounters {
    /// Runs started (fan-outs sent).
    pub started: AtomicU64,
    /// Runs whose snapshot was stored.
    pub completed: AtomicU64,
    /// Runs where no subtask delivered anything (kept aside for their reasons, not as a graph).
    pub failed: AtomicU64,
    /// The last run's dispatch spread, in microseconds: from its first request handed to an
    /// agent's channel to its last ([`crate::fanout::FanOutOutcome::dispatch_spread`]).
    pub last_dispatch_spread_us: AtomicU64,
    /// The last run's coordinator time after its last agent's call ended, in microseconds: the
    /// last answer's share, the snapshot and storing it in the cache.
    pub last_after_answers_us: AtomicU64,
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

    /// How the last finished run went: its dispatch spread and the coordinator's own time
    /// after its last answer was taken in, both 0 before any run.
    pub fn last_run(&self) -> (Duration, Duration) {
        let us = |a: &AtomicU64| Duration::from_micros(a.load(Ordering::Relaxed));
        (
            us(&self.last_dispatch_spread_us),
            us(&self.last_after_answers_us),
        )
    }
}

/// What a run makes of each subtask's samples as its agent's answer arrives: the folded
/// profile ([`SubtaskProfile::fold_wire`]), its names interned in the run's one table: the
/// only thing a run keeps of them.
#[derive(Debug, Clone, Default)]
pub struct RunFold {
    /// The run's names, shared by the answers' tasks.
    pub names: Arc<RunNames>,
}

impl SubtaskFold<FoldedSubtask> for RunFold {
    type Answer = AnswerNames;

    fn fold(
        &self,
        answer: &mut AnswerNames,
        resp: &v1::SampleResponse,
        sub: &v1::SubtaskSamples,
        budget: &mut AnswerBudget,
    ) -> Result<FoldedSubtask, ConvertError> {
        SubtaskProfile::fold_wire(resp, sub, budget, &self.names, answer)
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
) -> Arc<Snapshot> {
    execute_as(fanout, counters, params, ticket, targets, absent, None).await
}

/// [`execute`], with the run id `run_id` instead of the fan-out's request id when given: the
/// id a replicated coordinator takes from the shared database, so that run ids are ordered
/// across replicas (see [`super::shared`]). Returns the snapshot as stored in the cache.
pub async fn execute_as(
    fanout: Arc<FanOut>,
    counters: Arc<RunCounters>,
    params: SamplingParams,
    ticket: RunTicket,
    targets: Vec<SubtaskTarget>,
    absent: Missing,
    run_id: Option<u64>,
) -> Arc<Snapshot> {
    let began = std::time::Instant::now();
    let key = ticket.key().clone();
    let prefix = format!("{}/{}", key.job_id, key.vertex_id);
    // The interner sized for the names of the key's latest run, so it does not grow (and
    // rehash) while the answers come in (not worth decoding a packed one for).
    let expected = ticket
        .cache()
        .peek_decoded(&key)
        .and_then(|s| s.subtasks.values().next().map(|p| p.names.table().len()))
        .unwrap_or(0);
    let fold = RunFold {
        names: Arc::new(RunNames::with_capacity(expected)),
    };
    let names = Arc::clone(&fold.names);
    let mut outcome = if targets.is_empty() {
        FanOutOutcome {
            request_id: fanout.new_request_id(),
            start_ms: flamegrid_model::clock::now_ms(),
            end_ms: flamegrid_model::clock::now_ms(),
            ..Default::default()
        }
    } else {
        fanout.sample_with(&prefix, &targets, params, fold).await
    };
    if let Some(id) = run_id {
        outcome.request_id = id;
    }
    let snapshot = land(&counters, ticket, outcome, &names, absent);
    counters.durations.observe(began.elapsed());
    snapshot
}

/// Makes the snapshot of a run's `outcome` (its subtasks folded with the run's `names`, whose
/// table is frozen here, plus the subtasks that could not be asked, `absent`) and stores it
/// through `ticket`: what is left of a run once its last answer is in. Returns the snapshot as
/// stored.
pub fn land(
    counters: &RunCounters,
    ticket: RunTicket,
    outcome: FanOutOutcome<FoldedSubtask>,
    names: &RunNames,
    absent: Missing,
) -> Arc<Snapshot> {
    let key = ticket.key().clone();
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
    let table = names.finish();
    let snapshot = Snapshot {
        run_id: outcome.request_id,
        start_ms: outcome.start_ms,
        end_ms: outcome.end_ms,
        subtasks: outcome
            .sets
            .into_iter()
            .map(|(i, folded)| (i, Arc::new(folded.into_profile(&table))))
            .collect(),
        missing,
    };
    let run_id = snapshot.run_id;
    let samples = snapshot.sample_count(flamegrid_model::GraphType::Full);
    let delivered = !snapshot.subtasks.is_empty();
    let snapshot = ticket.complete(snapshot);
    if delivered {
        counters.completed.fetch_add(1, Ordering::Relaxed);
    }
    let after_answers = outcome.last_answer.map(|t| t.elapsed()).unwrap_or_default();
    let spread = outcome.dispatch_spread;
    counters
        .last_dispatch_spread_us
        .store(spread.as_micros() as u64, Ordering::Relaxed);
    counters
        .last_after_answers_us
        .store(after_answers.as_micros() as u64, Ordering::Relaxed);
    tracing::info!(
        job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask, run = run_id, samples,
        agents_answered = outcome.agents_answered, agents_failed = outcome.agents_failed,
        dispatch_spread_ms = spread.as_secs_f64() * 1e3,
        after_answers_ms = after_answers.as_secs_f64() * 1e3,
        "flame graph run landed"
    );
    snapshot
}

#[cfg(test)]
mod tests {
    //! Whole runs against canned agents on loopback (real gRPC, see [`crate::fanout::tests`]),
    //! landed in a real cache.

    use super::*;
    use crate::fanout::AgentAuth;
    use crate::fanout::tests::{Behaviour, agent, target};
    use crate::flamegraph::cache::{CacheLimits, GraphCache, GraphKey};
    use flamegrid_model::GraphType;
    use std::time::Duration;

    const PARAMS: SamplingParams = SamplingParams {
        num_samples: 1,
        delay_ms: 1,
        max_depth: 10,
    };

    fn key() -> GraphKey {
        GraphKey {
            job_id: "a".repeat(32),
            vertex_id: "b".repeat(32),
            subtask: None,
        }
    }

    /// `agents` canned agents answering `samples` samples per subtask, `per_agent` subtasks
    /// each; the targets of the vertex.
    async fn fleet(agents: u32, per_agent: u32, samples: u32) -> Vec<SubtaskTarget> {
        let mut targets = Vec::new();
        for a in 0..agents {
            let (address, _) = agent(Behaviour::Samples(samples)).await;
            targets.extend((0..per_agent).map(|i| target(a * per_agent + i, &address, 1)));
        }
        targets
    }

    /// A fan-out with a grace far beyond what loopback needs, so no agent is ever late.
    fn fanout() -> Arc<FanOut> {
        Arc::new(FanOut::new(Duration::from_secs(30), AgentAuth::default()))
    }

    async fn run(
        fanout: &Arc<FanOut>,
        cache: &Arc<GraphCache>,
        counters: &Arc<RunCounters>,
        targets: &[SubtaskTarget],
    ) {
        let ticket = cache.lookup_with(&key(), true).ticket.unwrap();
        execute(
            Arc::clone(fanout),
            Arc::clone(counters),
            PARAMS,
            ticket,
            targets.to_vec(),
            Missing::new(),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_folded_as_they_arrive_keep_every_sample() {
        let (agents, per_agent, samples) = (20, 50, 9);
        let targets = fleet(agents, per_agent, samples).await;
        let fanout = fanout();
        let cache = GraphCache::new(CacheLimits::new(
            Duration::from_secs(60),
            Duration::from_secs(600),
        ));
        let counters = Arc::new(RunCounters::default());
        run(&fanout, &cache, &counters, &targets).await;
        let snapshot = cache.peek(&key()).unwrap();
        assert!(snapshot.missing.is_empty(), "{:?}", snapshot.missing);
        let subtasks = u64::from(agents * per_agent);
        assert_eq!(snapshot.subtasks.len() as u64, subtasks);
        // One names table for the whole run, shared by every profile.
        let table = snapshot.subtasks[&0].names.table();
        assert!(
            snapshot
                .subtasks
                .values()
                .all(|p| Arc::ptr_eq(p.names.table(), table))
        );
        // Every sample every agent sent, no more, split by state as sent (every third off CPU).
        let sent = subtasks * u64::from(samples);
        assert_eq!(snapshot.sample_count(GraphType::Full), sent);
        assert_eq!(
            snapshot.sample_count(GraphType::OffCpu),
            subtasks * u64::from(samples.div_ceil(3))
        );
        // Folded on arrival from the wire, each subtask's profile is exactly the fold of the
        // samples the plain conversion gives.
        let prefix = format!("{}/{}", key().job_id, key().vertex_id);
        let plain = fanout.sample(&prefix, &targets, PARAMS).await;
        assert_eq!(plain.sets.len() as u64, subtasks);
        for (index, set) in &plain.sets {
            assert_eq!(
                *snapshot.subtasks[index],
                SubtaskProfile::from_set(set),
                "subtask {index}"
            );
        }
        assert_eq!(counters.get(), (0, 1, 0));
        // The tree over all subtasks holds them all too.
        assert_eq!(snapshot.tree(GraphType::Full).value, sent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_runs_keep_the_cache_flat() {
        // A vertex of 600 subtasks on 6 agents, history 3: after three runs, every run lands
        // as one leaves, and the cache holds the same bytes and runs run after run.
        let targets = fleet(6, 100, 5).await;
        let fanout = fanout();
        let mut limits = CacheLimits::new(Duration::from_secs(60), Duration::from_secs(600));
        limits.history = 3;
        let cache = GraphCache::new(limits);
        let counters = Arc::new(RunCounters::default());
        let mut usage = Vec::new();
        for _ in 0..8 {
            run(&fanout, &cache, &counters, &targets).await;
            // Every subtask read, so that its entry is made (lazily) and counted.
            for index in 0..600 {
                assert!(cache.peek(&key().subtask(index)).is_some());
            }
            // The run pushed down is packed on a blocking thread after landing.
            for _ in 0..2000 {
                if cache.packing() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            usage.push((cache.usage(), cache.kept_runs()));
        }
        assert_eq!(counters.get(), (0, 8, 0));
        assert_eq!(
            usage[2].1,
            3 * 601,
            "the vertex and its subtasks, three runs each"
        );
        // Flat: the same entries and runs; the same bytes but for the packed bodies, whose
        // deflated length varies by a few bytes from run to run.
        assert!(
            usage[2..].iter().all(|u| u.0.0 == usage[2].0.0
                && u.1 == usage[2].1
                && u.0.1.abs_diff(usage[2].0.1) < usage[2].0.1 / 100),
            "the cache grows run over run: {usage:?}"
        );
        assert!(usage[0].0.1 < usage[1].0.1, "{usage:?}");
    }
}
