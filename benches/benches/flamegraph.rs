//! Flame graph benchmarks: the coordinator's hot paths once samples have arrived.
//!
//! * `tree_build`: folding interned samples into Flink's tree ([`FlameNode::build`]), reported
//!   in frames per second (goal: ≥ 10 M frames/s). Two inputs: a realistic one (64 threads ×
//!   100 samples, 40-frame stacks that share long prefixes, as real threads do) and a hostile
//!   one (the same samples shuffled, so consecutive samples rarely share a prefix).
//! * `coordinator_tree`: the path the coordinator really runs, in frames (of the raw samples)
//!   per second: `from_set` folds a subtask's samples into a [`SubtaskProfile`] once when the
//!   run lands; `tree` builds Flink's tree from that profile ([`Snapshot::tree`], what a JSON
//!   request renders); `from_set_and_tree` is both, i.e. samples in → first tree out. Same
//!   realistic and shuffled inputs as `tree_build`.
//! * `tree_json`: serialising a large tree (10 k distinct stacks) to Flink's JSON.
//! * `svg_render`: the `.svg` endpoint's rendering of 1 k and 10 k distinct stacks (goal for
//!   10 k: ≤ 100 ms).
//!
//! Run with `cargo bench -p flamegrid-benches --bench flamegraph`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flamegrid_coordinator::flamegraph::GraphAnswer;
use flamegrid_coordinator::flamegraph::profile::{Snapshot, SubtaskProfile};
use flamegrid_coordinator::flamegraph::svg::{SvgLabels, render};
use flamegrid_model::{
    FlameNode, Frame, GraphType, SampleSet, SampleSetBuilder, SampledThread, ThreadState,
};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

/// A small deterministic generator, so every run benchmarks the same data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// `threads` threads × `samples` samples; each thread has a 30-frame base chain and a 10-frame
/// tail drawn from a few variants, with about a fifth of the samples off CPU.
fn realistic_set(threads: u32, samples: u32) -> SampleSet {
    let mut rng = Lcg(42);
    let mut b = SampleSetBuilder::new();
    for t in 0..threads {
        let thread = SampledThread {
            pid: 1,
            tid: 100 + t,
            name: format!("worker-{t}"),
        };
        let base: Vec<Frame> = (0..30)
            .map(|d| Frame::named(format!("base_{}_{d}", t % 4)))
            .collect();
        for s in 0..samples {
            let variant = rng.next() % 8;
            let mut stack = base.clone();
            stack.extend((0..10).map(|d| Frame::named(format!("leaf_{variant}_{d}"))));
            let state = if rng.next().is_multiple_of(5) {
                ThreadState::Waiting
            } else {
                ThreadState::Runnable
            };
            b.push(&thread, i64::from(s), state, stack, false);
        }
    }
    b.finish()
}

/// `n` distinct stacks of depth 12–28 over a vocabulary of 400 function names.
fn distinct_stacks(n: usize) -> SampleSet {
    let mut rng = Lcg(7);
    let thread = SampledThread {
        pid: 1,
        tid: 1,
        name: "w".into(),
    };
    let mut b = SampleSetBuilder::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let depth = 12 + (rng.next() % 17) as usize;
        let path: Vec<u64> = (0..depth)
            .map(|d| if d < 4 { d as u64 } else { rng.next() % 400 })
            .collect();
        if !seen.insert(path.clone()) {
            continue;
        }
        let count = 1 + rng.next() % 20;
        for _ in 0..count {
            b.push(
                &thread,
                0,
                ThreadState::Runnable,
                path.iter()
                    .map(|f| Frame::named(format!("ns::function_{f}"))),
                false,
            );
        }
    }
    b.finish()
}

fn frames_in(set: &SampleSet) -> u64 {
    set.samples.iter().map(|s| s.stack.len() as u64).sum()
}

fn tree_build(c: &mut Criterion) {
    let realistic = realistic_set(64, 100);
    let mut shuffled = realistic.clone();
    let mut rng = Lcg(3);
    for i in (1..shuffled.samples.len()).rev() {
        shuffled.samples.swap(i, (rng.next() as usize) % (i + 1));
    }
    let mut g = c.benchmark_group("tree_build");
    g.throughput(Throughput::Elements(frames_in(&realistic)));
    g.bench_function("realistic_64x100x40", |b| {
        b.iter(|| FlameNode::build([black_box(&realistic)], GraphType::Full))
    });
    g.bench_function("shuffled_64x100x40", |b| {
        b.iter(|| FlameNode::build([black_box(&shuffled)], GraphType::Full))
    });
    g.finish();
}

fn snapshot_of(set: &SampleSet) -> Snapshot {
    Snapshot {
        run_id: 1,
        start_ms: 0,
        end_ms: 1_718_000_123_456,
        subtasks: BTreeMap::from([(0, Arc::new(SubtaskProfile::from_set(set)))]),
        missing: Default::default(),
    }
}

fn coordinator_tree(c: &mut Criterion) {
    let realistic = realistic_set(64, 100);
    let mut shuffled = realistic.clone();
    let mut rng = Lcg(3);
    for i in (1..shuffled.samples.len()).rev() {
        shuffled.samples.swap(i, (rng.next() as usize) % (i + 1));
    }
    let mut g = c.benchmark_group("coordinator_tree");
    g.throughput(Throughput::Elements(frames_in(&realistic)));
    for (name, set) in [
        ("realistic_64x100x40", &realistic),
        ("shuffled_64x100x40", &shuffled),
    ] {
        g.bench_function(format!("from_set/{name}"), |b| {
            b.iter(|| SubtaskProfile::from_set(black_box(set)))
        });
        let snapshot = snapshot_of(set);
        g.bench_function(format!("tree/{name}"), |b| {
            b.iter(|| black_box(&snapshot).tree(GraphType::Full))
        });
        g.bench_function(format!("from_set_and_tree/{name}"), |b| {
            b.iter(|| snapshot_of(black_box(set)).tree(GraphType::Full))
        });
    }
    g.finish();
}

fn tree_json(c: &mut Criterion) {
    let tree = snapshot_of(&distinct_stacks(10_000)).tree(GraphType::Full);
    let mut g = c.benchmark_group("tree_json");
    g.throughput(Throughput::Elements(tree.node_count() as u64));
    g.bench_function("10k_stacks", |b| {
        b.iter(|| serde_json::to_string(black_box(&tree)).map(|s| s.len()))
    });
    g.finish();
}

fn svg_render(c: &mut Criterion) {
    let mut g = c.benchmark_group("svg_render");
    g.sample_size(20);
    for n in [1_000usize, 10_000] {
        let answer = GraphAnswer::Ready(Arc::new(snapshot_of(&distinct_stacks(n))));
        let labels = SvgLabels {
            job_id: "0123456789abcdef0123456789abcdef",
            job_name: "bench",
            vertex_id: "fedcba9876543210fedcba9876543210",
            vertex_name: "Map",
            subtask: None,
            ty: GraphType::Full,
        };
        let size = render(&answer, &labels).expect("SVG renders").len();
        eprintln!("svg_render/{n}: {size} bytes");
        g.bench_with_input(BenchmarkId::from_parameter(n), &answer, |b, a| {
            b.iter(|| render(black_box(a), &labels))
        });
    }
    g.finish();
}

criterion_group!(benches, tree_build, coordinator_tree, tree_json, svg_render);
criterion_main!(benches);
