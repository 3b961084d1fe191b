//! The native stack sampler: N samples of the stacks and states of selected threads of
//! processes on this host.
//!
//! This crate is the part of flamegrid that touches other processes, and nothing else: no
//! networking, no gRPC, no command line. The agent (`flamegrid-agent`) serves it over gRPC; the
//! benchmarks drive it directly. The coordinator never links it: it asks an agent.
//!
//! * [`Sampler`]: the sampling runs described below.
//! * [`selection`]: turns a selector (pid or process name, tids or a thread-name regex) into the
//!   threads to sample, and enforces the allow-list.
//! * [`memory`]: allocator settings and giving memory back after a burst of work.
//! * [`SamplerError`]: the one error type; the agent maps its variants to gRPC statuses.
//!
//! A sampling run is a loop of *rounds*, one per sample, paced at a fixed rate:
//!
//! ```text
//!  caller thread (sample())                 tracer thread (ptrace.rs)        symbolizer thread
//!  ─────────────────────────                ─────────────────────────        ─────────────────
//!  resolve selectors, read /proc states ──▶ seize+interrupt each thread,
//!  (stat, syscall) outside any stop          read regs + stack, unwind,
//!                                    ◀────── detach; addresses per thread
//!  ... N rounds, `delay` apart ...
//!  distinct addresses per process ─────────────────────────────────────────▶ blazesym, demangle
//!  build SampleSets (outermost first) ◀───────────────────────────────────── frames per address
//! ```
//!
//! * [`proc`]: `/proc` parsing (state after the last `)`, timed waits from `syscall`, comm).
//! * `ptrace`: the one OS thread that owns every ptrace call, and the overlapped round.
//! * `stack`: registers and the page-split `process_vm_readv` stack copy.
//! * `unwind`: modules per process (loaded off the tracer thread, cached per file identity) and
//!   the framehop unwinders built from them on the tracer thread.
//! * `symbolize`: blazesym on its own thread, demangling and name cleanup.
//! * `target_file`: opening the files a sampled process names without letting it stall (a
//!   FIFO) or crash (a truncated file) the agent.
//! * `workers`: the module loader thread, and deadlines on the threads that read those files.
//!
//! **The tracer thread never touches a file a sampled process names.** Such a file may be a FIFO
//! that never answers, a device, or a file on a file system that hangs; the tracer holds threads
//! stopped, so it must never wait on one. Modules are loaded by the loader thread before a
//! round and handed to the tracer as values; stacks that left every known module are unwound
//! again by the caller after the round.
//! * `permission`: which of the possible causes an `EPERM` is.
//! * `perf`: the perf-event backend ([`Backend::Perf`]): running threads' stacks from task-clock
//!   samples and sleeping threads' from their last switch-out, copied by the kernel without
//!   stopping anything; ptrace reads only threads asleep since before the run.
//!
//! Symbolization happens once per distinct address *after* all samples were taken, so the
//! sample loop never waits for DWARF parsing and each round stays short.

pub mod error;
pub mod memory;
pub mod proc;
pub mod selection;

mod dwarf_scope;
mod elf;
mod maps;
mod perf;
mod permission;
mod ptrace;
mod stack;
mod symbolize;
mod target_file;
mod unwind;
mod workers;

pub use error::SamplerError;
pub use permission::explain_denied;
pub use symbolize::clean_name;

/// How long the symbolizer keeps its parsed debug information after the last run before it
/// drops it and returns the memory (`symbolize`'s module docs): longer than the gap between
/// back-to-back flame graph requests, shorter than the REST refresh interval (60 s by
/// default), so an agent sits at its small idle size between one person's looks at a graph.
pub const SYMBOL_CACHE_IDLE: Duration = Duration::from_secs(10);

/// The perf ring memory one sampler (agent) maps at most by default: 256 MiB, the rings of
/// about 250 threads (each maps about 1 MiB). See [`Sampler::with_perf_ring_memory`].
pub const DEFAULT_PERF_RING_MEMORY: usize = perf::budget::DEFAULT_RING_MEMORY;

use crate::selection::{AccessPolicy, ProcessRef, ThreadSelector};
use flamegrid_model::clock::now_ms;
use flamegrid_model::{Frame, SampleSet, SampleSetBuilder, SampledThread, ThreadState};
use ptrace::{ReadOutcome, TargetJob, ThreadJob, Tracer};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use symbolize::SymbolizerThread;
use unwind::{ProcessModules, RawStack, UnwindCache};
use workers::LoaderThread;

/// How the stacks are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Perf events where `perf_event_open` is allowed for the thread, ptrace for the others
    /// (the reason logged once).
    #[default]
    Auto,
    /// Perf events only: a thread whose events the kernel refuses fails its target.
    Perf,
    /// Every sample is a ptrace stop (PTRACE_SEIZE + PTRACE_INTERRUPT).
    Ptrace,
}

impl Backend {
    /// `auto`, `perf` or `ptrace`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Perf => "perf",
            Backend::Ptrace => "ptrace",
        }
    }

    /// The backend `FLAMEGRID_SAMPLER` names (`auto`, `perf` or `ptrace`, any case), as the
    /// agent's `--sampler` flag reads it; [`Backend::Auto`] when it is unset or empty. Callers
    /// that build a [`Sampler`] without the command line (in-process agents, tests) use it so
    /// that one environment variable picks the mode everywhere.
    pub fn from_env() -> Result<Backend, SamplerError> {
        match std::env::var("FLAMEGRID_SAMPLER") {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Backend::Auto),
            Err(std::env::VarError::NotUnicode(_)) => Err(SamplerError::InvalidArgument(
                "FLAMEGRID_SAMPLER is not UTF-8; expected auto, perf or ptrace".into(),
            )),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = SamplerError;

    /// `auto`, `perf` or `ptrace`, in any case.
    fn from_str(s: &str) -> Result<Backend, SamplerError> {
        [Backend::Auto, Backend::Perf, Backend::Ptrace]
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                SamplerError::InvalidArgument(format!(
                    "sampler {s:?}: expected auto, perf or ptrace"
                ))
            })
    }
}

/// How to sample.
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Samples per thread (>= 1).
    pub num_samples: u32,
    /// Delay between samples (rounds start `delay` apart; zero: back to back).
    pub delay: Duration,
    /// Frames kept per stack (innermost ones).
    pub max_depth: u32,
    /// Append kernel stacks of off-CPU threads (opt-in, root only).
    pub kernel_stacks: bool,
    /// Set to end a run early (graceful shutdown); the run returns what it has.
    pub cancel: Arc<AtomicBool>,
}

impl Default for SamplerOptions {
    /// One sample, 50 ms delay, 100 frames: the CLI's and Flink's defaults.
    fn default() -> Self {
        SamplerOptions {
            num_samples: 1,
            delay: Duration::from_millis(50),
            max_depth: 100,
            kernel_stacks: false,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The result of one sampling run over several targets.
#[derive(Debug)]
pub struct SamplingRun {
    /// First sample, ms since the epoch.
    pub start_ms: i64,
    /// Last sample, ms since the epoch.
    pub end_ms: i64,
    /// One entry per target, in request order: its samples or why it has none.
    pub subtasks: Vec<(String, Result<SampleSet, SamplerError>)>,
    /// Targets that were sampled, but some of whose threads the kernel refused to let us
    /// trace: (target key, one line naming the threads and why). The samples of the other
    /// threads are in `subtasks`; this says what is missing from them.
    pub warnings: Vec<(String, String)>,
}

/// Measurements of one run, for `flamegrid-agent sample --stats` and the benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Distinct threads that were sampled at least once.
    pub threads: usize,
    /// Rounds taken.
    pub rounds: u32,
    /// How long each read thread was stopped (upper bound), ns, one entry per thread and round.
    pub stop_ns: Vec<u64>,
    /// Whole round (including `/proc` reads), per round.
    pub round_time: Vec<Duration>,
    /// The ptrace part of each round (first interrupt to last detach).
    pub snapshot_time: Vec<Duration>,
    /// Loading unwind information (cold caches).
    pub module_load: Duration,
    /// Time spent unwinding.
    pub unwind: Duration,
    /// Time spent waiting for names after the last round (earlier rounds are named while the
    /// run waits between rounds).
    pub symbolize: Duration,
    /// Threads that did not stop within their deadline.
    pub not_stopped: u32,
    /// Which backend read the stacks: `ptrace`, `perf`, or `perf (N threads with ptrace:
    /// reason)` when `auto` fell back for some.
    pub backend: String,
    /// Thread-samples read from perf samples (no stop); `stop_ns` has one entry per ptrace read.
    pub perf_reads: u32,
    /// Records the kernel dropped because a ring buffer was full (perf backend).
    pub lost_records: u64,
}

impl RunStats {
    /// The `q` quantile (0..=1) of the stop times, in µs.
    pub fn stop_quantile_us(&self, q: f64) -> f64 {
        quantile(&self.stop_ns, q) / 1000.0
    }
}

fn quantile(values: &[u64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let idx = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    v[idx] as f64
}

/// A handle on the sampler; cheap to clone, safe to share between threads.
///
/// It owns the tracer thread (every ptrace call), the symbolizer thread (blazesym) and, through
/// them, the unwind and symbol caches that make the second snapshot of a process cheap.
#[derive(Clone)]
pub struct Sampler {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// The perf ring memory all runs of this sampler (agent) may map together.
    ring_budget: Arc<perf::budget::RingBudget>,
    /// The first run logged which backend it used (and why it fell back).
    choice_logged: AtomicBool,
    tracer: Tracer,
    symbolizer: SymbolizerThread,
    /// Reads the files of sampled processes for the unwinder, off the tracer thread.
    loader: LoaderThread,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

/// A thread's state as read from `/proc` just before the round.
struct PreState {
    /// `stat`'s state letter.
    letter: char,
    /// For a sleeping thread: its `syscall` file says it waits with a timeout.
    timed: bool,
    /// Kernel stack, when asked for.
    kernel: Vec<String>,
}

/// Whether the registers at a stop tell a thread in a system call from one in user space
/// (`stack::read_regs` decodes the restart codes on x86_64 only).
const STOP_SHOWS_SYSCALL: bool = cfg!(target_arch = "x86_64");

/// The state of a sample: the registers at the stop say best whether the thread was blocked in
/// a system call (and with which timeout) — our own earlier stops make waiting threads briefly
/// runnable while they re-enter their wait, which `/proc` alone would count as on-CPU.
///
/// A thread that `stopped` outside any system call was executing user code when our interrupt
/// reached it: it was running, so it is RUNNABLE whatever `/proc` said a moment earlier (that
/// letter is read before the round and may be stale: a worker that slept a microsecond ago and
/// now computes must not put its compute frames into an OFF_CPU graph). Only a job-control stop
/// (`T`/`t`) is kept, as the thread really is not running then. Threads we did not stop fall
/// back to `/proc` (`stat`, and `syscall` for the timeout).
fn sample_state(
    pre: &PreState,
    stopped: bool,
    interrupted: Option<(u64, [u64; 6])>,
    perf_state: Option<(char, bool)>,
) -> ThreadState {
    // A perf sample stopped nothing: its state is `/proc`'s, as read for the sample.
    if let Some((letter, timed)) = perf_state {
        return ThreadState::from_proc_state(letter, timed);
    }
    match (interrupted, pre.letter) {
        (Some(_), 'D') => ThreadState::Blocked,
        (Some((nr, args)), _) => {
            if proc::syscall_is_timed_wait(nr, &args) {
                ThreadState::TimedWaiting
            } else {
                ThreadState::Waiting
            }
        }
        (None, letter) if stopped && STOP_SHOWS_SYSCALL && !matches!(letter, 'T' | 't') => {
            ThreadState::Runnable
        }
        (None, letter) => ThreadState::from_proc_state(letter, pre.timed),
    }
}

/// A process's mappings as read during a run (shared by the targets in that process).
type RunMaps = Arc<Vec<maps::MapEntry>>;

/// One observation before symbolization.
struct RawSample {
    tid: u32,
    time_ms: i64,
    state: ThreadState,
    /// Shared by every target of the run that selected this thread (overlapping selectors
    /// store a thread's stack once per round, not once per selector).
    stack: Option<Arc<RawStack>>,
    kernel: Vec<String>,
}

/// The state of one target during a run.
struct TargetRun {
    key: String,
    sel: ThreadSelector,
    pid: u32,
    starttime: u64,
    names: HashMap<u32, String>,
    samples: Vec<RawSample>,
    /// Why this target has no (more) samples; set on the first round's failure.
    error: Option<SamplerError>,
    /// The process went away after some samples: stop sampling it, keep what we have.
    finished: bool,
    /// Threads the kernel refused to let us trace.
    denied: std::collections::BTreeSet<u32>,
    /// Why, in one line (explained at the first refusal, while the thread still exists).
    denied_reason: Option<String>,
    /// Some round selected at least one thread.
    selected_any: bool,
}

impl TargetRun {
    /// A target not yet resolved (its pid is found on the first round).
    fn new(key: &str, sel: &ThreadSelector) -> TargetRun {
        TargetRun {
            key: key.to_string(),
            sel: sel.clone(),
            pid: 0,
            starttime: 0,
            names: HashMap::new(),
            samples: Vec::new(),
            error: None,
            finished: false,
            denied: Default::default(),
            denied_reason: None,
            selected_any: false,
        }
    }

    /// Failed, or its process went away: no more rounds for it.
    fn done(&self) -> bool {
        self.error.is_some() || self.finished
    }

    /// The kernel refused to stop `tid`. Exiting threads answer EPERM too; only a live
    /// thread's refusal is a permission problem, explained once, at the first, while the thread
    /// still exists.
    fn note_refusal(&mut self, tid: u32, errno: nix::errno::Errno) {
        let exiting =
            proc::task_stat(self.pid, tid).map_or(true, |st| matches!(st.state, 'Z' | 'X' | 'x'));
        if exiting {
            return;
        }
        tracing::debug!(tid, %errno, "ptrace refused");
        if self.denied_reason.is_none() {
            self.denied_reason = Some(permission::explain_denied(self.pid, tid));
        }
        if self.denied.insert(tid) {
            // Left out of the whole run, as its warning says: also the samples perf events
            // may have read of it before the refusal (a thread another tracer holds can still
            // be read that way). Once per refused thread, so this costs nothing per round.
            self.samples.retain(|s| s.tid != tid);
        }
    }

    /// The warning for threads refused beside sampled ones (a target with nothing sampled
    /// fails instead: [`denied_error`]).
    fn refusal_warning(&self) -> Option<String> {
        if self.error.is_some() || self.samples.is_empty() || self.denied.is_empty() {
            return None;
        }
        let tids: Vec<String> = self.denied.iter().map(u32::to_string).collect();
        let reason = self
            .denied_reason
            .as_deref()
            .unwrap_or("refused by the kernel");
        Some(format!(
            "pid {}: could not sample thread(s) {}: {reason}",
            self.pid,
            tids.join(", ")
        ))
    }
}

/// The names of one run's addresses, gathered while the run samples.
///
/// Each distinct address of a process goes to the symbolizer thread once, in batches: after
/// every round but the last (so the symbolizer works while the sampler waits for the next
/// round) and once more at the end. Collecting waits for the batches in order.
#[derive(Default)]
struct RunNames {
    /// Per process instance (pid, start time): the addresses already submitted.
    submitted: HashMap<(u32, u64), HashSet<u64>>,
    /// Per target (index into the run's targets): how many of its samples were scanned.
    scanned: HashMap<usize, usize>,
    /// Batches in flight, by pid.
    pending: Vec<(u32, symbolize::PendingNames)>,
}

impl RunNames {
    /// Submits the addresses of samples taken since the last call that no earlier batch of
    /// their process carried.
    fn submit_new(
        &mut self,
        symbolizer: &SymbolizerThread,
        runs: &[TargetRun],
        run_maps: &HashMap<(u32, u64), RunMaps>,
    ) {
        let mut fresh: HashMap<(u32, u64), Vec<u64>> = HashMap::new();
        for (i, run) in runs.iter().enumerate() {
            let from = self.scanned.insert(i, run.samples.len()).unwrap_or(0);
            let process = (run.pid, run.starttime);
            let seen = self.submitted.entry(process).or_default();
            for sample in run.samples.iter().skip(from) {
                if let Some(stack) = &sample.stack {
                    for &addr in &stack.addrs {
                        if seen.insert(addr) {
                            fresh.entry(process).or_default().push(addr);
                        }
                    }
                }
            }
        }
        for ((pid, starttime), addrs) in fresh {
            let maps = run_maps.get(&(pid, starttime)).cloned().unwrap_or_default();
            self.pending
                .push((pid, symbolizer.submit(pid, starttime, addrs, maps)));
        }
    }

    /// Waits for every batch (each at most the file-work deadline; see `workers`): frames per
    /// address, per pid.
    fn collect(
        self,
        symbolizer: &SymbolizerThread,
        cancel: &AtomicBool,
    ) -> HashMap<u32, HashMap<u64, Vec<Frame>>> {
        let mut tables: HashMap<u32, HashMap<u64, Vec<Frame>>> = HashMap::new();
        for (pid, batch) in self.pending {
            tables
                .entry(pid)
                .or_default()
                .extend(batch.wait(symbolizer, cancel));
        }
        tables
    }
}

impl Sampler {
    /// Starts the sampler (its tracer and symbolizer threads). The symbolizer keeps its parsed
    /// debug information for [`SYMBOL_CACHE_IDLE`] after the last run.
    pub fn new() -> Result<Sampler, SamplerError> {
        Sampler::with_symbol_cache_idle(SYMBOL_CACHE_IDLE)
    }

    /// [`Sampler::new`] with another idle time after which the symbolizer drops its caches
    /// and returns their memory: shorter saves memory sooner, longer keeps more runs warm.
    pub fn with_symbol_cache_idle(idle: Duration) -> Result<Sampler, SamplerError> {
        Sampler::build(idle, Backend::default())
    }

    /// [`Sampler::new`] reading stacks with `backend`.
    pub fn with_backend(backend: Backend) -> Result<Sampler, SamplerError> {
        Sampler::build(SYMBOL_CACHE_IDLE, backend)
    }

    /// [`Sampler::with_backend`] whose perf rings take at most `bytes` together (all runs at
    /// once; [`DEFAULT_PERF_RING_MEMORY`] otherwise), less where the kernel's locked-memory
    /// limit for this process is lower (`kernel.perf_event_mlock_kb` and `RLIMIT_MEMLOCK`
    /// without CAP_IPC_LOCK). Threads whose rings do not fit are read with ptrace; the first
    /// time, with the reason, in the log.
    pub fn with_perf_ring_memory(backend: Backend, bytes: usize) -> Result<Sampler, SamplerError> {
        Sampler::build_with(SYMBOL_CACHE_IDLE, backend, bytes)
    }

    /// The perf ring memory all runs may map together (bytes), and what they map now.
    pub fn perf_ring_memory(&self) -> (usize, usize) {
        (self.inner.ring_budget.cap(), self.inner.ring_budget.used())
    }

    /// The backend this sampler was built with.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    fn build(idle: Duration, backend: Backend) -> Result<Sampler, SamplerError> {
        Sampler::build_with(idle, backend, DEFAULT_PERF_RING_MEMORY)
    }

    fn build_with(
        idle: Duration,
        backend: Backend,
        ring_memory: usize,
    ) -> Result<Sampler, SamplerError> {
        let ring_budget = Arc::new(perf::budget::RingBudget::new(
            ring_memory,
            perf::budget::LockLimits::of_this_process(),
        ));
        let tracer =
            Tracer::spawn().map_err(|e| SamplerError::io("starting the tracer thread", e))?;
        let symbolizer = SymbolizerThread::spawn(idle)
            .map_err(|e| SamplerError::io("starting the symbolizer thread", e))?;
        let loader =
            LoaderThread::spawn().map_err(|e| SamplerError::io("starting the loader thread", e))?;
        Ok(Sampler {
            inner: Arc::new(Inner {
                backend,
                ring_budget,
                choice_logged: AtomicBool::new(false),
                tracer,
                symbolizer,
                loader,
            }),
        })
    }

    /// Whether the symbolizer holds parsed debug information now: true after a run, false again
    /// once it was idle for the time given at construction (and before the first run).
    pub fn holds_symbol_caches(&self) -> bool {
        self.inner.symbolizer.holds_caches()
    }

    /// Samples `targets` (key, selector) — blocking (call from `spawn_blocking`). Several calls
    /// may run at once from different threads; their rounds interleave on the tracer thread, so
    /// a thread is never traced by two runs at once.
    pub fn sample(
        &self,
        targets: &[(String, ThreadSelector)],
        policy: &AccessPolicy,
        opts: &SamplerOptions,
    ) -> SamplingRun {
        self.sample_with_stats(targets, policy, opts).0
    }

    /// [`Sampler::sample_with_stats`], but the run ends early (keeping what it has, with a
    /// warning) once it holds `max_thread_samples` samples: a bound on its memory even when the
    /// selected processes start threads during the run.
    pub fn sample_bounded(
        &self,
        targets: &[(String, ThreadSelector)],
        policy: &AccessPolicy,
        opts: &SamplerOptions,
        max_thread_samples: usize,
    ) -> (SamplingRun, RunStats) {
        self.run(targets, policy, opts, max_thread_samples)
    }

    /// [`Sampler::sample`], plus timings of the run.
    pub fn sample_with_stats(
        &self,
        targets: &[(String, ThreadSelector)],
        policy: &AccessPolicy,
        opts: &SamplerOptions,
    ) -> (SamplingRun, RunStats) {
        self.run(targets, policy, opts, usize::MAX)
    }

    /// One sampling run: `num_samples` rounds `delay` apart, each stopping every selected
    /// thread once (on the tracer thread), then the names of every address seen.
    ///
    /// A round is three steps, each a function of its own: [`Sampler::prepare_jobs`] resolves
    /// the targets' threads and reads their states from `/proc` (no thread stopped), the tracer
    /// stops, copies and unwinds each thread ([`ptrace::Tracer::round`]), and [`record_round`]
    /// files what it read under each target. [`assemble_run`] turns the targets into the answer.
    fn run(
        &self,
        targets: &[(String, ThreadSelector)],
        policy: &AccessPolicy,
        opts: &SamplerOptions,
        max_thread_samples: usize,
    ) -> (SamplingRun, RunStats) {
        let mut stats = RunStats::default();
        let mut runs: Vec<TargetRun> = targets
            .iter()
            .map(|(key, sel)| TargetRun::new(key, sel))
            .collect();
        let max_depth = opts.max_depth.max(1) as usize;
        let mut processes = RunProcesses::default();
        let mut names = RunNames::default();
        let mut began = Instant::now();
        let mut stored = 0usize;
        let mut bound_warning = None;
        let rounds = opts.num_samples.max(1);
        let mut perf = (self.inner.backend != Backend::Ptrace).then(|| {
            perf::PerfSession::new(
                perf::clock_period(opts.delay),
                Arc::clone(&self.inner.ring_budget),
            )
        });
        for round in 0..rounds {
            if opts.cancel.load(Ordering::SeqCst) {
                break;
            }
            if stored >= max_thread_samples {
                bound_warning = Some(format!(
                    "the run ended after {round} rounds: it holds {stored} thread-samples, the \
                     most one run may (threads appeared during the run)"
                ));
                break;
            }
            // Nothing left to sample (every target refused, gone or failed): stop now rather
            // than after the remaining delays.
            if round > 0 && runs.iter().all(TargetRun::done) {
                break;
            }
            if round > 0 && !wait_draining(began + opts.delay * round, &opts.cancel, perf.as_mut())
            {
                break;
            }
            let round_start = Instant::now();
            let state_ns = perf::events::monotonic_ns();
            let (jobs, meta) =
                self.prepare_jobs(&mut runs, round == 0, policy, opts, &mut processes);
            if jobs.is_empty() {
                if runs.iter().all(TargetRun::done) {
                    break;
                }
                continue;
            }
            let job_processes: Vec<(u32, u64)> =
                jobs.iter().map(|j| (j.pid, j.starttime)).collect();
            let read = match perf.as_mut() {
                Some(session) => self.perf_round(
                    session,
                    jobs,
                    &meta,
                    &mut runs,
                    (round == 0, state_ns),
                    &mut processes.modules,
                    max_depth,
                    &opts.cancel,
                ),
                None => self.inner.tracer.round(jobs, max_depth),
            };
            let mut result = match read {
                Ok(r) => r,
                Err(e) => {
                    for (i, _) in &meta {
                        runs[*i]
                            .error
                            .get_or_insert_with(|| SamplerError::Other(e.clone()));
                    }
                    break;
                }
            };
            if !result.redo.is_empty() {
                let t = Instant::now();
                self.unwind_again(
                    &mut result,
                    &job_processes,
                    &mut processes.modules,
                    max_depth,
                    &opts.cancel,
                );
                stats.unwind += t.elapsed();
            }
            stats.rounds += 1;
            stats.snapshot_time.push(result.timings.snapshot);
            stats.module_load += result.timings.module_load;
            stats.unwind += result.timings.unwind;
            stored += record_round(&mut runs, meta, result.targets, &mut stats);
            stats.round_time.push(round_start.elapsed());
            // The perf backend's first round waits for running threads' first samples: the
            // schedule of the later rounds starts after it, not in a burst to catch up.
            if round == 0 && perf.is_some() {
                began = Instant::now();
            }
            // While later rounds are still to come, hand this round's new addresses to the
            // symbolizer thread now: it names them during the delay, so a cold parse
            // overlaps the window rather than following it.
            if round + 1 < rounds {
                names.submit_new(&self.inner.symbolizer, &runs, &processes.maps);
            }
        }

        // Symbolize what is left (everything, for a single round), then collect the names:
        // once per distinct address and process.
        let sym_start = Instant::now();
        names.submit_new(&self.inner.symbolizer, &runs, &processes.maps);
        let tables = names.collect(&self.inner.symbolizer, &opts.cancel);
        stats.symbolize = sym_start.elapsed();

        let mut run = assemble_run(runs, &tables, bound_warning, max_depth, opts, &mut stats);
        self.report_backend(perf.as_ref(), &mut run, &mut stats);
        (run, stats)
    }

    /// This round's work for the tracer: per target still sampling, its threads and their
    /// states before the stop (from `/proc`, no thread stopped). On the first round each
    /// process's mappings are kept (to name frames should it exit before symbolization) and its
    /// modules loaded, off the tracer thread; later rounds reuse them.
    #[allow(clippy::type_complexity)]
    fn prepare_jobs(
        &self,
        runs: &mut [TargetRun],
        first: bool,
        policy: &AccessPolicy,
        opts: &SamplerOptions,
        processes: &mut RunProcesses,
    ) -> (Vec<TargetJob>, Vec<(usize, Vec<PreState>)>) {
        let mut jobs = Vec::new();
        let mut meta = Vec::new();
        for (i, run) in runs.iter_mut().enumerate() {
            if run.done() {
                continue;
            }
            let (mut job, states) = match prepare_round(run, first, policy, opts.kernel_stacks) {
                Ok(prepared) => prepared,
                Err(e) if run.samples.is_empty() => {
                    run.error = Some(e);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(key = %run.key, error = %e, "target ended during the run");
                    run.finished = true;
                    continue;
                }
            };
            if first && !processes.keep_maps(run, &job) {
                continue;
            }
            if job.threads.is_empty() {
                continue;
            }
            let process = (run.pid, run.starttime);
            let modules = processes
                .modules
                .entry(process)
                .or_insert_with(|| self.inner.loader.load(process.0, process.1, &opts.cancel));
            job.modules = Arc::clone(modules);
            jobs.push(job);
            meta.push((i, states));
        }
        (jobs, meta)
    }
}

/// What a run knows of each process it samples (by pid and start time), kept across its rounds.
#[derive(Default)]
struct RunProcesses {
    /// Mappings as read on the first round.
    maps: HashMap<(u32, u64), RunMaps>,
    /// Modules, loaded off the tracer thread.
    modules: HashMap<(u32, u64), Arc<ProcessModules>>,
}

impl RunProcesses {
    /// Reads `run`'s process mappings once per process, whatever the targets in it. The kernel
    /// guards `maps` with the ptrace access check, so a refusal here is the answer for the
    /// whole process, at once: `false`, with the target's error set.
    fn keep_maps(&mut self, run: &mut TargetRun, job: &TargetJob) -> bool {
        let process = (run.pid, run.starttime);
        if self.maps.contains_key(&process) {
            return true;
        }
        match maps::read_maps(run.pid) {
            Ok(entries) => {
                self.maps.insert(process, Arc::new(entries));
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let tid = job.threads.first().map_or(run.pid, |t| t.tid);
                run.error = Some(SamplerError::PermissionDenied {
                    pid: run.pid,
                    reason: permission::explain_denied(run.pid, tid),
                });
                false
            }
            Err(e) => {
                tracing::debug!(pid = run.pid, error = %e, "maps unreadable");
                self.maps.insert(process, Arc::default());
                true
            }
        }
    }
}

/// Files one round's reads under their targets (`meta`, in job order) and returns how many
/// thread-samples it stored. One stack per thread and round, shared by the targets that
/// selected the thread. A target whose every thread was refused, with nothing yet, gets its
/// answer now, not after the remaining rounds.
fn record_round(
    runs: &mut [TargetRun],
    meta: Vec<(usize, Vec<PreState>)>,
    reads: Vec<Vec<ptrace::ThreadRead>>,
    stats: &mut RunStats,
) -> usize {
    let mut stored = 0;
    let mut round_stacks: HashMap<u32, Arc<RawStack>> = HashMap::new();
    for ((i, states), reads) in meta.into_iter().zip(reads) {
        let run = &mut runs[i];
        for (pre, read) in states.into_iter().zip(reads) {
            if run.denied.contains(&read.tid) {
                continue; // refused in an earlier round: out of the run (see `note_refusal`)
            }
            let via_perf = read.perf_state.is_some();
            let stopped = matches!(read.outcome, ReadOutcome::Stack(_)) && !via_perf;
            let stack = match read.outcome {
                ReadOutcome::Stack(raw) => {
                    if via_perf {
                        stats.perf_reads += 1;
                    } else {
                        stats.stop_ns.push(read.stopped_ns);
                    }
                    let shared = round_stacks
                        .entry(read.tid)
                        .or_insert_with(|| Arc::new(raw));
                    Some(Arc::clone(shared))
                }
                ReadOutcome::NotStopped => {
                    stats.not_stopped += 1;
                    None
                }
                ReadOutcome::Gone => continue,
                ReadOutcome::Denied(errno) => {
                    run.note_refusal(read.tid, errno);
                    continue;
                }
            };
            let state = sample_state(&pre, stopped, read.interrupted_syscall, read.perf_state);
            stored += 1;
            run.samples.push(RawSample {
                tid: read.tid,
                time_ms: read.time_ms,
                state,
                stack,
                kernel: pre.kernel,
            });
        }
        if run.samples.is_empty() && !run.denied.is_empty() {
            run.error = Some(denied_error(run));
        }
    }
    stored
}

/// The run's answer: each target's samples named from `tables`, the warnings (the run's
/// bound, threads refused beside sampled ones), the time span and the thread count.
fn assemble_run(
    runs: Vec<TargetRun>,
    tables: &HashMap<u32, HashMap<u64, Vec<Frame>>>,
    bound_warning: Option<String>,
    max_depth: usize,
    opts: &SamplerOptions,
    stats: &mut RunStats,
) -> SamplingRun {
    let mut start_ms = i64::MAX;
    let mut end_ms = i64::MIN;
    let mut threads_seen: HashSet<(u32, u32)> = HashSet::new();
    let empty = HashMap::new();
    let mut warnings = Vec::new();
    if let Some(w) = bound_warning
        && let Some(first) = runs.first()
    {
        warnings.push((first.key.clone(), w));
    }
    let subtasks = runs
        .into_iter()
        .map(|run| {
            if let Some(warning) = run.refusal_warning() {
                warnings.push((run.key.clone(), warning));
            }
            for s in &run.samples {
                start_ms = start_ms.min(s.time_ms);
                end_ms = end_ms.max(s.time_ms);
                threads_seen.insert((run.pid, s.tid));
            }
            let table = tables.get(&run.pid).unwrap_or(&empty);
            let key = run.key.clone();
            (key, finish_target(run, table, max_depth, &opts.cancel))
        })
        .collect();
    stats.threads = threads_seen.len();
    if start_ms > end_ms {
        start_ms = now_ms();
        end_ms = start_ms;
    }
    SamplingRun {
        start_ms,
        end_ms,
        subtasks,
        warnings,
    }
}

impl Sampler {
    /// Stacks that left every known module (a library was `dlopen`ed since the modules were
    /// loaded): reload the modules of their processes (off the tracer thread) and, where they
    /// changed, unwind the copied stacks again here. No thread is stopped any more.
    fn unwind_again(
        &self,
        result: &mut ptrace::RoundResult,
        job_processes: &[(u32, u64)],
        run_modules: &mut HashMap<(u32, u64), Arc<ProcessModules>>,
        max_depth: usize,
        cancel: &AtomicBool,
    ) {
        let mut reloaded: HashMap<(u32, u64), Option<Arc<ProcessModules>>> = HashMap::new();
        let mut unwinder = UnwindCache::new();
        for mut redo in std::mem::take(&mut result.redo) {
            let Some(&process) = job_processes.get(redo.target) else {
                continue;
            };
            let fresh = reloaded.entry(process).or_insert_with(|| {
                let known = run_modules.get(&process)?;
                let fresh = self.inner.loader.refresh(process.0, known, cancel)?;
                run_modules.insert(process, Arc::clone(&fresh));
                Some(fresh)
            });
            let Some(modules) = fresh else {
                continue;
            };
            unwinder.prepare(process.0, modules);
            let raw = unwinder.unwind(process.0, redo.regs, max_depth, &mut |a| {
                redo.copy.read_word(a, None)
            });
            if let Some(read) = result
                .targets
                .get_mut(redo.target)
                .and_then(|t| t.get_mut(redo.slot))
            {
                read.outcome = ReadOutcome::Stack(raw);
            }
        }
    }
}

/// Resolves a target's threads for this round and reads their states from `/proc` (outside any
/// stop). The first round resolves the selector (process by name included); later rounds keep
/// the pid, check it is still the same process and still allowed, and pick up new threads.
fn prepare_round(
    run: &mut TargetRun,
    first: bool,
    policy: &AccessPolicy,
    kernel_stacks: bool,
) -> Result<(TargetJob, Vec<PreState>), SamplerError> {
    let threads: Vec<(u32, String)> = if first {
        let resolved = selection::resolve(&run.sel, policy)?;
        run.pid = resolved.pid;
        run.starttime = proc::process_stat(run.pid)
            .map_err(|e| selection::gone_or_io(run.pid, e))?
            .starttime;
        for (tid, name) in &resolved.threads {
            run.names.insert(*tid, name.clone());
        }
        resolved.threads
    } else {
        let pid = run.pid;
        let stat = proc::process_stat(pid).map_err(|e| selection::gone_or_io(pid, e))?;
        if stat.starttime != run.starttime {
            return Err(SamplerError::NoSuchProcess(format!(
                "pid {pid} (it was restarted)"
            )));
        }
        policy.check(pid)?;
        let tids = proc::list_tids(pid).map_err(|e| selection::gone_or_io(pid, e))?;
        let mut out = Vec::with_capacity(tids.len());
        for tid in tids {
            if !run.sel.tids.is_empty() && !run.sel.tids.contains(&tid) {
                continue;
            }
            let name = match run.names.get(&tid) {
                Some(n) => n.clone(),
                None => match proc::task_comm(pid, tid) {
                    Ok(n) => {
                        run.names.insert(tid, n.clone());
                        n
                    }
                    Err(_) => continue,
                },
            };
            if run.sel.selects(tid, &name) {
                out.push((tid, name));
            }
        }
        out
    };
    let pid = run.pid;
    let mut job = TargetJob {
        pid,
        starttime: run.starttime,
        threads: Vec::with_capacity(threads.len()),
        // Set by the caller from the run's loaded modules.
        modules: ProcessModules::empty(run.starttime),
    };
    let mut states = Vec::with_capacity(threads.len());
    for (tid, _) in threads {
        run.selected_any = true;
        // A thread that vanished since the listing is simply not sampled this round.
        let Ok((stat, timed)) = proc::task_stat_and_timed(pid, tid) else {
            continue;
        };
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            continue;
        }
        let kernel = if kernel_stacks && stat.state != 'R' {
            proc::task_kernel_stack(pid, tid)
        } else {
            Vec::new()
        };
        job.threads.push(ThreadJob {
            tid,
            blocked: stat.state == 'D',
        });
        states.push(PreState {
            letter: stat.state,
            timed,
            kernel,
        });
    }
    Ok((job, states))
}

/// Turns a target's raw samples into its [`SampleSet`], or the reason it has none.
fn finish_target(
    run: TargetRun,
    table: &HashMap<u64, Vec<Frame>>,
    max_depth: usize,
    cancel: &AtomicBool,
) -> Result<SampleSet, SamplerError> {
    if let Some(e) = run.error {
        return Err(e);
    }
    if run.samples.is_empty() {
        if !run.denied.is_empty() {
            return Err(denied_error(&run));
        }
        if cancel.load(Ordering::SeqCst) {
            return Ok(SampleSet::default());
        }
        let what = match &run.sel.process {
            ProcessRef::Pid(pid) => format!("pid {pid}"),
            ProcessRef::Name(name) => format!("process named {name:?} (pid {})", run.pid),
        };
        return Err(if run.selected_any {
            SamplerError::NoSuchProcess(format!(
                "{what}: every selected thread exited before it could be sampled"
            ))
        } else {
            SamplerError::NoMatchingThread(format!(
                "{what} has no thread that matches the selection"
            ))
        });
    }
    let mut builder = SampleSetBuilder::new();
    for s in run.samples {
        let name = run.names.get(&s.tid).cloned().unwrap_or_default();
        let thread = SampledThread {
            pid: run.pid,
            tid: s.tid,
            name,
        };
        let mut frames: Vec<Frame> = Vec::new();
        let mut truncated = false;
        if let Some(stack) = &s.stack {
            truncated = stack.truncated;
            for addr in stack.addrs.iter().rev() {
                match table.get(addr) {
                    Some(fs) => frames.extend(fs.iter().cloned()),
                    None => frames.push(Frame::named("[unknown]")),
                }
            }
        }
        // /proc lists the kernel stack innermost first; it continues the user stack inwards.
        // The ` [k]` suffix keeps a kernel function apart from a user one of the same name
        // and tells at a glance where the thread sleeps (`futex_wait [k]`).
        for k in s.kernel.iter().rev() {
            frames.push(Frame {
                name: format!("{k} [k]"),
                module: "[kernel]".into(),
                inlined: false,
            });
        }
        if frames.len() > max_depth {
            frames.drain(..frames.len() - max_depth);
            truncated = true;
        }
        builder.push(&thread, s.time_ms, s.state, frames, truncated);
    }
    Ok(builder.finish())
}

/// The refusal of a target whose every tried thread was refused.
fn denied_error(run: &TargetRun) -> SamplerError {
    let reason = match &run.denied_reason {
        Some(r) => r.clone(),
        None => permission::explain_denied(run.pid, run.denied.first().copied().unwrap_or(run.pid)),
    };
    SamplerError::PermissionDenied {
        pid: run.pid,
        reason,
    }
}

/// [`wait_until`], draining the perf rings every [`perf::DRAIN_INTERVAL`] meanwhile (so a
/// long delay does not overflow them).
fn wait_draining(
    deadline: Instant,
    cancel: &AtomicBool,
    perf: Option<&mut perf::PerfSession>,
) -> bool {
    let Some(session) = perf else {
        return wait_until(deadline, cancel);
    };
    loop {
        session.drain();
        let step = (Instant::now() + perf::DRAIN_INTERVAL).min(deadline);
        if !wait_until(step, cancel) {
            return false;
        }
        if step >= deadline {
            return true;
        }
    }
}

/// Sleeps until `deadline`, waking now and then to honour `cancel`. False when cancelled.
fn wait_until(deadline: Instant, cancel: &AtomicBool) -> bool {
    loop {
        if cancel.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamegrid_workloads::{Mix, Workload};

    /// Held by the tests that run whole samplers in this process: the memory test measures the
    /// process's anonymous memory, which another sampler's run would add to.
    static MEMORY_MEASURED: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Over the ring memory cap, the remaining threads are read with ptrace (in either perf
    /// mode), the run says so, and every thread is still sampled; the room comes back after
    /// the run.
    #[test]
    fn threads_over_the_perf_ring_cap_are_read_with_ptrace() {
        let _alone = MEMORY_MEASURED.lock();
        let wl = flamegrid_workloads::spawn(
            Workload::CNoFramePointers,
            &Mix {
                spin: 3,
                sleep: 1,
                ..Mix::default()
            },
        )
        .unwrap();
        let tids: Vec<u32> = ["spin-0", "spin-1", "spin-2", "sleep-0"]
            .iter()
            .map(|n| wl.tid_of(n).unwrap())
            .collect();
        // Room for two threads' rings.
        let cap = 2 * perf::ring_bytes_per_thread();
        for backend in [Backend::Auto, Backend::Perf] {
            let sampler = Sampler::with_perf_ring_memory(backend, cap).unwrap();
            let targets = [(
                "w".to_owned(),
                ThreadSelector {
                    process: ProcessRef::Pid(wl.pid()),
                    tids: tids.clone(),
                    thread_name: None,
                },
            )];
            let opts = SamplerOptions {
                num_samples: 5,
                delay: Duration::from_millis(5),
                ..SamplerOptions::default()
            };
            let (run, stats) =
                sampler.sample_with_stats(&targets, &AccessPolicy::unrestricted(), &opts);
            let (_, set) = run.subtasks.into_iter().next().unwrap();
            let set = set.unwrap();
            let sampled: HashSet<u32> = set
                .samples
                .iter()
                .filter_map(|s| set.thread_of(s))
                .map(|t| t.tid)
                .collect();
            assert_eq!(sampled, tids.iter().copied().collect(), "{backend:?}");
            if perf::events::open(tids[0], perf::events::Kind::Clock, 1_000_000).is_err() {
                return; // no perf events on this kernel: nothing is capped
            }
            assert!(
                stats.backend.starts_with("perf (")
                    && stats.backend.contains("perf ring memory cap reached")
                    && stats.backend.contains("2 thread(s) read with ptrace"),
                "{backend:?}: {}",
                stats.backend
            );
            assert!(
                stats.perf_reads > 0 && !stats.stop_ns.is_empty(),
                "{stats:?}"
            );
            assert_eq!(sampler.perf_ring_memory().1, 0, "room given back");
        }
        assert!(wl.stopped_threads().is_empty());
    }

    #[test]
    fn backend_names_parse_in_any_case_and_others_are_refused() {
        for b in [Backend::Auto, Backend::Perf, Backend::Ptrace] {
            assert_eq!(b.as_str().parse::<Backend>().unwrap(), b);
            assert_eq!(b.as_str().to_uppercase().parse::<Backend>().unwrap(), b);
        }
        let err = "ebpf".parse::<Backend>().unwrap_err().to_string();
        assert!(
            err.contains("\"ebpf\"") && err.contains("auto, perf or ptrace"),
            "{err}"
        );
    }

    /// The symbolizer gives its caches (and, through the allocator, their memory) back after
    /// its idle time, and the next run builds them again with the same names.
    #[test]
    fn idle_symbol_caches_are_released_and_rebuilt() {
        let _alone = MEMORY_MEASURED.lock();
        crate::memory::tune_allocator();
        let wl = flamegrid_workloads::spawn(
            Workload::Cpp,
            &Mix {
                spin: 1,
                sleep: 2,
                wait: 2,
                lock: 1,
                churn: 0,
                report_rate: false,
            },
        )
        .unwrap();
        // The mode FLAMEGRID_SAMPLER names: the suite runs once per mode.
        let sampler =
            Sampler::build(Duration::from_millis(200), Backend::from_env().unwrap()).unwrap();
        assert!(
            !sampler.holds_symbol_caches(),
            "nothing parsed before a run"
        );
        let targets = [("w".to_owned(), ThreadSelector::pid(wl.pid()))];
        let opts = SamplerOptions {
            num_samples: 3,
            delay: Duration::from_millis(1),
            ..SamplerOptions::default()
        };
        let names = |run: SamplingRun| -> HashSet<String> {
            let (_, set) = run.subtasks.into_iter().next().unwrap();
            let set = set.unwrap();
            set.samples
                .iter()
                .flat_map(|s| set.stack_frames(s))
                .map(|f| f.name.clone())
                .collect()
        };
        let policy = AccessPolicy::unrestricted();
        let before = crate::memory::resident_kib();
        let first = names(sampler.sample(&targets, &policy, &opts));
        let after_run = crate::memory::resident_kib();
        // Released within the idle time plus scheduling slack (polled, not slept).
        let deadline = Instant::now() + Duration::from_secs(60);
        while sampler.holds_symbol_caches() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!sampler.holds_symbol_caches(), "caches still held");
        let released = crate::memory::resident_kib();
        if let (Some((_, base)), Some((_, peak)), Some((_, now))) = (before, after_run, released) {
            // Only meaningful where the run parsed a lot (libc6-dbg installed): then at least
            // half of what the run added must be gone.
            if peak > base + 4096 {
                assert!(
                    now < peak - (peak - base) / 2,
                    "anonymous memory {base} KiB before, {peak} KiB after the run, {now} KiB \
                     after the release"
                );
            }
        }
        // Known addresses come from the name cache; new ones rebuild the symbolizer.
        let second = names(sampler.sample(&targets, &policy, &opts));
        for chain in [Workload::Cpp.chains().spin, Workload::Cpp.chains().sleep] {
            for f in chain {
                assert!(
                    first.iter().any(|n| n.contains(f)),
                    "{f} missing: {first:?}"
                );
                assert!(
                    second.iter().any(|n| n.contains(f)),
                    "{f} missing: {second:?}"
                );
            }
        }
    }
}
