//! The registry over real gRPC and its store: registration and re-registration, the watch list,
//! what the flame graph fan-out gets, liveness (a lost agent fails its subtasks and is dropped),
//! the shared token, and persistence across a graceful restart and a `kill -9` of the real
//! binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_coordinator::registry::subtask_key;
use flamegrid_proto::v1;
use serde_json::{Value, json};
use support::*;

const TM: &str = "agent-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agents_reregister_and_bad_registrations_are_refused() {
    let c = TestCoordinator::start(&["--heartbeat-timeout-s", "9"]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    let answer = agent.heartbeat().await;
    assert!(
        answer.reregister,
        "a heartbeat before Register asks to register"
    );
    let registered = agent.register().await;
    assert_eq!(
        registered.heartbeat_interval_ms, 3000,
        "a third of the timeout"
    );
    assert!(!agent.heartbeat().await.reregister);

    let mut bad = TestAgent::connect(&c.rpc, "").await;
    let err = bad.try_register().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut bad = TestAgent::connect(&c.rpc, "x").await;
    bad.address = "not a url".into();
    let err = bad.try_register().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("address"), "{}", err.message());
    let tms = c.get_ok("/taskmanagers").await;
    assert_eq!(
        tms["taskmanagers"].as_array().unwrap().len(),
        1,
        "refused registrations change nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_list_and_sampling_targets_follow_subtask_states() {
    let c = TestCoordinator::start(&[]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let worker = sleeper();
    let pid = worker.pid();
    let jobid = c.register_job(&two_vertex_job(TM, pid)).await;
    let registry = c.coordinator.as_ref().unwrap().registry().clone();
    let job = registry.job(&jobid).unwrap();
    let source = job.spec.vertices[0].id.clone();

    // Before any heartbeat: DEPLOYING, and sampled all the same (sampling is the best
    // liveness check: a graph right after POST /jobs), marked as not yet confirmed.
    let vertex = c.get_ok(&format!("/jobs/{jobid}/vertices/{source}")).await;
    assert_eq!(vertex["subtasks"][0]["status"], "DEPLOYING");
    let sampling = registry.vertex_sampling(&jobid, &source).unwrap();
    assert_eq!((sampling.parallelism, sampling.vertex_terminal), (2, false));
    assert!(sampling.subtasks.iter().all(|s| !s.terminal
        && s.absent.is_none()
        && s.target.as_ref().is_some_and(|t| !t.confirmed)));

    // The first heartbeat hands out the watch list: every subtask, keyed so it maps back.
    let answer = agent.heartbeat().await;
    assert_eq!(answer.watch.len(), 3);
    let first = &answer.watch[0];
    assert_eq!(first.subtask_key, subtask_key(&jobid, &source, 0));
    assert_eq!(first.process, Some(v1::thread_selector::Process::Pid(pid)));
    assert_eq!(first.thread_name, "sleep");
    assert_eq!(answer.watch[1].tids, vec![pid]);
    let vertex = c.get_ok(&format!("/jobs/{jobid}/vertices/{source}")).await;
    assert_eq!(vertex["subtasks"][0]["status"], "INITIALIZING");

    // INITIALIZING is sampleable (as in Flink); RUNNING after the liveness report.
    let sampling = registry.vertex_sampling(&jobid, &source).unwrap();
    let target = sampling.subtasks[1].target.as_ref().unwrap();
    assert_eq!(
        (target.subtask_index, target.taskmanager_id.as_str()),
        (1, TM)
    );
    assert!(target.confirmed, "the heartbeat confirmed it");
    assert_eq!(target.agent_address, "http://127.0.0.1:6122");
    agent.heartbeat().await;
    let vertex = c.get_ok(&format!("/jobs/{jobid}/vertices/{source}")).await;
    assert_eq!(vertex["subtasks"][0]["status"], "RUNNING");
    // A thread dump covers whole processes: the three subtasks share one, named once.
    let (address, selectors) = registry.taskmanager_dump_targets(TM).unwrap();
    assert_eq!(
        (address.as_str(), selectors.len()),
        ("http://127.0.0.1:6122", 1)
    );
    assert_eq!(
        selectors[0].process,
        Some(v1::thread_selector::Process::Pid(pid))
    );
    assert!(registry.taskmanager_dump_targets("nobody").is_err());
    assert!(registry.vertex_sampling(&jobid, &"0".repeat(32)).is_err());

    // One subtask's threads vanish: that subtask FINISHES, the vertex stays RUNNING (Flink's
    // aggregate), and it is no longer a sampling target.
    agent.force_dead.push(subtask_key(&jobid, &source, 1));
    agent.heartbeat().await;
    let vertex = c.get_ok(&format!("/jobs/{jobid}/vertices/{source}")).await;
    assert_eq!(
        (
            vertex["subtasks"][0]["status"].as_str(),
            vertex["subtasks"][1]["status"].as_str()
        ),
        (Some("RUNNING"), Some("FINISHED"))
    );
    let sampling = registry.vertex_sampling(&jobid, &source).unwrap();
    assert!(sampling.subtasks[1].terminal && sampling.subtasks[1].target.is_none());
    assert!(!sampling.vertex_terminal);
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}")).await["vertices"][0]["status"],
        "RUNNING"
    );

    // A process that never existed: FAILED at the first report, with the reason in exceptions.
    let ghost = json!({"name": "ghost", "vertices": [{"name": "v", "parallelism": 1,
        "subtasks": [{"taskmanager": TM, "pid": 4_194_300}]}]});
    let ghost_id = c.register_job(&ghost).await;
    agent.heartbeat().await;
    agent.heartbeat().await;
    assert_eq!(
        c.get_ok(&format!("/jobs/{ghost_id}/status")).await["status"],
        "FAILED"
    );
    let exceptions = c.get_ok(&format!("/jobs/{ghost_id}/exceptions")).await;
    let entry = &exceptions["exceptionHistory"]["entries"][0];
    assert!(
        entry["stacktrace"]
            .as_str()
            .unwrap()
            .contains("pid 4194300"),
        "{exceptions}"
    );
    assert_eq!(entry["taskManagerId"], TM);
    drop(worker);
}

/// One subtask FAILED while the others still run: the job is FAILING (not terminal, no
/// end-time, still counted as running, its running vertex still sampled), FAILED with an
/// end-time only once every subtask has ended; a FAILING job can be canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_subtask_makes_the_job_failing_until_all_have_ended() {
    let c = TestCoordinator::start(&[]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let worker = sleeper();
    let failing = c.register_job(&two_vertex_job(TM, worker.pid())).await;
    let canceled = c.register_job(&two_vertex_job(TM, worker.pid())).await;
    let registry = c.coordinator.as_ref().unwrap().registry().clone();
    let spec = registry.job(&failing).unwrap().spec;
    let (source, sink) = (spec.vertices[0].id.clone(), spec.vertices[1].id.clone());
    let other_sink = registry.job(&canceled).unwrap().spec.vertices[1].id.clone();

    // First heartbeat: everything INITIALIZING. Second: the sinks' threads are not there (they
    // never ran: FAILED), the sources are alive (RUNNING).
    agent.heartbeat().await;
    agent.force_dead.push(subtask_key(&failing, &sink, 0));
    agent
        .force_dead
        .push(subtask_key(&canceled, &other_sink, 0));
    agent.heartbeat().await;

    let job = c.get_ok(&format!("/jobs/{failing}")).await;
    assert_eq!(job["state"], "FAILING", "{job}");
    assert_eq!(job["end-time"], -1);
    assert!(job["timestamps"]["FAILING"].as_i64().unwrap() > 0);
    assert_eq!(job["timestamps"]["FAILED"], 0);
    assert_eq!(
        (
            job["vertices"][0]["status"].as_str(),
            job["vertices"][1]["status"].as_str()
        ),
        (Some("RUNNING"), Some("FAILED"))
    );
    assert_eq!(
        c.get_ok(&format!("/jobs/{failing}/status")).await["status"],
        "FAILING"
    );
    assert_eq!(
        c.get_ok(&format!("/jobs/{failing}/execution-result")).await["status"]["id"],
        "IN_PROGRESS"
    );
    let overview = c.get_ok("/jobs/overview").await;
    let entry = overview["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["jid"] == failing.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["state"], "FAILING");
    assert_eq!(
        (
            entry["tasks"]["total"].as_u64(),
            entry["tasks"]["running"].as_u64(),
            entry["tasks"]["failed"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{entry}"
    );
    let cluster = c.get_ok("/overview").await;
    assert_eq!(
        (
            cluster["jobs-running"].as_u64(),
            cluster["jobs-failed"].as_u64()
        ),
        (Some(2), Some(0)),
        "FAILING jobs are still running: {cluster}"
    );
    // The running vertex is still sampled; the failed one is not.
    let sampling = registry.vertex_sampling(&failing, &source).unwrap();
    assert!(sampling.subtasks.iter().all(|s| s.target.is_some()));
    assert!(
        registry
            .vertex_sampling(&failing, &sink)
            .unwrap()
            .vertex_terminal
    );
    assert_eq!(
        agent.watch.len(),
        4,
        "the four source subtasks stay watched"
    );

    // Cancelling a FAILING job cancels it.
    assert_eq!(
        c.patch(&format!("/jobs/{canceled}")).await,
        (202, json!({}))
    );
    let job = c.get_ok(&format!("/jobs/{canceled}")).await;
    assert_eq!(job["state"], "CANCELED");
    assert!(job["end-time"].as_i64().unwrap() > 0);
    assert!(job["timestamps"]["FAILING"].as_i64().unwrap() > 0);
    assert_eq!(job["vertices"][0]["status"], "CANCELED");
    assert_eq!(job["vertices"][1]["status"], "FAILED");

    // The sources' threads vanish too: every subtask has ended, the job is FAILED.
    for s in 0..2 {
        agent.force_dead.push(subtask_key(&failing, &source, s));
    }
    agent.heartbeat().await;
    let job = c.get_ok(&format!("/jobs/{failing}")).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    let failed_at = job["timestamps"]["FAILED"].as_i64().unwrap();
    assert!(failed_at >= job["timestamps"]["FAILING"].as_i64().unwrap());
    assert_eq!(job["end-time"].as_i64(), Some(failed_at));
    assert_eq!(job["vertices"][0]["status"], "FINISHED");
    let (status, body) = c.patch(&format!("/jobs/{failing}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("(FAILED)"),
        "{body}"
    );
    assert_eq!(c.get_ok("/overview").await["jobs-failed"], 1);
    assert!(agent.heartbeat().await.watch.is_empty());
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_fails_its_subtasks_and_is_dropped() {
    let c = TestCoordinator::start(&["--heartbeat-timeout-s", "1"]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let worker = sleeper();
    let jobid = c.register_job(&two_vertex_job(TM, worker.pid())).await;
    agent.heartbeat().await;
    agent.heartbeat().await;
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/status")).await["status"],
        "RUNNING"
    );

    // The agent stops heartbeating.
    let tms = poll("the silent agent to be dropped", || async {
        let tms = c.get_ok("/taskmanagers").await;
        tms["taskmanagers"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(tms)
    })
    .await;
    assert_eq!(tms, json!({"taskmanagers": []}));
    let job = c.get_ok(&format!("/jobs/{jobid}")).await;
    assert_eq!(job["state"], "FAILED");
    assert!(job["timestamps"]["FAILED"].as_i64().unwrap() > 0);
    for v in job["vertices"].as_array().unwrap() {
        assert_eq!(v["status"], "FAILED");
    }
    let exceptions = c.get_ok(&format!("/jobs/{jobid}/exceptions")).await;
    let entries = exceptions["exceptionHistory"]["entries"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 3);
    assert!(
        entries[0]["stacktrace"]
            .as_str()
            .unwrap()
            .contains("was lost"),
        "{exceptions}"
    );
    let (status, _) = c.get(&format!("/taskmanagers/{TM}")).await;
    assert_eq!(status, 404);
    assert_eq!(c.get_ok("/overview").await["jobs-failed"], 1);

    // It comes back: it must register again, and its old subtasks stay FAILED.
    assert!(agent.heartbeat().await.reregister);
    agent.register().await;
    assert!(agent.heartbeat().await.watch.is_empty());
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/status")).await["status"],
        "FAILED"
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_when_configured() {
    let dir = temp_dir("token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let c = TestCoordinator::start(&["--token-file", token_file.to_str().unwrap()]).await;

    let mut none = TestAgent::connect(&c.rpc, TM).await;
    assert_eq!(
        none.try_register().await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut wrong = TestAgent::connect_with_token(&c.rpc, TM, Some("s3cret-tokeN")).await;
    assert_eq!(
        wrong.try_register().await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(c.get_ok("/taskmanagers").await, json!({"taskmanagers": []}));

    let mut right = TestAgent::connect_with_token(&c.rpc, TM, Some("s3cret-token")).await;
    right.register().await;
    assert!(!right.heartbeat().await.reregister);
    assert_eq!(
        c.get_ok("/taskmanagers").await["taskmanagers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // An empty token file is refused at start.
    std::fs::write(&token_file, "  \n").unwrap();
    let other = temp_dir("token-empty");
    let err = flamegrid_coordinator::start(config(
        other.path(),
        &["--token-file", token_file.to_str().unwrap()],
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_states_survive_a_graceful_restart() {
    let dir = temp_dir("restart");
    let coordinator = flamegrid_coordinator::start(config(dir.path(), &[]))
        .await
        .unwrap();
    let rpc = format!("http://{}", coordinator.rpc_addr());
    let base = format!("http://{}", coordinator.rest_addr());
    let http = reqwest::Client::new();
    let mut agent = TestAgent::connect(&rpc, TM).await;
    agent.register().await;
    let worker = sleeper();
    let (_, answer) = send(
        http.post(format!("{base}/jobs"))
            .header("content-type", "application/json")
            .body(two_vertex_job(TM, worker.pid()).to_string()),
    )
    .await;
    let running = answer["jobid"].as_str().unwrap().to_string();
    let (_, answer) = send(
        http.post(format!("{base}/jobs"))
            .header("content-type", "application/json")
            .body(two_vertex_job(TM, worker.pid()).to_string()),
    )
    .await;
    let canceled = answer["jobid"].as_str().unwrap().to_string();
    agent.heartbeat().await;
    agent.heartbeat().await;
    assert_eq!(
        send(
            http.patch(format!("{base}/jobs/{canceled}"))
                .header("content-type", "application/json")
        )
        .await
        .0,
        202
    );
    let (_, before) = send(http.get(format!("{base}/jobs/{running}"))).await;
    coordinator.shutdown().await.unwrap();

    let coordinator = flamegrid_coordinator::start(config(dir.path(), &[]))
        .await
        .unwrap();
    let base = format!("http://{}", coordinator.rest_addr());
    let (_, jobs) = send(http.get(format!("{base}/jobs"))).await;
    assert_eq!(
        jobs,
        json!({"jobs": [{"id": running, "status": "RUNNING"}, {"id": canceled, "status": "CANCELED"}]})
    );
    let (_, after) = send(http.get(format!("{base}/jobs/{running}"))).await;
    for key in ["name", "timestamps", "plan", "start-time"] {
        assert_eq!(before[key], after[key], "{key} survives the restart");
    }
    // The agent is unknown to the new coordinator until it registers again.
    let mut agent = TestAgent::connect(&format!("http://{}", coordinator.rpc_addr()), TM).await;
    assert!(agent.heartbeat().await.reregister);
    agent.register().await;
    assert_eq!(
        agent.heartbeat().await.watch.len(),
        3,
        "the running job's subtasks are watched again"
    );
    coordinator.shutdown().await.unwrap();
    drop(worker);
}

/// The real binary on port 0; reads the bound addresses from its first two stdout lines.
fn spawn_binary(data_dir: &std::path::Path) -> (KillOnDrop, String, String) {
    let CoordinatorProcess { child, rest, rpc } = spawn_coordinator(data_dir, &[]);
    (child, rest, rpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_survive_kill_9_of_the_binary() {
    let dir = temp_dir("kill9");
    let http = reqwest::Client::new();
    let worker = sleeper();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for round in 0..2 {
        let (mut child, base, rpc) = spawn_binary(dir.path());
        let mut agent = TestAgent::connect(&rpc, TM).await;
        agent.register().await;
        // Every job acknowledged in earlier rounds is there, with its name.
        let (_, jobs) = send(http.get(format!("{base}/jobs/overview"))).await;
        let listed: Vec<(String, String)> = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["jid"].as_str().unwrap().to_string(),
                    j["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(listed, acknowledged, "round {round}");
        // Register a burst of jobs and kill -9 right after the last acknowledgement.
        for i in 0..5 {
            let mut body = two_vertex_job(TM, worker.pid());
            body["name"] = Value::from(format!("job-{round}-{i}"));
            let (status, answer) = send(
                http.post(format!("{base}/jobs"))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await;
            assert_eq!(status, 202, "{answer}");
            acknowledged.push((
                answer["jobid"].as_str().unwrap().to_string(),
                format!("job-{round}-{i}"),
            ));
        }
        agent.heartbeat().await;
        child.kill();
    }
    let (_child, base, _) = spawn_binary(dir.path());
    let (_, jobs) = send(http.get(format!("{base}/jobs"))).await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), acknowledged.len());
    for (id, _) in &acknowledged {
        let (status, job) = send(http.get(format!("{base}/jobs/{id}"))).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["vertices"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_subtasks_of_agents_that_never_return_fail() {
    let dir = temp_dir("restart-lost");
    let args = ["--heartbeat-timeout-s", "1"];
    let coordinator = flamegrid_coordinator::start(config(dir.path(), &args))
        .await
        .unwrap();
    let mut agent = TestAgent::connect(&format!("http://{}", coordinator.rpc_addr()), TM).await;
    agent.register().await;
    let worker = sleeper();
    let jobid = coordinator
        .registry()
        .register_job(two_vertex_job(TM, worker.pid()).to_string().as_bytes())
        .unwrap();
    agent.heartbeat().await;
    agent.heartbeat().await;
    coordinator.shutdown().await.unwrap();

    // Restarted; the agent never heartbeats again. RUNNING survives the restart, and after one
    // heartbeat timeout of grace the subtasks count as lost.
    let coordinator = flamegrid_coordinator::start(config(dir.path(), &args))
        .await
        .unwrap();
    let registry = coordinator.registry().clone();
    assert_eq!(
        registry.job(&jobid).unwrap().runtime.status.name(),
        "RUNNING"
    );
    poll("the job to fail once the grace period is over", || async {
        (registry.job(&jobid).unwrap().runtime.status.name() == "FAILED").then_some(())
    })
    .await;
    coordinator.shutdown().await.unwrap();
    drop(worker);
}

#[ignore = "slow tier (browser, load, kill loops): cargo test --workspace -- --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_concurrent_writes_loses_no_acknowledged_job() {
    let dir = temp_dir("kill9-mid");
    let http = reqwest::Client::new();
    let worker = sleeper();
    let (mut child, base, rpc) = spawn_binary(dir.path());
    let mut agent = TestAgent::connect(&rpc, TM).await;
    agent.register().await;

    // Eight writers post jobs as fast as they can; the coordinator is killed once some have
    // been acknowledged, with more in flight.
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (http, base, acks) = (http.clone(), base.clone(), acks.clone());
        let mut body = two_vertex_job(TM, worker.pid());
        body["name"] = Value::from(format!("writer-{w}"));
        writers.push(tokio::spawn(async move {
            loop {
                let request = http
                    .post(format!("{base}/jobs"))
                    .header("content-type", "application/json")
                    .body(body.to_string());
                let Ok(response) = request.send().await else {
                    return;
                };
                if response.status() != 202 {
                    return;
                }
                let Ok(answer) = response.json::<Value>().await else {
                    return;
                };
                if acks
                    .send(answer["jobid"].as_str().unwrap().to_string())
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    drop(acks);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 40 {
        acknowledged.push(acked.recv().await.unwrap());
    }
    child.kill();
    for w in writers {
        w.await.unwrap();
    }
    while let Ok(id) = acked.try_recv() {
        acknowledged.push(id);
    }

    // Every acknowledged job is back, and every stored job is whole.
    let (_child, base, _) = spawn_binary(dir.path());
    let (_, jobs) = send(http.get(format!("{base}/jobs"))).await;
    let stored: Vec<String> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged job {id} was lost");
    }
    for id in &stored {
        let (status, job) = send(http.get(format!("{base}/jobs/{id}"))).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["vertices"].as_array().unwrap().len(), 2, "{job}");
        assert_eq!(job["vertices"][0]["parallelism"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_dumps_its_own_threads_with_stacks() {
    let dir = temp_dir("self-dump");
    let (_child, base, _) = spawn_binary(dir.path());
    let (status, dump) =
        send(reqwest::Client::new().get(format!("{base}/jobmanager/thread-dump"))).await;
    assert_eq!(status, 200, "{dump}");
    let infos = dump["threadInfos"].as_array().unwrap();
    assert!(infos.len() > 1, "{dump}");
    let with_frames = infos
        .iter()
        .filter(|t| {
            t["stringifiedThreadInfo"]
                .as_str()
                .unwrap()
                .contains("\n\tat ")
        })
        .count();
    assert!(
        with_frames > 0,
        "a helper process samples the coordinator's stacks: {dump}"
    );
    for t in infos {
        let text = t["stringifiedThreadInfo"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("\"{}\" Id=", t["threadName"].as_str().unwrap())),
            "{text}"
        );
    }
}
