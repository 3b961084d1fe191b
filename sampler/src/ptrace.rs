//! The tracer thread: the one OS thread that makes every ptrace call.
//!
//! A tracee belongs to the *thread* that attached it; ptrace requests from any other thread fail
//! with `ESRCH`. So all stopping, reading and releasing happens here, on a dedicated thread that
//! takes one *round* at a time from a channel (a round = one sample of every selected thread of
//! one or more processes). Runs from several callers interleave round by round, which also
//! guarantees that a thread is never traced by two runs at once.
//!
//! ## One round, overlapped
//!
//! For each thread: `PTRACE_SEIZE` (attach without stopping) and `PTRACE_INTERRUPT` (ask for a
//! stop). We do not wait for that stop before interrupting the next thread: between interrupts
//! we collect, with a non-blocking `waitpid(-1, __WALL | __WNOTHREAD)`, whichever threads have
//! stopped, and for each one: read registers, copy the top of its stack, unwind (< 1 µs, so
//! deep stacks can still read more memory while the thread is stopped) and `PTRACE_DETACH`
//! right away. Every thread is therefore stopped only for its own read (~20–30 µs), while the
//! waits for threads that need time to stop (a preempted spinner on a busy host takes
//! milliseconds) overlap instead of adding up.
//!
//! ## Never leaving a thread stopped
//!
//! * A **signal** that arrives while we hold a thread shows up as a signal-delivery-stop; we read
//!   the thread there and detach *with that signal*, so it is delivered, never swallowed.
//! * A thread that **exits** mid-sample answers `ESRCH`/`EPERM` or reports an exit status; it is
//!   simply skipped. Exit statuses of our tracees are always collected so no zombie lingers.
//! * A thread that **cannot stop** in time (uninterruptible `D` sleep, or not scheduled) is given
//!   up after a deadline (10 ms for `D`, 200 ms otherwise) and reported with its `/proc` state and
//!   an empty stack. A running tracee can not be detached, so it stays on an *abandoned* list
//!   with its interrupt pending; the moment it stops (this thread keeps polling, also between
//!   rounds) it is detached. It is therefore never stopped longer than one poll interval.
//! * If the agent dies (even by SIGKILL) or this thread exits, the kernel detaches every tracee
//!   and resumes it. We never set `PTRACE_O_EXITKILL`: the tracee must survive the agent.
//! * `PTRACE_SEIZE` + `PTRACE_INTERRUPT` inject no SIGSTOP, so no stray stop is left pending.

use super::stack::{self, Regs, StackCopy};
use super::unwind::{ProcessModules, RawStack, UnwindCache};
use flamegrid_model::clock::now_ms;
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How long to wait for a thread in uninterruptible sleep (`D`) to reach its stop.
pub const STOP_DEADLINE_BLOCKED: Duration = Duration::from_millis(10);
/// How long to wait for any other thread to reach its stop (a runnable thread may have to wait
/// for a CPU on a busy host).
pub const STOP_DEADLINE: Duration = Duration::from_millis(200);
/// How long to poll with `sched_yield` before falling back to short sleeps.
const SPIN_PHASE: Duration = Duration::from_micros(200);
/// Sleep between polls after the spin phase.
const POLL_SLEEP: Duration = Duration::from_micros(50);
/// Poll interval for abandoned tracees between rounds.
const ABANDONED_POLL: Duration = Duration::from_millis(1);

/// One thread to sample in a round.
#[derive(Debug, Clone, Copy)]
pub struct ThreadJob {
    /// Kernel thread id.
    pub tid: u32,
    /// `/proc` said `D` just before: use the short deadline.
    pub blocked: bool,
}

/// The threads of one process to sample in a round.
#[derive(Debug, Clone)]
pub struct TargetJob {
    /// Process id.
    pub pid: u32,
    /// Process start time (ticks after boot), to key the unwinder cache against pid reuse.
    pub starttime: u64,
    /// Threads.
    pub threads: Vec<ThreadJob>,
    /// The process's modules, loaded off this thread (the tracer never opens a file a sampled
    /// process names: it could be a FIFO that never answers).
    pub modules: Arc<ProcessModules>,
}

/// What happened to one thread in a round.
#[derive(Debug, Clone)]
pub enum ReadOutcome {
    /// Its stack.
    Stack(RawStack),
    /// It did not stop within the deadline (reported with its `/proc` state, empty stack).
    NotStopped,
    /// It exited.
    Gone,
    /// The kernel refused to let us trace it.
    Denied(Errno),
}

/// One thread's result.
#[derive(Debug, Clone)]
pub struct ThreadRead {
    /// Kernel thread id.
    pub tid: u32,
    /// Wall-clock time of the read, ms since the epoch.
    pub time_ms: i64,
    /// What happened.
    pub outcome: ReadOutcome,
    /// How long the thread was stopped by us (upper bound), ns; 0 when it was not stopped.
    pub stopped_ns: u64,
    /// The blocking system call our stop interrupted, if any (see [`Regs`]).
    pub interrupted_syscall: Option<(u64, [u64; 6])>,
    /// Read from a perf sample instead of a stop: the `/proc` state (letter, waits with a
    /// timeout) the sample is filed under. `None` for a ptrace read.
    pub perf_state: Option<(char, bool)>,
}

impl ThreadRead {
    /// A thread found gone at `time_ms`: also what every thread of a round starts as, until
    /// it is read.
    pub fn gone(tid: u32, time_ms: i64) -> ThreadRead {
        ThreadRead {
            tid,
            time_ms,
            outcome: ReadOutcome::Gone,
            stopped_ns: 0,
            interrupted_syscall: None,
            perf_state: None,
        }
    }
}

/// Timings of one round, for `--stats` and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RoundTimings {
    /// From the first interrupt to the last detach (and any re-unwinding).
    pub snapshot: Duration,
    /// Building unwinders from the loaded modules before the first interrupt.
    pub module_load: Duration,
    /// Total time spent in the unwinder.
    pub unwind: Duration,
}

/// A stack with an address outside every known module (a library `dlopen`ed since the modules
/// were loaded): the caller reloads the modules off the tracer thread and unwinds the copy again.
#[derive(Debug, Clone)]
pub struct Redo {
    /// Index of the target in the round.
    pub target: usize,
    /// Index of the thread in the target.
    pub slot: usize,
    /// Registers at the stop.
    pub regs: Regs,
    /// The stack memory copied at the stop.
    pub copy: StackCopy,
}

/// The answer to a round: per target, per thread (in job order).
#[derive(Debug, Clone, Default)]
pub struct RoundResult {
    /// One entry per [`TargetJob`], each with one [`ThreadRead`] per thread.
    pub targets: Vec<Vec<ThreadRead>>,
    /// Stacks to unwind again once the modules are reloaded.
    pub redo: Vec<Redo>,
    /// Timings.
    pub timings: RoundTimings,
}

impl RoundResult {
    /// The result of a round before any read: every thread of `targets` [`ThreadRead::gone`].
    pub fn unread(targets: &[TargetJob]) -> RoundResult {
        RoundResult {
            targets: targets
                .iter()
                .map(|t| {
                    t.threads
                        .iter()
                        .map(|th| ThreadRead::gone(th.tid, 0))
                        .collect()
                })
                .collect(),
            ..Default::default()
        }
    }
}

struct RoundJob {
    targets: Vec<TargetJob>,
    max_frames: usize,
    reply: mpsc::SyncSender<RoundResult>,
}

/// Handle on the tracer thread (restarted if it ever died).
#[derive(Debug)]
pub struct Tracer {
    tx: std::sync::Mutex<mpsc::Sender<RoundJob>>,
}

impl Tracer {
    /// Starts the tracer thread.
    pub fn spawn() -> std::io::Result<Tracer> {
        Ok(Tracer {
            tx: std::sync::Mutex::new(spawn_thread()?),
        })
    }

    /// Runs one round (blocking until it is done).
    pub fn round(&self, targets: Vec<TargetJob>, max_frames: usize) -> Result<RoundResult, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = RoundJob {
            targets,
            max_frames,
            reply,
        };
        {
            let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                // The thread died (a panic: the kernel has detached its tracees). Start anew.
                tracing::error!("the tracer thread was gone; restarting it");
                *tx = spawn_thread().map_err(|e| format!("restarting the tracer thread: {e}"))?;
                tx.send(job)
                    .map_err(|_| "the tracer thread died".to_string())?;
            }
        }
        answer
            .recv()
            .map_err(|_| "the tracer thread died during a round".to_string())
    }
}

/// The name of the tracer thread; its `comm` is the first 15 bytes (the kernel's limit).
const TRACER_THREAD_NAME: &str = "flamegrid-tracer";

/// Whether `tid` is a tracer thread of this process. `TracerPid` in `/proc` names a thread, and
/// our own tracer (which may still hold a thread that missed its stop deadline) is not
/// "another tracer" when a refusal is explained.
pub fn is_own_tracer_thread(tid: u32) -> bool {
    let comm = &TRACER_THREAD_NAME[..TRACER_THREAD_NAME.len().min(15)];
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .is_ok_and(|text| text.trim_end() == comm)
}

fn spawn_thread() -> std::io::Result<mpsc::Sender<RoundJob>> {
    let (tx, rx) = mpsc::channel::<RoundJob>();
    std::thread::Builder::new()
        .name(TRACER_THREAD_NAME.into())
        .spawn(move || {
            // Short sleeps in the poll loop should really be short (default slack is 50 µs).
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
            }
            // While this thread holds stopped threads, being preempted would keep them stopped for
            // a whole scheduler slice (milliseconds on a busy host). It runs only in short bursts,
            // so it asks for a higher priority (nice -10, needs CAP_SYS_NICE; ignored without).
            // SAFETY: gettid has no preconditions; setpriority on our own tid only changes our
            // own nice value.
            unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
            }
            let mut tracer = TracerState::default();
            tracer.serve(rx);
        })?;
    Ok(tx)
}

/// A thread we interrupted and are waiting for.
struct Pending {
    target: usize,
    slot: usize,
    pid: u32,
    since: Instant,
    deadline: Instant,
}

#[derive(Default)]
struct TracerState {
    unwind: UnwindCache,
    /// Seized threads that did not stop in time (or could not be detached): ours until they
    /// stop (then detached) or exit (then reaped).
    abandoned: HashSet<i32>,
    /// Reused stack buffer.
    scratch: Vec<u8>,
    /// Time spent unwinding in the current round.
    unwind_time: Duration,
}

/// `waitpid` flags: threads are clone children (`__WALL`); only tracees of this thread
/// (`__WNOTHREAD`), never children that other threads of the agent wait for.
fn wait_flags() -> WaitPidFlag {
    WaitPidFlag::__WALL | WaitPidFlag::__WNOTHREAD | WaitPidFlag::WNOHANG
}

/// A stop we saw: which kind, and the signal to re-inject when detaching.
enum Event {
    Stopped { tid: i32, inject: Option<Signal> },
    Exited { tid: i32 },
}

fn classify(status: WaitStatus) -> Option<Event> {
    match status {
        // PTRACE_EVENT_STOP: our interrupt, or a group-stop; nothing to re-inject.
        WaitStatus::PtraceEvent(pid, _, _) => Some(Event::Stopped {
            tid: pid.as_raw(),
            inject: None,
        }),
        // Signal-delivery-stop: the signal must be delivered when we let go.
        WaitStatus::Stopped(pid, sig) => Some(Event::Stopped {
            tid: pid.as_raw(),
            inject: Some(sig),
        }),
        WaitStatus::PtraceSyscall(pid) => Some(Event::Stopped {
            tid: pid.as_raw(),
            inject: None,
        }),
        WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
            Some(Event::Exited { tid: pid.as_raw() })
        }
        WaitStatus::Continued(_) | WaitStatus::StillAlive => None,
    }
}

impl TracerState {
    fn serve(&mut self, rx: mpsc::Receiver<RoundJob>) {
        loop {
            let job = if self.abandoned.is_empty() {
                match rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(ABANDONED_POLL) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(job) = job {
                let result = self.round(&job.targets, job.max_frames);
                let _ = job.reply.send(result);
            }
            self.reap_abandoned();
        }
        // The Sampler is gone. Keep releasing stragglers for a while; when this thread exits
        // the kernel detaches whatever is left anyway.
        let until = Instant::now() + Duration::from_secs(1);
        while !self.abandoned.is_empty() && Instant::now() < until {
            std::thread::sleep(ABANDONED_POLL);
            self.reap_abandoned();
        }
    }

    /// Detaches abandoned tracees that have stopped, forgets those that exited.
    fn reap_abandoned(&mut self) {
        let tids: Vec<i32> = self.abandoned.iter().copied().collect();
        for tid in tids {
            match waitpid(Pid::from_raw(tid), Some(wait_flags())) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => match classify(status) {
                    Some(Event::Stopped { tid, inject }) => {
                        let _ = ptrace::detach(Pid::from_raw(tid), inject);
                        self.abandoned.remove(&tid);
                    }
                    Some(Event::Exited { tid }) => {
                        self.abandoned.remove(&tid);
                    }
                    None => {}
                },
                // ECHILD: not (or no longer) our tracee.
                Err(_) => {
                    self.abandoned.remove(&tid);
                }
            }
        }
    }

    fn round(&mut self, targets: &[TargetJob], max_frames: usize) -> RoundResult {
        let mut result = RoundResult::unread(targets);

        // Unwinders from the modules the caller loaded (memory only; no file is opened here).
        let load_start = Instant::now();
        let mut live_targets = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            self.unwind.prepare(t.pid, &t.modules);
            live_targets.push(i);
        }
        result.timings.module_load = load_start.elapsed();

        let start = Instant::now();
        self.unwind_time = Duration::ZERO;
        let order: Vec<(usize, usize)> = live_targets
            .iter()
            .flat_map(|&ti| (0..targets[ti].threads.len()).map(move |si| (ti, si)))
            .collect();
        let mut pending: HashMap<i32, Pending> = HashMap::with_capacity(order.len());
        let mut redo: Vec<(usize, usize, Regs, StackCopy)> = Vec::new();
        let mut next = 0;
        let mut last_empty_poll = Instant::now();
        let mut idle_since: Option<Instant> = None;
        let mut seen: HashMap<i32, (usize, usize)> = HashMap::with_capacity(order.len());
        let mut aliases: Vec<((usize, usize), (usize, usize))> = Vec::new();

        loop {
            // 1. Collect every stop that is ready.
            let got = self.drain(
                &mut pending,
                &mut result,
                &mut redo,
                max_frames,
                &mut last_empty_poll,
            );
            if got {
                idle_since = None;
            }
            // 2. Interrupt the next thread.
            if next < order.len() {
                let (ti, si) = order[next];
                next += 1;
                let job = targets[ti].threads[si];
                let tid = job.tid as i32;
                // The same thread selected twice (overlapping selectors): read it once.
                if let Some(&first) = seen.get(&tid) {
                    aliases.push(((ti, si), first));
                    continue;
                }
                seen.insert(tid, (ti, si));
                match self.interrupt(tid) {
                    Ok(()) => {
                        let now = Instant::now();
                        let wait = if job.blocked {
                            STOP_DEADLINE_BLOCKED
                        } else {
                            STOP_DEADLINE
                        };
                        pending.insert(
                            tid,
                            Pending {
                                target: ti,
                                slot: si,
                                pid: targets[ti].pid,
                                since: now,
                                deadline: now + wait,
                            },
                        );
                    }
                    Err(outcome) => {
                        result.targets[ti][si] = ThreadRead {
                            tid: job.tid,
                            time_ms: now_ms(),
                            outcome,
                            stopped_ns: 0,
                            interrupted_syscall: None,
                            perf_state: None,
                        };
                    }
                }
                continue;
            }
            if pending.is_empty() {
                break;
            }
            // 3. Give up on threads past their deadline (they stay abandoned until they stop).
            let now = Instant::now();
            let late: Vec<i32> = pending
                .iter()
                .filter(|(_, p)| now >= p.deadline)
                .map(|(&t, _)| t)
                .collect();
            for tid in late {
                if let Some(p) = pending.remove(&tid) {
                    tracing::debug!(tid, "thread did not stop in time; reported without a stack");
                    self.abandoned.insert(tid);
                    result.targets[p.target][p.slot] = ThreadRead {
                        tid: tid as u32,
                        time_ms: now_ms(),
                        outcome: ReadOutcome::NotStopped,
                        stopped_ns: 0,
                        interrupted_syscall: None,
                        perf_state: None,
                    };
                }
            }
            if pending.is_empty() {
                break;
            }
            // 4. Wait a little: yield first (stops usually arrive within microseconds), then sleep.
            let idle = *idle_since.get_or_insert(now);
            if now.duration_since(idle) < SPIN_PHASE {
                std::thread::yield_now();
            } else {
                std::thread::sleep(POLL_SLEEP);
            }
        }

        for ((ti, si), (fi, fs)) in aliases {
            let copy = result.targets[fi][fs].clone();
            result.targets[ti][si] = copy;
            let again: Vec<Redo> = redo
                .iter()
                .filter(|(t, s, _, _)| (*t, *s) == (fi, fs))
                .map(|(_, _, regs, copy)| Redo {
                    target: ti,
                    slot: si,
                    regs: *regs,
                    copy: copy.clone(),
                })
                .collect();
            result.redo.extend(again);
        }
        // Samples whose addresses fell outside every known module go back to the caller, which
        // re-reads the maps off this thread and unwinds the copies again (no thread is stopped).
        result
            .redo
            .extend(redo.into_iter().map(|(target, slot, regs, copy)| Redo {
                target,
                slot,
                regs,
                copy,
            }));
        result.timings.snapshot = start.elapsed();
        result.timings.unwind += self.unwind_time;
        result
    }

    /// Seizes and interrupts one thread. Errors are the thread's outcome.
    fn interrupt(&mut self, tid: i32) -> Result<(), ReadOutcome> {
        let pid = Pid::from_raw(tid);
        // Still ours from an earlier round, interrupt pending: just wait for its stop again.
        if self.abandoned.remove(&tid) {
            return Ok(());
        }
        match ptrace::seize(pid, ptrace::Options::empty()) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Err(ReadOutcome::Gone),
            Err(e) => return Err(ReadOutcome::Denied(e)),
        }
        match ptrace::interrupt(pid) {
            Ok(()) => Ok(()),
            Err(_) => {
                // Exiting under us. It is our tracee until we collect its exit.
                self.abandoned.insert(tid);
                Err(ReadOutcome::Gone)
            }
        }
    }

    /// Handles every ready wait status; returns whether there was any.
    #[allow(clippy::too_many_arguments)]
    fn drain(
        &mut self,
        pending: &mut HashMap<i32, Pending>,
        result: &mut RoundResult,
        redo: &mut Vec<(usize, usize, Regs, StackCopy)>,
        max_frames: usize,
        last_empty_poll: &mut Instant,
    ) -> bool {
        let mut any = false;
        loop {
            let status = match waitpid(None::<Pid>, Some(wait_flags())) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => {
                    *last_empty_poll = Instant::now();
                    return any;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return any;
                }
                Ok(status) => status,
            };
            any = true;
            match classify(status) {
                Some(Event::Stopped { tid, inject }) => match pending.remove(&tid) {
                    Some(p) => {
                        // The thread stopped after the last poll that found nothing (or after
                        // its interrupt): an upper bound of how long it has been stopped.
                        let stopped_since = (*last_empty_poll).max(p.since);
                        let read =
                            self.read_and_release(&p, tid, inject, stopped_since, max_frames, redo);
                        result.result_mut(p.target, p.slot, read);
                    }
                    None => {
                        // A straggler from an earlier round (or a stop we did not ask for):
                        // let it go at once.
                        if ptrace::detach(Pid::from_raw(tid), inject).is_ok() {
                            self.abandoned.remove(&tid);
                        }
                    }
                },
                Some(Event::Exited { tid }) => {
                    self.abandoned.remove(&tid);
                    if let Some(p) = pending.remove(&tid) {
                        result.result_mut(p.target, p.slot, ThreadRead::gone(tid as u32, now_ms()));
                    }
                }
                None => {}
            }
        }
    }

    /// The thread is stopped: registers, stack copy, unwind, detach. Nothing else in here.
    #[allow(clippy::too_many_arguments)]
    fn read_and_release(
        &mut self,
        p: &Pending,
        tid: i32,
        inject: Option<Signal>,
        stopped_since: Instant,
        max_frames: usize,
        redo: &mut Vec<(usize, usize, Regs, StackCopy)>,
    ) -> ThreadRead {
        let pid = Pid::from_raw(tid);
        let time_ms = now_ms();
        let regs = stack::read_regs(pid);
        let mut copy = None;
        let mut raw = None;
        if let Ok(regs) = regs {
            let mut c = StackCopy::new(regs.sp, std::mem::take(&mut self.scratch));
            c.extend_from(pid, stack::INITIAL_COPY);
            let t = Instant::now();
            let r = self
                .unwind
                .unwind(p.pid, regs, max_frames, &mut |a| c.read_word(a, Some(pid)));
            self.unwind_time += t.elapsed();
            copy = Some(c);
            raw = Some(r);
        }
        let detached = ptrace::detach(pid, inject);
        let stopped_ns = stopped_since.elapsed().as_nanos() as u64;
        if detached.is_err() {
            // Gone (or exiting) under us: collect its exit status later.
            self.abandoned.insert(tid);
        }
        let interrupted_syscall = regs.as_ref().ok().and_then(|r| r.interrupted_syscall);
        let outcome = match (regs, raw) {
            (Ok(regs), Some(raw)) => {
                let c = copy.unwrap_or_default();
                if raw.outside_modules {
                    // Keep the copy: the maps may have changed; unwound again after the round.
                    redo.push((p.target, p.slot, regs, c));
                    self.scratch = vec![0; stack::INITIAL_COPY];
                } else {
                    self.scratch = c.into_buffer();
                }
                ReadOutcome::Stack(raw)
            }
            _ => ReadOutcome::Gone,
        };
        ThreadRead {
            tid: tid as u32,
            time_ms,
            outcome,
            stopped_ns,
            interrupted_syscall,
            perf_state: None,
        }
    }
}

impl RoundResult {
    fn result_mut(&mut self, target: usize, slot: usize, read: ThreadRead) {
        if let Some(r) = self.targets.get_mut(target).and_then(|t| t.get_mut(slot)) {
            *r = read;
        }
    }
}
