//! Flame graph runs shared by replicas through a real PostgreSQL database (issue 16; see
//! `flamegraph/shared.rs`): several flame graph services, each with a connection of its own
//! (so a replica id of its own) to one scratch database, asked for the same vertex of a real
//! workload sampled by a real `flamegrid-agent` over gRPC on loopback. Runs are counted at the
//! agent (its `/metrics`, `flamegrid_agent_sampling_runs_total{outcome="ok"}`).
//!
//! Skipped (with a line saying so) when `FLAMEGRID_TEST_POSTGRES_URL` is unset outside CI. Nothing
//! asserts on time: waits are polls with a generous hang guard.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_coordinator::database::Database;
use flamegrid_coordinator::fanout::AgentAuth;
use flamegrid_coordinator::flamegraph::cache::{CacheLimits, GraphKey};
use flamegrid_coordinator::flamegraph::shared::SharedRuns;
use flamegrid_coordinator::flamegraph::{
    FlameGraphService, FlameGraphSettings, GraphAnswer, profile::Snapshot,
};
use flamegrid_coordinator::sampling::{
    SamplingParams, SubtaskSampling, SubtaskTarget, VertexSampling,
};
use flamegrid_model::GraphType;
use flamegrid_proto::v1::{ThreadSelector, thread_selector::Process};
use flamegrid_testkit::postgres::{psql, scratch_database};
use std::sync::Arc;
use std::time::Duration;
use support::{TestCoordinator, poll, spinners_and_sleeper};

/// A real agent sampling for the tests, with the coordinator it registers with.
struct Agent {
    process: support::MetricsAgent,
    _registry: TestCoordinator,
}

/// A real `flamegrid-agent run` on loopback with `/metrics`, registered with a coordinator of
/// its own (which plays no other part: the services under test are asked directly).
async fn agent() -> Agent {
    let registry = TestCoordinator::start(&[]).await;
    let process = support::spawn_metrics_agent(&registry.rpc, "replicated-agent");
    poll("the agent to register", || async {
        (registry.get("/taskmanagers/replicated-agent").await.0 == 200).then_some(())
    })
    .await;
    Agent {
        process,
        _registry: registry,
    }
}

impl Agent {
    /// Sampling runs the agent served (`Sample` calls that delivered).
    async fn runs(&self) -> u64 {
        self.process.ok_runs().await
    }
}

/// The vertex of the two spinners of `pid` (subtask i = thread `spin-i`) on `agent`.
fn vertex(agent: &Agent, pid: u32) -> VertexSampling {
    let subtasks = (0..2)
        .map(|i| SubtaskSampling {
            index: i,
            terminal: false,
            target: Some(SubtaskTarget {
                subtask_index: i,
                taskmanager_id: "replicated-agent".into(),
                agent_address: agent.process.address.clone(),
                selector: ThreadSelector {
                    process: Some(Process::Pid(pid)),
                    thread_name: format!("spin-{i}"),
                    ..Default::default()
                },
                confirmed: true,
            }),
            absent: None,
        })
        .collect();
    VertexSampling {
        job_name: "replicated".into(),
        vertex_name: "Source: spin".into(),
        parallelism: 2,
        vertex_terminal: false,
        subtasks,
    }
}

fn key() -> GraphKey {
    GraphKey {
        job_id: "1".repeat(32),
        vertex_id: "2".repeat(32),
        subtask: None,
    }
}

/// Short runs (20 × 10 ms), graphs fresh for a minute: within a test, one run per key.
fn settings() -> FlameGraphSettings {
    FlameGraphSettings {
        enabled: true,
        params: SamplingParams {
            num_samples: 20,
            delay_ms: 10,
            max_depth: 100,
        },
        // Every run pushed down into history packed, however small: runs landed from the
        // database (`land_stored`) follow the same rule as a replica's own.
        limits: CacheLimits {
            pack_from_bytes: 0,
            ..CacheLimits::new(Duration::from_secs(60), Duration::from_secs(600))
        },
        rpc_grace: Duration::from_secs(5),
    }
}

/// A replica: its own connection (and so its own replica id) to the database at `url`.
fn replica(url: &str, lease: Duration) -> FlameGraphService {
    replica_with(url, lease, settings())
}

/// [`replica`] with other `settings`.
fn replica_with(url: &str, lease: Duration, settings: FlameGraphSettings) -> FlameGraphService {
    let db = Database::connect(url).unwrap();
    FlameGraphService::replicated(settings, AgentAuth::default(), SharedRuns::new(db, lease))
}

/// Polls `replica` (as the dashboard does) until it serves a graph.
async fn graph_of(replica: &FlameGraphService, v: &VertexSampling, k: &GraphKey) -> Arc<Snapshot> {
    poll("a graph", || async {
        match replica.answer(k, v) {
            GraphAnswer::Ready(s) => Some(s),
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_polled_at_once_cause_one_run_and_serve_the_same_graph_which_survives_a_restart() {
    let Some(db) = scratch_database("replicated_one_run") else {
        return;
    };
    let workload = spinners_and_sleeper();
    let agent = agent().await;
    let v = vertex(&agent, workload.pid());
    let lease = Duration::from_secs(10);
    let replicas: Vec<FlameGraphService> = (0..3).map(|_| replica(&db.url, lease)).collect();
    assert_eq!(agent.runs().await, 0);

    // Every replica polled at once, over and over, until each serves a graph.
    let graphs = poll("every replica to serve a graph", || async {
        let answers: Vec<GraphAnswer> = replicas.iter().map(|r| r.answer(&key(), &v)).collect();
        answers
            .iter()
            .map(|a| a.graph().cloned())
            .collect::<Option<Vec<_>>>()
    })
    .await;
    assert_eq!(
        agent.runs().await,
        1,
        "one run at the agent for all replicas"
    );
    let started: u64 = replicas.iter().map(|r| r.runs_started()).sum();
    assert_eq!(started, 1, "one replica sampled");
    for g in &graphs[1..] {
        assert_eq!(
            g.end_ms, graphs[0].end_ms,
            "the same endTimestamp everywhere"
        );
        assert_eq!(g.run_id, graphs[0].run_id);
        assert_eq!(g.tree(GraphType::Full), graphs[0].tree(GraphType::Full));
    }
    let samples = graphs[0].sample_count(GraphType::Full);
    assert!(samples > 0, "the spinners were sampled");
    assert!(
        graphs[0]
            .folded(GraphType::Full)
            .contains("spin_outer;spin_middle;spin_inner"),
        "{}",
        graphs[0].folded(GraphType::Full)
    );
    // A subtask is served by the vertex run on every replica, without a run of its own.
    for r in &replicas {
        let sub = graph_of(r, &v, &key().subtask(1)).await;
        assert_eq!(sub.end_ms, graphs[0].end_ms);
    }
    assert_eq!(agent.runs().await, 1);
    let stored = psql(&db.url, "SELECT count(*) FROM flamegraph_runs");
    assert_eq!(stored, "1", "one stored run");
    let leases = psql(&db.url, "SELECT count(*) FROM flamegraph_leases");
    assert_eq!(leases, "0", "the holder dropped its lease");

    // A replica started afresh (a restart) has lost nothing: history, `?at=`, the latest graph,
    // for the vertex and for a subtask, without sampling again.
    drop(replicas);
    let restarted = replica(&db.url, lease);
    let history = restarted.history(&key());
    assert_eq!(
        history.iter().map(|s| s.end_ms).collect::<Vec<_>>(),
        [graphs[0].end_ms]
    );
    let kept = restarted.kept_run(&key(), graphs[0].end_ms).unwrap();
    assert_eq!(kept.tree(GraphType::Full), graphs[0].tree(GraphType::Full));
    let sub = restarted.history(&key().subtask(0));
    assert_eq!(sub.len(), 1, "the vertex run serves its subtasks");
    let sub = restarted
        .kept_run(&key().subtask(0), sub[0].end_ms)
        .unwrap();
    assert_eq!(sub.subtasks.keys().copied().collect::<Vec<_>>(), [0]);
    let latest = graph_of(&restarted, &v, &key()).await;
    assert_eq!(latest.end_ms, graphs[0].end_ms);
    assert_eq!(restarted.runs_started(), 0);
    assert_eq!(agent.runs().await, 1, "still one run at the agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waits_for_the_lease_holder_and_runs_once_its_lease_expires() {
    let Some(db) = scratch_database("replicated_lease") else {
        return;
    };
    let workload = spinners_and_sleeper();
    let agent = agent().await;
    let v = vertex(&agent, workload.pid());
    // A replica takes the key's lease and dies before it stores anything.
    let lease = Duration::from_secs(3600);
    {
        let dead = SharedRuns::new(Database::connect(&db.url).unwrap(), lease);
        assert!(dead.try_lease(&key()).await.unwrap().is_some());
        let other = SharedRuns::new(Database::connect(&db.url).unwrap(), lease);
        assert!(
            other.try_lease(&key()).await.unwrap().is_none(),
            "a lease is held by one replica"
        );
    }
    let survivor = replica(&db.url, Duration::from_secs(10));
    assert_eq!(survivor.answer(&key(), &v).end_timestamp(), -3);
    // While the dead replica's lease holds, the survivor polls the database and does not sample.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            matches!(survivor.answer(&key(), &v), GraphAnswer::Waiting),
            "no graph without a run"
        );
        assert!(survivor.sampling(&key()), "the key shows as sampling");
    }
    assert_eq!(survivor.runs_started(), 0);
    assert_eq!(
        agent.runs().await,
        0,
        "no run while another replica holds the lease"
    );
    // The lease expires (as a dead holder's does): the survivor takes it and runs.
    psql(&db.url, "UPDATE flamegraph_leases SET expires_ms = 0");
    let g = graph_of(&survivor, &v, &key()).await;
    assert!(g.sample_count(GraphType::Full) > 0);
    assert_eq!(survivor.runs_started(), 1);
    assert_eq!(agent.runs().await, 1);
    let holder = psql(&db.url, "SELECT count(*) FROM flamegraph_leases");
    assert_eq!(holder, "0", "released once stored");
}

/// A replica takes its own lease again for its next run while the previous run is still being
/// stored (so that run need not wait for the store), and what the earlier run then drops is
/// only its own taking, never the new one: other replicas stay out until the new run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_its_own_lease_again_and_an_earlier_run_cannot_drop_the_new_one() {
    let Some(db) = scratch_database("replicated_retake") else {
        return;
    };
    let lease = Duration::from_secs(3600);
    let a = SharedRuns::new(Database::connect(&db.url).unwrap(), lease);
    let b = SharedRuns::new(Database::connect(&db.url).unwrap(), lease);
    let first = a.try_lease(&key()).await.unwrap().expect("nobody holds it");
    let second = a
        .try_lease(&key())
        .await
        .unwrap()
        .expect("its holder takes it again");
    assert_ne!(first, second, "each taking is told apart");
    assert!(b.try_lease(&key()).await.unwrap().is_none());
    // The first run ends (released, as a run that delivered nothing does; a stored run drops
    // its lease the same way): the second still holds.
    a.release(&first).await.unwrap();
    assert!(
        b.try_lease(&key()).await.unwrap().is_none(),
        "an earlier run dropped its holder's newer lease"
    );
    a.release(&second).await.unwrap();
    assert!(b.try_lease(&key()).await.unwrap().is_some());
    assert!(
        a.try_lease(&key()).await.unwrap().is_none(),
        "B holds it now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_each_others_new_runs_and_history_is_bounded() {
    let Some(db) = scratch_database("replicated_follow") else {
        return;
    };
    let workload = spinners_and_sleeper();
    let agent = agent().await;
    let v = vertex(&agent, workload.pid());
    let lease = Duration::from_secs(10);
    let (a, b) = (replica(&db.url, lease), replica(&db.url, lease));
    let first = graph_of(&a, &v, &key()).await;
    assert_eq!(graph_of(&b, &v, &key()).await.end_ms, first.end_ms);
    // History of 10: twelve refreshes on A; B follows each without being asked to refresh.
    for round in 0..12 {
        let before = a.answer(&key(), &v).end_timestamp();
        let _ = a.answer_with(&key(), &v, true);
        let newer = poll("the refresh to land on A", || async {
            let end = a.answer(&key(), &v).end_timestamp();
            (end > before).then_some(end)
        })
        .await;
        poll("B to follow A's new run", || async {
            (b.answer(&key(), &v).end_timestamp() == newer).then_some(())
        })
        .await;
        assert_eq!(b.runs_started(), 0, "round {round}: B never sampled");
    }
    assert_eq!(a.runs_started(), 13);
    assert_eq!(agent.runs().await, 13);
    let kept = psql(
        &db.url,
        "SELECT count(*) FROM flamegraph_runs WHERE key NOT LIKE '%/%/%'",
    );
    assert_eq!(kept, "10", "the last --flamegraph-history runs are kept");
    let history = b.history(&key());
    assert_eq!(history.len(), 10);
    // B's older runs, landed from the database, are kept packed, and read back on demand.
    for _ in 0..400 {
        if b.cache().packing() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let history = b.history(&key());
    assert!(!history[0].packed && history[1..].iter().all(|r| r.packed));
    let oldest = b.kept_run(&key(), history[9].end_ms).unwrap();
    assert_eq!(oldest.end_ms, history[9].end_ms);
    assert_eq!(
        oldest.sample_count(GraphType::Full),
        history[9].sample_count(GraphType::Full)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_refresh_is_not_answered_by_a_run_that_started_before_it() {
    let Some(db) = scratch_database("replicated_forced") else {
        return;
    };
    let workload = spinners_and_sleeper();
    let agent = agent().await;
    let v = vertex(&agent, workload.pid());
    let lease = Duration::from_secs(30);
    // Runs of about 3 s (60 × 50 ms), so that one is still running when the refresh is asked;
    // graphs fresh for an hour, so that only the forced refresh can start a second run.
    let mut slow = settings();
    slow.params.num_samples = 60;
    slow.params.delay_ms = 50;
    slow.limits = CacheLimits::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let (a, b) = (
        replica_with(&db.url, lease, slow),
        replica_with(&db.url, lease, slow),
    );
    // A starts a run and holds its lease.
    let _ = a.answer(&key(), &v);
    poll("A to start its run", || async {
        (a.runs_started() == 1).then_some(())
    })
    .await;
    // B is asked for a refreshed graph while A's run is under way: A's run, stored after this
    // request, started before it, so B must sample anew once A's lease is gone.
    let asked = flamegrid_model::clock::now_ms();
    let _ = b.answer_with(&key(), &v, true);
    let refreshed = poll(
        "B to serve a run started after the refresh was asked",
        || async {
            b.answer(&key(), &v)
                .graph()
                .filter(|g| g.start_ms >= asked)
                .cloned()
        },
    )
    .await;
    assert_eq!(b.runs_started(), 1, "B sampled for the refresh");
    // A's run reached the agent too, unless it failed as a whole (on a loaded machine its 3 s
    // run can miss the deadline): then it delivered nothing, was not stored, and the agent
    // counts B's run alone.
    let a_delivered = a
        .history(&key())
        .iter()
        .any(|s| s.start_ms < asked && s.subtasks > 0);
    assert_eq!(
        agent.runs().await,
        1 + u64::from(a_delivered),
        "B's run, and A's if it delivered ({a_delivered})"
    );
    assert!(refreshed.sample_count(GraphType::Full) > 0);
}
