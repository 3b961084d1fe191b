//! Issue 15, Flink's limits over real HTTP: a vertex of 32,768 subtasks and a job of 100,000 are
//! registered and read back (`/jobs/:jobid`, vertex details, subtask times, the overview, a task
//! manager's slots); one subtask more is refused naming the limit, and nothing is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/rest.rs"]
mod support;

use flamegrid_coordinator::registry::validate::{MAX_SUBTASKS_PER_JOB, MAX_SUBTASKS_PER_VERTEX};
use fleet::job_body;
use serde_json::{Value, json};
use support::*;

/// The agents a REST test registers.
async fn agents(c: &TestCoordinator, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for a in 0..n {
        let id = format!("tm-{a}");
        TestAgent::connect(&c.rpc, &id).await.register().await;
        ids.push(id);
    }
    ids
}

async fn post_job(c: &TestCoordinator, body: &str) -> (u16, Value) {
    send(
        c.http
            .post(c.url("/jobs"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flinks_limits_a_vertex_of_32768_and_a_job_of_100000_subtasks() {
    assert_eq!(
        (MAX_SUBTASKS_PER_VERTEX, MAX_SUBTASKS_PER_JOB),
        (32_768, 100_000)
    );
    let c = TestCoordinator::start(&[]).await;
    let tms = agents(&c, 8).await;

    // One vertex at Flink's largest parallelism.
    let (status, answer) = post_job(&c, &job_body(&tms, &[32_768]).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    let wide = answer["jobid"].as_str().unwrap().to_string();
    let job = c.get_ok(&format!("/jobs/{wide}")).await;
    assert_eq!(job["vertices"][0]["parallelism"], 32_768);
    assert_eq!(job["vertices"][0]["tasks"]["DEPLOYING"], 32_768);
    let vertex_id = job["vertices"][0]["id"].as_str().unwrap().to_string();
    let details = c
        .get_ok(&format!("/jobs/{wide}/vertices/{vertex_id}"))
        .await;
    let subtasks = details["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 32_768);
    assert_eq!(subtasks[32_767]["subtask"], 32_767);
    assert_eq!(subtasks[32_767]["taskmanager-id"], tms[32_768 % tms.len()]);

    // A job of 100,000 subtasks over four vertices.
    let body = job_body(&tms, &[32_768, 32_768, 32_768, 1_696]).to_string();
    eprintln!(
        "POST /jobs of 100,000 subtasks: {} bytes ({:.1} MiB)",
        body.len(),
        body.len() as f64 / (1 << 20) as f64
    );
    let (status, answer) = post_job(&c, &body).await;
    assert_eq!(status, 202, "{answer}");
    let big = answer["jobid"].as_str().unwrap().to_string();
    let job = c.get_ok(&format!("/jobs/{big}")).await;
    let vertices = job["vertices"].as_array().unwrap();
    let total: u64 = vertices
        .iter()
        .map(|v| v["parallelism"].as_u64().unwrap())
        .sum();
    assert_eq!((vertices.len(), total), (4, 100_000));
    let last = vertices[3]["id"].as_str().unwrap();
    let details = c.get_ok(&format!("/jobs/{big}/vertices/{last}")).await;
    assert_eq!(details["subtasks"].as_array().unwrap().len(), 1_696);
    let times = c
        .get_ok(&format!("/jobs/{big}/vertices/{last}/subtasktimes"))
        .await;
    assert_eq!(times["subtasks"].as_array().unwrap().len(), 1_696);
    let overview = c.get_ok("/jobs/overview").await;
    assert_eq!(overview["jobs"].as_array().unwrap().len(), 2);
    let tm = c.get_ok(&format!("/taskmanagers/{}", tms[0])).await;
    let assigned: u64 = tm["allocatedSlots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["assignedTasks"].as_u64().unwrap())
        .sum();
    assert_eq!(assigned, (132_768 / tms.len()) as u64, "{tm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subtask_over_a_limit_is_refused_naming_it() {
    let c = TestCoordinator::start(&[]).await;
    let tms = agents(&c, 2).await;
    let (status, answer) = post_job(&c, &job_body(&tms, &[32_769]).to_string()).await;
    assert_eq!(status, 400, "{answer}");
    let errors = answer["errors"].to_string();
    assert!(
        errors.contains("vertices[0].parallelism: expected an integer from 1 to 32768, got 32769")
            && errors
                .contains("vertices[0].subtasks: at most 32768 subtasks per vertex, got 32769"),
        "{errors}"
    );
    let (status, answer) = post_job(
        &c,
        &job_body(&tms, &[32_768, 32_768, 32_768, 1_697]).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["errors"],
        json!(["vertices: at most 100000 subtasks per job, got 100001"])
    );
    // Nothing was stored.
    assert_eq!(c.get_ok("/jobs").await, json!({"jobs": []}));
}
