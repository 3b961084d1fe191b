//! Issue 12, the registry's half of findings 3, 6 and 7, over real gRPC and real HTTP:
//! a live agent's id cannot be taken over from elsewhere without credentials; terminal jobs
//! expire (by age and by count) from memory and the database; a heartbeat of 100,000 watched
//! subtasks is accepted; host strings are length-checked; agent credentials that cannot be used
//! stop the coordinator from starting.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_coordinator::registry::Registry;
use flamegrid_proto::v1;
use flamegrid_proto::v1::registry_client::RegistryClient;
use serde_json::json;
use std::time::Duration;
use support::*;

fn one_subtask_job(tm: &str, pid: u32) -> serde_json::Value {
    json!({"name": "j", "vertices": [{"name": "v", "parallelism": 1,
        "subtasks": [{"taskmanager": tm, "pid": pid}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_agent_id_cannot_be_taken_over_from_elsewhere_without_credentials() {
    let c = TestCoordinator::start(&["--heartbeat-timeout-s", "2"]).await;
    let mut owner = TestAgent::connect(&c.rpc, "owner").await;
    owner.address = "http://127.0.0.1:7001".into();
    owner.register().await;

    // Same id, another advertised address: refused, nothing changes.
    let mut thief = TestAgent::connect(&c.rpc, "owner").await;
    thief.address = "http://127.0.0.1:7666".into();
    let refused = thief.try_register().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().contains("--token-file"),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains("7001"),
        "says nothing about the live agent"
    );
    let tm = c.get_ok("/taskmanagers/owner").await;
    assert!(tm["path"].as_str().unwrap().contains("7001"), "{tm}");

    // The same agent registering again from the same place (a restart): accepted.
    owner.register().await;

    // Once the owner has been silent past the heartbeat timeout, the id may be taken.
    // (Polled by hand: `poll`'s closure cannot lend out the client mutably.)
    let mut taken = false;
    for _ in 0..600 {
        if thief.try_register().await.is_ok() {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "the id of an expired agent may be taken");
    let tm = c.get_ok("/taskmanagers/owner").await;
    assert!(tm["path"].as_str().unwrap().contains("7666"), "{tm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shared_token_an_agent_may_move() {
    let dir = temp_dir("token");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let c = TestCoordinator::start(&["--token-file", token.to_str().unwrap()]).await;
    let mut first = TestAgent::connect_with_token(&c.rpc, "mover", Some("s3cret")).await;
    first.address = "http://127.0.0.1:7001".into();
    first.register().await;
    let mut moved = TestAgent::connect_with_token(&c.rpc, "mover", Some("s3cret")).await;
    moved.address = "http://127.0.0.1:7002".into();
    moved.register().await;
    let tm = c.get_ok("/taskmanagers/mover").await;
    assert!(tm["path"].as_str().unwrap().contains("7002"), "{tm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_host_strings_are_refused_naming_the_field() {
    let c = TestCoordinator::start(&[]).await;
    let mut client = RegistryClient::connect(c.rpc.clone()).await.unwrap();
    for (field, host) in [
        (
            "host.hostname",
            v1::HostInfo {
                hostname: "h".repeat(100_000),
                ..Default::default()
            },
        ),
        (
            "host.os",
            v1::HostInfo {
                os: "o".repeat(300),
                ..Default::default()
            },
        ),
        (
            "host.kernel",
            v1::HostInfo {
                kernel: "k\n".into(),
                ..Default::default()
            },
        ),
        (
            "host.agent_version",
            v1::HostInfo {
                agent_version: "v".repeat(257),
                ..Default::default()
            },
        ),
    ] {
        let err = client
            .register(v1::RegisterRequest {
                agent_id: "long".into(),
                address: "http://127.0.0.1:7001".into(),
                host: Some(host),
                pid: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    assert_eq!(
        c.get("/taskmanagers/long").await.0,
        404,
        "nothing registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_jobs_expire_by_age_from_memory_and_the_database() {
    let c = TestCoordinator::start(&["--job-retention-s", "1"]).await;
    let target = sleeper();
    let mut agent = TestAgent::connect(&c.rpc, "tm").await;
    agent.register().await;
    let done = c.register_job(&one_subtask_job("tm", target.pid())).await;
    let running = c.register_job(&one_subtask_job("tm", target.pid())).await;
    assert_eq!(c.patch(&format!("/jobs/{done}")).await.0, 202);
    poll("the canceled job to expire", || async {
        (c.get(&format!("/jobs/{done}")).await.0 == 404).then_some(())
    })
    .await;
    assert_eq!(c.get(&format!("/jobs/{done}/status")).await.0, 404);
    // Gone from the store too: a registry opened on the same database does not load it.
    let stored: Vec<String> = Registry::open(c._dir.path(), Duration::from_secs(30))
        .unwrap()
        .jobs()
        .iter()
        .map(|j| j.spec.id.clone())
        .collect();
    assert!(!stored.contains(&done), "{stored:?}");
    assert!(stored.contains(&running), "a running job stays: {stored:?}");
    assert_eq!(c.get(&format!("/jobs/{running}")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_maximum_count_the_oldest_terminal_jobs_go_first() {
    let c = TestCoordinator::start(&["--job-retention-max", "2"]).await;
    let target = sleeper();
    let mut agent = TestAgent::connect(&c.rpc, "tm").await;
    agent.register().await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let id = c.register_job(&one_subtask_job("tm", target.pid())).await;
        assert_eq!(c.patch(&format!("/jobs/{id}")).await.0, 202);
        jobs.push(id);
        // End times are in ms: keep them apart so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    poll("two terminal jobs to remain", || async {
        let status: Vec<u16> = futures_status(&c, &jobs).await;
        (status == [404, 404, 200, 200]).then_some(())
    })
    .await;
}

async fn futures_status(c: &TestCoordinator, jobs: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for id in jobs {
        out.push(c.get(&format!("/jobs/{id}")).await.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_of_100000_watched_subtasks_is_accepted() {
    const TOTAL: usize = 100_000;
    const PER_JOB: usize = 8192; // validate.rs: MAX_SUBTASKS_PER_JOB
    let c = TestCoordinator::start(&[]).await;
    let target = sleeper();
    let mut client = RegistryClient::connect(c.rpc.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    client
        .register(v1::RegisterRequest {
            agent_id: "big".into(),
            address: "http://127.0.0.1:7001".into(),
            host: None,
            pid: 1,
        })
        .await
        .unwrap();
    let mut left = TOTAL;
    let mut first_job = None;
    while left > 0 {
        let n = left.min(PER_JOB);
        left -= n;
        // One vertex may hold 1024 subtasks (validate.rs): several vertices per job.
        let vertices: Vec<_> = (0..n.div_ceil(1024))
            .map(|v| {
                let count = (n - v * 1024).min(1024);
                json!({"name": format!("v{v}"), "parallelism": count,
                    "subtasks": vec![json!({"taskmanager": "big", "pid": target.pid()}); count]})
            })
            .collect();
        let id = c
            .register_job(&json!({"name": "big", "vertices": vertices}))
            .await;
        first_job.get_or_insert(id);
    }
    let beat = |liveness: Vec<v1::SubtaskLiveness>| v1::HeartbeatRequest {
        agent_id: "big".into(),
        liveness,
        metrics: Default::default(),
        free_memory: 1,
    };
    let watch = client
        .heartbeat(beat(Vec::new()))
        .await
        .unwrap()
        .into_inner()
        .watch;
    assert_eq!(watch.len(), TOTAL, "the whole watch list fits one answer");
    let liveness: Vec<v1::SubtaskLiveness> = watch
        .iter()
        .map(|w| v1::SubtaskLiveness {
            subtask_key: w.subtask_key.clone(),
            alive: true,
            pid: target.pid(),
            threads: 1,
            ..Default::default()
        })
        .collect();
    let answer = client.heartbeat(beat(liveness)).await.unwrap().into_inner();
    assert_eq!(answer.watch.len(), TOTAL);
    let job = first_job.unwrap();
    let status = c.get_ok(&format!("/jobs/{job}")).await;
    assert_eq!(status["state"], "RUNNING", "{}", status["state"]);
    assert!(
        status["vertices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["status"] == "RUNNING"),
        "every subtask was reported alive"
    );
}

#[tokio::test]
async fn agent_credentials_that_cannot_be_used_stop_the_start() {
    let dir = temp_dir("badtoken");
    // A control character cannot travel in the header the coordinator sends to agents: it
    // used to start and call agents without one. The one reader of token files (shared with
    // the agent) refuses it, naming the file.
    let token = dir.path().join("token");
    std::fs::write(&token, "tok\u{1}en").unwrap();
    let err = flamegrid_coordinator::start(config(
        dir.path(),
        &["--token-file", token.to_str().unwrap()],
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("printable ASCII"), "{err}");
    assert!(err.contains(token.to_str().unwrap()), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}
