//! Flame graphs: sampling runs, the cache that coalesces them, and the views over their results.
//!
//! The flow of one request, e.g. Flink's dashboard polling `GET .../flamegraph?type=on_cpu`:
//!
//! 1. The REST handler parses the ids and query, asks the registry for the vertex
//!    ([`VertexSampling`]) and calls [`FlameGraphService::answer`].
//! 2. The service answers from the [`cache`] at once: terminated (-1), nothing yet (-3), or the
//!    last snapshot (even stale). When there is none or it is stale, and no run that would fill it
//!    is in flight, it starts one [`run`] on a background task: the [`crate::fanout`] sends one RPC
//!    per agent and the answers are folded into a [`profile::Snapshot`].
//! 3. The handler renders the answer for the requested type: [`json`] (Flink's shape), [`svg`]
//!    (inferno) or [`folded`] (collapsed stacks). The state filter is applied here, so one run
//!    serves all three types.
//!
//! The SVG and folded views use [`FlameGraphService::answer_waiting`] instead, which waits for a
//! run in flight (at most the run's deadline) when nothing is cached yet, so that the first
//! request from a browser or `curl` shows a real graph. Thread dumps ([`dump`]) go straight to one
//! agent and are not cached.
//!
//! The cache also keeps the last `--flamegraph-history` runs per key. Past runs are only ever
//! read, never started: [`FlameGraphService::history`] lists them (the `.../flamegraph/history`
//! endpoint), [`FlameGraphService::kept_run`] finds one by its `endTimestamp` (`?at=` on every
//! view), and [`diff`] draws two of them against each other with inferno's differential mode.
//!
//! A request may also ask for a new run now (`?refresh=true`, [`FlameGraphService::answer_with`]),
//! and every answer says whether a run for its key is in flight ([`FlameGraphService::sampling`],
//! the `X-Flamegrid-Sampling` header), so a page can show "sampling…" and poll until it is done.
//! The cache is swept for unread entries by a periodic task the service starts and stops.
//!
//! Runs are counted ([`FlameGraphService::runs`]); each start is logged with the running total
//! (`flamegraph run started runs_started=N`), which is how tests and operators can see that two
//! concurrent requests caused one run.
//!
//! Replicated coordinators (`--database-url`, [`FlameGraphService::replicated`]) share their
//! runs through the database: one run per key across all replicas (a lease), results stored
//! there and followed by every replica, history kept there; see [`shared`].

pub mod cache;
pub mod diff;
pub mod dump;
pub mod folded;
pub mod json;
pub mod packed;
pub mod pprof;
pub mod profile;
pub mod prune;
pub mod run;
pub mod shared;
pub mod speedscope;
pub mod stored;
pub mod svg;

use crate::fanout::{AgentAuth, FanOut, FanOutError};
use crate::missing;
use crate::sampling::{SamplingParams, VertexSampling};
use cache::{CacheLimits, GraphCache, GraphKey};
use profile::Snapshot;
use run::RunCounters;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Frames per thread in a thread dump: Flink's `cluster.thread-dump.stacktrace-max-depth`
/// default. A dump is read by a person, innermost frames first; the flame graph's depth
/// (`--flamegraph-max-depth`, 100) is about aggregating, not reading.
pub const THREAD_DUMP_MAX_DEPTH: u32 = 50;

/// Errors of the flame graph service.
#[derive(Debug, thiserror::Error)]
pub enum FlameGraphError {
    /// The agent could not be asked (thread dumps).
    #[error(transparent)]
    Agent(#[from] FanOutError),
    /// inferno failed to write the SVG.
    #[error("cannot render the flame graph SVG: {0}")]
    Render(String),
}

/// What the service knows for one key right now; every view renders one of these.
#[derive(Debug, Clone)]
pub enum GraphAnswer {
    /// `--flamegraph-enabled false` (-2).
    Disabled,
    /// The vertex (or the chosen subtask) is FINISHED, CANCELED or FAILED (-1), with the
    /// subtasks that ended for a reason and why (process not found, outside the allow-list,
    /// agent lost, ...; see [`crate::registry::job::SubtaskRuntime::absent`]): empty when they
    /// finished or were canceled. A vertex with nothing to sample says why, never "retry".
    Terminated(missing::Missing),
    /// Nothing cached yet; a run was started or is in flight (-3).
    Waiting,
    /// Nothing cached, and the last run delivered nothing: -3 as well (the next request samples
    /// again), but with that run's reasons per subtask, so every view can say why.
    Unavailable(Arc<Snapshot>),
    /// The latest snapshot (possibly stale; a refresh may be running).
    Ready(Arc<Snapshot>),
    /// The latest graph, and a later run that delivered nothing (every subtask failed, e.g.
    /// the process was killed after a good run). The graph is still served, as Flink serves a
    /// cached graph until it expires, but with the later run's reasons beside it, so that a
    /// stale graph never looks whole and current.
    Outdated {
        /// The latest graph.
        graph: Arc<Snapshot>,
        /// The later run, in which no subtask delivered; its `missing` says why.
        latest: Arc<Snapshot>,
    },
}

impl GraphAnswer {
    /// Flink's `endTimestamp`: the sentinel, or when the run ended.
    pub fn end_timestamp(&self) -> i64 {
        match self {
            GraphAnswer::Disabled => -2,
            GraphAnswer::Terminated(_) => -1,
            GraphAnswer::Waiting | GraphAnswer::Unavailable(_) => -3,
            GraphAnswer::Ready(s) | GraphAnswer::Outdated { graph: s, .. } => s.end_ms,
        }
    }

    /// The graph to draw, if there is one (the latest, or an outdated one).
    pub fn graph(&self) -> Option<&Arc<Snapshot>> {
        match self {
            GraphAnswer::Ready(s) | GraphAnswer::Outdated { graph: s, .. } => Some(s),
            _ => None,
        }
    }

    /// The subtasks this answer names as absent, and why: the graph's own; for an outdated
    /// graph, those of the later run that delivered nothing (which are the current ones); for
    /// a failed run or a terminated vertex, theirs. Empty when none is absent.
    pub fn missing(&self) -> &missing::Missing {
        static NONE: missing::Missing = missing::Missing::new();
        match self {
            GraphAnswer::Ready(s)
            | GraphAnswer::Unavailable(s)
            | GraphAnswer::Outdated { latest: s, .. } => &s.missing,
            GraphAnswer::Terminated(m) => m,
            GraphAnswer::Disabled | GraphAnswer::Waiting => &NONE,
        }
    }

    /// When the later run of an outdated graph ended (the JSON's `latestRunEndTimestamp`);
    /// `None` for every other answer.
    pub fn latest_run_end(&self) -> Option<i64> {
        match self {
            GraphAnswer::Outdated { latest, .. } => Some(latest.end_ms),
            _ => None,
        }
    }

    /// The note a view shows beside a graph: the absent subtasks and why
    /// ([`missing::note`]), and for an outdated graph that they come from a later run that
    /// delivered nothing; empty when nothing is absent.
    pub fn note(&self) -> String {
        let note = missing::note(self.missing());
        match self {
            GraphAnswer::Outdated { latest, .. } => format!(
                "the latest run ({}) delivered nothing, this graph is older: {note}",
                svg::utc(latest.end_ms)
            ),
            _ => note,
        }
    }

    /// A human sentence for views that cannot show a graph.
    pub fn explain(&self) -> String {
        match self {
            GraphAnswer::Disabled => {
                "flame graphs are disabled (start the coordinator with --flamegraph-enabled true)"
                    .to_string()
            }
            GraphAnswer::Terminated(m) if m.is_empty() => {
                "no samples: the vertex or subtask has already terminated".to_string()
            }
            GraphAnswer::Terminated(m) => format!(
                "no samples: the vertex or subtask has already terminated; {}",
                missing::note(m)
            ),
            GraphAnswer::Waiting => {
                "no samples yet: no sampling run has finished (nothing running to sample); retry"
                    .to_string()
            }
            GraphAnswer::Unavailable(s) => format!(
                "no samples: {} (sampled until {}; the next request samples again)",
                missing::note(&s.missing),
                svg::utc(s.end_ms)
            ),
            GraphAnswer::Ready(s) => format!("sampled until {}", svg::utc(s.end_ms)),
            GraphAnswer::Outdated { graph, .. } => {
                format!("sampled until {}; {}", svg::utc(graph.end_ms), self.note())
            }
        }
    }
}

/// The settings the service runs with (the `--flamegraph-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlameGraphSettings {
    /// `--flamegraph-enabled`.
    pub enabled: bool,
    /// Samples, delay and depth of every run.
    pub params: SamplingParams,
    /// Cache timing and bounds.
    pub limits: CacheLimits,
    /// `--flamegraph-rpc-grace-ms`.
    pub rpc_grace: Duration,
}

/// The flame graph service: cache, coalescing, runs, thread dumps. Shared as `Arc`.
#[derive(Debug)]
pub struct FlameGraphService {
    settings: FlameGraphSettings,
    cache: Arc<GraphCache>,
    fanout: Arc<FanOut>,
    counters: Arc<RunCounters>,
    /// The cache's periodic sweeper, stopped when the service goes (coordinator shutdown).
    sweeper: Option<tokio::task::AbortHandle>,
    /// The shared database of replicated coordinators, if any (see [`shared`]).
    shared: Option<Arc<shared::SharedRuns>>,
    /// The task that follows the runs other replicas store, stopped with the service.
    follower: Option<tokio::task::AbortHandle>,
}

impl Drop for FlameGraphService {
    fn drop(&mut self) {
        for task in [&self.sweeper, &self.follower].into_iter().flatten() {
            task.abort();
        }
    }
}

impl FlameGraphService {
    /// A service with explicit settings and credentials (tests, embedding). Created within a
    /// tokio runtime, it also starts the cache's periodic sweeper
    /// ([`GraphCache::spawn_sweeper`]) on it, which ends when the service is dropped; outside a
    /// runtime the cache is only swept when read.
    pub fn with_settings(settings: FlameGraphSettings, auth: AgentAuth) -> Self {
        let cache = GraphCache::new(settings.limits);
        let sweeper = tokio::runtime::Handle::try_current()
            .is_ok()
            .then(|| cache.spawn_sweeper().abort_handle());
        FlameGraphService {
            settings,
            cache,
            fanout: Arc::new(FanOut::new(settings.rpc_grace, auth)),
            counters: Arc::new(RunCounters::default()),
            sweeper,
            shared: None,
            follower: None,
        }
    }

    /// A service of a replicated coordinator: runs are coordinated and stored through `shared`
    /// (see [`shared`]). Created within a tokio runtime, it also starts the follower of the
    /// runs other replicas store ([`shared::spawn_follower`]); outside one it still shares runs
    /// but only reads other replicas' runs when it would run itself.
    pub fn replicated(
        settings: FlameGraphSettings,
        auth: AgentAuth,
        shared: shared::SharedRuns,
    ) -> Self {
        let mut service = FlameGraphService::with_settings(settings, auth);
        let shared = Arc::new(shared);
        service.follower = tokio::runtime::Handle::try_current().is_ok().then(|| {
            shared::spawn_follower(Arc::clone(&shared), Arc::downgrade(&service.cache))
                .abort_handle()
        });
        service.shared = Some(shared);
        service
    }

    /// The shared database of a replicated coordinator.
    pub fn shared(&self) -> Option<&Arc<shared::SharedRuns>> {
        self.shared.as_ref()
    }

    /// Whether flame graphs are switched on.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The settings in force.
    pub fn settings(&self) -> &FlameGraphSettings {
        &self.settings
    }

    /// How long a run may take at most: sampling window + grace.
    pub fn run_deadline(&self) -> Duration {
        self.fanout.deadline(self.settings.params)
    }

    /// Runs started so far (`flamegrid.flamegraph.runs`).
    pub fn runs_started(&self) -> u64 {
        self.counters.started.load(Ordering::Relaxed)
    }

    /// Run counters: (started, completed, failed).
    pub fn runs(&self) -> (u64, u64, u64) {
        self.counters.get()
    }

    /// Durations of finished runs (`/metrics`).
    pub fn run_durations(&self) -> &flamegrid_proto::prometheus::Histogram {
        &self.counters.durations
    }

    /// How the last finished run went (`/metrics`): its dispatch spread and the coordinator's
    /// own time after its last agent's answer was taken in, both 0 before any run.
    pub fn last_run_timing(&self) -> (std::time::Duration, std::time::Duration) {
        self.counters.last_run()
    }

    /// The cache (for inspection).
    pub fn cache(&self) -> &Arc<GraphCache> {
        &self.cache
    }

    /// What to answer for `key` right now; never waits. Starts a run when nothing fresh is
    /// cached and none is in flight. `vertex` is the registry's current view of `key`'s vertex;
    /// the caller has checked that the subtask index is in range. Must be called within a tokio
    /// runtime (runs are spawned on it).
    pub fn answer(&self, key: &GraphKey, vertex: &VertexSampling) -> GraphAnswer {
        self.answer_with(key, vertex, false)
    }

    /// [`FlameGraphService::answer`], and with `refresh` (`?refresh=true`) a new run is started
    /// even when the cached snapshot is still fresh, unless one is already in flight. Still
    /// answers at once with what is cached: the new run's result shows up in a later request
    /// (watch [`FlameGraphService::sampling`] to know when it has landed).
    pub fn answer_with(
        &self,
        key: &GraphKey,
        vertex: &VertexSampling,
        refresh: bool,
    ) -> GraphAnswer {
        if !self.settings.enabled {
            return GraphAnswer::Disabled;
        }
        if vertex.is_terminal(key.subtask) {
            return GraphAnswer::Terminated(vertex.absent(key.subtask));
        }
        let lookup = self.cache.lookup_with(key, refresh);
        if let Some(ticket) = lookup.ticket {
            let targets = vertex.targets(key.subtask);
            let absent = vertex.absent(key.subtask);
            if targets.is_empty() && absent.is_empty() {
                // Flink's "No tasks to sample": nothing cached, the next request tries again.
                tracing::debug!(?key, "no running subtask to sample");
            } else if let (Some(shared), Ok(handle)) =
                (&self.shared, tokio::runtime::Handle::try_current())
            {
                // Counted and logged when (and only if) this replica samples.
                let ctx = shared::RunContext {
                    shared: Arc::clone(shared),
                    fanout: Arc::clone(&self.fanout),
                    counters: Arc::clone(&self.counters),
                    params: self.settings.params,
                    refresh: self.settings.limits.refresh,
                    history: self.settings.limits.runs_per_key(),
                    deadline: self.run_deadline(),
                };
                handle.spawn(shared::execute(ctx, ticket, targets, absent, refresh));
            } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let n = self.counters.started.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    runs_started = n, job = %key.job_id, vertex = %key.vertex_id, subtask = ?key.subtask,
                    subtasks = targets.len(), "flamegraph run started"
                );
                handle.spawn(run::execute(
                    Arc::clone(&self.fanout),
                    Arc::clone(&self.counters),
                    self.settings.params,
                    ticket,
                    targets,
                    absent,
                ));
            } else {
                tracing::error!(?key, "no async runtime to run the sampling on");
            }
        }
        self.cached_or_why(key, lookup.cached)
    }

    /// `cached` as the answer (outdated when a later run delivered nothing), or, with nothing
    /// cached, why (the key's last failed run) or -3.
    fn cached_or_why(&self, key: &GraphKey, cached: Option<Arc<Snapshot>>) -> GraphAnswer {
        let failed = self.last_failure(key);
        match (cached, failed) {
            (Some(graph), Some(latest)) if latest.run_id > graph.run_id => {
                GraphAnswer::Outdated { graph, latest }
            }
            (Some(graph), _) => GraphAnswer::Ready(graph),
            (None, Some(failed)) => GraphAnswer::Unavailable(failed),
            (None, None) => GraphAnswer::Waiting,
        }
    }

    /// The last run for `key` in which nothing delivered: the key's own or, for a subtask, a
    /// newer run of its whole vertex that names it (cut to that subtask), so a subtask's
    /// cached graph is not served as current after its vertex found it gone.
    fn last_failure(&self, key: &GraphKey) -> Option<Arc<Snapshot>> {
        let own = self.cache.last_failure(key);
        let Some(index) = key.subtask else {
            return own;
        };
        let vertex = self
            .cache
            .last_failure(&key.vertex())
            .filter(|v| own.as_ref().is_none_or(|o| v.run_id > o.run_id))
            .and_then(|v| {
                let reason = *v.missing.get(&index)?;
                Some(Arc::new(Snapshot {
                    subtasks: Default::default(),
                    missing: [(index, reason)].into(),
                    ..(*v).clone()
                }))
            });
        vertex.or(own)
    }

    /// Like [`FlameGraphService::answer`], but when nothing is cached yet it waits for the run in
    /// flight to end (at most the run deadline plus a second) and answers with its result.
    pub async fn answer_waiting(&self, key: &GraphKey, vertex: &VertexSampling) -> GraphAnswer {
        self.answer_waiting_with(key, vertex, false).await
    }

    /// [`FlameGraphService::answer_waiting`] with `refresh` as in
    /// [`FlameGraphService::answer_with`]. It waits only when nothing is cached yet, so a
    /// refresh of a cached graph answers at once with the cached one.
    pub async fn answer_waiting_with(
        &self,
        key: &GraphKey,
        vertex: &VertexSampling,
        refresh: bool,
    ) -> GraphAnswer {
        let first = self.answer_with(key, vertex, refresh);
        if first.graph().is_some()
            || matches!(first, GraphAnswer::Disabled | GraphAnswer::Terminated(_))
        {
            return first;
        }
        if let Some(mut done) = self.cache.pending_run(key) {
            // `changed()` errs when the run's sender is dropped, i.e. the run ended either way.
            let _ =
                tokio::time::timeout(self.run_deadline() + Duration::from_secs(1), done.changed())
                    .await;
        }
        self.cached_or_why(key, self.cache.peek(key))
    }

    /// Whether a sampling run that will fill `key` is in flight right now (for the key itself
    /// or, for a subtask, its whole vertex): the `X-Flamegrid-Sampling` response header, which
    /// lets a page show "sampling…" and poll until the new graph has landed. Always false when
    /// flame graphs are off.
    pub fn sampling(&self, key: &GraphKey) -> bool {
        self.settings.enabled && self.cache.sampling(key)
    }

    /// What the history list shows of the kept runs of `key`, newest first; empty when none is
    /// kept (or flame graphs are off). Decodes nothing (older runs are kept packed, see
    /// [`cache`]); [`FlameGraphService::kept_run`] gives a run's graph. Never starts a run.
    pub fn history(&self, key: &GraphKey) -> Vec<packed::RunInfo> {
        self.load_stored(key);
        self.cache.history(key)
    }

    /// On a replicated coordinator, reads `key`'s stored runs into the cache when it holds
    /// none for it (history survives restarts; see [`shared`]).
    fn load_stored(&self, key: &GraphKey) {
        if let Some(shared) = &self.shared
            && self.settings.enabled
        {
            shared.load_if_absent(&self.cache, key, self.settings.limits.runs_per_key());
        }
    }

    /// The kept run of `key` whose `endTimestamp` is `end_ms`, if it is still kept: decoded
    /// when it is kept packed (a few hundred ms for a vertex of ten thousand subtasks, off
    /// the cache's lock). Never starts a run: a past run cannot be sampled again.
    pub fn kept_run(&self, key: &GraphKey, end_ms: i64) -> Option<Arc<Snapshot>> {
        self.load_stored(key);
        self.cache.at(key, end_ms)
    }

    /// A thread dump of the threads `selectors` name on the agent at `address`, at most
    /// [`THREAD_DUMP_MAX_DEPTH`] frames per thread.
    pub async fn thread_dump(
        &self,
        address: &str,
        selectors: Vec<flamegrid_proto::v1::ThreadSelector>,
    ) -> Result<dump::ThreadDumpInfo, FlameGraphError> {
        let timeout = self.settings.rpc_grace.max(Duration::from_secs(1));
        let resp = self
            .fanout
            .thread_dump(address, selectors, THREAD_DUMP_MAX_DEPTH, timeout)
            .await?;
        Ok(dump::thread_dump_info(&resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{SubtaskSampling, SubtaskTarget};
    use flamegrid_proto::v1::ThreadSelector;

    fn service() -> FlameGraphService {
        FlameGraphService::with_settings(
            FlameGraphSettings {
                enabled: true,
                params: SamplingParams {
                    num_samples: 1,
                    delay_ms: 1,
                    max_depth: 10,
                },
                limits: CacheLimits::new(Duration::from_secs(60), Duration::from_secs(600)),
                rpc_grace: Duration::from_millis(200),
            },
            AgentAuth::default(),
        )
    }

    fn vertex(terminal: bool, with_target: bool) -> VertexSampling {
        let target = with_target.then(|| SubtaskTarget {
            subtask_index: 0,
            taskmanager_id: "tm".into(),
            // Nothing listens on port 1: the run fails fast.
            agent_address: "http://127.0.0.1:1".into(),
            selector: ThreadSelector::default(),
            confirmed: true,
        });
        VertexSampling {
            job_name: "j".into(),
            vertex_name: "v".into(),
            parallelism: 1,
            vertex_terminal: terminal,
            subtasks: vec![SubtaskSampling {
                index: 0,
                terminal,
                target,
                absent: None,
            }],
        }
    }

    fn key() -> GraphKey {
        GraphKey {
            job_id: "a".repeat(32),
            vertex_id: "b".repeat(32),
            subtask: None,
        }
    }

    #[tokio::test]
    async fn sentinels_and_failed_runs() {
        let s = service();
        assert_eq!(s.answer(&key(), &vertex(true, false)).end_timestamp(), -1);
        assert_eq!(s.answer(&key(), &vertex(false, false)).end_timestamp(), -3);
        assert_eq!(s.runs_started(), 0, "nothing running: no run");
        // A run against a dead agent: -3 still (nothing to draw, and the next request samples
        // again), but saying why.
        let GraphAnswer::Unavailable(failed) = s.answer_waiting(&key(), &vertex(false, true)).await
        else {
            panic!("a failed run says why")
        };
        assert_eq!(
            failed.missing.get(&0),
            Some(&missing::MissingReason::AgentUnreachable)
        );
        assert_eq!(s.runs(), (1, 0, 1));
        let again = s.answer(&key(), &vertex(false, true));
        assert_eq!(again.end_timestamp(), -3);
        assert!(
            again.explain().contains("0 (agent unreachable)"),
            "{}",
            again.explain()
        );
        assert_eq!(s.runs_started(), 2);
        // A subtask whose agent is gone is not asked, but named: never confirmed.
        let gone = service();
        let mut v = vertex(false, false);
        v.subtasks[0].absent = Some(missing::MissingReason::NeverConfirmed);
        let GraphAnswer::Unavailable(lost) = gone.answer_waiting(&key(), &v).await else {
            panic!("an absent subtask is an answer")
        };
        assert_eq!(
            lost.missing.get(&0),
            Some(&missing::MissingReason::NeverConfirmed)
        );
        let mut off = *s.settings();
        off.enabled = false;
        let s = FlameGraphService::with_settings(off, AgentAuth::default());
        assert_eq!(s.answer(&key(), &vertex(false, true)).end_timestamp(), -2);
    }

    #[tokio::test]
    async fn a_later_run_that_delivers_nothing_makes_the_cached_graph_outdated() {
        use crate::fanout::tests::{Behaviour, agent, target};
        let (address, _) = agent(Behaviour::Answer).await;
        let s = service();
        let mut v = vertex(false, false);
        v.subtasks[0].target = Some(target(0, &address, 1));
        let GraphAnswer::Ready(good) = s.answer_waiting(&key(), &v).await else {
            panic!("a graph")
        };
        // The agent is gone now: a refresh delivers nothing.
        v.subtasks[0].target = Some(target(0, "http://127.0.0.1:1", 1));
        let _ = s.answer_with(&key(), &v, true);
        let mut done = s
            .cache()
            .pending_run(&key())
            .expect("the refresh is in flight");
        let _ = done.changed().await;
        let answer = s.answer(&key(), &v);
        let GraphAnswer::Outdated { graph, latest } = &answer else {
            panic!("the cached graph, with the later run's reasons: {answer:?}")
        };
        assert!(
            Arc::ptr_eq(graph, &good),
            "the cached graph is still served"
        );
        assert_eq!(answer.end_timestamp(), good.end_ms);
        assert_eq!(
            answer.missing().get(&0),
            Some(&missing::MissingReason::AgentUnreachable)
        );
        assert_eq!(answer.latest_run_end(), Some(latest.end_ms));
        assert!(
            answer
                .note()
                .contains("delivered nothing, this graph is older")
        );
        // The subtask's graph (filled by the vertex run) is outdated by the vertex's failure.
        let sub = s.answer(&key().subtask(0), &v);
        assert!(
            matches!(&sub, GraphAnswer::Outdated { latest, .. } if latest.missing.len() == 1),
            "{sub:?}"
        );
        // Terminated: -1 with the reasons the registry kept.
        let mut ended = vertex(true, false);
        ended.subtasks[0].absent = Some(missing::MissingReason::OutsideAllowList);
        let answer = s.answer(&key(), &ended);
        assert_eq!(answer.end_timestamp(), -1);
        assert!(
            answer.explain().contains("0 (outside the allow-list)"),
            "{}",
            answer.explain()
        );
    }

    #[tokio::test]
    async fn concurrent_requests_cause_one_run_and_waiters_get_its_result() {
        use crate::fanout::tests::{Behaviour, agent, target};
        let (address, seen) = agent(Behaviour::Answer).await;
        let s = service();
        let mut v = vertex(false, false);
        v.subtasks[0].target = Some(target(0, &address, 1));
        let k = key();
        let (a, b) = tokio::join!(s.answer_waiting(&k, &v), s.answer_waiting(&k, &v));
        assert_eq!(s.runs_started(), 1);
        assert_eq!(seen.lock().unwrap().len(), 1, "one RPC");
        let (GraphAnswer::Ready(a), GraphAnswer::Ready(b)) = (a, b) else {
            panic!("both wait for the run")
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.tree(flamegrid_model::GraphType::Full).value, 1);
        // The vertex run filled subtask 0's entry: no new run for it.
        assert!(matches!(
            s.answer(&key().subtask(0), &v),
            GraphAnswer::Ready(_)
        ));
        assert_eq!(s.runs_started(), 1);
    }
}
