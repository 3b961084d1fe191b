//! Registration with the coordinator, then a heartbeat every few seconds.
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
//! Liveness and metrics read `/proc`, which is blocking, so they are gathered on tokio's blocking
//! pool. Liveness is sized for 100,000 watched subtasks: one heartbeat looks at each process
//! and compiles each pattern once, whatever the number of selectors naming them
//! ([`liveness_all`]), and the client accepts and sends messages that large
//! ([`MAX_REGISTRY_MESSAGE_BYTES`]). Liveness honours the allow-list: a process the agent may
//! not sample is reported exactly like one that does not exist, so a subtask's status tells a
//! stranger nothing about the processes on this host.

use flamegrid_proto::host::HostProbe;
use flamegrid_proto::v1::{self, registry_client::RegistryClient};
use flamegrid_sampler::SamplerError;
use flamegrid_sampler::selection::{self, AccessPolicy, ThreadSelector};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// Registers and heartbeats until `shutdown` completes. `channel` should be lazy (see
/// [`tonic::transport::Endpoint::connect_lazy`]) so that an absent coordinator is a failed call,
/// retried with backoff, rather than a failed start.
pub async fn run(
    config: RegistrationConfig,
    channel: Channel,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), crate::AgentError> {
    let auth = BearerTokenSender::new(config.token.as_deref())?;
    let client = RegistryClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_REGISTRY_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_REGISTRY_MESSAGE_BYTES);
    let probe = Arc::new(Mutex::new(HostProbe::new()));
    tokio::select! {
        () = heartbeat_loop(config, client, probe) => {}
        () = shutdown => { tracing::debug!("registration loop stopped"); }
    }
    Ok(())
}

/// Where the loop is.
enum State {
    /// Must (re-)register before heartbeating.
    Unregistered,
    /// Registered: heartbeat every `interval`, reporting liveness of `watch`.
    Registered {
        interval: Duration,
        watch: Vec<v1::ThreadSelector>,
    },
}

async fn heartbeat_loop(
    config: RegistrationConfig,
    mut client: Client,
    probe: Arc<Mutex<HostProbe>>,
) {
    let mut state = State::Unregistered;
    let mut backoff = Backoff::new();
    loop {
        match state {
            State::Unregistered => {
                let req = register_request(&config, &probe).await;
                match client.register(req).await {
                    Ok(resp) => {
                        let interval = clamp_interval(resp.get_ref().heartbeat_interval_ms);
                        if backoff.failures > 0 {
                            tracing::info!("coordinator reachable again");
                        }
                        tracing::info!(
                            agent_id = %config.agent_id,
                            address = %config.advertised_address,
                            interval_ms = interval.as_millis() as u64,
                            "registered with the coordinator"
                        );
                        backoff.reset();
                        state = State::Registered {
                            interval,
                            watch: Vec::new(),
                        };
                        // The first heartbeat follows at once so that the coordinator learns
                        // host metrics (and its watch list reaches the agent) without a delay.
                        continue;
                    }
                    Err(status) => {
                        let delay = backoff.next_delay();
                        log_failure("register", &status, delay, backoff.failures);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            State::Registered {
                interval,
                ref watch,
            } => {
                let req = heartbeat_request(&config.agent_id, watch, &config.policy, &probe).await;
                match client.heartbeat(req).await {
                    Ok(resp) => {
                        if backoff.failures > 0 {
                            tracing::info!("coordinator reachable again");
                        }
                        backoff.reset();
                        let resp = resp.into_inner();
                        if resp.reregister {
                            tracing::info!(
                                "the coordinator does not know this agent; registering again"
                            );
                            state = State::Unregistered;
                            continue;
                        }
                        state = State::Registered {
                            interval,
                            watch: resp.watch,
                        };
                        tokio::time::sleep(interval).await;
                    }
                    Err(status) => {
                        let delay = backoff.next_delay();
                        log_failure("heartbeat", &status, delay, backoff.failures);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }
}

fn log_failure(what: &str, status: &Status, retry_in: Duration, failures: u32) {
    let code = status.code();
    let message = status.message();
    tracing::warn!(
        failures,
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

    #[test]
    fn intervals_are_clamped() {
        assert_eq!(clamp_interval(0), DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(clamp_interval(1), MIN_HEARTBEAT_INTERVAL);
        assert_eq!(clamp_interval(u64::MAX), MAX_HEARTBEAT_INTERVAL);
        assert_eq!(clamp_interval(2500), Duration::from_millis(2500));
    }
}
