//! Issue 16: one storage trait, two implementations, one test suite. Every case below is a
//! function generic over how a store is opened, run against the embedded SQLite file and
//! against PostgreSQL (a scratch database of its own; those runs are skipped, saying so, only
//! when no test server is configured outside CI). Then what only a shared store does: two
//! registries on one database (as two replicas are) see each other's jobs, cancels, expiries
//! and agents, merge subtask changes without overwriting each other, and write heartbeat times
//! in batches.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/fleet.rs"]
mod fleet;

use flamegrid_coordinator::database::Database;
use flamegrid_coordinator::registry::postgres::PgStore;
use flamegrid_coordinator::registry::store::{JobStore, SqliteStore, Sync};
use flamegrid_coordinator::registry::{
    ExecutionState, Job, JobRetention, JobStatus, Registry, RegistryError,
};
use flamegrid_testkit::postgres::{ScratchDatabase, scratch_database};
use flamegrid_testkit::temp_dir;
use fleet::{beat, job_body, register_agent, run_all, states};
use std::time::Duration;

/// Opens a store on the same place each time it is called (a reopen sees what was written).
type Opener = Box<dyn Fn() -> Box<dyn JobStore>>;

/// Both implementations: (name, opener, what keeps the place alive).
fn stores(tag: &str) -> Vec<(&'static str, Opener, Box<dyn std::any::Any>)> {
    let dir = temp_dir(tag);
    let path = dir.path().to_path_buf();
    let sqlite: Opener =
        Box::new(move || Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn JobStore>);
    let mut all: Vec<(&'static str, Opener, Box<dyn std::any::Any>)> =
        vec![("sqlite", sqlite, Box::new(dir))];
    if let Some(db) = scratch_database(tag) {
        let url = db.url.clone();
        let postgres: Opener = Box::new(move || {
            Box::new(PgStore::new(Database::connect(&url).unwrap())) as Box<dyn JobStore>
        });
        all.push(("postgres", postgres, Box::new(db)));
    }
    all
}

/// A registry on a store from `open`, with a long heartbeat timeout.
fn registry_on(open: &Opener) -> Registry {
    Registry::open_with_store(open(), Duration::from_secs(3600), JobRetention::default()).unwrap()
}

fn stored(open: &Opener, id: &str) -> Option<Job> {
    open()
        .load_all()
        .unwrap()
        .into_iter()
        .find(|j| j.spec.id == id)
}

// ---- the suite, for every store -----------------------------------------------------------

fn jobs_are_stored_in_order_and_survive_a_reopen(open: &Opener) {
    let registry = registry_on(open);
    register_agent(&registry, "a");
    let ids: Vec<String> = (0..3)
        .map(|_| {
            registry
                .register_job(job_body(&["a".into()], &[2]).to_string().as_bytes())
                .unwrap()
        })
        .collect();
    drop(registry);
    let loaded: Vec<String> = open()
        .load_all()
        .unwrap()
        .into_iter()
        .map(|j| j.spec.id)
        .collect();
    assert_eq!(loaded, ids, "every job, in registration order");
    let reopened = registry_on(open);
    assert_eq!(reopened.job(&ids[1]).unwrap().spec.id, ids[1]);
}

fn a_flush_writes_heartbeat_state(open: &Opener) {
    let registry = registry_on(open);
    register_agent(&registry, "a");
    let id = registry
        .register_job(job_body(&["a".into()], &[2]).to_string().as_bytes())
        .unwrap();
    let mut liveness = run_all(&registry, "a");
    assert_eq!(
        states(&stored(open, &id).unwrap()),
        [ExecutionState::Deploying; 2],
        "heartbeats write nothing by themselves"
    );
    liveness[1].alive = false;
    liveness[1].threads = 0;
    registry.heartbeat(beat("a", liveness)).unwrap();
    assert_eq!(registry.flush().unwrap(), 1);
    let in_memory = registry.job(&id).unwrap();
    assert_eq!(
        states(&in_memory),
        [ExecutionState::Running, ExecutionState::Finished]
    );
    assert_eq!(stored(open, &id).unwrap().runtime, in_memory.runtime);
}

fn a_cancel_is_stored_before_it_returns(open: &Opener) {
    let registry = registry_on(open);
    register_agent(&registry, "a");
    let id = registry
        .register_job(job_body(&["a".into()], &[3]).to_string().as_bytes())
        .unwrap();
    registry.cancel_job(&id).unwrap();
    let job = stored(open, &id).unwrap();
    assert_eq!(job.runtime.status, JobStatus::Canceled);
    assert_eq!(states(&job), [ExecutionState::Canceled; 3]);
    assert!(matches!(
        registry.cancel_job("0123456789abcdef0123456789abcdef"),
        Err(RegistryError::JobNotFound(_))
    ));
}

fn deleted_jobs_stay_deleted(open: &Opener) {
    let registry = registry_on(open);
    register_agent(&registry, "a");
    let id = registry
        .register_job(job_body(&["a".into()], &[1]).to_string().as_bytes())
        .unwrap();
    let job = registry.job(&id).unwrap();
    let mut store = open();
    store.delete(std::slice::from_ref(&id)).unwrap();
    // A later runtime write of the deleted job never brings it back.
    store
        .update_runtimes(&[(id.as_str(), &job.runtime)], Sync::Normal)
        .unwrap();
    assert!(stored(open, &id).is_none());
}

fn bad_input_changes_nothing(open: &Opener) {
    let registry = registry_on(open);
    register_agent(&registry, "a");
    let err = registry.register_job(b"{\"name\": 1}").unwrap_err();
    assert!(matches!(err, RegistryError::InvalidJob(_)), "{err}");
    assert!(open().load_all().unwrap().is_empty());
}

/// Runs `case` on every store.
fn each(tag: &str, case: fn(&Opener)) {
    for (name, open, _keep) in stores(tag) {
        eprintln!("{tag}: {name}");
        case(&open);
    }
}

#[test]
fn store_jobs_in_order_across_reopen() {
    each("order", jobs_are_stored_in_order_and_survive_a_reopen);
}

#[test]
fn store_flush() {
    each("flush", a_flush_writes_heartbeat_state);
}

#[test]
fn store_cancel() {
    each("cancel", a_cancel_is_stored_before_it_returns);
}

#[test]
fn store_delete() {
    each("delete", deleted_jobs_stay_deleted);
}

#[test]
fn store_bad_input() {
    each("bad", bad_input_changes_nothing);
}

// ---- a shared store: two replicas on one database -----------------------------------------

/// Two registries on one scratch database, as two replicas are.
fn replicas(tag: &str, timeout: Duration) -> Option<(ScratchDatabase, Registry, Registry)> {
    let db = scratch_database(tag)?;
    let open = || {
        Registry::open_with_store(
            Box::new(PgStore::new(Database::connect(&db.url).unwrap())),
            timeout,
            JobRetention::default(),
        )
        .unwrap()
    };
    let (a, b) = (open(), open());
    Some((db, a, b))
}

#[test]
fn a_job_registered_on_one_replica_is_read_on_the_other_at_once_and_synced() {
    let Some((_db, a, b)) = replicas("readthrough", Duration::from_secs(3600)) else {
        return;
    };
    register_agent(&a, "tm");
    let id = a
        .register_job(job_body(&["tm".into()], &[2]).to_string().as_bytes())
        .unwrap();
    // No sync yet: the look-up reads through.
    assert_eq!(b.job(&id).unwrap().spec, a.job(&id).unwrap().spec);
    let second = a
        .register_job(job_body(&["tm".into()], &[1]).to_string().as_bytes())
        .unwrap();
    assert_eq!(
        b.sync().unwrap().new_jobs,
        1,
        "the second job comes by the feed"
    );
    assert_eq!(b.jobs().len(), 2);
    // The agent registered on A is known to B.
    assert!(b.taskmanager("tm").is_ok());

    // Cancel on B: A sees it after its sync.
    b.cancel_job(&second).unwrap();
    a.sync().unwrap();
    assert_eq!(a.job(&second).unwrap().runtime.status, JobStatus::Canceled);
    // An unknown id is still 404 after reading through.
    assert!(matches!(
        b.job("0123456789abcdef0123456789abcdef"),
        Err(RegistryError::JobNotFound(_))
    ));
}

#[test]
fn subtask_changes_from_two_replicas_never_overwrite_each_other() {
    let Some((_db, a, b)) = replicas("merge", Duration::from_secs(3600)) else {
        return;
    };
    register_agent(&a, "left");
    register_agent(&a, "right");
    let id = a
        .register_job(
            job_body(&["left".into(), "right".into()], &[4])
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    b.sync().unwrap();
    // Agent "left" heartbeats to A, agent "right" to B; both flush, then both sync.
    run_all(&a, "left");
    run_all(&b, "right");
    a.flush().unwrap();
    b.flush().unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    let expected = [ExecutionState::Running; 4];
    for (name, replica) in [("a", &a), ("b", &b)] {
        assert_eq!(
            states(&replica.job(&id).unwrap()),
            expected,
            "replica {name}"
        );
    }
    let open: Opener = {
        let url = _db.url.clone();
        Box::new(move || {
            Box::new(PgStore::new(Database::connect(&url).unwrap())) as Box<dyn JobStore>
        })
    };
    let row = stored(&open, &id).unwrap();
    assert_eq!(states(&row), expected, "the row has both replicas' changes");
    assert_eq!(row.runtime.status, JobStatus::Running);
}

#[test]
fn a_pull_keeps_the_subtask_changes_not_flushed_yet() {
    let Some((_db, a, b)) = replicas("keep", Duration::from_secs(3600)) else {
        return;
    };
    register_agent(&a, "tm");
    let id = a
        .register_job(job_body(&["tm".into()], &[2]).to_string().as_bytes())
        .unwrap();
    b.sync().unwrap();
    // B sees the agent's heartbeats (not flushed yet).
    let mut liveness = run_all(&b, "tm");
    liveness[1].threads = 9;
    b.heartbeat(beat("tm", liveness)).unwrap();
    assert_eq!(b.dirty_jobs(), 1);
    let job_on_b = b.job(&id).unwrap();
    // A sees other reports of the same subtasks (threads 1) and flushes them.
    run_all(&a, "tm");
    a.flush().unwrap();
    b.sync().unwrap();
    let after = b.job(&id).unwrap();
    assert_eq!(
        after.runtime.subtasks[0][1], job_on_b.runtime.subtasks[0][1],
        "the change not flushed yet is kept"
    );
    assert_eq!(after.runtime.subtasks[0][1].threads, 9);
}

#[test]
fn an_expired_job_is_dropped_by_every_replica() {
    let Some(db) = scratch_database("expiry") else {
        return;
    };
    let open = |retention| {
        Registry::open_with_store(
            Box::new(PgStore::new(Database::connect(&db.url).unwrap())),
            Duration::from_secs(3600),
            retention,
        )
        .unwrap()
    };
    let a = open(JobRetention {
        max_age: Duration::from_secs(3600),
        max_count: 0,
    });
    let b = open(JobRetention::default());
    register_agent(&a, "tm");
    let id = a
        .register_job(job_body(&["tm".into()], &[1]).to_string().as_bytes())
        .unwrap();
    b.sync().unwrap();
    a.cancel_job(&id).unwrap();
    assert_eq!(a.expire_jobs().unwrap(), vec![id.clone()]);
    assert_eq!(b.sync().unwrap().deleted_jobs, 1);
    assert!(matches!(b.job(&id), Err(RegistryError::JobNotFound(_))));
}

#[test]
fn replicas_vouch_for_their_agents_instead_of_writing_a_row_per_heartbeat() {
    // Timeout 4 s: a replica vouches for an agent while its last heartbeat there is within 1 s.
    let timeout = Duration::from_secs(4);
    let Some((db, a, b)) = replicas("beats", timeout) else {
        return;
    };
    const AGENTS: usize = 50;
    const MOVED: usize = 10;
    let name = |n: usize| format!("agent-{n}");
    for n in 0..AGENTS {
        register_agent(&a, &name(n));
    }
    b.sync().unwrap();
    assert_eq!(b.taskmanagers().len(), AGENTS);
    // Heartbeats for longer than the timeout, to A for the agents below `to_b_from` and to B
    // for the others; both replicas flush and sync all along, as their flushers do.
    let heartbeat_for = |period: Duration, to_b_from: usize| {
        let started = std::time::Instant::now();
        let mut heartbeats = 0u64;
        while started.elapsed() < period {
            for n in 0..AGENTS {
                let to = if n >= to_b_from { &b } else { &a };
                to.heartbeat(beat(&name(n), Vec::new())).unwrap();
                heartbeats += 1;
            }
            for r in [&a, &b] {
                r.flush().unwrap();
                r.sync().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        heartbeats
    };
    let all_alive = |r: &Registry, which: &str| {
        assert!(
            r.expire().unwrap().is_empty(),
            "{which} declared agents lost"
        );
        assert_eq!(r.taskmanagers().len(), AGENTS, "{which}");
    };

    // 1. Every agent heartbeats to A, where it registered: A vouches for them with its own row,
    // and writes no agent row at all, however many heartbeats.
    let heartbeats = heartbeat_for(timeout + Duration::from_secs(1), AGENTS);
    all_alive(&b, "B, with every agent heartbeating to A");
    assert_eq!(
        a.store_writes().taskmanager_rows,
        0,
        "{heartbeats} heartbeats to the replica vouching for them wrote agent rows"
    );
    // A replica started now loads them alive too: their registrations are older than the
    // timeout, but A vouches for them.
    let c = Registry::open_with_store(
        Box::new(PgStore::new(Database::connect(&db.url).unwrap())),
        timeout,
        JobRetention::default(),
    )
    .unwrap();
    assert_eq!(c.taskmanagers().len(), AGENTS, "a new replica loads them");

    // 2. Some agents move to B: B claims them (one row each), and A keeps them alive from B's
    // row; A's release of them writes nothing (they are B's now).
    let moved_heartbeats = heartbeat_for(timeout + Duration::from_secs(1), AGENTS - MOVED);
    eprintln!(
        "agent rows: 0 for {heartbeats} heartbeats to A, then {} for {moved_heartbeats} with \
         {MOVED} agents moved to B",
        b.store_writes().taskmanager_rows
    );
    all_alive(&a, "A, with some agents moved to B");
    all_alive(&b, "B, with some agents moved to it");
    assert_eq!(b.store_writes().taskmanager_rows, MOVED as u64);
    assert_eq!(a.store_writes().taskmanager_rows, 0);

    // 3. Every agent stops: each replica releases its own with the real last heartbeat time,
    // and both replicas declare all of them lost once the timeout has passed.
    flamegrid_testkit::wait_for("every silent agent declared lost on A and B", || {
        for r in [&a, &b] {
            r.flush().unwrap();
            r.sync().unwrap();
            r.expire().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        (a.taskmanagers().is_empty() && b.taskmanagers().is_empty()).then_some(())
    });
    assert_eq!(
        (
            a.store_writes().taskmanager_rows,
            b.store_writes().taskmanager_rows
        ),
        ((AGENTS - MOVED) as u64, MOVED as u64 * 2),
        "one release per agent by the replica vouching for it"
    );
}
