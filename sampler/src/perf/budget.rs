//! The agent's cap on perf ring memory.
//!
//! Every thread sampled through perf events maps two ring buffers (about 1 MiB): a process of
//! 1,000 threads would map 1 GiB. One [`RingBudget`] per [`crate::Sampler`] (so per agent,
//! shared by its concurrent runs) bounds the total; a thread whose rings do not fit is read with
//! ptrace instead, and the reason is logged once.
//!
//! The kernel has its own bound, which the cap takes into account: ring pages are locked memory,
//! charged first to `kernel.perf_event_mlock_kb` × online CPUs per user and then to the
//! process's `RLIMIT_MEMLOCK`; past both, `mmap` fails with EPERM. A process with
//! `CAP_IPC_LOCK` (root has it) is not limited. Without it the cap is the smaller of the
//! configured one and that limit, so the agent falls back in good order instead of meeting an
//! EPERM.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `CAP_IPC_LOCK`'s bit in the capability sets (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// The default cap on one agent's perf ring memory: 256 MiB, the rings of about 250 threads.
pub const DEFAULT_RING_MEMORY: usize = 256 << 20;

/// The kernel's locked-memory limits that apply to perf rings of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLimits {
    /// The process holds CAP_IPC_LOCK: no limit.
    pub ipc_lock: bool,
    /// `kernel.perf_event_mlock_kb` (per CPU; None when unreadable).
    pub perf_mlock_kb: Option<u64>,
    /// Online CPUs.
    pub cpus: u64,
    /// `RLIMIT_MEMLOCK` soft limit, bytes (None: unlimited).
    pub rlimit_memlock: Option<u64>,
}

impl LockLimits {
    /// This process's limits, read from `/proc` and `getrlimit`.
    pub fn of_this_process() -> LockLimits {
        let ipc_lock = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
        let perf_mlock_kb = std::fs::read_to_string("/proc/sys/kernel/perf_event_mlock_kb")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64;
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the value we pass.
        let rlimit_memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0 {
            (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
        } else {
            Some(0)
        };
        LockLimits {
            ipc_lock,
            perf_mlock_kb,
            cpus,
            rlimit_memlock,
        }
    }

    /// The locked memory perf rings may take (None: unlimited), and how it was computed.
    pub fn limit(&self) -> Option<(u64, String)> {
        if self.ipc_lock {
            return None;
        }
        let per_user = self
            .perf_mlock_kb
            .unwrap_or(0)
            .saturating_mul(1024)
            .saturating_mul(self.cpus);
        let rlimit = self.rlimit_memlock?;
        Some((
            per_user.saturating_add(rlimit),
            format!(
                "the locked-memory limit of perf rings without CAP_IPC_LOCK: \
                 kernel.perf_event_mlock_kb {} KiB x {} CPU(s) + RLIMIT_MEMLOCK {} KiB",
                self.perf_mlock_kb.unwrap_or(0),
                self.cpus,
                rlimit / 1024
            ),
        ))
    }
}

/// The ring memory one agent may map, and how much its runs map now.
#[derive(Debug)]
pub struct RingBudget {
    cap: usize,
    /// Why the cap is what it is (for the one log line).
    why: String,
    used: AtomicUsize,
    /// The first thread over the cap was logged.
    logged: AtomicBool,
}

impl RingBudget {
    /// A budget of `configured` bytes, lowered to the kernel's locked-memory limit of this
    /// process when that is smaller.
    pub fn new(configured: usize, limits: LockLimits) -> RingBudget {
        let mut cap = configured;
        let mut why = format!("the agent's cap of {} MiB", configured >> 20);
        if let Some((limit, how)) = limits.limit()
            && limit < configured as u64
        {
            cap = limit as usize;
            why = how;
        }
        RingBudget {
            cap,
            why,
            used: AtomicUsize::new(0),
            logged: AtomicBool::new(false),
        }
    }

    /// The cap, bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes mapped now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, or false when they do not fit under the cap (nothing reserved).
    pub fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.cap)
            })
            .is_ok()
    }

    /// Gives back `bytes` reserved with [`RingBudget::take`].
    pub fn give(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// One line saying why threads are read with ptrace; logged once per budget (agent).
    pub fn over_cap(&self, threads: usize) -> String {
        let line = format!(
            "perf ring memory cap reached ({} KiB: {}); {threads} thread(s) read with ptrace",
            self.cap >> 10,
            self.why
        );
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{line}. Raise --perf-ring-memory-mib, or give the agent CAP_IPC_LOCK or a larger \
                 RLIMIT_MEMLOCK"
            );
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ipc_lock: bool, mlock_kb: u64, cpus: u64, rlimit: Option<u64>) -> LockLimits {
        LockLimits {
            ipc_lock,
            perf_mlock_kb: Some(mlock_kb),
            cpus,
            rlimit_memlock: rlimit,
        }
    }

    #[test]
    fn the_cap_is_the_smaller_of_the_configured_one_and_the_lock_limit() {
        // CAP_IPC_LOCK (root): the configured cap.
        let b = RingBudget::new(256 << 20, limits(true, 516, 2, Some(8 << 20)));
        assert_eq!(b.cap(), 256 << 20);
        // Without it: perf_event_mlock_kb per CPU plus RLIMIT_MEMLOCK.
        let b = RingBudget::new(256 << 20, limits(false, 516, 2, Some(8 << 20)));
        assert_eq!(b.cap(), 516 * 1024 * 2 + (8 << 20));
        assert!(
            b.over_cap(3)
                .contains("perf_event_mlock_kb 516 KiB x 2 CPU(s)")
        );
        // An unlimited RLIMIT_MEMLOCK or a larger limit leave the configured cap.
        let b = RingBudget::new(4 << 20, limits(false, 516, 2, None));
        assert_eq!(b.cap(), 4 << 20);
        let b = RingBudget::new(4 << 20, limits(false, 516, 64, Some(64 << 20)));
        assert_eq!(b.cap(), 4 << 20);
        assert!(b.over_cap(1).contains("the agent's cap of 4 MiB"));
    }

    #[test]
    fn takes_fit_under_the_cap_and_gifts_free_room() {
        let b = RingBudget::new(3 << 20, limits(true, 0, 1, None));
        assert!(b.take(1 << 20) && b.take(2 << 20));
        assert!(!b.take(1), "over the cap");
        assert_eq!(b.used(), 3 << 20);
        b.give(2 << 20);
        assert!(b.take(1 << 20));
        assert!(!b.take(usize::MAX), "no overflow");
        assert_eq!(b.used(), 2 << 20);
    }
}
