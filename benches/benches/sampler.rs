//! One snapshot of a whole process through the sampler, cold and warm.
//!
//! * **cold**: a new [`Sampler`] per iteration, so every iteration pays for starting the tracer
//!   and symbolizer threads, loading unwind tables and parsing symbols — what a one-shot
//!   `flamegrid-agent sample --samples 1` pays.
//! * **warm**: one `Sampler` reused, as inside a running agent: the unwind and symbol caches are
//!   filled, so an iteration is the stop-read-release round plus cached symbolization.
//!
//! Targets are the 16- and 64-thread C (no frame pointers) workloads of
//! [`flamegrid_benches::snapshot_mix`]: one spinner, the rest sleeping, condition-waiting or
//! blocked on a mutex. Run with `cargo bench -p flamegrid-benches --bench sampler`.
//!
//! The allocator is set up as `flamegrid-agent run` sets it up
//! ([`flamegrid_sampler::memory::tune_allocator`]: fixed mmap and trim thresholds, two arenas),
//! so the figures are those of the agent's memory settings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flamegrid_benches::{snapshot_mix, whole_process};
use flamegrid_sampler::selection::AccessPolicy;
use flamegrid_sampler::{Sampler, SamplerOptions};
use flamegrid_workloads::{Workload, spawn};
use std::hint::black_box;
use std::time::Duration;

/// Takes one snapshot and checks it really sampled every thread, so the bench never times an
/// error path.
fn snapshot(sampler: &Sampler, pid: u32, expected_threads: usize) {
    let opts = SamplerOptions {
        num_samples: 1,
        ..SamplerOptions::default()
    };
    let run = sampler.sample(&whole_process(pid), &AccessPolicy::unrestricted(), &opts);
    let set = match &run.subtasks[0].1 {
        Ok(set) => set,
        Err(e) => panic!("sampling pid {pid} failed: {e}"),
    };
    assert!(
        set.samples.len() >= expected_threads,
        "sampled {} of {expected_threads} threads",
        set.samples.len()
    );
    black_box(run);
}

fn bench_snapshot(c: &mut Criterion) {
    flamegrid_sampler::memory::tune_allocator();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for threads in [16u32, 64] {
        let target = spawn(Workload::CNoFramePointers, &snapshot_mix(threads)).unwrap();
        let pid = target.pid();
        let expected = threads as usize;

        group.bench_with_input(BenchmarkId::new("cold", threads), &pid, |b, &pid| {
            b.iter(|| {
                let sampler = Sampler::new().unwrap();
                snapshot(&sampler, pid, expected);
            });
        });

        let sampler = Sampler::new().unwrap();
        snapshot(&sampler, pid, expected); // fill the caches
        group.bench_with_input(BenchmarkId::new("warm", threads), &pid, |b, &pid| {
            b.iter(|| snapshot(&sampler, pid, expected));
        });
        drop(target);
    }
    group.finish();
}

criterion_group!(benches, bench_snapshot);
criterion_main!(benches);
