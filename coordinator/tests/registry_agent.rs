//! The registry driven by a real `flamegrid-agent run` (started in-process through the agent
//! library, registering and heartbeating over real gRPC on loopback) watching real processes:
//! process exit → FINISHED, a thread selection that matches nothing → FAILED, agent gone →
//! dropped from `/taskmanagers` and its subtasks FAILED. Also the shared token end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_agent::cli::run::{RunArgs, RunningAgent, serve};
use serde_json::{Value, json};
use support::*;
use tokio::sync::oneshot;

/// A real agent in this process, stopped when [`StopOnDrop::stop`] runs or the test ends.
struct StopOnDrop {
    stop: Option<oneshot::Sender<()>>,
    agent: Option<RunningAgent>,
}

impl StopOnDrop {
    async fn start(rpc: &str, token_file: Option<&std::path::Path>) -> Self {
        let mut args = RunArgs::new(rpc.to_string());
        args.listen = ([127, 0, 0, 1], 0).into();
        args.heartbeat_timeout_s = 2;
        args.credentials.token_file = token_file.map(|p| p.to_path_buf());
        let (stop, stopped) = oneshot::channel::<()>();
        let agent = serve(args, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        StopOnDrop {
            stop: Some(stop),
            agent: Some(agent),
        }
    }

    fn id(&self) -> String {
        self.agent.as_ref().unwrap().agent_id.clone()
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(agent) = self.agent.take() {
            let _ = agent.wait().await;
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn one_vertex_job(name: &str, tm: &str, pid: u32, thread_name: &str) -> Value {
    json!({"name": name, "vertices": [{"name": "only", "parallelism": 1,
        "subtasks": [{"taskmanager": tm, "pid": pid, "thread_name": thread_name}]}]})
}

async fn wait_for_status(c: &TestCoordinator, jobid: &str, status: &str) {
    poll(&format!("job {jobid} to become {status}"), || async {
        (c.get_ok(&format!("/jobs/{jobid}/status")).await["status"] == status).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_drives_subtask_states() {
    let c = TestCoordinator::start(&["--heartbeat-timeout-s", "2"]).await;
    let mut agent = StopOnDrop::start(&c.rpc, None).await;
    let tm = agent.id();
    let details = poll("the agent to register", || async {
        let (status, body) = c.get(&format!("/taskmanagers/{tm}")).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(
        details["path"],
        agent.agent.as_ref().unwrap().advertised_address.as_str()
    );
    assert!(details["hardware"]["cpuCores"].as_u64().unwrap() > 0);
    assert!(details["hardware"]["physicalMemory"].as_u64().unwrap() > 0);
    // The host facts a real agent registers, shown under Flink's keys' side.
    let proc_text = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_string();
    assert_eq!(
        details["hostname"].as_str(),
        Some(proc_text("/proc/sys/kernel/hostname").as_str()),
        "{details}"
    );
    assert_eq!(
        details["kernel"].as_str(),
        Some(proc_text("/proc/sys/kernel/osrelease").as_str()),
        "{details}"
    );
    assert_eq!(
        details["agentVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "the agent and the coordinator are built from one workspace version"
    );
    assert!(!details["os"].as_str().unwrap().is_empty(), "{details}");
    let env = c.get_ok("/jobmanager/environment").await;
    assert_eq!(
        (env["host"]["hostname"].as_str(), env["host"]["os"].as_str()),
        (details["hostname"].as_str(), details["os"].as_str()),
        "the coordinator and the agent share this host"
    );

    let mut finishing = sleeper();
    let lasting = sleeper();
    let a = c
        .register_job(&one_vertex_job("exits", &tm, finishing.pid(), "sleep"))
        .await;
    let b = c
        .register_job(&one_vertex_job("lasts", &tm, lasting.pid(), "sleep"))
        .await;
    let none = c
        .register_job(&one_vertex_job(
            "no such thread",
            &tm,
            lasting.pid(),
            "nope-[0-9]+",
        ))
        .await;
    wait_for_status(&c, &a, "RUNNING").await;
    let vid = c.get_ok(&format!("/jobs/{a}")).await["vertices"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    poll("subtask RUNNING", || async {
        let v = c.get_ok(&format!("/jobs/{a}/vertices/{vid}")).await;
        (v["subtasks"][0]["status"] == "RUNNING").then_some(())
    })
    .await;
    // A selection that matches no thread of a live process never runs.
    wait_for_status(&c, &none, "FAILED").await;

    // The watched process exits.
    finishing.kill();
    wait_for_status(&c, &a, "FINISHED").await;
    assert_eq!(
        c.get_ok(&format!("/jobs/{b}/status")).await["status"],
        "RUNNING"
    );

    // Metrics come from the agent's heartbeats.
    let metrics = c.get_ok(&format!("/taskmanagers/{tm}/metrics")).await;
    assert!(!metrics.as_array().unwrap().is_empty());

    // The agent goes away: dropped after the heartbeat timeout, its running subtasks FAIL.
    agent.stop().await;
    poll("the agent to be dropped", || async {
        c.get_ok("/taskmanagers").await["taskmanagers"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    wait_for_status(&c, &b, "FAILED").await;
    assert_eq!(
        c.get_ok(&format!("/jobs/{a}/status")).await["status"],
        "FINISHED",
        "terminal states are final"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_registers_with_the_shared_token() {
    let dir = temp_dir("agent-token");
    let token = dir.path().join("token");
    std::fs::write(&token, "agent-and-coordinator\n").unwrap();
    let c = TestCoordinator::start(&["--token-file", token.to_str().unwrap()]).await;
    let _agent = StopOnDrop::start(&c.rpc, Some(&token)).await;
    poll("the agent to register with the token", || async {
        (c.get_ok("/taskmanagers").await["taskmanagers"]
            .as_array()
            .unwrap()
            .len()
            == 1)
            .then_some(())
    })
    .await;
}
