//! rust_workload — the Rust flavour of the test workload (std only, built by the crate's
//! build script with `$RUSTC -C opt-level=2 -g`).
//!
//! Command line and thread roles are those of workload.c (`PROG SPIN SLEEP WAIT LOCK CHURN
//! [--rate]`; threads `spin-<i>`, `sleep-<i>`, `wait-<i>`, `lock-<i>`, `churn-<i>`; prints
//! `ready`, then `rate N` every second with `--rate`; exits on stdin EOF). Chains, outermost
//! first, as flamegrid names frames (demangled, hash stripped):
//!
//! - spin:  `rust_workload::spin::thread_main` → `…::spin::outer` → `…::spin::middle` → `…::spin::inner`
//! - sleep: `rust_workload::sleep::thread_main` → `…::sleep::outer` → `…::sleep::inner`
//! - wait:  `rust_workload::wait::thread_main` → `…::wait::outer` → `…::wait::inner` (Condvar, no timeout)
//! - lock:  `rust_workload::lock::thread_main` → `…::lock::outer` → `…::lock::inner` (a Mutex main holds)
//!
//! Every function on a chain is `#[inline(never)]` and does work after its call, so LLVM
//! cannot turn the call into a tail jump and each function keeps its own frame.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

static SPIN_ITERATIONS: AtomicU64 = AtomicU64::new(0);
static HELD_FOREVER: Mutex<()> = Mutex::new(());
static NEVER_SIGNALLED_LOCK: Mutex<bool> = Mutex::new(false);
static NEVER_SIGNALLED: Condvar = Condvar::new();

mod spin {
    use super::*;

    const CHUNK: u64 = 1 << 16;

    #[inline(never)]
    pub fn inner(seed: u64) -> u64 {
        let mut x = seed;
        for _ in 0..CHUNK {
            x = black_box(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
        SPIN_ITERATIONS.fetch_add(CHUNK, Ordering::Relaxed);
        x
    }

    #[inline(never)]
    pub fn middle(seed: u64) -> u64 {
        let r = inner(seed);
        black_box(r).wrapping_add(1)
    }

    #[inline(never)]
    pub fn outer(mut seed: u64) {
        loop {
            seed = black_box(middle(seed));
        }
    }

    #[inline(never)]
    pub fn thread_main(seed: u64) {
        outer(seed);
        black_box(());
    }
}

mod sleep {
    use super::*;

    #[inline(never)]
    pub fn inner() {
        std::thread::sleep(Duration::from_millis(200));
        black_box(2);
    }

    #[inline(never)]
    pub fn outer() {
        loop {
            inner();
            black_box(());
        }
    }

    #[inline(never)]
    pub fn thread_main() {
        outer();
        black_box(());
    }
}

mod wait {
    use super::*;

    #[inline(never)]
    pub fn inner() {
        let mut flag = NEVER_SIGNALLED_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while !*flag {
            flag = NEVER_SIGNALLED
                .wait(flag)
                .unwrap_or_else(|e| e.into_inner());
        }
        black_box(3);
    }

    #[inline(never)]
    pub fn outer() {
        loop {
            inner();
            black_box(());
        }
    }

    #[inline(never)]
    pub fn thread_main() {
        outer();
        black_box(());
    }
}

mod lock {
    use super::*;

    #[inline(never)]
    pub fn inner() {
        let guard = HELD_FOREVER.lock().unwrap_or_else(|e| e.into_inner());
        black_box(&guard);
        drop(guard);
    }

    #[inline(never)]
    pub fn outer() {
        loop {
            inner();
            black_box(());
        }
    }

    #[inline(never)]
    pub fn thread_main() {
        outer();
        black_box(());
    }
}

mod churn {
    use super::*;

    #[inline(never)]
    pub fn work() {
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = black_box(x + i);
        }
        std::thread::sleep(Duration::from_millis(1));
        black_box(x);
    }

    /// Each churn thread does a little work, starts its successor under the same name and exits.
    #[inline(never)]
    pub fn thread_main(slot: u32) {
        work();
        loop {
            let spawned = std::thread::Builder::new()
                .name(format!("churn-{slot}"))
                .stack_size(256 * 1024)
                .spawn(move || thread_main(slot));
            match spawned {
                Ok(_) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        black_box(());
    }
}

fn parse_count(text: &str, what: &str) -> u32 {
    match text.parse::<u32>() {
        Ok(v) if v <= 4096 => v,
        _ => {
            eprintln!("bad {what} count '{text}' (expected 0..4096)");
            std::process::exit(2);
        }
    }
}

/// Starts `count` threads named `<prefix>-<i>`. std names a thread from inside the new thread,
/// so each one reports on `started` once it runs (and is therefore named).
fn start_role(count: u32, prefix: &str, entry: fn(u32), started: &mpsc::Sender<()>) {
    for i in 0..count {
        let started = started.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{prefix}-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = started.send(());
                drop(started);
                entry(i)
            });
        if let Err(e) = spawned {
            eprintln!("spawn {prefix}-{i}: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 || args.len() > 7 || (args.len() == 7 && args[6] != "--rate") {
        eprintln!("usage: {} SPIN SLEEP WAIT LOCK CHURN [--rate]", args[0]);
        std::process::exit(2);
    }
    let spin = parse_count(&args[1], "spin");
    let sleepers = parse_count(&args[2], "sleep");
    let waiters = parse_count(&args[3], "wait");
    let lockers = parse_count(&args[4], "lock");
    let churn = parse_count(&args[5], "churn");
    let report_rate = args.len() == 7;

    let _held = HELD_FOREVER.lock().unwrap_or_else(|e| e.into_inner());
    let (started, started_rx) = mpsc::channel();
    start_role(
        spin,
        "spin",
        |i| spin::thread_main(u64::from(i) + 1),
        &started,
    );
    start_role(sleepers, "sleep", |_| sleep::thread_main(), &started);
    start_role(waiters, "wait", |_| wait::thread_main(), &started);
    start_role(lockers, "lock", |_| lock::thread_main(), &started);
    start_role(churn, "churn", churn::thread_main, &started);
    drop(started);
    for _ in 0..(spin + sleepers + waiters + lockers + churn) {
        if started_rx.recv().is_err() {
            std::process::exit(1);
        }
    }

    let mut out = std::io::stdout().lock();
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        std::process::exit(1);
    }

    // Main keeps holding HELD_FOREVER and waits for stdin to close, reporting the spinners'
    // rate every second when asked to.
    let mut last = Instant::now();
    let mut last_count = SPIN_ITERATIONS.load(Ordering::Relaxed);
    let mut next_report = last + Duration::from_secs(1);
    loop {
        let timeout = report_rate.then(|| next_report.saturating_duration_since(Instant::now()));
        if stdin_closed_within(timeout) {
            std::process::exit(0);
        }
        let now = Instant::now();
        if report_rate && now >= next_report {
            let count = SPIN_ITERATIONS.load(Ordering::Relaxed);
            let nanos = now.duration_since(last).as_nanos().max(1);
            let per_second = u128::from(count - last_count) * 1_000_000_000 / nanos;
            if writeln!(out, "rate {per_second}")
                .and_then(|()| out.flush())
                .is_err()
            {
                std::process::exit(1);
            }
            last = now;
            last_count = count;
            next_report += Duration::from_secs(1);
            if next_report < now {
                next_report = now + Duration::from_secs(1);
            }
        }
    }
}

/// Waits up to `timeout` (forever with `None`) for stdin to become readable; true when it
/// reached end-of-file.
/// std has no poll(2), so this declares the one libc function it needs.
fn stdin_closed_within(timeout: Option<Duration>) -> bool {
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    unsafe extern "C" {
        fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
    }
    const POLLIN: i16 = 1;
    let mut pfd = PollFd {
        fd: 0,
        events: POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis() + 1).unwrap_or(i32::MAX));
    // SAFETY: one valid pollfd, nfds = 1.
    let n = unsafe { poll(&mut pfd, 1, ms) };
    if n <= 0 {
        return false;
    }
    let mut buf = [0u8; 256];
    match std::io::stdin().lock().read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::Interrupted,
    }
}
