//! The perf-event backend: stacks of running threads without stopping them.
//!
//! For every selected thread a run opens two software events (see [`events`]): the task clock
//! (a sample of user registers and user stack every `period` of the thread's CPU time) and the
//! context-switch event (the same, each time the thread leaves the CPU). The kernel writes the
//! samples into one mmap ring buffer per event ([`ring`]); the run drains them during its
//! waits and before every round, keeping per thread only the newest sample of each kind.
//!
//! At each sampling instant the thread's state comes from `/proc`, as with ptrace; its stack is
//! * the newest sample of either kind when `/proc` says it runs (`R`): the nearest on-CPU
//!   sample, or where it was preempted. When that newest sample is a switch-out (the thread was
//!   woken, or preempted, and has not run a whole clock period since), the round arms the
//!   thread's probe, a second task clock that takes one sample after 0.1 ms of its CPU time,
//!   and waits for it (a bounded wait; a thread still waiting for a CPU keeps its switch-out);
//! * its last switch-out when it is off CPU: where it went to sleep;
//! * otherwise (asleep since before the events were opened, so no record in the window) one
//!   ptrace read: the thread is asleep, so the stop costs it nothing. The stop makes the thread
//!   switch out again, which gives the next rounds a switch-out sample to use.
//!
//! Records are unwound with the same framehop unwinder (a memory reader over the copied stack:
//! reads outside it fail like unreadable memory) and symbolized with the rest of the run.
//! Records the kernel dropped (a full ring) are counted in [`PerfSession::lost`]. The rings of
//! all runs of one sampler fit under its [`budget`]; threads beyond it are read with ptrace.

pub mod budget;
pub mod events;
mod ring;
mod round;

use super::stack::{Regs, StackCopy};
use super::unwind::{ProcessModules, RawStack, UnwindCache};
use budget::RingBudget;
use nix::errno::Errno;
use ring::Ring;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Data pages per ring (a power of two): 512 KiB, room for 30 task-clock samples of 16 KiB (30
/// ms of a spinning thread at the shortest period, 1 ms) or 63 switch-outs of 8 KiB between two
/// drains. Drains are due every [`DRAIN_INTERVAL`], but on a loaded host the draining thread
/// itself waits for a CPU: at 128 KiB (7 samples) a CI machine lost records within a 2-sample
/// run. Lost records are still counted and reported.
const RING_PAGES: usize = 128;

/// Bytes one thread's events map: two rings of [`RING_PAGES`] data pages and a metadata page.
pub fn ring_bytes_per_thread() -> usize {
    2 * (RING_PAGES + 1) * ring::page_size()
}

/// How often a run drains its rings while it waits between rounds.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(2);

/// The task clock's period for a run `delay` apart: at or above the sampling rate (one sample
/// per delay at least), at most 1 000 per second, and 100 per second for slow runs.
pub fn clock_period(delay: Duration) -> u64 {
    delay
        .clamp(Duration::from_millis(1), Duration::from_millis(10))
        .as_nanos() as u64
}

/// The newest sample of one kind, kept as registers plus the stack copy, and unwound at most
/// once.
struct Kept {
    time_ns: u64,
    regs: Regs,
    copy: StackCopy,
    unwound: Option<Arc<RawStack>>,
}

/// One thread's events and newest samples.
struct PerfThread {
    pid: u32,
    clock: Ring,
    /// The one-sample probe ([`events::Kind::Probe`]), writing into `clock`'s ring; None where
    /// it could not be opened (the round then waits for the next regular sample).
    probe: Option<std::os::fd::OwnedFd>,
    switch: Option<Ring>,
    on_cpu: Option<Kept>,
    switched_out: Option<Kept>,
}

/// A blocking system call: its number and arguments.
pub type Syscall = (u64, [u64; 6]);

/// What the perf backend knows of a thread this round.
pub enum Pick {
    /// A stack from a perf sample (unwound): the thread was not stopped.
    Stack(Arc<RawStack>),
    /// No sample to use: read it once with ptrace.
    Ptrace,
    /// The thread has run since its state was read (a sample is newer than that): read the
    /// state again and pick with it.
    Stale,
}

/// Why a thread has no perf events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel refused them (`perf_event_open` or the ring's mmap), with this errno.
    Kernel(Errno),
    /// Its rings would not fit under the agent's ring memory cap ([`budget`]).
    OverCap,
}

/// The perf events of one run.
pub struct PerfSession {
    period_ns: u64,
    threads: HashMap<u32, PerfThread>,
    /// Threads whose events could not be opened (read with ptrace), with the first reason.
    refused: HashMap<u32, Errno>,
    /// Threads whose rings did not fit under the ring memory cap (read with ptrace).
    over_cap: std::collections::HashSet<u32>,
    /// The agent's ring memory, of which this session holds `reserved` bytes.
    budget: Arc<RingBudget>,
    reserved: usize,
    /// Records the kernel dropped.
    pub lost: u64,
    scratch: Vec<u8>,
    unwind: UnwindCache,
    /// Our ptrace reads of asleep threads: (CLOCK_MONOTONIC after the read, the stack, the
    /// system call it was blocked in). Until the thread runs again (a sample newer than the
    /// read), that read is still its answer: our stop woke it, and until it gets a CPU to
    /// re-enter its wait `/proc` calls it runnable.
    read_once: HashMap<u32, (u64, Arc<RawStack>, Syscall)>,
}

impl PerfSession {
    /// A session whose task clocks tick every `period_ns` of CPU time, mapping its rings
    /// within `budget`.
    pub fn new(period_ns: u64, budget: Arc<RingBudget>) -> PerfSession {
        PerfSession {
            period_ns,
            threads: HashMap::new(),
            refused: HashMap::new(),
            over_cap: std::collections::HashSet::new(),
            budget,
            reserved: 0,
            lost: 0,
            scratch: Vec::new(),
            unwind: UnwindCache::new(),
            read_once: HashMap::new(),
        }
    }

    /// Whether `tid` has its events.
    pub fn covers(&self, tid: u32) -> bool {
        self.threads.contains_key(&tid)
    }

    /// Opens the events of `tid` (of process `pid`) unless done already. An error says why
    /// not (remembered: the thread is not tried again this run).
    pub fn open(&mut self, pid: u32, tid: u32) -> Result<(), Refusal> {
        if self.threads.contains_key(&tid) {
            return Ok(());
        }
        if let Some(&e) = self.refused.get(&tid) {
            return Err(Refusal::Kernel(e));
        }
        if self.over_cap.contains(&tid) {
            return Err(Refusal::OverCap);
        }
        // Reserved before anything is mapped; what is not mapped is given back below.
        let need = ring_bytes_per_thread();
        if !self.budget.take(need) {
            self.over_cap.insert(tid);
            return Err(Refusal::OverCap);
        }
        let opened = (|| {
            let fd = events::open(tid, events::Kind::Clock, self.period_ns)?;
            let clock = Ring::map(fd, RING_PAGES)
                .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
            // Without the switch event (kernel samples not allowed), off-CPU threads are
            // simply read with ptrace.
            let switch = events::open(tid, events::Kind::Switch, 1)
                .ok()
                .and_then(|fd| Ring::map(fd, RING_PAGES).ok());
            let probe = events::open(tid, events::Kind::Probe, events::PROBE_PERIOD_NS)
                .ok()
                .filter(|fd| events::share_ring(fd, clock.raw_fd()).is_ok());
            Ok::<_, Errno>((clock, switch, probe))
        })();
        let mapped = match &opened {
            Ok((_, Some(_), _)) => need,
            Ok((_, None, _)) => need / 2,
            Err(_) => 0,
        };
        self.budget.give(need - mapped);
        self.reserved += mapped;
        match opened {
            Ok((clock, switch, probe)) => {
                self.threads.insert(
                    tid,
                    PerfThread {
                        pid,
                        clock,
                        probe,
                        switch,
                        on_cpu: None,
                        switched_out: None,
                    },
                );
                Ok(())
            }
            Err(e) => {
                if e != Errno::ESRCH {
                    self.refused.insert(tid, e);
                }
                Err(Refusal::Kernel(e))
            }
        }
    }

    /// Threads read with ptrace because their rings did not fit under the cap, and the line
    /// saying so (logged once per agent); None when every thread fitted.
    pub fn over_cap(&self) -> Option<(usize, String)> {
        (!self.over_cap.is_empty()).then(|| {
            (
                self.over_cap.len(),
                self.budget.over_cap(self.over_cap.len()),
            )
        })
    }

    /// Reads every ring, keeping each thread's newest sample of each kind.
    pub fn drain(&mut self) {
        self.drain_where(|_| true);
    }

    /// Reads the rings of `tid` only.
    pub fn drain_thread(&mut self, tid: u32) {
        self.drain_where(|t| t == tid);
    }

    fn drain_where(&mut self, wanted: impl Fn(u32) -> bool) {
        let scratch = &mut self.scratch;
        let lost = &mut self.lost;
        for (&tid, th) in self.threads.iter_mut().filter(|(t, _)| wanted(**t)) {
            let mut keep = |kept: &mut Option<Kept>, rec: &[u8]| match events::parse(rec) {
                Some(events::Record::Sample {
                    tid: t,
                    time_ns,
                    regs: Some(regs),
                    stack,
                }) if t == tid => {
                    let buf = kept
                        .take()
                        .map(|k| k.copy.into_buffer())
                        .unwrap_or_default();
                    *kept = Some(Kept {
                        time_ns,
                        regs,
                        copy: StackCopy::from_bytes(regs.sp, stack, buf),
                        unwound: None,
                    });
                }
                Some(events::Record::Lost(n)) => *lost += n,
                _ => {}
            };
            th.clock
                .drain(scratch, &mut |rec| keep(&mut th.on_cpu, rec));
            if let Some(ring) = th.switch.as_mut() {
                ring.drain(scratch, &mut |rec| keep(&mut th.switched_out, rec));
            }
        }
    }

    /// The time of `tid`'s newest sample of either kind (None: no sample yet).
    pub fn newest_ns(&self, tid: u32) -> Option<u64> {
        let th = self.threads.get(&tid)?;
        [&th.on_cpu, &th.switched_out]
            .into_iter()
            .flatten()
            .map(|k| k.time_ns)
            .max()
    }

    /// The time of `tid`'s newest switch-out sample.
    pub fn switched_out_ns(&self, tid: u32) -> Option<u64> {
        self.threads
            .get(&tid)
            .and_then(|th| th.switched_out.as_ref())
            .map(|k| k.time_ns)
    }

    /// Whether `tid`'s newest sample is a switch-out: it has not run a whole task-clock period
    /// since it last left a CPU.
    pub fn switched_last(&self, tid: u32) -> bool {
        self.threads
            .get(&tid)
            .is_some_and(|th| match (&th.on_cpu, &th.switched_out) {
                (Some(a), Some(b)) => b.time_ns > a.time_ns,
                (None, Some(_)) => true,
                _ => false,
            })
    }

    /// Asks the kernel for one more on-CPU sample of `tid` after [`events::PROBE_PERIOD_NS`]
    /// of its CPU time (false: no probe for it).
    pub fn probe(&self, tid: u32) -> bool {
        self.threads
            .get(&tid)
            .and_then(|th| th.probe.as_ref())
            .is_some_and(|fd| events::arm(fd).is_ok())
    }

    /// Whether `tid` has any sample yet.
    pub fn has_sample(&self, tid: u32) -> bool {
        self.threads
            .get(&tid)
            .is_some_and(|t| t.on_cpu.is_some() || t.switched_out.is_some())
    }

    /// The stack of `tid` at this instant: `running` says whether `/proc` shows it on a CPU
    /// (or runnable), as read at `state_ns` (CLOCK_MONOTONIC; `u64::MAX`: do not check). A
    /// thread off CPU with a sample newer than its state ran since, and a runnable one whose
    /// newest sample is a switch-out may have just been woken: both are [`Pick::Stale`]. Unwinds
    /// the chosen sample with `modules` (once per sample).
    pub fn pick(
        &mut self,
        tid: u32,
        running: bool,
        state_ns: u64,
        modules: &Arc<ProcessModules>,
        max_frames: usize,
    ) -> Pick {
        let Some(th) = self.threads.get_mut(&tid) else {
            return Pick::Ptrace;
        };
        let newest = [&th.on_cpu, &th.switched_out]
            .into_iter()
            .flatten()
            .map(|k| k.time_ns)
            .max();
        if !running && newest.is_some_and(|t| t > state_ns) {
            return Pick::Stale;
        }
        // Runnable, but not on a CPU for a task-clock tick since it last switched out: it has
        // just been woken (perhaps by our one ptrace read, as it re-enters its wait), or waits
        // for a CPU. Look at its state once more before calling it running.
        let switched_last = match (&th.on_cpu, &th.switched_out) {
            (Some(a), Some(b)) => b.time_ns > a.time_ns,
            (None, Some(_)) => true,
            _ => false,
        };
        if running && state_ns != u64::MAX && switched_last {
            return Pick::Stale;
        }
        let kept = if running {
            match (&mut th.on_cpu, &mut th.switched_out) {
                (Some(a), Some(b)) => {
                    if a.time_ns >= b.time_ns {
                        a
                    } else {
                        b
                    }
                }
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return Pick::Ptrace,
            }
        } else {
            match &mut th.switched_out {
                Some(b) => b,
                None => return Pick::Ptrace,
            }
        };
        if let Some(done) = &kept.unwound {
            return Pick::Stack(Arc::clone(done));
        }
        self.unwind.prepare(th.pid, modules);
        let copy = &mut kept.copy;
        let raw = self.unwind.unwind(th.pid, kept.regs, max_frames, &mut |a| {
            copy.read_word(a, None)
        });
        let raw = Arc::new(raw);
        kept.unwound = Some(Arc::clone(&raw));
        Pick::Stack(raw)
    }

    /// Remembers a ptrace read of `tid`, blocked in `syscall`, finished at `after_ns`.
    pub fn note_ptrace_read(&mut self, tid: u32, after_ns: u64, stack: RawStack, syscall: Syscall) {
        self.read_once
            .insert(tid, (after_ns, Arc::new(stack), syscall));
    }

    /// Our last ptrace read of `tid` while it has not run since: its stack and system call.
    /// A thread `/proc` calls runnable has run only once a task-clock tick landed after the
    /// read: before that it is still getting back into the wait our stop interrupted (on a
    /// busy host it may even be preempted on the way, which leaves a switch-out record).
    pub fn still_as_read(&self, tid: u32, runnable: bool) -> Option<(Arc<RawStack>, Syscall)> {
        let (at, stack, syscall) = self.read_once.get(&tid)?;
        let th = self.threads.get(&tid)?;
        let after = |k: &Option<Kept>| k.as_ref().is_some_and(|k| k.time_ns > *at);
        let ran = after(&th.on_cpu) || (!runnable && after(&th.switched_out));
        (!ran).then(|| (Arc::clone(stack), *syscall))
    }

    /// Forgets the unwound stacks of `pid`'s samples (its modules changed: unwind again).
    pub fn forget_unwound(&mut self, pid: u32) {
        for th in self.threads.values_mut().filter(|t| t.pid == pid) {
            for k in [&mut th.on_cpu, &mut th.switched_out].into_iter().flatten() {
                k.unwound = None;
            }
        }
    }

    /// Threads whose events were refused, and the first refusal's errno.
    pub fn refusals(&self) -> (usize, Option<Errno>) {
        (self.refused.len(), self.refused.values().next().copied())
    }

    /// Threads sampled through perf events.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for PerfSession {
    fn drop(&mut self) {
        // The rings are unmapped with `threads`; their room goes back to the agent's budget.
        self.threads.clear();
        self.budget.give(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::LockLimits;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    /// A thread of this process that spins (or sleeps in a loop) until dropped.
    struct Busy {
        tid: u32,
        stop: Arc<AtomicBool>,
        handle: Option<std::thread::JoinHandle<()>>,
    }

    impl Busy {
        fn start(sleeps: bool) -> Busy {
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel();
            let flag = Arc::clone(&stop);
            let handle = std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                let mut x = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    if sleeps {
                        std::thread::sleep(Duration::from_millis(1));
                    } else {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
            });
            Busy {
                tid: rx.recv().unwrap(),
                stop,
                handle: Some(handle),
            }
        }
    }

    impl Drop for Busy {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    /// Polls `session` until `tid` has a sample of the wanted kind (60 s at most: a bound on
    /// hangs, not a timing assertion).
    fn until(session: &mut PerfSession, tid: u32, on_cpu: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            session.drain();
            let th = &session.threads[&tid];
            if (on_cpu && th.on_cpu.is_some()) || (!on_cpu && th.switched_out.is_some()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// An armed probe gives one on-CPU sample of a running thread without waiting for the
    /// clock's period (here far longer than the test), and can be armed again.
    #[test]
    fn an_armed_probe_takes_one_sample_of_a_running_thread() {
        let budget = RingBudget::new(budget::DEFAULT_RING_MEMORY, LockLimits::of_this_process());
        let mut session = PerfSession::new(1_000_000_000_000, Arc::new(budget));
        let spinner = Busy::start(false);
        if session.open(std::process::id(), spinner.tid).is_err() {
            return; // no perf events on this kernel
        }
        assert!(session.probe(spinner.tid), "no probe");
        assert!(until(&mut session, spinner.tid, true), "no probe sample");
        // Only the probe writes on-CPU samples here (the clock's period is 1,000 s).
        let on_cpu = |s: &PerfSession| s.threads[&spinner.tid].on_cpu.as_ref().map(|k| k.time_ns);
        let first = on_cpu(&session);
        assert!(session.probe(spinner.tid));
        let deadline = Instant::now() + Duration::from_secs(60);
        while on_cpu(&session) == first && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            session.drain();
        }
        assert!(on_cpu(&session) > first, "no second probe sample");
        assert!(
            !session.probe(u32::MAX),
            "a thread without events has no probe"
        );
        assert_eq!(session.lost, 0);
    }

    #[test]
    fn running_and_sleeping_threads_deliver_registers_and_stacks() {
        let pid = std::process::id();
        let budget = RingBudget::new(budget::DEFAULT_RING_MEMORY, LockLimits::of_this_process());
        let mut session =
            PerfSession::new(clock_period(Duration::from_millis(1)), Arc::new(budget));
        let spinner = Busy::start(false);
        let sleeper = Busy::start(true);
        for t in [&spinner, &sleeper] {
            if let Err(e) = session.open(pid, t.tid) {
                // Only where the kernel allows no perf events at all (a locked-down CI box).
                assert!(
                    matches!(
                        e,
                        Refusal::Kernel(
                            Errno::EACCES | Errno::EPERM | Errno::ENOENT | Errno::ENOSYS
                        )
                    ),
                    "{e:?}"
                );
                return;
            }
        }
        assert!(
            until(&mut session, spinner.tid, true),
            "no task-clock sample"
        );
        assert!(
            until(&mut session, sleeper.tid, false),
            "no switch-out sample"
        );
        for (tid, on_cpu) in [(spinner.tid, true), (sleeper.tid, false)] {
            let th = &session.threads[&tid];
            let kept = if on_cpu { &th.on_cpu } else { &th.switched_out };
            let kept = kept.as_ref().unwrap();
            assert!(kept.regs.pc != 0 && kept.regs.sp != 0, "{:?}", kept.regs);
            // The copy starts at the stack pointer and holds readable words.
            let mut copy = kept.copy.clone();
            assert!(copy.read_word(kept.regs.sp, None).is_ok());
            assert!(copy.read_word(kept.regs.sp - 8, None).is_err());
        }
        // A running thread's stack comes from its newest sample, starting at its pc.
        let modules = ProcessModules::empty(0);
        session.drain();
        let th = &session.threads[&spinner.tid];
        let newest = [&th.on_cpu, &th.switched_out]
            .into_iter()
            .flatten()
            .max_by_key(|k| k.time_ns)
            .map(|k| k.regs.pc);
        match session.pick(spinner.tid, true, u64::MAX, &modules, 10) {
            Pick::Stack(raw) => assert_eq!(raw.addrs.first().copied(), newest),
            _ => panic!("no stack for a sampled running thread"),
        }
        // A thread with a sample newer than its (stale) state is re-read.
        assert!(matches!(
            session.pick(sleeper.tid, false, 0, &modules, 10),
            Pick::Stale
        ));
        // A thread without events goes to ptrace.
        assert!(matches!(
            session.pick(u32::MAX, true, u64::MAX, &modules, 10),
            Pick::Ptrace
        ));
        assert_eq!(session.lost, 0);
    }
}
