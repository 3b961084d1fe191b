//! The coordinator's work on a sampling run at fleet scale: 1,000 agents, one vertex of 10,000
//! subtasks (10 per agent), 20 samples per subtask of 30-frame synthetic stacks (issue 15: the
//! graph ≤ 100 ms after the last answer, must ≤ 250 ms).
//!
//! The answers are real `v1::SampleResponse`s built with the agents' own builder.
//!
//! * `after_last_answer`: what is left once the last answer is in. The first 999 answers are
//!   taken in before the clock starts, exactly as the run takes them in (on their own tasks,
//!   [`absorb_answer`] with the run's [`RunFold`]) while it waits for the others; the
//!   timed part is taking in the last answer, the snapshot and storing it in the cache
//!   ([`land`]), which already holds the vertex's earlier runs, so the history and the memory
//!   bound are in their steady state (older runs' profiles are freed in the timed part too).
//! * `take_in_all_answers`: taking in all 1,000 answers, one after the other on one thread:
//!   the whole CPU cost of the answers, and the bound of the time after the last answer should
//!   every agent answer at the same instant.
//!
//! * `store_encode` / `store_decode`: the run as a replicated coordinator stores it in the
//!   shared database and another replica reads it back ([`stored`], issue 16).
//!
//! Run with `cargo bench -p flamegrid-coordinator --bench fanout` (release).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a bench fails
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use flamegrid_coordinator::fanout::{FanOutOutcome, absorb_answer};
use flamegrid_coordinator::flamegraph::cache::{CacheLimits, GraphCache, GraphKey};
use flamegrid_coordinator::flamegraph::profile::FoldedSubtask;
use flamegrid_coordinator::flamegraph::run::{RunCounters, RunFold, land};
use flamegrid_coordinator::flamegraph::stored;
use flamegrid_model::{Frame, SampleSet, SampleSetBuilder, SampledThread, ThreadState};
use flamegrid_proto::SampleResponseBuilder;
use flamegrid_proto::convert::WireLimits;
use flamegrid_proto::v1;
use std::collections::BTreeSet;
use std::time::Duration;

/// The coordinator's allocator (see its `main.rs`): what allocation costs in the run is what
/// the binary pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: u32 = 1_000;
const SUBTASKS: u32 = 10_000;
const PER_AGENT: u32 = SUBTASKS / AGENTS;
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
    let mut b = SampleResponseBuilder::new(request_id);
    for index in agent * PER_AGENT..(agent + 1) * PER_AGENT {
        b.add_subtask(&format!("{PREFIX}/{index}"), &subtask_set(index));
    }
    b.finish(1, 2)
}

/// The subtasks agent `agent` was asked for.
fn asked(agent: u32) -> BTreeSet<u32> {
    (agent * PER_AGENT..(agent + 1) * PER_AGENT).collect()
}

/// Takes in agent `agent`'s answer as the run does (its names interned in the run's one
/// table, `fold`), into `outcome`.
fn take_in(
    outcome: &mut FanOutOutcome<FoldedSubtask>,
    fold: &RunFold,
    agent: u32,
    resp: &v1::SampleResponse,
) {
    let share = absorb_answer(
        PREFIX,
        format!("http://agent-{agent}"),
        &asked(agent),
        resp,
        WireLimits::with_max_depth(DEPTH + 10),
        fold,
    );
    assert!(share.missing.is_empty(), "{:?}", share.failures);
    outcome.merge(share);
}

fn benches(c: &mut Criterion) {
    let answers: Vec<v1::SampleResponse> = (0..AGENTS).map(|a| answer(a, 1)).collect();
    let (last, first) = answers.split_last().unwrap();
    // Runs pushed down into history are packed on a blocking thread after landing, off this
    // path (`store_encode` is that cost); with no runtime here they would be packed inline,
    // so this cache keeps them decoded, as before packing.
    let cache = GraphCache::new(CacheLimits {
        pack_from_bytes: usize::MAX,
        ..CacheLimits::new(Duration::from_secs(3600), Duration::from_secs(3600))
    });
    let key = GraphKey {
        job_id: "j".repeat(32),
        vertex_id: "v".repeat(32),
        subtask: None,
    };
    let counters = RunCounters::default();
    let mut run_id = 0u64;
    let mut g = c.benchmark_group("fanout");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("after_last_answer/1000_agents_10000_subtasks", |b| {
        b.iter_batched(
            || {
                // While the run waits for its last agent: 999 answers taken in.
                run_id += 1;
                let mut outcome = FanOutOutcome {
                    request_id: run_id,
                    ..Default::default()
                };
                let fold = RunFold::default();
                for (agent, resp) in first.iter().enumerate() {
                    take_in(&mut outcome, &fold, agent as u32, resp);
                }
                (outcome, fold, cache.lookup_with(&key, true).ticket.unwrap())
            },
            |(mut outcome, fold, ticket)| {
                take_in(&mut outcome, &fold, AGENTS - 1, last);
                assert_eq!(outcome.sets.len(), SUBTASKS as usize);
                land(&counters, ticket, outcome, &fold.names, Default::default());
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("take_in_all_answers/1000_agents_10000_subtasks", |b| {
        b.iter(|| {
            let mut outcome = FanOutOutcome::default();
            let fold = RunFold::default();
            for (agent, resp) in answers.iter().enumerate() {
                take_in(&mut outcome, &fold, agent as u32, resp);
            }
            outcome
        })
    });
    // What a replica on a shared database does with the run (issue 16): encodes it to store it,
    // and what every other replica does to serve it: decodes it.
    let snapshot = {
        let mut outcome = FanOutOutcome::default();
        let fold = RunFold::default();
        for (agent, resp) in answers.iter().enumerate() {
            take_in(&mut outcome, &fold, agent as u32, resp);
        }
        let ticket = cache.lookup_with(&key, true).ticket.unwrap();
        land(&counters, ticket, outcome, &fold.names, Default::default())
    };
    let body = stored::encode(&snapshot).unwrap();
    eprintln!(
        "stored run of {} subtasks: {} bytes deflated",
        snapshot.subtasks.len(),
        body.len()
    );
    // Format 1, as stored before format 2: every subtask with its names in full.
    let encode_format_1 = || {
        let subtasks: Vec<_> = snapshot
            .subtasks
            .iter()
            .map(|(i, p)| (*i, p.as_ref()))
            .collect();
        let mut out = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        serde_json::to_writer(&mut out, &(snapshot.start_ms, &subtasks)).unwrap();
        out.finish().unwrap()
    };
    eprintln!(
        "the same run in format 1 (names in full per subtask): {} bytes deflated",
        encode_format_1().len()
    );
    g.bench_function("store_encode_format_1/10000_subtasks", |b| {
        b.iter(encode_format_1)
    });
    g.bench_function("store_encode/10000_subtasks", |b| {
        b.iter(|| stored::encode(&snapshot).unwrap())
    });
    g.bench_function("store_decode/10000_subtasks", |b| {
        b.iter(|| stored::decode(1, &body).unwrap())
    });
    g.finish();
}

criterion_group!(fanout, benches);
criterion_main!(fanout);
