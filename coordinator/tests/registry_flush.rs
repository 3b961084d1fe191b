//! Issue 15, heartbeats that cost microseconds: the state heartbeats observe is kept in memory
//! and written in batches by the flusher: on disk after a flush and across a reopen, written
//! while heartbeats go on, and retried without loss when the disk refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/rest.rs"]
mod support;

use flamegrid_coordinator::registry::store::{JobStore, SqliteStore};
use flamegrid_coordinator::registry::{ExecutionState, Job, Registry, flusher};
use flamegrid_proto::v1;
use fleet::{beat, job_body, register_agent, run_all, states};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

/// What the store holds for `job_id` right now, read through a connection of its own.
fn stored(dir: &Path, job_id: &str) -> Job {
    SqliteStore::open(dir)
        .unwrap()
        .load_all()
        .unwrap()
        .into_iter()
        .find(|j| j.spec.id == job_id)
        .expect("the job is stored")
}

#[test]
fn a_heartbeat_change_reaches_the_store_at_the_flush_and_survives_a_reopen() {
    let dir = temp_dir("flush");
    let registry = Registry::open(dir.path(), Duration::from_secs(3600)).unwrap();
    register_agent(&registry, "a");
    let job_id = registry
        .register_job(job_body(&["a".into()], &[2]).to_string().as_bytes())
        .unwrap();
    let mut liveness = run_all(&registry, "a");
    liveness[1].alive = false;
    liveness[1].threads = 0;
    liveness[1].failure = v1::SubtaskFailure::NoMatchingThread as i32;
    registry.heartbeat(beat("a", liveness)).unwrap();
    let in_memory = registry.job(&job_id).unwrap();
    assert_eq!(
        states(&in_memory),
        [ExecutionState::Running, ExecutionState::Finished]
    );

    // Heartbeats wrote nothing: the store still has the job as POST /jobs stored it.
    assert_eq!(registry.dirty_jobs(), 1);
    assert_eq!(
        states(&stored(dir.path(), &job_id)),
        [ExecutionState::Deploying, ExecutionState::Deploying],
        "heartbeat state is written by the flush, not by every heartbeat"
    );

    assert_eq!(registry.flush().unwrap(), 1, "one job written");
    assert_eq!(registry.dirty_jobs(), 0);
    assert_eq!(registry.flush().unwrap(), 0, "nothing left to write");
    assert_eq!(stored(dir.path(), &job_id).runtime, in_memory.runtime);

    drop(registry);
    let reopened = Registry::open(dir.path(), Duration::from_secs(3600)).unwrap();
    let job = reopened.job(&job_id).unwrap();
    assert_eq!(job.runtime, in_memory.runtime, "the whole runtime survives");
    assert_eq!(job.runtime.subtasks[0][0].pid, 1001);
    assert!(job.runtime.subtasks[0][1].absent.is_some());
}

#[test]
fn dropping_the_registry_writes_what_is_still_dirty() {
    let dir = temp_dir("drop");
    let registry = Registry::open(dir.path(), Duration::from_secs(3600)).unwrap();
    register_agent(&registry, "a");
    let job_id = registry
        .register_job(job_body(&["a".into()], &[3]).to_string().as_bytes())
        .unwrap();
    run_all(&registry, "a");
    let in_memory = registry.job(&job_id).unwrap();
    assert_eq!(registry.dirty_jobs(), 1);
    drop(registry);
    assert_eq!(stored(dir.path(), &job_id).runtime, in_memory.runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flusher_writes_while_heartbeats_keep_going() {
    const AGENTS: usize = 50;
    let dir = temp_dir("flusher");
    let registry = Arc::new(Registry::open(dir.path(), Duration::from_secs(3600)).unwrap());
    let agents: Vec<String> = (0..AGENTS).map(|a| format!("agent-{a}")).collect();
    for a in &agents {
        register_agent(&registry, a);
    }
    let job_id = registry
        .register_job(job_body(&agents, &[500, 500]).to_string().as_bytes())
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let flushing = tokio::spawn(flusher::run(registry.clone(), stopped));

    // Heartbeats go on, each changing one subtask's thread count, until the store (read
    // through a connection of its own) has caught up with a change made after they started.
    let beating = Arc::new(AtomicBool::new(true));
    let beats = Arc::new(AtomicUsize::new(0));
    let heartbeats = {
        let (registry, agents, beating, beats) = (
            registry.clone(),
            agents.clone(),
            beating.clone(),
            beats.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut reports: Vec<Vec<v1::SubtaskLiveness>> =
                agents.iter().map(|a| run_all(&registry, a)).collect();
            let mut turn = 0usize;
            while beating.load(Ordering::SeqCst) {
                let a = turn % AGENTS;
                let report = &mut reports[a][turn % 20];
                report.threads = report.threads % 7 + 1;
                registry
                    .heartbeat(beat(&agents[a], reports[a].clone()))
                    .unwrap();
                turn += 1;
                beats.store(turn, Ordering::SeqCst);
                if turn.is_multiple_of(64) {
                    std::thread::yield_now();
                }
            }
            turn
        })
    };
    poll("the flusher to store a state heartbeats made", || async {
        let done = beats.load(Ordering::SeqCst);
        (done > 200 && {
            let job = stored(dir.path(), &job_id);
            job.runtime.subtasks.iter().flatten().any(|s| s.threads > 1)
        })
        .then_some(())
    })
    .await;
    beating.store(false, Ordering::SeqCst);
    let total = heartbeats.await.unwrap();
    assert!(total > 200, "{total} heartbeats");

    // Stopping flushes once more: the store then equals memory.
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), flushing)
        .await
        .expect("the flusher stops")
        .unwrap();
    assert_eq!(registry.dirty_jobs(), 0);
    assert_eq!(
        stored(dir.path(), &job_id).runtime,
        registry.job(&job_id).unwrap().runtime
    );
}

/// The disk refuses a flush for real: another connection holds SQLite's write lock, so the
/// flush waits out the busy timeout and fails. Heartbeats are answered meanwhile (the flush
/// holds no lock they need), the state stays in memory and dirty, and the next flush writes it.
#[test]
fn a_failed_flush_keeps_the_state_in_memory_and_the_next_one_writes_it() {
    let dir = temp_dir("refused");
    let registry = Arc::new(Registry::open(dir.path(), Duration::from_secs(3600)).unwrap());
    register_agent(&registry, "a");
    let job_id = registry
        .register_job(job_body(&["a".into()], &[4]).to_string().as_bytes())
        .unwrap();
    let mut liveness = run_all(&registry, "a");
    registry.flush().unwrap();

    let blocker = rusqlite::Connection::open(dir.path().join("registry.sqlite3")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    liveness[2].threads = 5;
    registry.heartbeat(beat("a", liveness.clone())).unwrap();
    let beats = Arc::new(AtomicUsize::new(0));
    let flushing = {
        let (registry, beats) = (registry.clone(), beats.clone());
        std::thread::spawn(move || {
            let result = registry.flush();
            (result, beats.load(Ordering::SeqCst))
        })
    };
    // Wait until the flush has taken its snapshot (it then waits for SQLite's lock), and beat
    // meanwhile.
    while registry.dirty_jobs() != 0 && !flushing.is_finished() {
        std::thread::yield_now();
    }
    for n in 1..=20 {
        liveness[3].threads = n;
        registry.heartbeat(beat("a", liveness.clone())).unwrap();
        beats.store(n as usize, Ordering::SeqCst);
    }
    let (result, beats_before_it_failed) = flushing.join().unwrap();
    let err = result.expect_err("the write lock is held elsewhere");
    assert!(err.to_string().contains("registry storage"), "{err}");
    assert_eq!(
        beats_before_it_failed, 20,
        "heartbeats are answered while a flush waits for the disk"
    );
    // Nothing lost: memory has every change, the job is dirty again, the store is behind.
    let in_memory = registry.job(&job_id).unwrap();
    assert_eq!(
        (
            in_memory.runtime.subtasks[0][2].threads,
            in_memory.runtime.subtasks[0][3].threads
        ),
        (5, 20)
    );
    assert_eq!(registry.dirty_jobs(), 1);
    blocker.execute_batch("ROLLBACK").unwrap();
    let behind = stored(dir.path(), &job_id);
    assert_eq!(behind.runtime.subtasks[0][2].threads, 1);

    assert_eq!(registry.flush().unwrap(), 1, "retried");
    assert_eq!(stored(dir.path(), &job_id).runtime, in_memory.runtime);
}
