//! Shared helpers for flamegrid's benchmarks: the target processes they sample, the small
//! statistics they report ([`stats`]) and what they read about processes from `/proc`
//! ([`procfs`]).
//!
//! Three kinds of benchmark live in this crate:
//!
//! * criterion benches (`benches/sampler.rs`) time the in-process hot path, one snapshot through
//!   [`flamegrid_sampler::Sampler`], with cold and warm caches;
//! * the `flamegrid-compare` binary (driven by `compare.sh`) runs flamegrid side by side with
//!   the tools a user would otherwise reach for (`eu-stack`, `gdb`) on the *same* process, in
//!   alternating rounds, and prints medians and ratios as Markdown;
//! * the `flamegrid-e2e` binary (driven by `e2e.sh`) measures a real coordinator and real
//!   agents from the outside: time to first graph, REST load, memory, Flink beside them.
//!
//! The criterion benches and `flamegrid-compare` sample the same shapes of process, defined
//! here, so their figures can be compared. Both drivers summarise their rounds with the same
//! [`stats`] and read `/proc` through the same [`procfs`], so a median or a VmRSS means one
//! thing in every report. Shared machines are noisy; that is why everything here is reported
//! as medians of alternating rounds and as ratios, never as one absolute time.

mod error;
pub mod procfs;
pub mod stats;

pub use error::Error;

use flamegrid_sampler::selection::ThreadSelector;
use flamegrid_workloads::Mix;

/// The thread counts every snapshot benchmark uses (main thread included).
pub const SNAPSHOT_SIZES: [u32; 3] = [16, 64, 256];

/// A process of exactly `threads` threads (main thread included, `threads >= 4`): one spinner
/// and the rest split between sleeping, condition-waiting and mutex-blocked threads. One
/// spinner leaves the second core of a 2-vCPU machine to the tool under test, so the figures
/// measure the tool and not the scheduler.
pub fn snapshot_mix(threads: u32) -> Mix {
    let spin = 1;
    let blocked = threads.saturating_sub(1 + spin);
    let sleep = blocked.div_ceil(3);
    let wait = (blocked - sleep).div_ceil(2);
    let lock = blocked - sleep - wait;
    Mix {
        spin,
        sleep,
        wait,
        lock,
        churn: 0,
        report_rate: false,
    }
}

/// The throughput target: one spinner that reports its rate, plus a few blocked threads (the
/// shape of the measurements in SAMPLING-NOTES.md §3.4).
pub fn throughput_mix() -> Mix {
    Mix {
        spin: 1,
        sleep: 4,
        wait: 3,
        lock: 0,
        churn: 0,
        report_rate: true,
    }
}

/// A selector for every thread of `pid`, as `flamegrid-agent sample --pid` uses.
pub fn whole_process(pid: u32) -> Vec<(String, ThreadSelector)> {
    vec![("bench".to_owned(), ThreadSelector::pid(pid))]
}

/// Reads a count of rounds for the drivers' command lines (a clap value parser): a whole
/// number of at least 1, since a median of no rounds is no figure.
pub fn positive_count(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("wants a whole number of at least 1, got {raw:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_mixes_have_exactly_the_requested_threads() {
        for threads in SNAPSHOT_SIZES {
            assert_eq!(snapshot_mix(threads).steady_threads(), threads);
        }
    }

    #[test]
    fn counts_of_rounds_are_positive_whole_numbers() {
        assert_eq!(positive_count("3"), Ok(3));
        for bad in ["0", "-1", "2.5", "", "many"] {
            let e = positive_count(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
