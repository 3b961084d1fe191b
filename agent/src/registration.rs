//! Registration with the coordinator, then a heartbeat every few seconds, failing over between
//! the coordinators of `--coordinator` when the one in use stops answering.
//!
//! The agent is the client here: it calls the coordinator's `flamegrid.v1.Registry` service.
//! The loop is a small state machine:
//!
//! ```text
//!            ┌────────── reregister = true ──────────┐
//!            ▼                                        │
//!   ┌──────────────┐  ok   ┌───────────────────────────┴─┐
//!   │   Register   │──────▶│ Heartbeat every interval_ms │◀─┐
//!   └──────────────┘       └─────────────────────────────┘  │ ok (watch list updated)
//!        │ error                     │ error                 │
//!        ▼                           ▼                       │
//!   backoff 0.5 s → 10 s       backoff 0.5 s → 10 s ─────────┘
//!   (or the next coordinator, see "Failover")
//! ```
//!
//! * **Register** sends who the agent is (id, the address where the coordinator reaches its
//!   sampling service, host facts from `flamegrid_proto::host`, its own pid) and learns the heartbeat interval.
//! * **Heartbeat** reports host metrics (CPU, load, memory, threads) and the *liveness* of the
//!   selectors the coordinator asked about in its previous answer (`watch`): does the process
//!   (and do its selected threads) still exist? That is how the coordinator marks a subtask
//!   FINISHED when its worker exits. A coordinator that restarted answers `reregister = true`, and
//!   the agent registers again at once.
//! * **While the coordinator is away** every failure is logged and retried with exponential
//!   backoff (capped), so a dead coordinator costs a log line every few seconds, not a busy loop.
//!   The sampling service runs independently of this loop and keeps answering meanwhile.
//!
//! ## Failover
//!
//! `--coordinator` may name several coordinators (replicas on one database, DESIGN.md). The agent
//! talks to one at a time, starting with the first of the list, and stays with it while it
//! answers; it never moves back by itself. After a failed call (any error: connection refused,
//! UNAVAILABLE, no answer within the call's deadline, a refusal) it leaves the coordinator in use
//! for the next one of the list (round-robin) when
//!
//! * that coordinator has not answered since the agent turned to it (so the agent settles on the
//!   first coordinator that answers), or
//! * [`FAILOVER_AFTER_FAILURES`] calls to it failed in a row, or
//! * its calls have been failing for a heartbeat interval or more (counted from the start of the
//!   first failed call: a coordinator that accepts connections and never answers).
//!
//! A heartbeat's deadline is its interval, within [`MIN_CALL_DEADLINE`]..[`MAX_CALL_DEADLINE`]
//! (a registration's is [`MAX_CALL_DEADLINE`]). With the coordinator's default heartbeat timeout
//! of 30 s (5 s beats) an agent whose coordinator is killed talks to the next one about 5.5 s
//! after the last answer (two refused calls half a second apart), one whose coordinator hangs
//! after about 10 s: well before the coordinator's timeout, so its subtasks never turn lost.
//!
//! The move keeps the agent's id and state: a registered agent heartbeats the new coordinator at
//! once, and registers only when that one answers `reregister` (replicas on one database know the
//! agent already; the coordinator's takeover rules accept the same id from the same place). Each
//! move is logged once, saying from where, to where and why. After leaving a coordinator that
//! had answered, the first call to the next one goes at once; every other failed call is followed
//! by the backoff above (which only an answer resets), so a list of coordinators that are all
//! down costs one call per backoff step, round-robin. [`CoordinatorLink`] tells `/metrics` which
//! coordinator is in use and how many moves there were.
//!
//! Liveness and metrics read `/proc`, which is blocking, so they are gathered on tokio's blocking
//! pool. Liveness is sized for 100,000 watched subtasks: one heartbeat looks at each process
//! and compiles each pattern once, whatever the number of selectors naming them
//! ([`liveness_all`]), and the client accepts and sends messages that large
//! ([`MAX_REGISTRY_MESSAGE_BYTES`]). Liveness honours the allow-list: a process the agent may
//! not sample is reported exactly like one that does not exist, so a subtask's status tells a
//! stranger nothing about the processes on this host.

use flamegrid_proto::host::HostProbe;
use flamegrid_proto::prometheus::{Kind, TextWriter};
use flamegrid_proto::v1::{self, registry_client::RegistryClient};
use flamegrid_sampler::SamplerError;
use flamegrid_sampler::selection::{self, AccessPolicy, ThreadSelector};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The heartbeat interval when the coordinator's answer leaves it at 0.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// The shortest heartbeat interval the agent accepts from a coordinator; a smaller value (a bug,
/// or a hostile coordinator) would turn the heartbeat into a busy loop.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// The longest heartbeat interval the agent accepts; beyond it the coordinator would time the
/// agent out anyway.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(300);
/// First retry delay after a failed call to the coordinator.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest retry delay while the coordinator is unreachable.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Failed calls in a row after which the agent leaves a coordinator that had answered for the
/// next one of `--coordinator` (see "Failover" above).
pub const FAILOVER_AFTER_FAILURES: u32 = 2;
/// The shortest deadline of a registry call, whatever the heartbeat interval: a loaded
/// coordinator must not look dead because one answer took longer than a 100 ms beat.
pub const MIN_CALL_DEADLINE: Duration = Duration::from_secs(2);
/// The longest deadline of a registry call (and the deadline of a registration).
pub const MAX_CALL_DEADLINE: Duration = Duration::from_secs(10);

pub use flamegrid_proto::MAX_REGISTRY_MESSAGE_BYTES;

/// Who the agent is and where its coordinator lives. Its `Debug` form never shows the token.
#[derive(Clone)]
pub struct RegistrationConfig {
    /// The agent's id (32 hex by default).
    pub agent_id: String,
    /// Where the coordinator reaches the sampling service, e.g. `http://10.0.0.5:6122`.
    pub advertised_address: String,
    /// Sent as `authorization: Bearer <token>` on every registry call when set.
    pub token: Option<String>,
    /// The allow-list: liveness of processes outside it is reported as "not found".
    pub policy: AccessPolicy,
}

/// Adds `authorization: Bearer <token>` to every outgoing registry call. Its `Debug` form never
/// shows the token.
#[derive(Clone)]
pub struct BearerTokenSender {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for RegistrationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationConfig")
            .field("agent_id", &self.agent_id)
            .field("advertised_address", &self.advertised_address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("policy", &self.policy)
            .finish()
    }
}

impl std::fmt::Debug for BearerTokenSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokenSender")
            .field("sends_token", &self.header.is_some())
            .finish()
    }
}

impl BearerTokenSender {
    /// A sender of `token`; fails for a token that cannot travel in an HTTP header.
    pub fn new(token: Option<&str>) -> Result<Self, crate::AgentError> {
        let header = match token {
            None => None,
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                crate::AgentError::InvalidArgument(
                    "the token must be printable ASCII (no control characters)".into(),
                )
            })?),
        };
        Ok(BearerTokenSender { header })
    }
}

impl tonic::service::Interceptor for BearerTokenSender {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// The registry client the loop uses.
pub type Client = RegistryClient<InterceptedService<Channel, BearerTokenSender>>;

/// One coordinator of the `--coordinator` list.
#[derive(Debug, Clone)]
pub struct Coordinator {
    /// Its URL as given, for logs and `/metrics` (`--coordinator` refuses URLs with user info,
    /// so it carries no credentials).
    pub url: String,
    /// A channel to it; it should be lazy (see [`tonic::transport::Endpoint::connect_lazy`]) so
    /// that an absent coordinator is a failed call, retried with backoff, rather than a failed
    /// start.
    pub channel: Channel,
}

/// Which coordinator the registration loop talks to, and how often it moved: shared with the
/// agent's `/metrics` ([`CoordinatorLink::render`]).
#[derive(Debug)]
pub struct CoordinatorLink {
    urls: Vec<String>,
    current: AtomicUsize,
    failovers: AtomicU64,
    answering: AtomicBool,
}

impl CoordinatorLink {
    /// A link to the first of `urls` (the `--coordinator` list, in order), not answering yet.
    pub fn new(urls: Vec<String>) -> Arc<Self> {
        Arc::new(CoordinatorLink {
            urls,
            current: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
            answering: AtomicBool::new(false),
        })
    }

    /// The position in the list of the coordinator in use (0 for the first).
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The URL of the coordinator in use.
    pub fn current_url(&self) -> &str {
        self.urls
            .get(self.current())
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Moves from one coordinator to another so far.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Whether the last call to the coordinator in use was answered.
    pub fn answering(&self) -> bool {
        self.answering.load(Ordering::Relaxed)
    }

    fn moved_to(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    fn set_answering(&self, answering: bool) {
        self.answering.store(answering, Ordering::Relaxed);
    }

    /// The link's families in Prometheus' text format, for the agent's `/metrics`:
    /// `flamegrid_agent_coordinator_index`, `flamegrid_agent_coordinator_info{url}`,
    /// `flamegrid_agent_coordinator_up` and `flamegrid_agent_coordinator_failovers_total`.
    pub fn render(&self) -> String {
        let mut w = TextWriter::new();
        w.single(
            "flamegrid_agent_coordinator_index",
            Kind::Gauge,
            "Position in --coordinator (0 for the first) of the coordinator the agent talks to.",
            self.current() as f64,
        );
        let info = "flamegrid_agent_coordinator_info";
        w.family(
            info,
            Kind::Gauge,
            "The coordinator the agent talks to, by URL (always 1).",
        );
        w.sample(info, &[("url", self.current_url())], 1.0);
        w.single(
            "flamegrid_agent_coordinator_up",
            Kind::Gauge,
            "1 when the last registry call to the coordinator in use was answered, else 0.",
            if self.answering() { 1.0 } else { 0.0 },
        );
        w.single(
            "flamegrid_agent_coordinator_failovers_total",
            Kind::Counter,
            "Moves from one coordinator of --coordinator to the next.",
            self.failovers() as f64,
        );
        w.finish()
    }
}

/// Registers and heartbeats until `shutdown` completes, failing over between `coordinators`
/// (the `--coordinator` list, in order; see "Failover" above) and telling `link` where it is.
pub async fn run(
    config: RegistrationConfig,
    coordinators: Vec<Coordinator>,
    link: Arc<CoordinatorLink>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), crate::AgentError> {
    if coordinators.is_empty() {
        return Err(crate::AgentError::InvalidArgument(
            "at least one coordinator is needed".into(),
        ));
    }
    let auth = BearerTokenSender::new(config.token.as_deref())?;
    let targets = coordinators
        .into_iter()
        .map(|c| Target {
            url: c.url,
            client: RegistryClient::with_interceptor(c.channel, auth.clone())
                .max_decoding_message_size(MAX_REGISTRY_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_REGISTRY_MESSAGE_BYTES),
        })
        .collect();
    let probe = Arc::new(Mutex::new(HostProbe::new()));
    tokio::select! {
        () = heartbeat_loop(config, targets, link, probe) => {}
        () = shutdown => { tracing::debug!("registration loop stopped"); }
    }
    Ok(())
}

/// A coordinator with its client.
struct Target {
    url: String,
    client: Client,
}

/// Where the loop is.
enum State {
    /// Must (re-)register before heartbeating.
    Unregistered,
    /// Registered: heartbeat every interval, reporting liveness of `watch`.
    Registered { watch: Vec<v1::ThreadSelector> },
}

/// What a coordinator answered.
enum Answer {
    /// The registration was accepted: heartbeat at this interval.
    Registered(Duration),
    /// A heartbeat's answer.
    Heartbeat(v1::HeartbeatResponse),
}

/// Why the agent leaves the coordinator in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveReason {
    /// It has not answered since the agent turned to it.
    NeverAnswered,
    /// This many calls to it failed in a row.
    FailedCalls(u32),
    /// Its calls have been failing this long (a heartbeat interval or more).
    FailingFor(Duration),
}

impl std::fmt::Display for MoveReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MoveReason::NeverAnswered => {
                write!(f, "it has not answered since the agent turned to it")
            }
            MoveReason::FailedCalls(n) => write!(f, "{n} calls to it failed in a row"),
            MoveReason::FailingFor(d) => write!(
                f,
                "its calls have been failing for {} ms, a heartbeat interval or more",
                d.as_millis()
            ),
        }
    }
}

/// What the failover rule remembers of the coordinator in use since the agent turned to it.
#[derive(Debug, Default)]
struct Tenure {
    /// It answered at least once.
    answered: bool,
    /// Failed calls in a row.
    failures: u32,
    /// When the first of those failed calls started.
    failing_since: Option<Instant>,
}

impl Tenure {
    fn answered(&mut self) {
        self.answered = true;
        self.failures = 0;
        self.failing_since = None;
    }

    /// Counts a call that started at `started` and failed at `now`; says whether (and why) to
    /// leave this coordinator, `interval` being the heartbeat interval.
    fn failed(&mut self, started: Instant, now: Instant, interval: Duration) -> Option<MoveReason> {
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(started);
        if !self.answered {
            return Some(MoveReason::NeverAnswered);
        }
        if self.failures >= FAILOVER_AFTER_FAILURES {
            return Some(MoveReason::FailedCalls(self.failures));
        }
        let failing_for = now.saturating_duration_since(since);
        (failing_for >= interval).then_some(MoveReason::FailingFor(failing_for))
    }
}

/// The deadline of one heartbeat: its interval, within the call deadline bounds.
fn heartbeat_deadline(interval: Duration) -> Duration {
    interval.clamp(MIN_CALL_DEADLINE, MAX_CALL_DEADLINE)
}

/// `call` with a deadline; a call past it fails with DEADLINE_EXCEEDED.
async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(deadline, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {} ms",
            deadline.as_millis()
        ))),
    }
}

async fn heartbeat_loop(
    config: RegistrationConfig,
    mut targets: Vec<Target>,
    link: Arc<CoordinatorLink>,
    probe: Arc<Mutex<HostProbe>>,
) {
    let mut state = State::Unregistered;
    let mut backoff = Backoff::new();
    // The interval the coordinators asked for (the default until one has).
    let mut interval = DEFAULT_HEARTBEAT_INTERVAL;
    let mut current = 0;
    let mut tenure = Tenure::default();
    let count = targets.len();
    loop {
        let Some(target) = targets.get_mut(current) else {
            return;
        };
        let started = Instant::now();
        let (what, result) = match &state {
            State::Unregistered => {
                let req = register_request(&config, &probe).await;
                let answer = within(MAX_CALL_DEADLINE, target.client.register(req)).await;
                (
                    "register",
                    answer.map(|r| Answer::Registered(clamp_interval(r.heartbeat_interval_ms))),
                )
            }
            State::Registered { watch } => {
                let req = heartbeat_request(&config.agent_id, watch, &config.policy, &probe).await;
                let answer =
                    within(heartbeat_deadline(interval), target.client.heartbeat(req)).await;
                ("heartbeat", answer.map(Answer::Heartbeat))
            }
        };
        match result {
            Ok(answer) => {
                if backoff.failures > 0 {
                    tracing::info!(coordinator = %target.url, "coordinator reachable again");
                }
                backoff.reset();
                tenure.answered();
                link.set_answering(true);
                match answer {
                    Answer::Registered(asked) => {
                        interval = asked;
                        tracing::info!(
                            agent_id = %config.agent_id,
                            address = %config.advertised_address,
                            coordinator = %target.url,
                            interval_ms = interval.as_millis() as u64,
                            "registered with the coordinator"
                        );
                        state = State::Registered { watch: Vec::new() };
                        // The first heartbeat follows at once so that the coordinator learns
                        // host metrics (and its watch list reaches the agent) without a delay.
                    }
                    Answer::Heartbeat(resp) if resp.reregister => {
                        tracing::info!(
                            coordinator = %target.url,
                            "the coordinator does not know this agent; registering again"
                        );
                        state = State::Unregistered;
                    }
                    Answer::Heartbeat(resp) => {
                        state = State::Registered { watch: resp.watch };
                        tokio::time::sleep(interval).await;
                    }
                }
            }
            Err(status) => {
                link.set_answering(false);
                let leave = tenure
                    .failed(started, Instant::now(), interval)
                    .filter(|_| count > 1);
                let Some(reason) = leave else {
                    let delay = backoff.next_delay();
                    log_failure(what, &status, delay, backoff.failures, &target.url);
                    tokio::time::sleep(delay).await;
                    continue;
                };
                let from = target.url.clone();
                let had_answered = tenure.answered;
                current = (current + 1) % count;
                tenure = Tenure::default();
                link.moved_to(current);
                let to = targets.get(current).map(|t| t.url.as_str()).unwrap_or("");
                // After leaving a coordinator that answered, the next one is asked at once;
                // otherwise (every coordinator failing) one call per backoff step.
                let delay = if had_answered {
                    Duration::ZERO
                } else {
                    backoff.next_delay()
                };
                tracing::warn!(
                    from = %from,
                    to = %to,
                    retry_in_ms = delay.as_millis() as u64,
                    "{what} failed ({:?}: {}) and {reason}: failing over to the next coordinator",
                    status.code(),
                    status.message()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn log_failure(what: &str, status: &Status, retry_in: Duration, failures: u32, coordinator: &str) {
    let code = status.code();
    let message = status.message();
    tracing::warn!(
        failures,
        coordinator,
        retry_in_ms = retry_in.as_millis() as u64,
        "{what} failed ({code:?}: {message}); sampling continues, retrying"
    );
}

/// The interval the coordinator asked for, clamped to sane bounds.
fn clamp_interval(ms: u64) -> Duration {
    if ms == 0 {
        return DEFAULT_HEARTBEAT_INTERVAL;
    }
    Duration::from_millis(ms).clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL)
}

/// Exponential backoff: 0.5 s, 1 s, 2 s, ... capped at [`BACKOFF_MAX`].
#[derive(Debug)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff { failures: 0 }
    }
    fn reset(&mut self) {
        self.failures = 0;
    }
    fn next_delay(&mut self) -> Duration {
        let delay = BACKOFF_START
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

async fn register_request(
    config: &RegistrationConfig,
    probe: &Arc<Mutex<HostProbe>>,
) -> v1::RegisterRequest {
    let probe = Arc::clone(probe);
    let host = tokio::task::spawn_blocking(move || lock(&probe).host_info())
        .await
        .unwrap_or_default();
    v1::RegisterRequest {
        agent_id: config.agent_id.clone(),
        address: config.advertised_address.clone(),
        host: Some(host),
        pid: std::process::id(),
    }
}

async fn heartbeat_request(
    agent_id: &str,
    watch: &[v1::ThreadSelector],
    policy: &AccessPolicy,
    probe: &Arc<Mutex<HostProbe>>,
) -> v1::HeartbeatRequest {
    let probe = Arc::clone(probe);
    let watch = watch.to_vec();
    let policy = policy.clone();
    let gathered = tokio::task::spawn_blocking(move || {
        let liveness = liveness_all(&watch, &policy);
        let mut probe = lock(&probe);
        let metrics = probe.metrics();
        (liveness, metrics, probe.free_memory())
    })
    .await;
    let (liveness, metrics, free_memory) = gathered.unwrap_or_default();
    v1::HeartbeatRequest {
        agent_id: agent_id.to_string(),
        liveness,
        metrics,
        free_memory,
    }
}

fn lock(probe: &Mutex<HostProbe>) -> std::sync::MutexGuard<'_, HostProbe> {
    // A panic while probing leaves nothing half-updated that matters: keep going.
    probe
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the process (and selected threads) of one watched selector exist now, as
/// [`liveness_all`] says it for a list of one.
pub fn liveness_of(sel: &v1::ThreadSelector, policy: &AccessPolicy) -> v1::SubtaskLiveness {
    LivenessScan::default().liveness_of(sel, policy)
}

/// The liveness of every watched selector, in order: does its process exist, may the agent
/// sample it (the allow-list), and how many of its threads the selector matches.
///
/// Liveness never stops or reads a thread. A process outside the allow-list (or a selector
/// that is malformed) is reported as not alive with pid 0, exactly like a process that does not
/// exist; the report's `failure` says which it was, in the fixed words of the sampling answer
/// ([`crate::service::failure_kind`]), never with the process's uid or comm. The cost grows with the selectors, not with selectors × processes: each process is
/// looked at, each pattern compiled and `/proc` listed (for processes named by comm) at most
/// once per call.
pub fn liveness_all(
    watch: &[v1::ThreadSelector],
    policy: &AccessPolicy,
) -> Vec<v1::SubtaskLiveness> {
    let mut scan = LivenessScan::default();
    watch
        .iter()
        .map(|sel| scan.liveness_of(sel, policy))
        .collect()
}

/// A process's threads as (tid, name), shared by the selectors that name the process.
type Threads = Arc<Vec<(u32, String)>>;

/// What one heartbeat learnt about `/proc`, shared by all its selectors.
#[derive(Default)]
struct LivenessScan {
    /// The oldest process per comm, from one listing of `/proc` (made on first need).
    by_comm: Option<HashMap<String, u32>>,
    /// Per pid: its threads when it exists and is allowed, else why not.
    processes: HashMap<u32, Result<Threads, v1::SubtaskFailure>>,
    /// Compiled thread-name patterns (`None`: the pattern does not compile).
    patterns: HashMap<String, Option<regex::Regex>>,
}

impl LivenessScan {
    fn liveness_of(
        &mut self,
        sel: &v1::ThreadSelector,
        policy: &AccessPolicy,
    ) -> v1::SubtaskLiveness {
        let dead = |failure: v1::SubtaskFailure| v1::SubtaskLiveness {
            subtask_key: sel.subtask_key.clone(),
            alive: false,
            pid: 0,
            threads: 0,
            failure: failure as i32,
        };
        let patterns = &mut self.patterns;
        let mut compile = |pattern: &str| -> Result<regex::Regex, SamplerError> {
            let entry = patterns
                .entry(pattern.to_string())
                .or_insert_with(|| ThreadSelector::compile_thread_name(pattern).ok());
            entry
                .clone()
                .ok_or_else(|| SamplerError::InvalidArgument("bad pattern".into()))
        };
        let Ok(converted) = crate::wire::selector_from_wire_with(sel, &mut compile) else {
            return dead(v1::SubtaskFailure::AgentError);
        };
        let pid = match &converted.process {
            selection::ProcessRef::Pid(pid) => *pid,
            selection::ProcessRef::Name(name) => {
                let by_comm = self.by_comm.get_or_insert_with(processes_by_comm);
                match by_comm.get(selection::truncate_comm(name)) {
                    Some(&pid) => pid,
                    None => return dead(v1::SubtaskFailure::ProcessNotFound),
                }
            }
        };
        let threads = self
            .processes
            .entry(pid)
            .or_insert_with(|| {
                selection::resolve(&ThreadSelector::pid(pid), policy)
                    .map(|resolved| Arc::new(resolved.threads))
                    .map_err(|e| crate::service::failure_kind(&e))
            })
            .clone();
        let threads = match threads {
            Ok(threads) => threads,
            Err(failure) => return dead(failure),
        };
        let matching = threads
            .iter()
            .filter(|(tid, name)| converted.selects(*tid, name))
            .count();
        v1::SubtaskLiveness {
            subtask_key: sel.subtask_key.clone(),
            alive: matching > 0,
            pid,
            threads: matching as u32,
            failure: if matching > 0 {
                v1::SubtaskFailure::Unspecified
            } else {
                v1::SubtaskFailure::NoMatchingThread
            } as i32,
        }
    }
}

/// The oldest process (smallest start time) of each comm, never the agent itself: what a
/// selector by process name means (as in `selection::resolve`).
fn processes_by_comm() -> HashMap<String, u32> {
    use flamegrid_sampler::proc;
    let me = std::process::id();
    let mut oldest: HashMap<String, (u64, u32)> = HashMap::new();
    for pid in proc::list_pids().unwrap_or_default() {
        if pid == me {
            continue;
        }
        let (Ok(comm), Ok(stat)) = (proc::process_comm(pid), proc::process_stat(pid)) else {
            continue;
        };
        let entry = oldest.entry(comm).or_insert((stat.starttime, pid));
        if stat.starttime < entry.0 {
            *entry = (stat.starttime, pid);
        }
    }
    oldest
        .into_iter()
        .map(|(comm, (_, pid))| (comm, pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_START);
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let config = RegistrationConfig {
            agent_id: "a".into(),
            advertised_address: "http://x:1".into(),
            token: Some("very-secret-token".into()),
            policy: AccessPolicy::own_user(),
        };
        let sender = BearerTokenSender::new(Some("very-secret-token")).unwrap();
        let check = crate::service::BearerTokenCheck::new(Some("very-secret-token"));
        for text in [
            format!("{config:?}"),
            format!("{sender:?}"),
            format!("{check:?}"),
        ] {
            assert!(!text.contains("very-secret"), "{text}");
        }
        assert!(BearerTokenSender::new(Some("bad\ntoken")).is_err());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_failover_rule_settles_on_an_answering_coordinator_and_leaves_a_dead_one() {
        let t0 = Instant::now();
        let beat = Duration::from_secs(5);
        // One that has not answered since the agent turned to it: left after one failure.
        let mut t = Tenure::default();
        assert_eq!(t.failed(t0, t0, beat), Some(MoveReason::NeverAnswered));
        // One that answered: a refused call is retried there once; the second in a row leaves.
        let mut t = Tenure::default();
        t.answered();
        assert_eq!(t.failed(t0, t0 + ms(1), beat), None);
        assert_eq!(
            t.failed(t0 + ms(500), t0 + ms(501), beat),
            Some(MoveReason::FailedCalls(2))
        );
        // An answer in between starts the count again.
        let mut t = Tenure::default();
        t.answered();
        assert_eq!(t.failed(t0, t0 + ms(1), beat), None);
        t.answered();
        assert_eq!(t.failed(t0 + ms(10), t0 + ms(11), beat), None);
        // One that hangs: its first call to fail after a whole interval leaves it.
        let mut t = Tenure::default();
        t.answered();
        assert_eq!(
            t.failed(t0, t0 + heartbeat_deadline(beat), beat),
            Some(MoveReason::FailingFor(beat))
        );
        assert_eq!(heartbeat_deadline(ms(100)), MIN_CALL_DEADLINE);
        assert_eq!(
            heartbeat_deadline(Duration::from_secs(300)),
            MAX_CALL_DEADLINE
        );
    }

    /// When, after the last answer of a coordinator that then died, the agent turns to the next
    /// one (which it asks at once): every call failing at once (refused) or each taking its
    /// whole deadline (hung).
    fn time_to_leave(beat: Duration, hung: bool) -> Duration {
        let t0 = Instant::now();
        let mut tenure = Tenure::default();
        tenure.answered();
        let mut backoff = Backoff::new();
        let mut now = t0 + beat;
        loop {
            let started = now;
            if hung {
                now += heartbeat_deadline(beat);
            }
            if tenure.failed(started, now, beat).is_some() {
                return now - t0;
            }
            now += backoff.next_delay();
        }
    }

    #[test]
    fn failover_comes_well_within_the_coordinators_heartbeat_timeout() {
        // The coordinator asks for a beat every third of its timeout (100 ms to 5 s) and loses
        // an agent silent for the timeout.
        for timeout_s in [6, 10, 15, 30, 60, 300, 86_400] {
            let timeout = Duration::from_secs(timeout_s);
            let beat = (timeout / 3).clamp(ms(100), Duration::from_secs(5));
            for hung in [false, true] {
                let left = time_to_leave(beat, hung);
                assert!(
                    left < timeout,
                    "timeout {timeout_s} s, hung {hung}: left after {left:?}"
                );
            }
        }
        // The default timeout of 30 s (5 s beats), as the module documentation says.
        assert_eq!(time_to_leave(Duration::from_secs(5), false), ms(5_500));
        assert_eq!(time_to_leave(Duration::from_secs(5), true), ms(10_000));
    }

    #[test]
    fn the_link_tells_metrics_where_the_agent_is() {
        use flamegrid_proto::prometheus::parse_line;
        let link = CoordinatorLink::new(vec!["http://a:6123".into(), "http://b:6123".into()]);
        link.set_answering(true);
        link.moved_to(1);
        let text = link.render();
        let samples: Vec<_> = text
            .lines()
            .filter_map(|l| parse_line(l).unwrap())
            .collect();
        let value = |name: &str| samples.iter().find(|s| s.0 == name).map(|s| s.2);
        assert_eq!(value("flamegrid_agent_coordinator_index"), Some(1.0));
        assert_eq!(
            value("flamegrid_agent_coordinator_failovers_total"),
            Some(1.0)
        );
        assert_eq!(value("flamegrid_agent_coordinator_up"), Some(1.0));
        let info = samples
            .iter()
            .find(|s| s.0 == "flamegrid_agent_coordinator_info")
            .unwrap();
        assert_eq!(info.1, [("url".to_string(), "http://b:6123".to_string())]);
        assert!(text.contains("# TYPE flamegrid_agent_coordinator_failovers_total counter"));
    }

    #[test]
    fn intervals_are_clamped() {
        assert_eq!(clamp_interval(0), DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(clamp_interval(1), MIN_HEARTBEAT_INTERVAL);
        assert_eq!(clamp_interval(u64::MAX), MAX_HEARTBEAT_INTERVAL);
        assert_eq!(clamp_interval(2500), Duration::from_millis(2500));
    }
}
