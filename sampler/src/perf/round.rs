//! One round of a run with the perf backend, and the run's report of what it used.

use super::{PerfSession, Pick, Refusal};
use crate::ptrace::{ReadOutcome, RoundResult, TargetJob, ThreadJob, ThreadRead};
use crate::unwind::{ProcessModules, RawStack};
use crate::{Backend, PreState, RunStats, Sampler, SamplerError, SamplingRun, TargetRun, proc};
use flamegrid_model::clock::now_ms;
use nix::errno::Errno;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The modules a run loaded, per process (pid, start time).
type RunModules = HashMap<(u32, u64), Arc<ProcessModules>>;

/// How long the first round waits for a running thread's first task-clock sample (beyond one
/// period) before it reads that thread with ptrace instead.
const FIRST_SAMPLE_GRACE: Duration = Duration::from_millis(50);

/// Beyond one task-clock period, how long a round waits for the next sample of runnable threads
/// whose newest sample is a switch-out.
const NEXT_SAMPLE_SLACK: Duration = Duration::from_millis(1);

/// How often that wait reads the thread's rings.
const NEXT_SAMPLE_POLL: Duration = Duration::from_micros(200);

impl Sampler {
    /// Reads one round through `session`: opens the events of threads new to the run, drains
    /// the rings, and takes each thread's stack from its samples; the threads without a usable
    /// sample (asleep since before the run) go to the tracer in one sub-round. Answers in the
    /// tracer's shape, every thread in job order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn perf_round(
        &self,
        session: &mut PerfSession,
        jobs: Vec<TargetJob>,
        meta: &[(usize, Vec<PreState>)],
        runs: &mut [TargetRun],
        (first, state_ns): (bool, u64),
        run_modules: &mut RunModules,
        max_depth: usize,
        cancel: &AtomicBool,
    ) -> Result<RoundResult, String> {
        let started = Instant::now();
        // 1. Events for threads new to the run. With `--sampler perf` a refused thread fails
        //    its target and is not read at all.
        let mut refused_targets = HashSet::new();
        for (ji, job) in jobs.iter().enumerate() {
            for th in &job.threads {
                match session.open(job.pid, th.tid) {
                    // Over the ring memory cap: read with ptrace, in either mode (said in
                    // the run's backend line and logged once).
                    Ok(()) | Err(Refusal::Kernel(Errno::ESRCH) | Refusal::OverCap) => {}
                    Err(Refusal::Kernel(e)) if self.inner.backend == Backend::Perf => {
                        refused_targets.insert(ji);
                        if let Some((i, _)) = meta.get(ji) {
                            runs[*i].error.get_or_insert_with(|| {
                                SamplerError::Other(format!(
                                    "pid {}: perf events refused for thread {}: {} ({}); \
                                     --sampler perf needs CAP_PERFMON (or root); use \
                                     --sampler auto or ptrace",
                                    job.pid,
                                    th.tid,
                                    e,
                                    e.desc()
                                ))
                            });
                        }
                    }
                    Err(Refusal::Kernel(e)) => {
                        tracing::debug!(tid = th.tid, %e, "perf events refused")
                    }
                }
            }
        }
        // 2. Samples so far. The first round gives running threads a moment for their first
        //    task-clock tick rather than stopping them.
        session.drain();
        if first {
            let deadline =
                Instant::now() + Duration::from_nanos(session.period_ns) + FIRST_SAMPLE_GRACE;
            let waiting = |session: &PerfSession| {
                jobs.iter().zip(meta).any(|(job, (_, states))| {
                    job.threads.iter().zip(states).any(|(th, pre)| {
                        pre.letter == 'R' && session.covers(th.tid) && !session.has_sample(th.tid)
                    })
                })
            };
            while waiting(session) && Instant::now() < deadline && !cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                session.drain();
            }
        }
        // 3. A stack per thread from its samples, or a ptrace read.
        let mut result = RoundResult::unread(&jobs);
        let mut sub: Vec<(usize, TargetJob, Vec<usize>)> = Vec::new();
        let mut refreshed: HashMap<u32, bool> = HashMap::new();
        let unwind_start = Instant::now();
        // How long this round waits for the next sample of threads that were woken since their
        // last one (see `perf_pick`): one task-clock period and a little, for all of them.
        let until = unwind_start + Duration::from_nanos(session.period_ns) + NEXT_SAMPLE_SLACK;
        for (ji, job) in jobs.iter().enumerate() {
            if refused_targets.contains(&ji) {
                continue;
            }
            let states = meta.get(ji).map(|(_, s)| s.as_slice()).unwrap_or(&[]);
            let mut ptrace_slots = Vec::new();
            let mut modules = Arc::clone(&job.modules);
            for (si, (th, pre)) in job.threads.iter().zip(states).enumerate() {
                let Some((raw, letter, timed)) = self.perf_pick(
                    session,
                    job,
                    th,
                    pre,
                    (state_ns, until),
                    &mut modules,
                    (run_modules, &mut refreshed),
                    max_depth,
                    cancel,
                ) else {
                    ptrace_slots.push(si);
                    continue;
                };
                result.targets[ji][si] = ThreadRead {
                    tid: th.tid,
                    time_ms: now_ms(),
                    outcome: ReadOutcome::Stack((*raw).clone()),
                    stopped_ns: 0,
                    interrupted_syscall: None,
                    perf_state: Some((letter, timed)),
                };
            }
            if !ptrace_slots.is_empty() {
                let threads: Vec<ThreadJob> =
                    ptrace_slots.iter().map(|&s| job.threads[s]).collect();
                sub.push((
                    ji,
                    TargetJob {
                        pid: job.pid,
                        starttime: job.starttime,
                        threads,
                        modules,
                    },
                    ptrace_slots,
                ));
            }
        }
        result.timings.unwind = unwind_start.elapsed();
        // 4. The rest with ptrace, in one sub-round.
        if !sub.is_empty() {
            let mut index = Vec::with_capacity(sub.len());
            let mut sub_jobs = Vec::with_capacity(sub.len());
            let mut slots = Vec::with_capacity(sub.len());
            for (ji, job, s) in sub {
                index.push(ji);
                sub_jobs.push(job);
                slots.push(s);
            }
            let read = self.inner.tracer.round(sub_jobs, max_depth)?;
            let after = super::events::monotonic_ns();
            for (k, reads) in read.targets.into_iter().enumerate() {
                for (n, r) in reads.into_iter().enumerate() {
                    if let (ReadOutcome::Stack(raw), Some(syscall)) =
                        (&r.outcome, r.interrupted_syscall)
                    {
                        session.note_ptrace_read(r.tid, after, raw.clone(), syscall);
                    }
                    result.targets[index[k]][slots[k][n]] = r;
                }
            }
            for mut redo in read.redo {
                let (k, n) = (redo.target, redo.slot);
                redo.target = index[k];
                redo.slot = slots[k][n];
                result.redo.push(redo);
            }
            result.timings.module_load = read.timings.module_load;
            result.timings.unwind += read.timings.unwind;
        }
        result.timings.snapshot = started.elapsed();
        Ok(result)
    }

    /// One thread's stack from its perf samples, and the `/proc` state it is filed under; `None`
    /// when it must be read with ptrace. A stack that left every known module reloads the
    /// process's modules (once per round) and is unwound again.
    #[allow(clippy::too_many_arguments)]
    fn perf_pick(
        &self,
        session: &mut PerfSession,
        job: &TargetJob,
        th: &ThreadJob,
        pre: &PreState,
        (state_ns, until): (u64, Instant),
        modules: &mut Arc<ProcessModules>,
        (run_modules, refreshed): (&mut RunModules, &mut HashMap<u32, bool>),
        max_depth: usize,
        cancel: &AtomicBool,
    ) -> Option<(Arc<RawStack>, char, bool)> {
        // Read with ptrace while asleep and not run since: still where that read found it.
        if let Some((stack, (nr, args))) = session.still_as_read(th.tid, pre.letter == 'R') {
            let letter = if pre.letter == 'D' { 'D' } else { 'S' };
            return Some((stack, letter, proc::syscall_is_timed_wait(nr, &args)));
        }
        let (mut letter, mut timed) = (pre.letter, pre.timed);
        let mut pick = session.pick(th.tid, letter == 'R', state_ns, modules, max_depth);
        if matches!(pick, Pick::Stale) {
            // It ran after `/proc` was read: read its state again, and take the sample that
            // goes with that state.
            // Drained after the state is read: every switch-out before that read is in.
            let read_state = |session: &mut PerfSession| {
                let at = super::events::monotonic_ns();
                let (stat, timed) = proc::task_stat_and_timed(job.pid, th.tid).ok()?;
                session.drain_thread(th.tid);
                Some((stat.state, timed, at))
            };
            // When `/proc` last showed it runnable (CLOCK_MONOTONIC).
            let mut seen_running = (pre.letter == 'R').then_some(state_ns);
            let at;
            (letter, timed, at) = read_state(session)?;
            if letter == 'R' {
                seen_running = Some(at);
            }
            if letter == 'R' && session.switched_last(th.tid) {
                // Runnable, and not on a CPU for a whole task-clock period since it last left
                // one: woken since, or preempted. Its nearest on-CPU sample is the next one:
                // arm its probe (one sample after 0.1 ms of its CPU time, not stopping it) and
                // wait for that (or for the thread to leave the CPU again), then look at its
                // state once more. Taking the switch-out instead filed a thread computing in
                // bursts shorter than the clock's period under the stack it had slept in: a
                // duty-cycled worker's compute frames went missing from busy hosts' graphs.
                // One still waiting for a CPU when the round's wait ends keeps its switch-out
                // stack: that is where it is.
                session.probe(th.tid);
                let before = session.newest_ns(th.tid);
                while session.newest_ns(th.tid) == before
                    && Instant::now() < until
                    && !cancel.load(Ordering::SeqCst)
                {
                    std::thread::sleep(NEXT_SAMPLE_POLL);
                    session.drain_thread(th.tid);
                }
                if session.newest_ns(th.tid) != before {
                    (letter, timed, _) = read_state(session)?;
                }
            }
            if letter != 'R'
                && let Some(seen) = seen_running
            {
                // Runnable at `seen`, off CPU now: it left the CPU after `seen`, and that
                // switch-out is where it sleeps. `/proc` shows the new state a moment before
                // the kernel writes the record (the state is set, then the thread switches
                // out): wait for it rather than take an older switch-out (a preemption in the
                // middle of its work would be filed as its wait).
                while session.switched_out_ns(th.tid).is_none_or(|t| t <= seen)
                    && Instant::now() < until
                    && !cancel.load(Ordering::SeqCst)
                {
                    std::thread::sleep(NEXT_SAMPLE_POLL);
                    session.drain_thread(th.tid);
                }
            }
            pick = session.pick(th.tid, letter == 'R', u64::MAX, modules, max_depth);
        }
        let Pick::Stack(mut raw) = pick else {
            return None;
        };
        if raw.outside_modules && !refreshed.contains_key(&job.pid) {
            let process = (job.pid, job.starttime);
            let fresh = run_modules
                .get(&process)
                .and_then(|known| self.inner.loader.refresh(job.pid, known, cancel));
            refreshed.insert(job.pid, fresh.is_some());
            if let Some(fresh) = fresh {
                run_modules.insert(process, Arc::clone(&fresh));
                *modules = fresh;
                session.forget_unwound(job.pid);
                if let Pick::Stack(again) =
                    session.pick(th.tid, letter == 'R', u64::MAX, modules, max_depth)
                {
                    raw = again;
                }
            }
        }
        Some((raw, letter, timed))
    }

    /// Says which backend the run used: in `stats`, in the log (the first run, and the first
    /// fallback to ptrace with its reason), and as a warning when records were lost.
    pub(crate) fn report_backend(
        &self,
        session: Option<&PerfSession>,
        run: &mut SamplingRun,
        stats: &mut RunStats,
    ) {
        let Some(session) = session else {
            stats.backend = Backend::Ptrace.as_str().into();
            if !self.inner.choice_logged.swap(true, Ordering::Relaxed) {
                tracing::info!("sampling with ptrace (--sampler ptrace)");
            }
            return;
        };
        stats.lost_records = session.lost;
        let (refused, why) = session.refusals();
        let over_cap = session.over_cap();
        stats.backend = match why {
            Some(e) if session.threads() == 0 => {
                format!("ptrace (perf events refused: {})", e.desc())
            }
            Some(e) => format!(
                "perf ({refused} thread(s) with ptrace: perf events refused: {})",
                e.desc()
            ),
            None => Backend::Perf.as_str().into(),
        };
        if let Some((_, line)) = &over_cap {
            stats.backend = if session.threads() == 0 {
                format!("ptrace ({line})")
            } else {
                format!("{} ({line})", stats.backend)
            };
        }
        if let Some(e) = why {
            if !self.inner.choice_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    errno = %e,
                    "perf_event_open refused ({}); sampling those threads with ptrace (every \
                     sample stops them). Perf events need CAP_PERFMON or root, or \
                     kernel.perf_event_paranoid <= 2 with ptrace access to the target",
                    e.desc()
                );
            }
        } else if session.threads() > 0 && !self.inner.choice_logged.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "sampling with perf events (task clock + context switches): running threads \
                 are not stopped"
            );
        }
        if session.lost > 0
            && let Some((key, _)) = run.subtasks.first()
        {
            run.warnings.push((
                key.clone(),
                format!(
                    "perf: the kernel dropped {} record(s) (ring buffer full); some stacks are \
                     from an earlier sample than their instant",
                    session.lost
                ),
            ));
        }
    }
}
