//! Fan-out of sampling requests to agents: one RPC per agent, all at once, one deadline.
//!
//! A flame graph of a vertex needs samples of every RUNNING subtask, and those subtasks are spread
//! over many task managers (agents). Flink first sent one RPC per subtask and fell over at high
//! parallelism (FLINK-26074); then one RPC per task manager, but a single slow or dead task
//! manager discarded the whole run. flamegrid keeps the good half and fixes the other:
//!
//! 1. The registry describes the vertex as a [`crate::sampling::VertexSampling`]: per subtask,
//!    where it runs ([`SubtaskTarget`]: agent address + thread selector).
//! 2. [`FanOut::sample`] groups the targets by agent (one pass over them) and sends **one**
//!    `Sample` RPC per agent, all concurrently: every call is spawned before any answer is
//!    awaited, and how long sending them all took is the outcome's
//!    [`FanOutOutcome::dispatch_spread`]. Each selector carries a `subtask_key`
//!    (`<prefix>/<index>`) so the answer can be attributed to subtask indexes without trusting
//!    the agent's view of the job.
//! 3. Answers are taken in as they arrive, each on its own call's task ([`absorb_answer`]):
//!    with [`FanOut::sample_with`] every subtask's samples are folded there into what the run
//!    keeps (the flame graph run keeps a folded profile per subtask) and the decoded answer is
//!    dropped, so a run holds at most the answers in flight, and once the last agent has
//!    answered only its own share is left to do.
//! 4. Every RPC shares one deadline: `num_samples × delay + grace`. An agent that errors or misses
//!    it costs only its own subtasks, which come back in [`FanOutOutcome::missing`]; so does a
//!    subtask the agent answered with a per-subtask `error`, or whose samples do not hold together
//!    (bad indexes are an error, never a panic). An answer arriving after the deadline is simply
//!    dropped with its task, and an answer echoing the wrong `request_id` is refused.
//! 5. An agent that is busy (RESOURCE_EXHAUSTED: it already runs `--max-concurrent-runs`
//!    sampling runs) is asked again after a short jittered pause, as long as a whole sampling
//!    window still fits before the deadline (`call_until_deadline`): twenty vertices on one
//!    agent opened at once all get their graphs, a little later, instead of sixteen of them
//!    coming back empty.
//!
//! Everything an agent answers is input from another host: the answer is cut to the run's depth
//! and bounded in size as it is converted (`flamegrid_proto::convert`, [`WireLimits`]), entries
//! for subtasks that were not asked for are ignored, and an over-large answer costs only that
//! agent's subtasks. With TLS settings (`--tls-*`), agents are only called over `https://`: a
//! registration naming a plain `http://` address would otherwise receive the shared token in
//! clear text.
//!
//! Every agent is called through one shared HTTP/2 client ([`transport`]): one connection per
//! agent, opened on its first call and kept, so a run does not pay a TCP (or TLS) handshake to an
//! agent it talked to before; a connection that broke is opened again on the next call, and one
//! unused for [`transport::IDLE_TIMEOUT`] is closed (an agent that moved to another port). There
//! is no per-agent queue or worker in front of those connections: a tonic `Channel` per agent had
//! one (a tower `Buffer`), over 10 MiB of the coordinator's heap with 1,000 agents. The shared
//! token (`--token-file`) travels as `authorization: Bearer <token>` metadata, as the agent
//! expects, added to every call by the client's interceptor ([`crate::bearer`]).
//!
//! A call that fails for want of the agent (refused, connect timeout, TLS handshake refused, the
//! connection reset or closed under the call) is "agent unreachable" (UNAVAILABLE), with the
//! transport's own words kept in the message ([`status_error`]); anything else the agent answers
//! keeps its gRPC code.

use crate::bearer::BearerToken;
use crate::missing::{Missing, MissingReason};
use crate::sampling::{SamplingParams, SubtaskTarget};
use flamegrid_model::SampleSet;
use flamegrid_model::clock::now_ms;
use flamegrid_proto::convert::{AnswerBudget, ConvertError, WireLimits, subtask_sample_set_within};
use flamegrid_proto::v1::{self, ThreadSelector, sampling_client::SamplingClient};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_rustls::rustls;
use tonic::service::interceptor::InterceptedService;

pub mod transport;

/// A sampling client of one agent over the shared transport, every call carrying the shared
/// token ([`BearerToken`]).
type AgentClient = SamplingClient<InterceptedService<transport::AgentTransport, BearerToken>>;

/// Largest sampling answer accepted from an agent. 1000 samples × 64 threads × 100 frames is about
/// 10 MB of varints; tonic's default of 4 MiB would reject big but legitimate runs. This bounds
/// the bytes only: what they expand into (depth, names, number of samples) is bounded again
/// when the answer is converted ([`WireLimits`], with the run's own `max_depth`), so a hostile
/// agent's 64 MiB can never become a stack deeper than `--flamegraph-max-depth` or gigabytes of
/// copied names. At most one answer per agent of the run is in flight, each decoded once.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// How the coordinator authenticates to agents; mirrors the agent's `--token-file` and `--tls-*`.
#[derive(Debug, Clone, Default)]
pub struct AgentAuth {
    /// Sends `authorization: Bearer <token>` on every call (an interceptor of the client).
    pub bearer: BearerToken,
    /// TLS settings for `https://` agent addresses: the CA agents' certificates must chain to,
    /// this coordinator's certificate for mutual TLS, ALPN `h2` (built by
    /// [`crate::credentials::Credentials::agent_auth`]). With them, agents are only called over
    /// `https://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl AgentAuth {
    /// Auth carrying a shared token. Fails for a token that cannot travel in a header.
    pub fn with_token(mut self, token: &str) -> Result<Self, FanOutError> {
        self.bearer = BearerToken::new(token).map_err(|_| FanOutError::BadToken)?;
        Ok(self)
    }
}

/// Why one agent contributed nothing to a run, or why a thread dump failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FanOutError {
    /// The registered address is not an `http://` or `https://` URI with a host (or it is
    /// `http://` while the coordinator has TLS settings).
    #[error("bad agent address {address:?}: {reason}")]
    BadAddress {
        /// The address as registered.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent answered with a gRPC error (or could not be reached).
    #[error("agent {address} failed: {code:?}: {message}")]
    Status {
        /// The agent's address.
        address: String,
        /// gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The agent did not answer before the run's deadline.
    #[error("agent {address} did not answer within {millis} ms")]
    DeadlineExceeded {
        /// The agent's address.
        address: String,
        /// The deadline that passed.
        millis: u128,
    },
    /// The agent answered another request than the one asked.
    #[error("agent {address} answered request {got}, expected {expected}")]
    WrongRequest {
        /// The agent's address.
        address: String,
        /// The request id sent.
        expected: u64,
        /// The request id echoed.
        got: u64,
    },
    /// The shared token holds characters that cannot be sent as gRPC metadata.
    #[error("the shared token contains characters that cannot be sent in a gRPC header")]
    BadToken,
}

impl FanOutError {
    /// What the subtasks asked of an agent whose call failed this way are shown as.
    pub fn missing_reason(&self) -> MissingReason {
        match self {
            FanOutError::BadAddress { .. } => MissingReason::AgentUnreachable,
            FanOutError::Status { code, message, .. } => MissingReason::from_status(*code, message),
            FanOutError::DeadlineExceeded { .. } => MissingReason::AgentTimedOut,
            FanOutError::WrongRequest { .. } => MissingReason::AgentFailed,
            FanOutError::BadToken => MissingReason::AgentRefusedCredentials,
        }
    }
}

/// What one fan-out brought back. `T` is what each subtask's samples were made into as its
/// agent's answer arrived (see [`FanOut::sample_with`]): a [`SampleSet`] by default.
#[derive(Debug)]
pub struct FanOutOutcome<T = SampleSet> {
    /// The id sent to (and echoed by) every agent.
    pub request_id: u64,
    /// Samples per subtask index, for every subtask that delivered.
    pub sets: BTreeMap<u32, T>,
    /// Subtasks asked for that delivered nothing (agent failed or late, per-subtask error, bad
    /// answer), and why.
    pub missing: Missing,
    /// One line per failed agent or subtask, for logs.
    pub failures: Vec<String>,
    /// Agents that answered in time.
    pub agents_answered: usize,
    /// Agents that failed or missed the deadline.
    pub agents_failed: usize,
    /// Coordinator wall clock (ms since the epoch) when the first RPC went out.
    pub start_ms: i64,
    /// Coordinator wall clock (ms since the epoch) when the last answer was in (Flink's
    /// `endTime`, which becomes the JSON `endTimestamp`).
    pub end_ms: i64,
    /// From the first request of the run handed to its agent's channel to the last one
    /// (zero with fewer than two agents asked): how long the fan-out took to send everything.
    pub dispatch_spread: Duration,
    /// When the last agent's call ended (answer, error or deadline), monotonic; `None` when no
    /// agent was called. What the coordinator does after it is the run's own latency.
    pub last_answer: Option<std::time::Instant>,
}

impl<T> Default for FanOutOutcome<T> {
    fn default() -> Self {
        FanOutOutcome {
            request_id: 0,
            sets: BTreeMap::new(),
            missing: Missing::new(),
            failures: Vec::new(),
            agents_answered: 0,
            agents_failed: 0,
            start_ms: 0,
            end_ms: 0,
            dispatch_spread: Duration::ZERO,
            last_answer: None,
        }
    }
}

/// What a run makes of one subtask's samples while its agent's answer is at hand: called once
/// per subtask entry of every answer, on the answer's own task, as the answer arrives (the
/// answer is dropped right after), with the answer's shared [`AnswerBudget`] and a scratch
/// ([`SubtaskFold::Answer`]) the subtasks of one answer share. An error makes the subtask
/// missing. A fold may carry the run's own state (the flame graph run interns every answer's
/// frame names in one table per run, see [`crate::flamegraph::profile::RunNames`]), so it is
/// cloned into every agent's call task. [`EachSubtask`] makes a plain conversion one, e.g.
/// [`subtask_sample_set_within`].
pub trait SubtaskFold<T>: Clone + Send + Sync + 'static {
    /// What the fold keeps across the subtasks of one answer; fresh for every answer.
    type Answer: Default;

    /// Makes `sub`, an entry of `resp`, into a `T`.
    fn fold(
        &self,
        answer: &mut Self::Answer,
        resp: &v1::SampleResponse,
        sub: &v1::SubtaskSamples,
        budget: &mut AnswerBudget,
    ) -> Result<T, ConvertError>;
}

/// A per-subtask conversion as a [`SubtaskFold`] that keeps nothing across subtasks.
#[derive(Debug, Clone, Copy)]
pub struct EachSubtask<F>(pub F);

impl<T, F> SubtaskFold<T> for EachSubtask<F>
where
    F: Fn(&v1::SampleResponse, &v1::SubtaskSamples, &mut AnswerBudget) -> Result<T, ConvertError>
        + Clone
        + Send
        + Sync
        + 'static,
{
    type Answer = ();

    fn fold(
        &self,
        _: &mut (),
        resp: &v1::SampleResponse,
        sub: &v1::SubtaskSamples,
        budget: &mut AnswerBudget,
    ) -> Result<T, ConvertError> {
        (self.0)(resp, sub, budget)
    }
}

/// One agent's contribution to a run, made on its call's task (see [`absorb_answer`]).
#[derive(Debug)]
pub struct AgentShare<T> {
    /// The agent's address.
    pub address: String,
    /// Whether the agent answered in time (its subtasks may still have failed one by one).
    pub answered: bool,
    /// The subtasks it delivered, as `T`.
    pub sets: Vec<(u32, T)>,
    /// The subtasks it was asked for and did not deliver, and why.
    pub missing: Vec<(u32, MissingReason)>,
    /// One line per failure, for logs.
    pub failures: Vec<String>,
}

impl<T> AgentShare<T> {
    /// The share of an agent whose call failed as a whole: every subtask asked is missing.
    fn failed(address: String, asked: &BTreeSet<u32>, error: &FanOutError) -> Self {
        let reason = error.missing_reason();
        AgentShare {
            address,
            answered: false,
            sets: Vec::new(),
            missing: asked.iter().map(|&i| (i, reason)).collect(),
            failures: vec![error.to_string()],
        }
    }
}

impl<T> FanOutOutcome<T> {
    /// Files one agent's share into the outcome.
    pub fn merge(&mut self, share: AgentShare<T>) {
        if share.answered {
            self.agents_answered += 1;
        } else {
            self.agents_failed += 1;
        }
        self.sets.extend(share.sets);
        self.missing.extend(share.missing);
        self.failures.extend(share.failures);
    }
}

/// Sends sampling and thread-dump RPCs to agents; see the module docs. Shared by all runs.
///
/// It keeps no state per agent: the connections live in the shared client's pool, which closes
/// those unused for [`transport::IDLE_TIMEOUT`], so agents that left (or moved to another
/// port) cost nothing after that, however many there were, and no bound of its own is needed.
#[derive(Debug)]
pub struct FanOut {
    /// The shared client of all agents (one pooled HTTP/2 connection per agent).
    transport: transport::AgentTransport,
    auth: AgentAuth,
    grace: Duration,
    next_request_id: AtomicU64,
}

/// One agent's share of a run.
struct AgentCall {
    address: String,
    subtasks: BTreeSet<u32>,
    request: v1::SampleRequest,
}

/// What one agent's call task hands back: the agent's share, and when its request was handed
/// to the client (`None` when it never was: the deadline had passed).
type CallResult<T> = (AgentShare<T>, Option<std::time::Instant>);

impl FanOut {
    /// A fan-out whose agents get `grace` beyond the sampling window to answer; `grace` also
    /// bounds opening a connection to an agent (TCP and TLS).
    pub fn new(grace: Duration, auth: AgentAuth) -> Self {
        FanOut {
            transport: transport::client(grace, auth.tls.clone(), transport::IDLE_TIMEOUT),
            auth,
            grace,
            next_request_id: AtomicU64::new(1),
        }
    }

    /// The deadline of a run with `params`: sampling window + grace.
    pub fn deadline(&self, params: SamplingParams) -> Duration {
        params.sampling_window() + self.grace
    }

    /// A new run id, as [`FanOut::sample`] takes one: for a run that asks no agent at all
    /// (every subtask's agent is gone), so that it still sorts after every earlier run.
    pub fn new_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The key a subtask's selector carries: `<prefix>/<index>`.
    pub fn subtask_key(prefix: &str, index: u32) -> String {
        format!("{prefix}/{index}")
    }

    /// Samples `targets`, one RPC per agent, and gathers what came back by the deadline.
    /// `key_prefix` names the run's scope (e.g. `job/vertex`) in each selector's `subtask_key`.
    /// Each subtask's samples come back as a [`SampleSet`]; see [`FanOut::sample_with`].
    pub async fn sample(
        &self,
        key_prefix: &str,
        targets: &[SubtaskTarget],
        params: SamplingParams,
    ) -> FanOutOutcome {
        self.sample_with(
            key_prefix,
            targets,
            params,
            EachSubtask(subtask_sample_set_within),
        )
        .await
    }

    /// [`FanOut::sample`], with every subtask's samples made into a `T` by `fold` as its
    /// agent's answer arrives, on that answer's own task: answers are taken in (and dropped)
    /// one by one while the others are still coming, so when the last one is in, only its own
    /// share is left to do. Every request is sent before any answer is awaited.
    pub async fn sample_with<T: Send + 'static>(
        &self,
        key_prefix: &str,
        targets: &[SubtaskTarget],
        params: SamplingParams,
        fold: impl SubtaskFold<T>,
    ) -> FanOutOutcome<T> {
        let request_id = self.new_request_id();
        let deadline_after = self.deadline(params);
        let deadline = tokio::time::Instant::now() + deadline_after;
        let mut outcome = FanOutOutcome {
            request_id,
            start_ms: now_ms(),
            ..Default::default()
        };

        // Group selectors by agent address (one agent serves one address), in one pass over
        // the targets.
        let mut calls: HashMap<&str, AgentCall> = HashMap::new();
        for t in targets {
            let call = calls
                .entry(t.agent_address.as_str())
                .or_insert_with(|| AgentCall {
                    address: t.agent_address.clone(),
                    subtasks: BTreeSet::new(),
                    request: v1::SampleRequest {
                        request_id,
                        selectors: Vec::new(),
                        num_samples: params.num_samples,
                        delay_ms: params.delay_ms,
                        max_depth: params.max_depth,
                    },
                });
            if call.subtasks.insert(t.subtask_index) {
                let mut selector = t.selector.clone();
                selector.subtask_key = Self::subtask_key(key_prefix, t.subtask_index);
                call.request.selectors.push(selector);
            }
        }

        let prefix: Arc<str> = Arc::from(key_prefix);
        let limits = WireLimits::with_max_depth(params.max_depth);
        let window = params.sampling_window();
        let mut tasks = tokio::task::JoinSet::new();
        let mut asked: HashMap<tokio::task::Id, BTreeSet<u32>> = HashMap::new();
        for (_, call) in calls {
            let client = match self.client(&call.address) {
                Ok(c) => c,
                Err(e) => {
                    outcome.merge(AgentShare::failed(call.address, &call.subtasks, &e));
                    continue;
                }
            };
            let prefix = Arc::clone(&prefix);
            let fold = fold.clone();
            let subtasks = call.subtasks.clone();
            let task = tasks.spawn(async move {
                let AgentCall {
                    address,
                    subtasks,
                    request,
                } = call;
                let mut sent = None;
                let result = call_until_deadline(
                    client,
                    &address,
                    &request,
                    deadline,
                    deadline_after,
                    window,
                    &mut sent,
                )
                .await;
                let share = match result.and_then(|r| check_request_id(&address, request_id, r)) {
                    Err(e) => {
                        tracing::warn!(agent = %address, error = %e, "agent failed; its subtasks are missing");
                        AgentShare::failed(address, &subtasks, &e)
                    }
                    Ok(resp) => {
                        tracing::debug!(
                            agent = %address, request = request_id,
                            agent_sampling_ms = resp.end_ms - resp.start_ms,
                            "agent answered"
                        );
                        // The answer is taken in here and dropped at the end of this task.
                        absorb_answer(&prefix, address, &subtasks, &resp, limits, &fold)
                    }
                };
                (share, sent)
            });
            asked.insert(task.id(), subtasks);
        }

        let mut first_sent: Option<std::time::Instant> = None;
        let mut last_sent: Option<std::time::Instant> = None;
        while let Some(joined) = tasks.join_next_with_id().await {
            outcome.last_answer = Some(std::time::Instant::now());
            let Ok((id, (share, sent))): Result<(tokio::task::Id, CallResult<T>), _> = joined
            else {
                continue;
            };
            asked.remove(&id);
            if let Some(sent) = sent {
                first_sent = Some(first_sent.map_or(sent, |f| f.min(sent)));
                last_sent = Some(last_sent.map_or(sent, |l| l.max(sent)));
            }
            outcome.merge(share);
        }
        if let (Some(first), Some(last)) = (first_sent, last_sent) {
            outcome.dispatch_spread = last.saturating_duration_since(first);
        }
        // A task that panicked (it cannot, but a JoinError is not worth a panic here) leaves its
        // subtasks in `asked`: they are missing too.
        for (_, subtasks) in asked {
            outcome.missing.extend(
                subtasks
                    .into_iter()
                    .map(|i| (i, MissingReason::AgentFailed)),
            );
        }
        // An agent that cannot be reached and never confirmed its subtask: the subtask was
        // never confirmed, which says more than "unreachable" about a job just registered.
        for t in targets.iter().filter(|t| !t.confirmed) {
            if let Some(reason) = outcome.missing.get_mut(&t.subtask_index)
                && reason.is_agent_failure()
            {
                *reason = MissingReason::NeverConfirmed;
            }
        }
        outcome.end_ms = now_ms();
        outcome
    }

    /// One `ThreadDump` RPC to the agent at `address` over `selectors`.
    pub async fn thread_dump(
        &self,
        address: &str,
        selectors: Vec<ThreadSelector>,
        max_depth: u32,
        timeout: Duration,
    ) -> Result<v1::SampleResponse, FanOutError> {
        let mut client = self.client(address)?;
        let mut request = tonic::Request::new(v1::ThreadDumpRequest {
            selectors,
            max_depth,
        });
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.thread_dump(request)).await {
            Err(_) => Err(FanOutError::DeadlineExceeded {
                address: address.to_string(),
                millis: timeout.as_millis(),
            }),
            Ok(Err(status)) => Err(status_error(address, status)),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    /// A client of the agent at `address` over the shared transport: the bearer header added by
    /// the interceptor, answers bounded by [`MAX_ANSWER_BYTES`]. Cheap (the transport is shared
    /// and connects on the first call that needs it); fails for an address that is not a URI
    /// to call, and for `http://` when the coordinator has TLS settings.
    fn client(&self, address: &str) -> Result<AgentClient, FanOutError> {
        let origin = self.origin(address)?;
        let service = InterceptedService::new(self.transport.clone(), self.auth.bearer.clone());
        Ok(
            SamplingClient::with_origin(service, origin)
                .max_decoding_message_size(MAX_ANSWER_BYTES),
        )
    }

    /// Scheme and authority of the agent at `address` (`host:port` alone means `http://`),
    /// which every request's URI carries: it is what the shared client's pool keys its
    /// connections by.
    fn origin(&self, address: &str) -> Result<hyper::Uri, FanOutError> {
        let bad = |e: &dyn std::fmt::Display| FanOutError::BadAddress {
            address: address.to_string(),
            reason: e.to_string(),
        };
        let uri = if address.contains("://") {
            address.parse::<hyper::Uri>()
        } else {
            format!("http://{address}").parse::<hyper::Uri>()
        }
        .map_err(|e| bad(&e))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad(&"only http:// and https:// agents can be called")),
        };
        if self.auth.tls.is_some() && !https {
            return Err(bad(
                &"the coordinator has TLS settings (--tls-*), so agents are only called over \
                  https://; refusing to send credentials over plain text",
            ));
        }
        if https && self.auth.tls.is_none() {
            return Err(bad(
                &"an https:// agent, but the coordinator has no TLS settings (--tls-ca) to check \
                  its certificate with",
            ));
        }
        let mut parts = uri.into_parts();
        if parts.authority.is_none() {
            return Err(bad(&"no host"));
        }
        // tonic puts each method's path after the origin's: the origin's own is left out, as
        // a tonic Channel did.
        parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
        hyper::Uri::from_parts(parts).map_err(|e| bad(&e))
    }
}

/// First pause before asking a busy agent again; doubled per retry up to [`BUSY_RETRY_MAX`].
const BUSY_RETRY_FIRST: Duration = Duration::from_millis(20);

/// Longest pause between two attempts on a busy agent.
const BUSY_RETRY_MAX: Duration = Duration::from_millis(250);

/// One agent's `Sample` call, retried while the agent is busy and time is left.
///
/// An agent runs at most `--max-concurrent-runs` sampling runs at once (4 by default) and
/// answers one more with RESOURCE_EXHAUSTED at once, never queueing it. A dashboard that opens
/// twenty vertices served by the same agent starts twenty runs together; without a retry, all
/// but four would come back with every subtask missing. So a busy answer is retried after a
/// short, jittered, growing pause, as long as a whole sampling window still fits before the
/// run's deadline: the deadline stays the only bound on how long an agent can delay a graph,
/// and the agent's own bound on concurrent work is respected (the coordinator waits, the agent
/// never queues).
async fn call_until_deadline(
    mut client: AgentClient,
    address: &str,
    request: &v1::SampleRequest,
    deadline: tokio::time::Instant,
    deadline_after: Duration,
    window: Duration,
    sent: &mut Option<std::time::Instant>,
) -> Result<v1::SampleResponse, FanOutError> {
    let late = || FanOutError::DeadlineExceeded {
        address: address.to_string(),
        millis: deadline_after.as_millis(),
    };
    let mut pause = BUSY_RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(late());
        }
        let mut req = tonic::Request::new(request.clone());
        req.set_timeout(remaining);
        sent.get_or_insert_with(std::time::Instant::now);
        match tokio::time::timeout_at(deadline, client.sample(req)).await {
            Err(_) => return Err(late()),
            // The grpc-timeout header lets either side give up at the deadline too.
            Ok(Err(status)) if is_timeout(&status) => return Err(late()),
            Ok(Err(status)) if status.code() == tonic::Code::ResourceExhausted => {
                // Jitter spreads the retries of runs that were refused together.
                let jitter = rand::random_range(0..=pause.as_millis() as u64 / 2);
                let wait = pause + Duration::from_millis(jitter);
                let after_wait = tokio::time::Instant::now() + wait;
                if after_wait + window > deadline {
                    tracing::debug!(agent = %address, attempts, "agent still busy; no time left for another attempt");
                    return Err(status_error(address, status));
                }
                tracing::debug!(agent = %address, attempts, wait_ms = wait.as_millis() as u64, "agent busy; asking again");
                tokio::time::sleep_until(after_wait).await;
                pause = (pause * 2).min(BUSY_RETRY_MAX);
            }
            Ok(Err(status)) => return Err(status_error(address, status)),
            Ok(Ok(resp)) => return Ok(resp.into_inner()),
        }
    }
}

fn is_timeout(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::DeadlineExceeded
        || (status.code() == tonic::Code::Cancelled && status.message().contains("Timeout"))
}

/// What a failed call comes to: the agent's own gRPC status as it is, or, for a call the
/// transport failed, UNAVAILABLE ("agent unreachable") when the agent could not be reached or
/// its connection was lost under the call ([`connection_lost`]), with the transport's whole
/// chain of causes in the message.
fn status_error(address: &str, status: tonic::Status) -> FanOutError {
    // A status tonic made of a transport error carries that error as its source, and only the
    // outermost layer's words as its message ("client error (SendRequest)"): the cause
    // ("connection reset", "Connection refused") is further down the chain.
    let said = match std::error::Error::source(&status) {
        None => status.message().to_string(),
        Some(source) => {
            let chain = crate::error_chain::error_chain(source);
            if chain.contains(status.message()) {
                chain
            } else {
                format!("{}: {chain}", status.message())
            }
        }
    };
    // A call cut off with its connection comes back from tonic as UNKNOWN, which would read
    // "agent failed"; it is the agent going away (killed, restarted, its host gone) while the
    // connection was open: unreachable. (A connection that could not be opened at all is
    // UNAVAILABLE already: tonic maps the connector's `ConnectError` so.)
    let (code, message) = if connection_lost(&status) {
        (tonic::Code::Unavailable, format!("connection lost: {said}"))
    } else {
        (status.code(), said)
    };
    FanOutError::Status {
        address: address.to_string(),
        code,
        message,
    }
}

/// Whether `status` is a call whose connection was lost under it: a reset, an abort, a broken
/// pipe or an end of stream anywhere in its chain of causes (as io errors, or hyper's own
/// "connection closed" and "incomplete message").
fn connection_lost(status: &tonic::Status) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::NotConnected
            )
        {
            return true;
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_closed() || hyper.is_incomplete_message())
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn check_request_id(
    address: &str,
    expected: u64,
    resp: v1::SampleResponse,
) -> Result<v1::SampleResponse, FanOutError> {
    if resp.request_id == expected {
        Ok(resp)
    } else {
        Err(FanOutError::WrongRequest {
            address: address.to_string(),
            expected,
            got: resp.request_id,
        })
    }
}

/// Takes in one agent's answer: the subtasks it was asked for, each made into a `T` by `fold`
/// (within `limits`, see [`WireLimits`]), and everything else it was asked for as missing.
/// Entries for subtasks it was not asked for (or a second entry for one) are ignored, with one
/// log line. Runs on the agent's call task as the answer arrives ([`FanOut::sample_with`]).
pub fn absorb_answer<T, F: SubtaskFold<T>>(
    key_prefix: &str,
    address: String,
    asked: &BTreeSet<u32>,
    resp: &v1::SampleResponse,
    limits: WireLimits,
    fold: &F,
) -> AgentShare<T> {
    let mut share = AgentShare {
        address,
        answered: true,
        sets: Vec::with_capacity(asked.len()),
        missing: Vec::new(),
        failures: Vec::new(),
    };
    let address = &share.address;
    let mut delivered = BTreeSet::new();
    let mut budget = AnswerBudget::new(limits);
    let mut scratch = <F as SubtaskFold<T>>::Answer::default();
    let mut ignored = 0usize;
    for sub in &resp.subtasks {
        let index = sub
            .subtask_key
            .strip_prefix(key_prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| asked.contains(i) && !delivered.contains(i));
        let Some(index) = index else {
            ignored += 1;
            continue;
        };
        delivered.insert(index);
        if !sub.error.is_empty() {
            let error = flamegrid_proto::convert::cut_name(&sub.error, 1024);
            share
                .failures
                .push(format!("subtask {index} on {address}: {error}"));
            share
                .missing
                .push((index, MissingReason::from_wire(sub.failure)));
            continue;
        }
        match fold.fold(&mut scratch, resp, sub, &mut budget) {
            Ok(set) => share.sets.push((index, set)),
            Err(e) => {
                share
                    .failures
                    .push(format!("subtask {index} on {address}: bad answer: {e}"));
                share.missing.push((index, MissingReason::AgentFailed));
            }
        }
    }
    if ignored > 0 {
        tracing::warn!(agent = %address, entries = ignored, "answer names subtasks that were not asked for (or twice); ignored");
    }
    share.missing.extend(
        asked
            .difference(&delivered)
            .map(|&i| (i, MissingReason::AgentFailed)),
    );
    share
}

#[cfg(test)]
pub(crate) mod tests {
    //! The fan-out against small in-test Sampling servers that answer canned samples, hang, or
    //! misbehave: real gRPC over loopback, no sampler needed.

    use super::*;
    use crate::sampling::{SubtaskSampling, VertexSampling};
    use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
    use flamegrid_proto::SampleResponseBuilder;
    use flamegrid_proto::v1::sampling_server::{Sampling, SamplingServer};
    use std::sync::{Arc, Mutex};

    /// Per request an agent received: the selectors' keys and the authorization header.
    pub(crate) type Seen = Arc<Mutex<Vec<(Vec<String>, Option<String>)>>>;

    #[derive(Clone, Copy, PartialEq)]
    pub(crate) enum Behaviour {
        /// Answers every selector with one sample `main;<key>`, or an error for tid 999.
        Answer,
        /// Never answers.
        Hang,
        /// Answers with another request id.
        WrongId,
        /// Refuses the first three calls with RESOURCE_EXHAUSTED, then answers like `Answer`.
        BusyThrice,
        /// Answers every selector with this many samples of two threads over a few stacks
        /// (`main;<key>;leaf_<n>`, every third one off CPU), or an error for tid 999.
        Samples(u32),
    }

    #[derive(Clone)]
    struct CannedAgent {
        behaviour: Behaviour,
        /// Calls received so far (for `BusyThrice`).
        calls: Arc<std::sync::atomic::AtomicU32>,
        /// Per request: the selectors' keys and the authorization header.
        seen: Seen,
    }

    #[tonic::async_trait]
    impl Sampling for CannedAgent {
        async fn sample(
            &self,
            request: tonic::Request<v1::SampleRequest>,
        ) -> Result<tonic::Response<v1::SampleResponse>, tonic::Status> {
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let req = request.into_inner();
            self.seen.lock().unwrap().push((
                req.selectors
                    .iter()
                    .map(|s| s.subtask_key.clone())
                    .collect(),
                auth,
            ));
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.behaviour == Behaviour::BusyThrice && call < 3 {
                return Err(tonic::Status::resource_exhausted("busy"));
            }
            match self.behaviour {
                Behaviour::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(tonic::Status::internal("unreachable"))
                }
                Behaviour::Answer
                | Behaviour::WrongId
                | Behaviour::BusyThrice
                | Behaviour::Samples(_) => {
                    let mut b =
                        SampleResponseBuilder::new(if self.behaviour == Behaviour::WrongId {
                            req.request_id + 100
                        } else {
                            req.request_id
                        });
                    for sel in &req.selectors {
                        if sel.tids.contains(&999) {
                            b.add_failure(
                                &sel.subtask_key,
                                "process 999 is gone",
                                v1::SubtaskFailure::ProcessNotFound,
                            );
                            continue;
                        }
                        let t = SampledThread {
                            pid: 1,
                            tid: 2,
                            name: "t".into(),
                        };
                        let mut s = SampleSetBuilder::new();
                        let Behaviour::Samples(n) = self.behaviour else {
                            s.push(
                                &t,
                                1,
                                ThreadState::Runnable,
                                [Frame::named("main"), Frame::named(sel.subtask_key.clone())],
                                false,
                            );
                            b.add_subtask(&sel.subtask_key, &s.finish());
                            continue;
                        };
                        let other = SampledThread {
                            tid: 3,
                            name: "u".into(),
                            ..t.clone()
                        };
                        for i in 0..n {
                            let state = if i % 3 == 0 {
                                ThreadState::Waiting
                            } else {
                                ThreadState::Runnable
                            };
                            s.push(
                                if i % 2 == 0 { &t } else { &other },
                                i64::from(i),
                                state,
                                [
                                    Frame::named("main"),
                                    Frame::named(sel.subtask_key.clone()),
                                    Frame::named(format!("leaf_{}", i % 4)),
                                ],
                                false,
                            );
                        }
                        b.add_subtask(&sel.subtask_key, &s.finish());
                    }
                    Ok(tonic::Response::new(b.finish(1, 2)))
                }
            }
        }

        async fn thread_dump(
            &self,
            _: tonic::Request<v1::ThreadDumpRequest>,
        ) -> Result<tonic::Response<v1::SampleResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    /// Starts a canned agent on a loopback port; it lives as long as the test's runtime.
    pub(crate) async fn agent(behaviour: Behaviour) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CannedAgent {
            behaviour,
            calls: Arc::default(),
            seen: Arc::clone(&seen),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SamplingServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), seen)
    }

    pub(crate) fn target(index: u32, address: &str, tid: u32) -> SubtaskTarget {
        SubtaskTarget {
            subtask_index: index,
            taskmanager_id: address.to_string(),
            agent_address: address.to_string(),
            selector: ThreadSelector {
                subtask_key: "overwritten".into(),
                process: Some(v1::thread_selector::Process::Pid(1)),
                tids: vec![tid],
                thread_name: String::new(),
            },
            confirmed: true,
        }
    }

    const PARAMS: SamplingParams = SamplingParams {
        num_samples: 1,
        delay_ms: 1,
        max_depth: 10,
    };

    fn fanout() -> FanOut {
        FanOut::new(
            Duration::from_millis(500),
            AgentAuth::default().with_token("s3cret").unwrap(),
        )
    }

    #[tokio::test]
    async fn one_rpc_per_agent_and_answers_map_back_to_subtasks() {
        let (a, seen_a) = agent(Behaviour::Answer).await;
        let (b, seen_b) = agent(Behaviour::Answer).await;
        let targets = [target(0, &a, 1), target(1, &b, 1), target(2, &a, 1)];
        let out = fanout().sample("job/vertex", &targets, PARAMS).await;
        assert_eq!(out.sets.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(out.missing.is_empty(), "{:?}", out.failures);
        assert_eq!((out.agents_answered, out.agents_failed), (2, 0));
        // Each subtask's samples are its own (the frame carries the key the agent saw).
        assert_eq!(out.sets[&2].frames[1].name, "job/vertex/2");
        let seen_a = seen_a.lock().unwrap().clone();
        assert_eq!(seen_a.len(), 1, "one RPC for both of agent a's subtasks");
        assert_eq!(seen_a[0].0, ["job/vertex/0", "job/vertex/2"]);
        assert_eq!(seen_a[0].1.as_deref(), Some("Bearer s3cret"));
        assert_eq!(seen_b.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_hanging_agent_costs_only_its_own_subtasks() {
        let (good, _) = agent(Behaviour::Answer).await;
        let (slow, seen_slow) = agent(Behaviour::Hang).await;
        let targets = [
            target(0, &good, 1),
            target(1, &slow, 1),
            target(2, &good, 1),
        ];
        let out = fanout().sample("j/v", &targets, PARAMS).await;
        assert_eq!(out.sets.keys().copied().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(out.missing.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(out.missing[&1], MissingReason::AgentTimedOut);
        assert_eq!((out.agents_answered, out.agents_failed), (1, 1));
        assert!(
            out.failures[0].contains("did not answer"),
            "{:?}",
            out.failures
        );
        assert_eq!(
            seen_slow.lock().unwrap().len(),
            1,
            "the slow agent was asked"
        );
    }

    #[tokio::test]
    async fn subtask_errors_dead_agents_and_wrong_ids_are_missing() {
        let (good, _) = agent(Behaviour::Answer).await;
        let (liar, _) = agent(Behaviour::WrongId).await;
        // Nothing listens on port 1 of loopback.
        let dead = "http://127.0.0.1:1".to_string();
        let targets = [
            target(0, &good, 1),
            target(1, &good, 999),
            target(2, &dead, 1),
            target(3, &liar, 1),
        ];
        let out = fanout().sample("j/v", &targets, PARAMS).await;
        assert_eq!(out.sets.keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(out.missing.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(out.missing[&1], MissingReason::ProcessNotFound);
        assert_eq!(out.missing[&2], MissingReason::AgentUnreachable);
        assert_eq!(out.missing[&3], MissingReason::AgentFailed);
        // The same dead agent, for a subtask it never confirmed: never confirmed.
        let mut unconfirmed = target(2, &dead, 1);
        unconfirmed.confirmed = false;
        let never = fanout().sample("j/v", &[unconfirmed], PARAMS).await;
        assert_eq!(never.missing[&2], MissingReason::NeverConfirmed);
        let failures = out.failures.join("\n");
        assert!(failures.contains("process 999 is gone"), "{failures}");
        assert!(failures.contains("expected"), "{failures}");
        // The dead agent's failure says why, down to the socket's own words.
        assert!(
            failures.contains("cannot connect to 127.0.0.1:1") && failures.contains("refused"),
            "{failures}"
        );
        let bad = fanout()
            .sample("j/v", &[target(0, "not a uri \u{7f}", 1)], PARAMS)
            .await;
        assert_eq!(bad.missing.keys().copied().collect::<Vec<_>>(), [0]);
    }

    /// An "agent" whose connection drops under a call: it accepts, reads what the client
    /// sends (the HTTP/2 preface, then the call) and closes without a word. That is what a
    /// killed agent looks like to a channel that was already connected.
    async fn vanishing_agent(reset: bool) -> String {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = 0;
                // The preface is 24 bytes and SETTINGS follow; a call's HEADERS make it more.
                while seen < 100 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen += n,
                    }
                }
                // A reset (SO_LINGER 0: unread data at exit) or a plain close.
                if reset {
                    let _ = socket.set_zero_linger();
                }
                drop(socket);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_agent_whose_connection_drops_under_the_call_is_unreachable() {
        for reset in [true, false] {
            let gone = vanishing_agent(reset).await;
            let out = fanout().sample("j/v", &[target(0, &gone, 1)], PARAMS).await;
            assert_eq!(out.missing.keys().copied().collect::<Vec<_>>(), [0]);
            assert_eq!(
                out.missing[&0],
                MissingReason::AgentUnreachable,
                "reset {reset}: {:?}",
                out.failures
            );
            // The failure keeps what the transport said, down to the cause.
            let failure = &out.failures[0];
            assert!(
                failure.contains("connection lost: ")
                    && ["reset", "closed", "broken pipe", "incomplete"]
                        .iter()
                        .any(|cause| failure.to_lowercase().contains(cause)),
                "{failure}"
            );
        }
    }

    /// TLS settings that trust no agent (no CA): enough to call `https://` addresses.
    fn tls_fanout(grace: Duration) -> FanOut {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let auth = AgentAuth {
            tls: Some(Arc::new(tls)),
            ..AgentAuth::default()
        };
        FanOut::new(grace, auth)
    }

    /// Asserts that `out`'s subtask 0 is missing as "agent unreachable" and that its failure
    /// says `says`.
    fn assert_unreachable_saying(out: &FanOutOutcome<SampleSet>, says: &str) {
        assert_eq!(
            out.missing[&0],
            MissingReason::AgentUnreachable,
            "{:?}",
            out.failures
        );
        assert!(out.failures[0].contains(says), "{:?}", out.failures);
    }

    #[tokio::test]
    async fn with_tls_settings_only_https_agents_are_called_and_a_failed_handshake_is_unreachable()
    {
        let (plain, seen) = agent(Behaviour::Answer).await;
        let tls = tls_fanout(Duration::from_millis(500));
        // http:// is refused without a call: the token would travel in clear text.
        let out = tls.sample("j/v", &[target(0, &plain, 1)], PARAMS).await;
        assert_unreachable_saying(&out, "only called over");
        assert!(seen.lock().unwrap().is_empty());
        // https:// to a server that does not speak TLS: the handshake fails, the agent is
        // unreachable, and the failure says what TLS said.
        let https = plain.replace("http://", "https://");
        let out = tls.sample("j/v", &[target(0, &https, 1)], PARAMS).await;
        assert_unreachable_saying(&out, "cannot connect to");
        assert!(seen.lock().unwrap().is_empty());
        // Without TLS settings, https:// cannot be checked: refused too.
        let out = fanout()
            .sample("j/v", &[target(0, &https, 1)], PARAMS)
            .await;
        assert_unreachable_saying(&out, "no TLS settings");
    }

    #[tokio::test]
    async fn an_agent_silent_in_the_handshake_is_unreachable_after_the_connect_timeout() {
        // Accepts TCP connections and never says a word: the TLS handshake waits.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        // The run's deadline is the window (2 s) plus the grace (100 ms); the connection gives
        // up after the grace, long before: the agent is unreachable, not late.
        let params = SamplingParams {
            num_samples: 20,
            delay_ms: 100,
            max_depth: 10,
        };
        let tls = tls_fanout(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let out = tls
            .sample("j/v", &[target(0, &format!("https://{addr}"), 1)], params)
            .await;
        assert_unreachable_saying(&out, "not connected within 100 ms");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    /// A TCP proxy in front of `agent` that counts the connections it accepted and those the
    /// client closed.
    async fn counting_proxy(agent: &str) -> (String, Arc<(AtomicU64, AtomicU64)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = agent.trim_start_matches("http://").to_string();
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let counted = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.0.fetch_add(1, Ordering::SeqCst);
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    counted.1.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (format!("http://{addr}"), counts)
    }

    #[tokio::test]
    async fn one_connection_per_agent_is_reused_and_closed_when_idle() {
        let (agent_address, _) = agent(Behaviour::Answer).await;
        let (proxy, counts) = counting_proxy(&agent_address).await;
        let grace = Duration::from_millis(500);
        let fanout = FanOut {
            transport: transport::client(grace, None, Duration::from_millis(300)),
            ..FanOut::new(grace, AgentAuth::default())
        };
        // Three runs, two of them at once: one connection.
        let targets = [target(0, &proxy, 1)];
        let (a, b) = tokio::join!(
            fanout.sample("j/v", &targets, PARAMS),
            fanout.sample("j/v", &targets, PARAMS)
        );
        let c = fanout.sample("j/v", &targets, PARAMS).await;
        for out in [a, b, c] {
            assert!(out.missing.is_empty(), "{:?}", out.failures);
        }
        assert_eq!(counts.0.load(Ordering::SeqCst), 1, "one connection");
        assert_eq!(counts.1.load(Ordering::SeqCst), 0, "still open");
        // Unused past the idle timeout, the connection is closed without another call.
        let closed = async {
            while counts.1.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the idle connection was never closed");
        // The next call opens a new one.
        let out = fanout.sample("j/v", &targets, PARAMS).await;
        assert!(out.missing.is_empty(), "{:?}", out.failures);
        assert_eq!(counts.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_busy_agent_is_asked_again_until_it_answers() {
        let (busy, seen) = agent(Behaviour::BusyThrice).await;
        let out = fanout().sample("j/v", &[target(0, &busy, 1)], PARAMS).await;
        assert!(out.missing.is_empty(), "{:?}", out.failures);
        assert_eq!(out.sets.keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(
            seen.lock().unwrap().len(),
            4,
            "three refusals, then the answer"
        );

        // A grace shorter than the pause: no whole window fits after it, so the refusal is
        // final and the subtask missing.
        let (busy, seen) = agent(Behaviour::BusyThrice).await;
        let tight = FanOut::new(Duration::from_millis(5), AgentAuth::default());
        let out = tight.sample("j/v", &[target(0, &busy, 1)], PARAMS).await;
        assert_eq!(out.missing.keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(
            out.failures[0].contains("ResourceExhausted"),
            "{:?}",
            out.failures
        );
    }

    #[test]
    fn targets_and_terminal_flags() {
        let v = VertexSampling {
            job_name: "j".into(),
            vertex_name: "v".into(),
            parallelism: 4,
            vertex_terminal: false,
            subtasks: vec![
                SubtaskSampling {
                    index: 0,
                    terminal: false,
                    target: Some(target(0, "http://a", 1)),
                    absent: None,
                },
                SubtaskSampling {
                    index: 1,
                    terminal: true,
                    target: None,
                    absent: None,
                },
                SubtaskSampling {
                    index: 2,
                    terminal: false,
                    target: Some(target(2, "http://b", 1)),
                    absent: None,
                },
                SubtaskSampling {
                    index: 3,
                    terminal: false,
                    target: None,
                    absent: Some(MissingReason::NeverConfirmed),
                },
            ],
        };
        assert_eq!(v.targets(None).len(), 2);
        assert_eq!(
            v.absent(None).into_iter().collect::<Vec<_>>(),
            [(3, MissingReason::NeverConfirmed)]
        );
        assert!(v.absent(Some(0)).is_empty());
        assert_eq!(v.targets(Some(2))[0].subtask_index, 2);
        assert!(v.targets(Some(1)).is_empty());
        assert!(v.is_terminal(Some(1)) && !v.is_terminal(None) && !v.is_terminal(Some(0)));
        assert!(AgentAuth::default().with_token("bad\ntoken").is_err());
    }
}
