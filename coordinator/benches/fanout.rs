//! The coordinator's work on a sampling run *after the last agent has answered*, at fleet scale:
//! 1,000 agents, one vertex of 10,000 subtasks (10 per agent), 20 samples per subtask of
//! 30-frame synthetic stacks (issue 15: goal ≤ 100 ms, must ≤ 250 ms).
//!
//! The answers are real `v1::SampleResponse`s built with the agents' own builder. The first
//! 999 answers are taken in before the clock starts, exactly as the run takes them in while it
//! waits for the others; the timed part is what is left once the last one is in: taking in the
//! last answer, the snapshot, and storing it in the cache (which already holds the vertex's
//! earlier runs, so the history and the memory bound are in their steady state).
//!
//! `take_in_all_answers`: converting and folding all 1,000 answers on one thread, the whole CPU
//! cost of the answers.
//!
//! Run with `cargo bench -p flamegrid-coordinator --bench fanout` (release).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a bench fails
use criterion::{Criterion, criterion_group, criterion_main};
use flamegrid_coordinator::flamegraph::cache::{CacheLimits, GraphCache, GraphKey};
use flamegrid_coordinator::flamegraph::profile::{Snapshot, SubtaskProfile};
use flamegrid_model::{Frame, SampleSet, SampleSetBuilder, SampledThread, ThreadState};
use flamegrid_proto::SampleResponseBuilder;
use flamegrid_proto::convert::{AnswerBudget, WireLimits, subtask_sample_set_within};
use flamegrid_proto::v1;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const AGENTS: u32 = 1_000;
const SUBTASKS: u32 = 10_000;
const SAMPLES: u32 = 20;
const DEPTH: u32 = 30;
const PREFIX: &str = "jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj/vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

/// Subtask `index`'s samples: one thread, `SAMPLES` samples of `DEPTH` frames: a 25-frame base
/// shared by an eighth of the subtasks and a 5-frame leaf drawn from 500 variants, a fifth of
/// the samples off CPU.
fn subtask_set(index: u32) -> SampleSet {
    let thread = SampledThread {
        pid: 1000 + index / 10,
        tid: 20_000 + index,
        name: format!("worker-{index}"),
    };
    let mut b = SampleSetBuilder::new();
    for s in 0..SAMPLES {
        let leaf = (index * 7 + s * 17) % 500;
        let stack = (0..DEPTH - 5)
            .map(|d| Frame::named(format!("base_{}_{d}", index % 8)))
            .chain((0..5).map(|d| Frame::named(format!("leaf_{leaf}_{d}"))));
        let state = if s % 5 == 0 {
            ThreadState::Waiting
        } else {
            ThreadState::Runnable
        };
        b.push(&thread, i64::from(s), state, stack, false);
    }
    b.finish()
}

/// Agent `agent`'s answer to request `request_id`: its ten subtasks.
fn answer(agent: u32, request_id: u64) -> v1::SampleResponse {
    let per_agent = SUBTASKS / AGENTS;
    let mut b = SampleResponseBuilder::new(request_id);
    for index in agent * per_agent..(agent + 1) * per_agent {
        b.add_subtask(&format!("{PREFIX}/{index}"), &subtask_set(index));
    }
    b.finish(1, 2)
}

/// One answer's subtasks converted as the run converts them.
fn convert(resp: &v1::SampleResponse) -> Vec<(u32, SampleSet)> {
    let mut budget = AnswerBudget::new(WireLimits::with_max_depth(DEPTH + 10));
    resp.subtasks
        .iter()
        .map(|sub| {
            let index = sub.subtask_key.rsplit('/').next().unwrap().parse().unwrap();
            (
                index,
                subtask_sample_set_within(resp, sub, &mut budget).unwrap(),
            )
        })
        .collect()
}

fn after_last_answer(c: &mut Criterion) {
    let answers: Vec<v1::SampleResponse> = (0..AGENTS).map(|a| answer(a, 1)).collect();
    let (last, first) = answers.split_last().unwrap();
    let taken_in: Vec<(u32, SampleSet)> = first.iter().flat_map(convert).collect();
    let cache = GraphCache::new(CacheLimits::new(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let key = GraphKey {
        job_id: "j".repeat(32),
        vertex_id: "v".repeat(32),
        subtask: None,
    };
    let mut run_id = 0u64;
    let mut g = c.benchmark_group("fanout");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("after_last_answer/1000_agents_10000_subtasks", |b| {
        b.iter(|| {
            run_id += 1;
            let last_sets = convert(last);
            let subtasks: BTreeMap<u32, Arc<SubtaskProfile>> = taken_in
                .iter()
                .chain(&last_sets)
                .map(|(i, set)| (*i, Arc::new(SubtaskProfile::from_set(set))))
                .collect();
            assert_eq!(subtasks.len(), SUBTASKS as usize);
            let snapshot = Snapshot {
                run_id,
                start_ms: 1,
                end_ms: 2,
                subtasks,
                missing: Default::default(),
            };
            let ticket = cache.lookup_with(&key, true).ticket.unwrap();
            ticket.complete(snapshot);
        })
    });
    g.bench_function("take_in_all_answers/1000_agents_10000_subtasks", |b| {
        b.iter(|| {
            answers
                .iter()
                .flat_map(convert)
                .map(|(i, set)| (i, Arc::new(SubtaskProfile::from_set(&set))))
                .collect::<BTreeMap<u32, Arc<SubtaskProfile>>>()
        })
    });
    g.finish();
}

criterion_group!(benches, after_last_answer);
criterion_main!(benches);
