//! Issue 16, the registry side: two real `flamegrid-coordinator` processes on one PostgreSQL
//! database (each with its own `--data-dir` and ports) answer alike. A job POSTed on one is read
//! on the other at once (job, vertex details) and its cancel on the other is seen by the first;
//! an agent registered with one is listed by both and not declared lost by the one it does not
//! heartbeat to; it may move to the other without registering again; a replica killed with
//! SIGKILL and started again has lost nothing. Skipped (saying so) only when no PostgreSQL test
//! server is configured outside CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_testkit::postgres::{psql, scratch_database};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

const TM: &str = "agent-r";
/// Long enough that a replica sees the heartbeat times the other writes (a quarter of it, plus
/// two flush intervals) well within it.
const TIMEOUT_S: &str = "4";

/// One replica: the real binary on port 0 with `--database-url` (and a short heartbeat timeout).
fn spawn_replica(data_dir: &Path, database_url: &str) -> CoordinatorProcess {
    spawn_replica_with(
        data_dir,
        database_url,
        &["--heartbeat-timeout-s", TIMEOUT_S],
    )
}

/// [`spawn_replica`] with these flags instead of the short heartbeat timeout.
fn spawn_replica_with(data_dir: &Path, database_url: &str, extra: &[&str]) -> CoordinatorProcess {
    let mut flags = vec!["--database-url", database_url];
    flags.extend_from_slice(extra);
    spawn_coordinator(data_dir, &flags)
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    send(reqwest::Client::new().get(format!("{base}{path}"))).await
}

fn tm_ids(answer: &Value) -> Vec<String> {
    answer["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tm| tm["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_posted_on_one_replica_is_served_and_canceled_on_the_other() {
    let Some(db) = scratch_database("replicas_jobs") else {
        return;
    };
    let (dir_a, dir_b) = (
        flamegrid_testkit::temp_dir("replica-a"),
        flamegrid_testkit::temp_dir("replica-b"),
    );
    let a = spawn_replica(dir_a.path(), &db.url);
    let b = spawn_replica(dir_b.path(), &db.url);
    let worker = sleeper();
    let mut agent = TestAgent::connect(&a.rpc, TM).await;
    agent.register().await;

    let id = a.register_job(&two_vertex_job(TM, worker.pid())).await;

    // Read on B at once (no wait for a sync): the same job.
    let (status, on_b) = get(&b.rest, &format!("/jobs/{id}")).await;
    assert_eq!(status, 200, "{on_b}");
    let (_, on_a) = get(&a.rest, &format!("/jobs/{id}")).await;
    for key in ["jid", "name", "start-time", "plan"] {
        assert_eq!(on_a[key], on_b[key], "{key}");
    }
    let vertex = on_b["vertices"][0]["id"].as_str().unwrap().to_string();
    let (status, details) = get(&b.rest, &format!("/jobs/{id}/vertices/{vertex}")).await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["subtasks"].as_array().unwrap().len(), 2);

    // The agent heartbeats to A; B shows its subtasks RUNNING within a flush and a sync.
    agent.heartbeat().await;
    agent.heartbeat().await;
    poll("B to show the subtasks A saw running", || async {
        let (_, details) = get(&b.rest, &format!("/jobs/{id}/vertices/{vertex}")).await;
        support::all_subtasks_running(&details).then_some(())
    })
    .await;

    // Canceled on B, CANCELED on A; and the agent stops watching it (A's watch list).
    b.cancel_job(&id).await;
    poll("A to show the job canceled on B", || async {
        let (_, job) = get(&a.rest, &format!("/jobs/{id}")).await;
        (job["state"] == "CANCELED").then_some(())
    })
    .await;
    // A applied the cancel: the agent heartbeating to it is told to watch nothing.
    let stopped_watching = tokio::time::timeout(flamegrid_testkit::HANG_GUARD, async {
        while !agent.heartbeat().await.watch.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stopped_watching
        .await
        .expect("A stops the canceled job's watch list");
    // An id neither replica knows is still 404 on both.
    for replica in [&a, &b] {
        let (status, _) = get(&replica.rest, "/jobs/0123456789abcdef0123456789abcdef").await;
        assert_eq!(status, 404);
    }
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_shared_and_a_replica_killed_with_sigkill_loses_nothing() {
    let Some(db) = scratch_database("replicas_agents") else {
        return;
    };
    let (dir_a, dir_b) = (
        flamegrid_testkit::temp_dir("replica-a"),
        flamegrid_testkit::temp_dir("replica-b"),
    );
    let mut a = spawn_replica(dir_a.path(), &db.url);
    let b = spawn_replica(dir_b.path(), &db.url);
    let worker = sleeper();
    let mut agent = TestAgent::connect(&a.rpc, TM).await;
    agent.register().await;
    let id = b.register_job(&two_vertex_job(TM, worker.pid())).await;
    poll("B to list the agent registered with A", || async {
        let (_, tms) = get(&b.rest, "/taskmanagers").await;
        (tm_ids(&tms) == [TM]).then_some(())
    })
    .await;

    // The agent heartbeats only to A for twice the heartbeat timeout: B keeps it alive (it sees
    // the heartbeat times A writes) and does not fail its subtasks.
    let timeout = Duration::from_secs(TIMEOUT_S.parse().unwrap());
    let until = std::time::Instant::now() + 2 * timeout;
    while std::time::Instant::now() < until {
        agent.heartbeat().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, tms) = get(&b.rest, "/taskmanagers").await;
    assert_eq!(tm_ids(&tms), [TM], "B still lists the agent");
    let (_, job) = get(&b.rest, &format!("/jobs/{id}")).await;
    assert_eq!(job["state"], "RUNNING", "{job}");

    // The agent moves to B: B accepts its heartbeats without a new registration.
    let mut moved = TestAgent::connect(&b.rpc, TM).await;
    moved.watch = agent.watch.clone();
    let answer = moved.heartbeat().await;
    assert!(!answer.reregister, "B knows the agent from the database");
    assert_eq!(
        answer.watch.len(),
        3,
        "and gives it the job's subtasks to watch"
    );

    // A is killed with SIGKILL and started again (same database, same data dir): it has the
    // job and the agent (which heartbeats to B meanwhile).
    a.child.kill();
    moved.heartbeat().await;
    let a = spawn_replica(dir_a.path(), &db.url);
    moved.heartbeat().await;
    let (status, job) = get(&a.rest, &format!("/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "RUNNING", "{job}");
    let (_, tms) = get(&a.rest, "/taskmanagers").await;
    assert_eq!(tm_ids(&tms), [TM], "the restarted replica knows the agent");
    let (_, overview) = get(&a.rest, "/jobs/overview").await;
    assert_eq!(overview["jobs"].as_array().unwrap().len(), 1);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flame_graph_polled_on_both_replicas_is_one_run_at_the_agent_and_the_same_graph() {
    let Some(db) = scratch_database("replicas_graphs") else {
        return;
    };
    let (dir_a, dir_b) = (
        flamegrid_testkit::temp_dir("replica-ga"),
        flamegrid_testkit::temp_dir("replica-gb"),
    );
    let fast = [
        "--heartbeat-timeout-s",
        TIMEOUT_S,
        "--flamegraph-num-samples",
        "5",
        "--flamegraph-delay-ms",
        "20",
    ];
    let a = spawn_replica_with(dir_a.path(), &db.url, &fast);
    let b = spawn_replica_with(dir_b.path(), &db.url, &fast);
    // A real agent, registered with replica A only.
    let agent = spawn_metrics_agent(&a.rpc, "graph-agent");
    poll("B to list the agent registered with A", || async {
        (get(&b.rest, "/taskmanagers/graph-agent").await.0 == 200).then_some(())
    })
    .await;
    let worker = sleeper();
    let id = a
        .register_job(&two_vertex_job("graph-agent", worker.pid()))
        .await;
    let vertex = b.first_vertex(&id).await;
    let path = format!("/jobs/{id}/vertices/{vertex}/flamegraph");

    // Both replicas polled at once, like two dashboards, until both serve a graph.
    let (end_a, end_b, tree_a, tree_b) = poll("both replicas to serve the graph", || async {
        let ((_, on_a), (_, on_b)) = tokio::join!(get(&a.rest, &path), get(&b.rest, &path));
        let (ea, eb) = (
            on_a["endTimestamp"].as_i64().unwrap_or(-3),
            on_b["endTimestamp"].as_i64().unwrap_or(-3),
        );
        (ea > 0 && eb > 0 && ea == eb).then(|| (ea, eb, on_a["data"].clone(), on_b["data"].clone()))
    })
    .await;
    assert_eq!(end_a, end_b);
    assert_eq!(tree_a, tree_b, "the same tree from both replicas");
    assert!(tree_a["value"].as_i64().unwrap_or(0) > 0, "{tree_a}");
    // Polled on both, sampled once: counted at the agent.
    assert_eq!(
        agent.ok_runs().await,
        1,
        "one run at the agent for both replicas"
    );
    for _ in 0..3 {
        let ((_, on_a), (_, on_b)) = tokio::join!(get(&a.rest, &path), get(&b.rest, &path));
        assert_eq!(on_a["endTimestamp"], on_b["endTimestamp"]);
    }
    assert_eq!(agent.ok_runs().await, 1, "fresh graphs start no run");
    drop(worker);
}

/// The pid in a lease row's holder (`host/pid/suffix`, [`Database::replica_id`]).
fn holder_pid(holder: &str) -> Option<u32> {
    holder.split('/').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_holding_a_runs_lease_killed_mid_run_and_the_others_serve_one_new_graph() {
    let Some(db) = scratch_database("replicas_kill") else {
        return;
    };
    let dirs = ["replica-ka", "replica-kb", "replica-kc"].map(flamegrid_testkit::temp_dir);
    // A window of 3 s (60 samples, 50 ms apart) and a lease of 5 s (longer than a run, as the
    // docs ask); graphs stay fresh for the default 60 s, so runs start only when asked.
    let flags = [
        "--flamegraph-num-samples",
        "60",
        "--flamegraph-delay-ms",
        "50",
        "--flamegraph-lease-s",
        "5",
    ];
    let mut replicas = dirs
        .each_ref()
        .map(|dir| spawn_replica_with(dir.path(), &db.url, &flags));
    // A real agent given every replica, sampling a real workload.
    let all: Vec<&str> = replicas.iter().map(|r| r.rpc.as_str()).collect();
    let agent = spawn_metrics_agent(&all.join(","), "kill-agent");
    for r in &replicas {
        poll("every replica to list the agent", || async {
            (get(&r.rest, "/taskmanagers/kill-agent").await.0 == 200).then_some(())
        })
        .await;
    }
    let w = spinners_and_sleeper();
    let job = serde_json::json!({
        "name": "kill-the-lease-holder",
        "vertices": [{"name": "Source: spin", "parallelism": 2, "subtasks": [
            {"taskmanager": "kill-agent", "pid": w.pid(), "thread_name": "spin-0"},
            {"taskmanager": "kill-agent", "pid": w.pid(), "thread_name": "spin-1"}]}]
    });
    let id = replicas[0].register_job(&job).await;
    let vertex = replicas[0].first_vertex(&id).await;
    let path = format!("/jobs/{id}/vertices/{vertex}/flamegraph");
    let forced = format!("{path}?refresh=true");
    let chains = flamegrid_workloads::Workload::CFramePointers.chains();

    // A first graph, asked of the first replica.
    let first = poll("a first graph", || async {
        let (_, graph) = get(&replicas[0].rest, &path).await;
        let end = graph["endTimestamp"].as_i64().unwrap_or(-3);
        (end > 0).then_some(end)
    })
    .await;

    // A refresh asked of the first replica: a run holds the vertex's lease, and whichever
    // replica holds it is killed with SIGKILL mid-run.
    let (status, _) = get(&replicas[0].rest, &forced).await;
    assert_eq!(status, 200);
    let lease_sql = format!("SELECT holder FROM flamegraph_leases WHERE key = '{id}/{vertex}'");
    let holder = poll("a run to hold the vertex's lease", || async {
        holder_pid(&psql(&db.url, &lease_sql))
    })
    .await;
    let dead = replicas
        .iter()
        .position(|r| r.child.pid() == holder)
        .expect("the lease names one of the replicas");
    replicas[dead].child.kill();
    let survivors: Vec<&CoordinatorProcess> = replicas
        .iter()
        .enumerate()
        .filter_map(|(i, r)| (i != dead).then_some(r))
        .collect();
    // The dead replica's run ends at the agent (answered into a closed connection).
    poll("the killed run to end at the agent", || async {
        let in_flight = agent_sample(&agent.metrics, "flamegrid_agent_sampling_runs_in_flight");
        (in_flight.await == 0.0).then_some(())
    })
    .await;
    let runs_before = agent.ok_runs().await;

    // Both survivors asked for a refresh at once (two dashboards), then polled: once the dead
    // holder's lease has expired one of them samples, and both serve that newer graph of the
    // workload (the poll's hang guard is far beyond lease + window + deadline; nothing is
    // asserted on time).
    let (one, other) = (survivors[0], survivors[1]);
    let ((s1, _), (s2, _)) = tokio::join!(get(&one.rest, &forced), get(&other.rest, &forced));
    assert_eq!((s1, s2), (200, 200));
    let (end, tree) = poll("the survivors to serve one new graph", || async {
        let ((_, g1), (_, g2)) = tokio::join!(get(&one.rest, &path), get(&other.rest, &path));
        let (e1, e2) = (
            g1["endTimestamp"].as_i64().unwrap_or(-3),
            g2["endTimestamp"].as_i64().unwrap_or(-3),
        );
        (e1 > first && e1 == e2).then(|| (e1, g1["data"].clone()))
    })
    .await;
    assert!(end > first);
    assert!(
        has_chain(&tree, chains.spin),
        "the new graph is the workload's: {tree}"
    );
    assert_eq!(
        agent.ok_runs().await - runs_before,
        1,
        "one run at the agent for both survivors"
    );
    // The survivor's run stored and dropped its lease; the dead one's is gone with it.
    poll("the lease to be released", || async {
        psql(&db.url, &lease_sql).is_empty().then_some(())
    })
    .await;
    drop(w);
}

/// The value of the sample `name` (no labels) in a Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_expired_on_one_replica_takes_its_flame_graphs_from_the_database_and_every_cache() {
    let Some(db) = scratch_database("replicas_gone") else {
        return;
    };
    let (dir_a, dir_b) = (
        flamegrid_testkit::temp_dir("replica-ga"),
        flamegrid_testkit::temp_dir("replica-gb"),
    );
    let fast = [
        "--flamegraph-num-samples",
        "5",
        "--flamegraph-delay-ms",
        "20",
    ];
    // A removes a job one second after it ended; B would keep it for an hour.
    let mut flags_a = fast.to_vec();
    flags_a.extend(["--job-retention-s", "1"]);
    let a = spawn_replica_with(dir_a.path(), &db.url, &flags_a);
    let b = spawn_replica_with(dir_b.path(), &db.url, &fast);
    let _agent = spawn_metrics_agent(&a.rpc, "gone-agent");
    poll("B to list the agent registered with A", || async {
        (get(&b.rest, "/taskmanagers/gone-agent").await.0 == 200).then_some(())
    })
    .await;
    let worker = sleeper();
    let id = a
        .register_job(&two_vertex_job("gone-agent", worker.pid()))
        .await;
    let vertex = b.first_vertex(&id).await;
    let path = format!("/jobs/{id}/vertices/{vertex}/flamegraph");

    // B graphs the vertex: a run stored in the database, a graph in B's cache.
    poll("B to serve the graph", || async {
        let (_, graph) = get(&b.rest, &path).await;
        (graph["endTimestamp"].as_i64().unwrap_or(-3) > 0).then_some(())
    })
    .await;
    let runs_sql = format!("SELECT count(*) FROM flamegraph_runs WHERE job_id = '{id}'");
    assert_ne!(psql(&db.url, &runs_sql), "0", "the run is stored");
    let entries = "flamegrid_coordinator_flamegraph_cache_entries";
    let metrics_b = format!("{}/metrics", b.rest);
    let cached = reqwest::get(&metrics_b)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sample(&cached, entries).unwrap_or(0.0) > 0.0, "{cached}");

    // Canceled on A, then removed by A once its retention is over.
    a.cancel_job(&id).await;
    poll("A to remove the canceled job", || async {
        (get(&a.rest, &format!("/jobs/{id}")).await.0 == 404).then_some(())
    })
    .await;

    // Its stored runs and leases are gone with it...
    assert_eq!(psql(&db.url, &runs_sql), "0", "no stored run is left");
    let leases = format!("SELECT count(*) FROM flamegraph_leases WHERE key LIKE '{id}/%'");
    assert_eq!(psql(&db.url, &leases), "0", "no lease is left");
    // ... and B drops the job and its graphs: 404 like an unknown job, nothing cached. The
    // graph cache (its follower) and the registry (its sync) each catch up within their own
    // period, so both are polled together.
    poll("B to drop the job and its graphs", || async {
        let text = reqwest::get(&metrics_b).await.ok()?.text().await.ok()?;
        if sample(&text, entries) != Some(0.0) {
            return None;
        }
        for p in [format!("/jobs/{id}"), path.clone()] {
            if get(&b.rest, &p).await.0 != 404 {
                return None;
            }
        }
        Some(())
    })
    .await;
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_to_a_replica_that_has_not_pulled_the_agent_yet_needs_no_reregistration() {
    let Some(db) = scratch_database("replicas_beat") else {
        return;
    };
    let (dir_a, dir_b) = (
        flamegrid_testkit::temp_dir("replica-ba"),
        flamegrid_testkit::temp_dir("replica-bb"),
    );
    let a = spawn_replica(dir_a.path(), &db.url);
    let b = spawn_replica(dir_b.path(), &db.url);
    let worker = sleeper();
    let mut on_b = TestAgent::connect(&b.rpc, "agent-fresh").await;
    // Registered on A, and at once a heartbeat to B, before B's next sync.
    let mut on_a = TestAgent::connect(&a.rpc, "agent-fresh").await;
    on_a.register().await;
    let answer = on_b.heartbeat().await;
    assert!(
        !answer.reregister,
        "B reads the agent registered on A from the database"
    );
    let (_, tms) = get(&b.rest, "/taskmanagers").await;
    assert_eq!(tm_ids(&tms), ["agent-fresh"]);
    // It goes on heartbeating to B only, and is given the subtasks of a job posted on A.
    a.register_job(&two_vertex_job("agent-fresh", worker.pid()))
        .await;
    let watching = tokio::time::timeout(flamegrid_testkit::HANG_GUARD, async {
        loop {
            let answer = on_b.heartbeat().await;
            assert!(!answer.reregister);
            if answer.watch.len() == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    watching
        .await
        .expect("B gives the agent the job's subtasks");
    // An agent nobody registered is still asked to register.
    let mut stranger = TestAgent::connect(&b.rpc, "agent-stranger").await;
    assert!(stranger.heartbeat().await.reregister);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_verify_full_tls_serve_the_same_job() {
    let Some(db) = scratch_database("replicas_tls") else {
        return;
    };
    let Some(ca) = flamegrid_testkit::postgres::test_ca() else {
        return;
    };
    // The server's certificate names localhost (.ci/run): checked, chain and name.
    let url = flamegrid_testkit::postgres::with_params(
        &db.url.replacen("@127.0.0.1:", "@localhost:", 1),
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    assert!(url.contains("@localhost:"), "{url}");
    let (dir_a, dir_b) = (
        flamegrid_testkit::temp_dir("replica-tls-a"),
        flamegrid_testkit::temp_dir("replica-tls-b"),
    );
    let a = spawn_replica(dir_a.path(), &url);
    let b = spawn_replica(dir_b.path(), &url);
    let worker = sleeper();
    let mut agent = TestAgent::connect(&a.rpc, TM).await;
    agent.register().await;
    let id = a.register_job(&two_vertex_job(TM, worker.pid())).await;
    let (status, on_b) = get(&b.rest, &format!("/jobs/{id}")).await;
    assert_eq!(status, 200, "{on_b}");
    let (_, on_a) = get(&a.rest, &format!("/jobs/{id}")).await;
    assert_eq!(on_a["jid"], on_b["jid"]);
    // Every session of the replicas on their database is encrypted.
    let name = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let sessions = psql(
        &db.url,
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{name}' \
             AND a.pid <> pg_backend_pid()"
        ),
    );
    let (encrypted, all) = sessions.split_once('/').unwrap();
    assert_eq!(encrypted, all, "encrypted/all sessions: {sessions}");
    assert!(
        all.parse::<u32>().unwrap() >= 2,
        "both replicas connected: {sessions}"
    );
    drop(worker);
}
