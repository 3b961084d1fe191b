//! Graceful shutdown of `flamegrid-agent run`: SIGTERM during a long sampling run ends the run
//! early with what it has, the process exits cleanly, and no thread of the target is left stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod run_support;

use flamegrid_workloads::{Mix, Workload};
use run_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_run_ends_it_and_exits_cleanly() {
    let workload = flamegrid_workloads::spawn(
        Workload::CFramePointers,
        &Mix {
            spin: 2,
            sleep: 1,
            wait: 1,
            lock: 1,
            churn: 0,
            report_rate: false,
        },
    )
    .unwrap();
    let pid = workload.pid();
    let coord = FakeCoordinator::start().await;
    let mut agent =
        AgentProcess::start(&["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"]);
    let addr = agent.wait_listening().await;
    let mut client = sampling_client(addr).await;

    // 1000 samples of every thread, 10 ms apart: far longer than the test waits.
    let long = tokio::spawn(async move {
        client
            .sample(flamegrid_proto::v1::SampleRequest {
                request_id: 1,
                selectors: vec![by_pid("all", pid, "")],
                num_samples: 1000,
                delay_ms: 10,
                max_depth: 64,
            })
            .await
    });
    poll("the run to start", || {
        agent
            .stderr()
            .contains("sampling run started")
            .then_some(())
    })
    .await;
    // Give the run some wall time before the signal: wait until a spinner has burnt another
    // ~50 ms of CPU (an ordering event, not a timing assertion).
    let spin = workload.tid_of("spin-0").unwrap();
    let start_ticks = workload.cpu_ticks(spin).unwrap();
    poll("the spinner to run on", || {
        (workload.cpu_ticks(spin).unwrap() >= start_ticks + 5).then_some(())
    })
    .await;
    agent.terminate();

    let resp = long
        .await
        .unwrap()
        .expect("the cancelled run answers with what it has")
        .into_inner();
    let sub = &resp.subtasks[0];
    assert!(sub.error.is_empty(), "{}", sub.error);
    let threads = workload.threads().unwrap().len();
    assert!(
        sub.samples.len() < 1000 * threads,
        "the run ended early ({} samples)",
        sub.samples.len()
    );
    eprintln!(
        "the cancelled run answered with {} samples of {threads} threads",
        sub.samples.len()
    );

    let status = agent.wait_exit().await;
    assert!(
        status.success(),
        "agent exit status {status}:\n{}",
        agent.stderr()
    );
    assert!(agent.stderr().contains("shutting down"));

    for _ in 0..5 {
        assert_eq!(
            workload.stopped_threads(),
            Vec::<u32>::new(),
            "a workload thread was left stopped"
        );
    }
    let before = workload.cpu_ticks(spin).unwrap();
    poll("the spinner to keep running", || {
        (workload.cpu_ticks(spin).unwrap() > before).then_some(())
    })
    .await;
}
