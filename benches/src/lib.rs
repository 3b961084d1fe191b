//! Shared helpers for flamegrid's benchmarks: the target processes they sample and the small
//! statistics they report.
//!
//! Two kinds of benchmark live in this crate:
//!
//! * criterion benches (`benches/sampler.rs`) time the in-process hot path, one snapshot through
//!   [`flamegrid_sampler::Sampler`], with cold and warm caches;
//! * the `flamegrid-compare` binary (driven by `compare.sh`) runs flamegrid side by side with
//!   the tools a user would otherwise reach for (`eu-stack`, `gdb`) on the *same* process, in
//!   alternating rounds, and prints medians and ratios as Markdown.
//!
//! Both sample the same shapes of process, defined here, so their figures can be compared.
//! Shared machines are noisy; that is why everything here is reported as medians of
//! alternating rounds and as ratios, never as one absolute time.

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

/// The `q` quantile (0..=1, nearest rank) of `values`; `NaN` for no values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[rank]
}

/// The median of `values`; `NaN` for no values.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
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
    fn quantiles_pick_nearest_ranks() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), 3.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!(median(&[]).is_nan());
    }
}
