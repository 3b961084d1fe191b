//! The `flamegrid.v1.Sampling` gRPC service: the network face of the [`Sampler`].
//!
//! A request travels through four gates before any thread is touched, each with its own gRPC
//! status so that the coordinator (and a human reading its logs) knows exactly what went wrong:
//!
//! 1. **Authentication** ([`BearerTokenCheck`], an interceptor in front of the service): with a
//!    shared token configured, a call without `authorization: Bearer <token>` is refused with
//!    `UNAUTHENTICATED` and the refusal is logged with the peer's address.
//! 2. **Bounds** ([`validate_sample`], [`validate_thread_dump`]): every number and list in the
//!    request is checked against the limits in DESIGN.md; anything outside is `INVALID_ARGUMENT`
//!    with the reason, and nothing is sampled.
//! 3. **Capacity**: at most `max_concurrent_runs` sampling runs at once. One more is answered
//!    `RESOURCE_EXHAUSTED` at once — never queued — so a flood of requests cannot pile up
//!    unbounded work (or unbounded memory) on a production host. Only a request that holds a
//!    slot gets its thread-name patterns compiled (identical selectors once), and its work is
//!    bounded: a run lasts at most [`MAX_RUN_DURATION_MS`], and samples a bounded number of
//!    thread-samples ([`MAX_THREAD_SAMPLES`], threads × samples, `INVALID_ARGUMENT` beyond),
//!    and its answer a bounded number of samples ([`MAX_ANSWER_SAMPLES`], counted per subtask).
//! 4. **Allow-list**: every selector is resolved against the agent's [`AccessPolicy`]. A refused
//!    selector fails only its own subtask (the others are still sampled); when *every* selector is
//!    refused the whole call is `PERMISSION_DENIED` with the reasons, because then the caller
//!    asked for nothing the agent may give. Refusals say *that* a process is outside the
//!    allow-list, never what the list holds or who owns the process ([`peer_message`]).
//!
//! Sampling itself is blocking work (ptrace, `/proc`, DWARF parsing), so it runs on tokio's
//! blocking pool via [`tokio::task::spawn_blocking`] and never stalls the async executor that
//! serves other calls and the heartbeat. The run's capacity permit travels *into* the blocking
//! task: a client that gives up (deadline, disconnect) does not free a slot while its run is still
//! holding threads — it only raises the run's cancel flag so the run stops early.
//!
//! Graceful shutdown: [`SamplingService::cancel_in_flight`] raises the cancel flag of every run in
//! flight (and of every run that would start later), so on SIGTERM each run returns at once with
//! the samples it already has, and the server can drain quickly.

use crate::telemetry::{Outcome, Telemetry};
use flamegrid_model::clock::now_ms;
use flamegrid_proto::SampleResponseBuilder;
use flamegrid_proto::v1::{self, sampling_server::Sampling};
use flamegrid_sampler::SamplerError;
use flamegrid_sampler::selection::{self, AccessPolicy, ThreadSelector};
use flamegrid_sampler::{RunStats, Sampler, SamplerOptions, SamplingRun};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Request, Response, Status};

/// Most samples per thread one request may ask for (DESIGN.md "Operational rules").
pub const MAX_SAMPLES: u32 = 1000;
/// Longest delay between samples, in ms; with the sample bound this caps a run at ~2.8 hours of
/// wall time, and the coordinator's own deadlines keep real runs far shorter.
pub const MAX_DELAY_MS: u32 = 10_000;
/// Deepest stack one request may ask for.
pub const MAX_DEPTH: u32 = 1024;
/// Longest a run may last (samples × delay), in ms: ten minutes. Without it four callers could
/// hold every run slot for hours (1000 samples × 10 s).
pub const MAX_RUN_DURATION_MS: u64 = 10 * 60 * 1000;
/// Most thread-samples (threads selected × samples) one run may take. Each costs a stack of
/// up to `max_depth` addresses until the run ends, so this bounds a run's memory.
pub const MAX_THREAD_SAMPLES: usize = 100_000;
/// Most samples one answer may carry, counted per subtask: identical selectors are sampled once
/// but each is answered with the samples, so 1,024 of them copy one run's samples 1,024 times.
pub const MAX_ANSWER_SAMPLES: usize = 500_000;
/// Largest request the service decodes (tonic's default, stated): 1024 selectors with long
/// keys, patterns and tid lists fit well inside.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Most selectors (subtasks) in one request.
pub const MAX_SELECTORS: usize = 1024;
/// Most thread ids one selector may list; far above any real process, low enough that a hostile
/// request cannot make the agent allocate much before it is refused.
pub const MAX_TIDS_PER_SELECTOR: usize = 65_536;
/// Longest subtask key, in bytes. Keys are echoed back in every answer, so they are bounded too.
pub const MAX_SUBTASK_KEY_BYTES: usize = 1024;
/// Depth of a thread dump when the request leaves `max_depth` at 0: a dump is read by a person
/// looking for where a thread is stuck, so it keeps more frames than a typical flame graph.
pub const THREAD_DUMP_DEFAULT_DEPTH: u32 = 100;
/// The default of `--max-concurrent-runs`.
pub const DEFAULT_MAX_CONCURRENT_RUNS: usize = 4;

/// How the service behaves; built by `flamegrid-agent run` from its flags.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Which processes may be sampled (`--allow-user`, `--allow-comm`; default own user).
    pub policy: AccessPolicy,
    /// Sampling runs allowed at once (`--max-concurrent-runs`); the excess is refused.
    pub max_concurrent_runs: usize,
    /// Append kernel stacks of off-CPU threads (`--kernel-stacks`).
    pub kernel_stacks: bool,
}

impl Default for ServiceSettings {
    /// The agent's defaults: own user only, [`DEFAULT_MAX_CONCURRENT_RUNS`] runs, no kernel stacks.
    fn default() -> Self {
        ServiceSettings {
            policy: AccessPolicy::own_user(),
            max_concurrent_runs: DEFAULT_MAX_CONCURRENT_RUNS,
            kernel_stacks: false,
        }
    }
}

/// The gRPC sampling service. Cheap to clone: clones share the sampler, the run slots and the
/// shutdown signal, which is what tonic needs (it clones the service per connection).
#[derive(Debug, Clone)]
pub struct SamplingService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sampler: Sampler,
    policy: Arc<AccessPolicy>,
    runs: Arc<Semaphore>,
    max_concurrent_runs: usize,
    kernel_stacks: bool,
    /// `true` once shutdown began; runs watch it to end early.
    shutdown: watch::Sender<bool>,
    /// What `/metrics` reports ([`crate::telemetry`]).
    telemetry: Arc<Telemetry>,
}

/// A checked request: what to sample and how. Produced by [`validate_sample`] and
/// [`validate_thread_dump`] so that the rest of the service never sees an unchecked number.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The request id to echo back (0 for thread dumps, which carry none).
    pub request_id: u64,
    /// The subtasks, in request order, checked but with their patterns not yet compiled
    /// (that waits until the request holds a run slot).
    pub selectors: Vec<v1::ThreadSelector>,
    /// Samples per thread.
    pub num_samples: u32,
    /// Delay between samples (zero when only one sample is taken).
    pub delay: Duration,
    /// Frames kept per stack.
    pub max_depth: u32,
}

impl SamplingService {
    /// A service over `sampler` with `settings`. A `max_concurrent_runs` of 0 is treated as 1: an
    /// agent that can never sample is a configuration mistake the CLI already refuses.
    pub fn new(sampler: Sampler, settings: ServiceSettings) -> Self {
        let max = settings.max_concurrent_runs.max(1);
        let (shutdown, _) = watch::channel(false);
        SamplingService {
            inner: Arc::new(Inner {
                sampler,
                policy: Arc::new(settings.policy),
                runs: Arc::new(Semaphore::new(max)),
                max_concurrent_runs: max,
                kernel_stacks: settings.kernel_stacks,
                shutdown,
                telemetry: Arc::default(),
            }),
        }
    }

    /// Ends every sampling run in flight early (each returns the samples it already has) and
    /// refuses new ones with `UNAVAILABLE`. Called once on SIGTERM/SIGINT, before the server
    /// drains its connections, so that shutdown never waits for a long run to finish.
    pub fn cancel_in_flight(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Sampling runs in progress right now (for metrics and logs).
    pub fn runs_in_flight(&self) -> usize {
        self.inner.max_concurrent_runs - self.inner.runs.available_permits()
    }

    /// The counters `/metrics` reports, shared by every clone of this service.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.inner.telemetry)
    }

    /// Runs a request that passed (or failed) validation and counts how it ended.
    async fn counted(
        &self,
        valid: Result<ValidRequest, Status>,
    ) -> Result<v1::SampleResponse, Status> {
        let began = Instant::now();
        let result = match valid {
            Ok(valid) => self.run(valid).await,
            Err(status) => Err(status),
        };
        let telemetry = &self.inner.telemetry;
        match &result {
            Ok(resp) => telemetry.sampled(
                began.elapsed(),
                resp.subtasks.iter().map(|s| s.samples.len() as u64).sum(),
                resp.subtasks.iter().filter(|s| !s.error.is_empty()).count() as u64,
            ),
            Err(status) => telemetry.run_ended(Outcome::of_status(status.code())),
        }
        result
    }

    /// Takes a run slot, or explains why not.
    fn acquire_run_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        if *self.inner.shutdown.borrow() {
            return Err(Status::unavailable("the agent is shutting down"));
        }
        Arc::clone(&self.inner.runs).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the agent is already running {} sampling runs (--max-concurrent-runs); retry later",
                self.inner.max_concurrent_runs
            ))
        })
    }

    /// Runs a checked request to the end (or until cancelled) and builds the answer.
    async fn run(&self, req: ValidRequest) -> Result<v1::SampleResponse, Status> {
        let permit = self.acquire_run_slot()?;
        let cancel = Arc::new(AtomicBool::new(false));
        // If tonic drops this future (the client hung up or its deadline passed), the run stops.
        let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
        let opts = SamplerOptions {
            num_samples: req.num_samples,
            delay: req.delay,
            max_depth: req.max_depth,
            kernel_stacks: self.inner.kernel_stacks,
            cancel: Arc::clone(&cancel),
        };
        let sampler = self.inner.sampler.clone();
        let policy = Arc::clone(&self.inner.policy);
        let telemetry = Arc::clone(&self.inner.telemetry);
        tracing::debug!(
            request_id = req.request_id,
            subtasks = req.selectors.len(),
            samples = req.num_samples,
            delay_ms = req.delay.as_millis() as u64,
            max_depth = req.max_depth,
            "sampling run started"
        );
        let mut blocking = tokio::task::spawn_blocking(move || {
            let _permit = permit; // held until the run has really finished
            run_blocking(&sampler, &policy, req, &opts, &telemetry)
        });
        let shutdown = self.inner.shutdown.subscribe();
        let joined = tokio::select! {
            joined = &mut blocking => joined,
            () = shutting_down(shutdown) => {
                cancel.store(true, Ordering::SeqCst);
                blocking.await
            }
        };
        let outcome = joined.map_err(|e| {
            tracing::error!(error = %e, "sampling run panicked");
            Status::internal("the sampling run failed inside the agent; see the agent's log")
        })?;
        match outcome {
            RunOutcome::AllRefused(reasons) => Err(Status::permission_denied(format!(
                "no selector may be sampled by this agent: {}",
                summarize(&reasons)
            ))),
            RunOutcome::Invalid(reason) => Err(Status::invalid_argument(reason)),
            RunOutcome::Sampled(resp) => {
                tracing::debug!(
                    request_id = resp.request_id,
                    subtasks = resp.subtasks.len(),
                    failed = resp.subtasks.iter().filter(|s| !s.error.is_empty()).count(),
                    "sampling run finished"
                );
                Ok(resp)
            }
        }
    }
}

/// Completes once shutdown began (or the service is gone). The `Ref` that `wait_for` returns
/// holds a lock and is not `Send`, so it is dropped in here, never held across an await.
async fn shutting_down(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&down| down).await;
}

/// Sets the flag when dropped: turns "the RPC future went away" into "stop sampling".
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a blocking run produced.
enum RunOutcome {
    /// Every selector was refused by the allow-list (reasons, one per selector).
    AllRefused(Vec<String>),
    /// The request is out of bounds after all (a bad pattern, too many thread-samples).
    Invalid(String),
    /// The answer to send.
    Sampled(v1::SampleResponse),
}

/// Whether an error is an allow-list / permission refusal rather than, say, a vanished process.
fn is_refusal(e: &SamplerError) -> bool {
    matches!(e, SamplerError::PermissionDenied { .. })
}

/// The first few reasons, then how many more: a request of 1024 refused selectors must not
/// make a megabyte of error text.
fn summarize(reasons: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = reasons
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > SHOWN {
        text.push_str(&format!("; and {} more", reasons.len() - SHOWN));
    }
    text
}

/// What a caller over the network is told about a failed selector: enough to act on, nothing
/// about other processes or users. An allow-list refusal says only that; a refusal by the
/// kernel says which kind when that names nobody (another tracer, Yama), else only that the
/// kernel refused, while the agent's log keeps the full reason for its operator.
pub fn peer_message(e: &SamplerError) -> String {
    match e {
        SamplerError::PermissionDenied { pid, reason } => {
            if reason == selection::OUTSIDE_ALLOW_LIST {
                return format!("pid {pid} is {}", selection::OUTSIDE_ALLOW_LIST);
            }
            tracing::info!(pid, "tracing refused: {reason}");
            let kind = if reason.starts_with("another tracer") {
                "another tracer is attached to it"
            } else if reason.starts_with("kernel.yama") {
                "kernel.yama.ptrace_scope forbids it"
            } else {
                "the kernel refused (the agent's log says why)"
            };
            format!("may not trace pid {pid}: {kind}")
        }
        other => other.to_string(),
    }
}

/// The kind of a failed selector, from the contract's fixed vocabulary: what the coordinator
/// shows its users beside the missing subtask (the text of [`peer_message`] goes to its log).
pub fn failure_kind(e: &SamplerError) -> v1::SubtaskFailure {
    match e {
        SamplerError::NoSuchProcess(_) => v1::SubtaskFailure::ProcessNotFound,
        SamplerError::NoMatchingThread(_) => v1::SubtaskFailure::NoMatchingThread,
        SamplerError::PermissionDenied { reason, .. }
            if reason == selection::OUTSIDE_ALLOW_LIST =>
        {
            v1::SubtaskFailure::OutsideAllowList
        }
        SamplerError::PermissionDenied { .. } => v1::SubtaskFailure::RefusedByKernel,
        _ => v1::SubtaskFailure::AgentError,
    }
}

/// Distinct targets (subtask key of the first selector, selector) and, per selector in request
/// order, the index of its target.
type DistinctTargets = (Vec<(String, ThreadSelector)>, Vec<usize>);

/// The request's selectors compiled once each: identical selectors (same process, tids and
/// pattern) become one target, and each pattern is compiled once. Returns the distinct targets
/// and, per selector in request order, the index of its target.
fn distinct_targets(selectors: &[v1::ThreadSelector]) -> Result<DistinctTargets, String> {
    type Identity<'a> = (Option<&'a v1::thread_selector::Process>, &'a [u32], &'a str);
    let mut seen: std::collections::HashMap<Identity<'_>, usize> = Default::default();
    let mut patterns: std::collections::HashMap<String, regex::Regex> = Default::default();
    let mut targets = Vec::new();
    let mut index = Vec::with_capacity(selectors.len());
    for (i, sel) in selectors.iter().enumerate() {
        let identity = (
            sel.process.as_ref(),
            sel.tids.as_slice(),
            sel.thread_name.as_str(),
        );
        if let Some(&t) = seen.get(&identity) {
            index.push(t);
            continue;
        }
        let mut compile = |pattern: &str| -> Result<regex::Regex, SamplerError> {
            if let Some(re) = patterns.get(pattern) {
                return Ok(re.clone());
            }
            let re = ThreadSelector::compile_thread_name(pattern)?;
            patterns.insert(pattern.to_string(), re.clone());
            Ok(re)
        };
        let converted = crate::wire::selector_from_wire_with(sel, &mut compile)
            .map_err(|e| format!("selector {i} ({:?}): {e}", truncated(&sel.subtask_key)))?;
        seen.insert(identity, targets.len());
        index.push(targets.len());
        targets.push((sel.subtask_key.clone(), converted));
    }
    Ok((targets, index))
}

/// The blocking part of a run: patterns, allow-list pre-check and bounds, sampling, interning
/// into the wire form.
fn run_blocking(
    sampler: &Sampler,
    policy: &AccessPolicy,
    req: ValidRequest,
    opts: &SamplerOptions,
    telemetry: &Telemetry,
) -> RunOutcome {
    let (targets, index) = match distinct_targets(&req.selectors) {
        Ok(t) => t,
        Err(reason) => return RunOutcome::Invalid(reason),
    };
    // Resolve every distinct selector once up front: refused ones never reach the sampler
    // (which checks the policy again at every sample, since a pid can be reused by another
    // program), a request with nothing allowed is refused as a whole without holding a slot
    // for the delay, and the threads found bound the run's work.
    let mut early_errors: Vec<Option<SamplerError>> = Vec::with_capacity(targets.len());
    let mut to_sample: Vec<(String, ThreadSelector)> = Vec::new();
    let mut threads = 0usize;
    let mut target_threads = vec![0usize; targets.len()];
    for (t, (key, sel)) in targets.iter().enumerate() {
        match selection::resolve(sel, policy) {
            Ok(found) => {
                target_threads[t] = found.threads.len().max(1);
                threads += target_threads[t];
                early_errors.push(None);
                to_sample.push((key.clone(), sel.clone()));
            }
            Err(e) => early_errors.push(Some(e)),
        }
    }
    let thread_samples = threads.saturating_mul(opts.num_samples as usize);
    if thread_samples > MAX_THREAD_SAMPLES {
        return RunOutcome::Invalid(format!(
            "the request selects {threads} threads × {} samples = {thread_samples} \
             thread-samples; at most {MAX_THREAD_SAMPLES} per run (select fewer threads or \
             take fewer samples)",
            opts.num_samples
        ));
    }
    let answered: usize = index.iter().map(|&t| target_threads[t]).sum();
    let answer_samples = answered.saturating_mul(opts.num_samples as usize);
    if answer_samples > MAX_ANSWER_SAMPLES {
        return RunOutcome::Invalid(format!(
            "the answer would carry {answer_samples} samples ({} subtasks over {answered} \
             threads × {} samples); at most {MAX_ANSWER_SAMPLES} per answer",
            req.selectors.len(),
            opts.num_samples
        ));
    }
    let refusals = |sampled: &[(String, Result<flamegrid_model::SampleSet, SamplerError>)]| {
        req.selectors
            .iter()
            .zip(&index)
            .filter_map(|(sel, &t)| {
                let e = early_errors[t].as_ref().or_else(|| {
                    let pos = early_errors[..t].iter().filter(|e| e.is_none()).count();
                    sampled.get(pos)?.1.as_ref().err()
                })?;
                Some(format!(
                    "{:?}: {}",
                    truncated(&sel.subtask_key),
                    peer_message(e)
                ))
            })
            .collect::<Vec<_>>()
    };
    if !targets.is_empty()
        && early_errors
            .iter()
            .all(|e| e.as_ref().is_some_and(is_refusal))
    {
        return RunOutcome::AllRefused(refusals(&[]));
    }

    let (run, stats) = if to_sample.is_empty() {
        let now = now_ms();
        let run = SamplingRun {
            start_ms: now,
            end_ms: now,
            subtasks: Vec::new(),
            warnings: Vec::new(),
        };
        (run, RunStats::default())
    } else {
        sampler.sample_bounded(&to_sample, policy, opts, MAX_THREAD_SAMPLES)
    };
    // One entry per thread read with ptrace (perf reads stop nothing).
    telemetry.ptrace_stopped(stats.stop_ns.len() as u64);
    for (key, warning) in &run.warnings {
        tracing::warn!(subtask = %key, "{warning}");
    }
    // The kernel refused every selector that passed the allow-list (another user's process
    // without CAP_SYS_PTRACE, another tracer, ...): as much a refusal as the allow-list's.
    let sampled_refused = run
        .subtasks
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(is_refusal))
        .count();
    if !targets.is_empty()
        && early_errors.iter().flatten().all(is_refusal)
        && sampled_refused == run.subtasks.len()
    {
        return RunOutcome::AllRefused(refusals(&run.subtasks));
    }

    // Every selector in request order; identical ones share their target's answer.
    let mut sampled = run.subtasks.into_iter();
    let failed = |e: &SamplerError| (peer_message(e), failure_kind(e));
    let answers: Vec<Result<flamegrid_model::SampleSet, (String, v1::SubtaskFailure)>> =
        early_errors
            .iter()
            .map(|early| match early {
                Some(e) => Err(failed(e)),
                None => match sampled.next() {
                    Some((_, Ok(set))) => Ok(set),
                    Some((_, Err(e))) => Err(failed(&e)),
                    None => Err((
                        "the sampler returned no result for this subtask".into(),
                        v1::SubtaskFailure::AgentError,
                    )),
                },
            })
            .collect();
    let mut builder = SampleResponseBuilder::new(req.request_id);
    for (sel, &t) in req.selectors.iter().zip(&index) {
        match &answers[t] {
            Ok(set) => builder.add_subtask(&sel.subtask_key, set),
            Err((e, kind)) => builder.add_failure(&sel.subtask_key, e.clone(), *kind),
        }
    }
    RunOutcome::Sampled(builder.finish(run.start_ms, run.end_ms))
}

#[tonic::async_trait]
impl Sampling for SamplingService {
    async fn sample(
        &self,
        request: Request<v1::SampleRequest>,
    ) -> Result<Response<v1::SampleResponse>, Status> {
        let valid = validate_sample(request.get_ref());
        self.counted(valid).await.map(Response::new)
    }

    async fn thread_dump(
        &self,
        request: Request<v1::ThreadDumpRequest>,
    ) -> Result<Response<v1::SampleResponse>, Status> {
        let valid = validate_thread_dump(request.get_ref());
        self.counted(valid).await.map(Response::new)
    }
}

/// Checks a `Sample` request against every bound; the error is `INVALID_ARGUMENT` with the reason.
pub fn validate_sample(req: &v1::SampleRequest) -> Result<ValidRequest, Status> {
    if !(1..=MAX_SAMPLES).contains(&req.num_samples) {
        return Err(Status::invalid_argument(format!(
            "num_samples must be between 1 and {MAX_SAMPLES}, got {}",
            req.num_samples
        )));
    }
    // The delay only matters between samples, so a one-sample request may leave it at 0.
    let delay = if req.num_samples == 1 {
        Duration::ZERO
    } else if !(1..=MAX_DELAY_MS).contains(&req.delay_ms) {
        return Err(Status::invalid_argument(format!(
            "delay_ms must be between 1 and {MAX_DELAY_MS} when num_samples > 1, got {}",
            req.delay_ms
        )));
    } else {
        Duration::from_millis(u64::from(req.delay_ms))
    };
    let duration_ms = u64::from(req.num_samples) * delay.as_millis() as u64;
    if duration_ms > MAX_RUN_DURATION_MS {
        return Err(Status::invalid_argument(format!(
            "num_samples × delay_ms is {} × {} ms = {duration_ms} ms; a run may last at most \
             {MAX_RUN_DURATION_MS} ms (10 minutes)",
            req.num_samples,
            delay.as_millis()
        )));
    }
    check_depth(req.max_depth)?;
    Ok(ValidRequest {
        request_id: req.request_id,
        selectors: validate_selectors(&req.selectors)?,
        num_samples: req.num_samples,
        delay,
        max_depth: req.max_depth,
    })
}

/// Checks a `ThreadDump` request: one sample per thread, `max_depth` 0 meaning
/// [`THREAD_DUMP_DEFAULT_DEPTH`].
pub fn validate_thread_dump(req: &v1::ThreadDumpRequest) -> Result<ValidRequest, Status> {
    let max_depth = if req.max_depth == 0 {
        THREAD_DUMP_DEFAULT_DEPTH
    } else {
        req.max_depth
    };
    check_depth(max_depth)?;
    Ok(ValidRequest {
        request_id: 0,
        selectors: validate_selectors(&req.selectors)?,
        num_samples: 1,
        delay: Duration::ZERO,
        max_depth,
    })
}

fn check_depth(max_depth: u32) -> Result<(), Status> {
    if (1..=MAX_DEPTH).contains(&max_depth) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "max_depth must be between 1 and {MAX_DEPTH}, got {max_depth}"
        )))
    }
}

/// Checks the selector list and each selector, without compiling any pattern: that waits until
/// the request holds a run slot ([`distinct_targets`]), so a flood of refused requests costs no
/// regex compilation.
fn validate_selectors(selectors: &[v1::ThreadSelector]) -> Result<Vec<v1::ThreadSelector>, Status> {
    if selectors.is_empty() || selectors.len() > MAX_SELECTORS {
        return Err(Status::invalid_argument(format!(
            "selectors must hold between 1 and {MAX_SELECTORS} entries, got {}",
            selectors.len()
        )));
    }
    for (i, sel) in selectors.iter().enumerate() {
        let bad = |why: String| {
            Status::invalid_argument(format!(
                "selector {i} ({:?}): {why}",
                truncated(&sel.subtask_key)
            ))
        };
        if sel.subtask_key.len() > MAX_SUBTASK_KEY_BYTES {
            return Err(bad(format!(
                "subtask_key is longer than {MAX_SUBTASK_KEY_BYTES} bytes"
            )));
        }
        match &sel.process {
            None => return Err(bad("set exactly one of pid or process_name".into())),
            Some(v1::thread_selector::Process::Pid(0)) => {
                return Err(bad("pid must not be 0".into()));
            }
            Some(v1::thread_selector::Process::ProcessName(name)) if name.is_empty() => {
                return Err(bad("process_name must not be empty".into()));
            }
            Some(_) => {}
        }
        if sel.tids.len() > MAX_TIDS_PER_SELECTOR {
            return Err(bad(format!("more than {MAX_TIDS_PER_SELECTOR} tids")));
        }
        crate::wire::check_selector(sel).map_err(|e| bad(e.to_string()))?;
    }
    Ok(selectors.to_vec())
}

/// The first 64 characters of an untrusted string, for error messages.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// Checks `authorization: Bearer <token>` on every incoming call when the agent has a shared
/// token (`--token-file`). The comparison is constant-time, so the time a refusal takes says
/// nothing about how much of a guessed token was right; refusals are logged with the peer.
/// Its `Debug` form never shows the token.
#[derive(Clone)]
pub struct BearerTokenCheck {
    expected: Option<Arc<[u8]>>,
}

impl BearerTokenCheck {
    /// Checks against `token` (`None`: every call passes, for deployments without a token).
    pub fn new(token: Option<&str>) -> Self {
        BearerTokenCheck {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())),
        }
    }
}

impl std::fmt::Debug for BearerTokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokenCheck")
            .field("token_required", &self.expected.is_some())
            .finish()
    }
}

impl tonic::service::Interceptor for BearerTokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        let ok = given.is_some_and(|g| constant_time_eq(g, expected));
        if ok {
            return Ok(request);
        }
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        let what = if given.is_some() {
            "a wrong token"
        } else {
            "no token"
        };
        tracing::warn!(%peer, "refused a sampling call with {what}");
        Err(Status::unauthenticated(format!(
            "this agent requires `authorization: Bearer <token>` with its shared token; the call carried {what}"
        )))
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::thread_selector::Process;

    fn selector(key: &str, pid: u32) -> v1::ThreadSelector {
        v1::ThreadSelector {
            subtask_key: key.into(),
            process: Some(Process::Pid(pid)),
            ..Default::default()
        }
    }

    fn request(n: u32, delay: u32, depth: u32) -> v1::SampleRequest {
        v1::SampleRequest {
            request_id: 7,
            selectors: vec![selector("a", 1)],
            num_samples: n,
            delay_ms: delay,
            max_depth: depth,
        }
    }

    fn reason(r: Result<ValidRequest, Status>) -> String {
        let status = r.expect_err("expected a refusal");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_string()
    }

    #[test]
    fn bounds_are_inclusive() {
        assert!(
            validate_sample(&request(1, 0, 1)).is_ok(),
            "one sample ignores the delay"
        );
        assert!(validate_sample(&request(1000, 600, 1024)).is_ok());
        let ok = validate_sample(&request(3, 20, 64)).unwrap();
        assert_eq!(
            (ok.request_id, ok.num_samples, ok.delay, ok.max_depth),
            (7, 3, Duration::from_millis(20), 64)
        );
    }

    #[test]
    fn out_of_bounds_numbers_are_refused_with_the_field() {
        assert!(reason(validate_sample(&request(0, 10, 10))).contains("num_samples"));
        assert!(reason(validate_sample(&request(1001, 10, 10))).contains("num_samples"));
        assert!(reason(validate_sample(&request(2, 0, 10))).contains("delay_ms"));
        assert!(reason(validate_sample(&request(2, 10_001, 10))).contains("delay_ms"));
        assert!(reason(validate_sample(&request(2, 10, 0))).contains("max_depth"));
        assert!(reason(validate_sample(&request(2, 10, 1025))).contains("max_depth"));
    }

    #[test]
    fn selector_lists_are_bounded_and_checked() {
        let mut r = request(1, 0, 10);
        r.selectors.clear();
        assert!(reason(validate_sample(&r)).contains("selectors"));
        r.selectors = (0..1025).map(|i| selector(&i.to_string(), 1)).collect();
        assert!(reason(validate_sample(&r)).contains("selectors"));
        r.selectors = vec![v1::ThreadSelector {
            subtask_key: "x".into(),
            ..Default::default()
        }];
        assert!(reason(validate_sample(&r)).contains("exactly one of pid or process_name"));
        r.selectors = vec![selector("x", 0)];
        assert!(reason(validate_sample(&r)).contains("pid"));
        r.selectors = vec![v1::ThreadSelector {
            subtask_key: "x".into(),
            process: Some(Process::ProcessName(String::new())),
            ..Default::default()
        }];
        assert!(reason(validate_sample(&r)).contains("process_name"));
        r.selectors = vec![v1::ThreadSelector {
            thread_name: "x".repeat(2000),
            ..selector("x", 1)
        }];
        assert!(reason(validate_sample(&r)).contains("selector 0"));
        // A bad pattern passes the cheap checks and is refused once it is compiled, with a
        // run slot held.
        r.selectors = vec![v1::ThreadSelector {
            thread_name: "spin-(".into(),
            ..selector("x", 1)
        }];
        assert!(validate_sample(&r).is_ok());
        let err = distinct_targets(&r.selectors).unwrap_err();
        assert!(err.contains("selector 0"), "{err}");
    }

    #[test]
    fn identical_selectors_are_one_target() {
        let same = |key: &str| v1::ThreadSelector {
            thread_name: "spin-.*".into(),
            ..selector(key, 7)
        };
        let sels = vec![same("a"), same("b"), selector("c", 7), same("d")];
        let (targets, index) = distinct_targets(&sels).unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(index, [0, 0, 1, 0]);
    }

    #[test]
    fn a_run_lasts_at_most_ten_minutes() {
        assert!(validate_sample(&request(600, 1000, 10)).is_ok());
        let why = reason(validate_sample(&request(1000, 10_000, 10)));
        assert!(why.contains("600000"), "{why}");
    }

    #[test]
    fn thread_dump_defaults_its_depth() {
        let ok = validate_thread_dump(&v1::ThreadDumpRequest {
            selectors: vec![selector("a", 1)],
            max_depth: 0,
        })
        .unwrap();
        assert_eq!(
            (ok.num_samples, ok.max_depth),
            (1, THREAD_DUMP_DEFAULT_DEPTH)
        );
        let bad = validate_thread_dump(&v1::ThreadDumpRequest {
            selectors: vec![selector("a", 1)],
            max_depth: 1025,
        });
        assert!(reason(bad).contains("max_depth"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
    }
}
