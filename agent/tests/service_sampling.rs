//! The Sampling gRPC service of the real `flamegrid-agent run`, called over real gRPC against
//! real workloads: samples carry the known call chains; bounds, allow-list, token and capacity
//! refusals carry the right status codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod common;
mod run_support;

use common::TracerHold;
use flamegrid_proto::v1::{self, SampleRequest, ThreadDumpRequest};
use flamegrid_workloads::{Mix, RunningWorkload, Workload};
use run_support::*;
use std::net::SocketAddr;
use tonic::Code;

fn spin_mix() -> Mix {
    Mix {
        spin: 2,
        sleep: 1,
        wait: 1,
        lock: 0,
        churn: 0,
        report_rate: false,
    }
}

/// A workload plus an agent (no token, default policy: own user) with a stand-in coordinator.
struct Setup {
    workload: RunningWorkload,
    agent: AgentProcess,
    addr: SocketAddr,
    _coord: FakeCoordinator,
}

async fn setup(extra: &[&str]) -> Setup {
    let workload = flamegrid_workloads::spawn(Workload::CFramePointers, &spin_mix()).unwrap();
    let coord = FakeCoordinator::start().await;
    let url = coord.url();
    let mut args = vec!["--coordinator", url.as_str(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut agent = AgentProcess::start(&args);
    let addr = agent.wait_listening().await;
    Setup {
        workload,
        agent,
        addr,
        _coord: coord,
    }
}

fn sample_request(selectors: Vec<v1::ThreadSelector>, n: u32, delay_ms: u32) -> SampleRequest {
    SampleRequest {
        request_id: 42,
        selectors,
        num_samples: n,
        delay_ms,
        max_depth: 128,
    }
}

/// Starts a long run (1000 samples, 10 ms apart, request id 1000) that holds the agent's only
/// run slot (`--max-concurrent-runs 1`), and returns once the agent says it has started.
async fn hold_the_only_slot(
    s: &Setup,
    client: &v1::sampling_client::SamplingClient<tonic::transport::Channel>,
) -> tokio::task::JoinHandle<Result<tonic::Response<v1::SampleResponse>, tonic::Status>> {
    let pid = s.workload.pid();
    let mut long_client = client.clone();
    let long = tokio::spawn(async move {
        let mut req = sample_request(vec![by_pid("long", pid, "spin-0")], 1000, 10);
        req.request_id = 1000;
        long_client.sample(req).await
    });
    poll("the long run to hold its slot", || {
        s.agent
            .stderr()
            .lines()
            .any(|l| l.contains("sampling run started") && l.contains("request_id=1000"))
            .then_some(())
    })
    .await;
    long
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_carry_the_spinner_chain() {
    let s = setup(&[]).await;
    let pid = s.workload.pid();
    let mut client = sampling_client(s.addr).await;
    let resp = client
        .sample(sample_request(
            vec![
                by_pid("spinners", pid, "spin-.*"),
                by_pid("sleeper", pid, "sleep-0"),
            ],
            5,
            10,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.request_id, 42);
    assert_eq!(resp.subtasks.len(), 2);
    assert!(resp.start_ms > 0 && resp.end_ms >= resp.start_ms);
    assert_eq!(resp.strings[0], "", "string 0 is always empty");

    let spinners = &resp.subtasks[0];
    assert_eq!(spinners.subtask_key, "spinners");
    assert!(spinners.error.is_empty(), "{}", spinners.error);
    let mut names: Vec<String> = spinners
        .threads
        .iter()
        .map(|t| resp.strings[t.name as usize].clone())
        .collect();
    names.sort();
    assert_eq!(names, ["spin-0", "spin-1"]);
    assert!(spinners.threads.iter().all(|t| t.pid == pid));
    assert_eq!(spinners.samples.len(), 10, "5 samples of 2 threads");
    let chain = Workload::CFramePointers.chains().spin;
    let stacks = stacks(&resp, 0);
    assert!(
        stacks.iter().any(|st| contains_chain(st, chain)),
        "no spinner sample holds {chain:?}: {stacks:#?}"
    );

    let sleeper = &resp.subtasks[1];
    assert!(sleeper.error.is_empty(), "{}", sleeper.error);
    assert_eq!(sleeper.samples.len(), 5);
    let states: Vec<i32> = sleeper.samples.iter().map(|s| s.state).collect();
    assert!(
        states.contains(&(v1::ThreadState::TimedWaiting as i32)),
        "a thread in nanosleep is TIMED_WAITING: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_dump_takes_one_sample_per_thread() {
    let s = setup(&[]).await;
    let pid = s.workload.pid();
    let mut client = sampling_client(s.addr).await;
    let resp = client
        .thread_dump(ThreadDumpRequest {
            selectors: vec![by_pid("all", pid, "")],
            max_depth: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let sub = &resp.subtasks[0];
    assert!(sub.error.is_empty(), "{}", sub.error);
    let expected = s.workload.threads().unwrap().len();
    assert_eq!(sub.threads.len(), expected);
    assert_eq!(sub.samples.len(), expected, "one sample per thread");
    let chain = Workload::CFramePointers.chains().wait;
    assert!(
        stacks(&resp, 0).iter().any(|st| contains_chain(st, chain)),
        "waiter chain {chain:?} missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_bounds_requests_are_invalid_argument() {
    let s = setup(&[]).await;
    let pid = s.workload.pid();
    let mut client = sampling_client(s.addr).await;
    let ok = || vec![by_pid("a", pid, "")];
    let mut cases: Vec<(&str, SampleRequest)> = vec![
        ("num_samples", sample_request(ok(), 0, 10)),
        ("num_samples", sample_request(ok(), 1001, 10)),
        ("delay_ms", sample_request(ok(), 2, 0)),
        ("delay_ms", sample_request(ok(), 2, 10_001)),
        ("selectors", sample_request(vec![], 1, 0)),
        (
            "selectors",
            sample_request(
                (0..1025).map(|i| by_pid(&i.to_string(), pid, "")).collect(),
                1,
                0,
            ),
        ),
        (
            "exactly one of pid or process_name",
            sample_request(vec![v1::ThreadSelector::default()], 1, 0),
        ),
        (
            "selector 0",
            sample_request(vec![by_pid("a", pid, "spin-(")], 1, 0),
        ),
        (
            "selector 0",
            sample_request(vec![by_pid("a", pid, "(a{1000}){1000}")], 1, 0),
        ),
    ];
    let mut deep = sample_request(ok(), 1, 0);
    deep.max_depth = 1025;
    cases.push(("max_depth", deep));
    let mut shallow = sample_request(ok(), 1, 0);
    shallow.max_depth = 0;
    cases.push(("max_depth", shallow));
    for (field, req) in cases {
        let status = client.sample(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field} not named in {:?}",
            status.message()
        );
    }
    let status = client
        .thread_dump(ThreadDumpRequest {
            selectors: ok(),
            max_depth: 2000,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A one-sample request may leave the delay at 0 (it is ignored), and the workload was never
    // stopped by any of the refused requests.
    client.sample(sample_request(ok(), 1, 0)).await.unwrap();
    assert!(s.workload.stopped_threads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_per_subtask_and_whole_requests() {
    let sleeper = SleepProcess::start();
    let workload = flamegrid_workloads::spawn(Workload::CFramePointers, &spin_mix()).unwrap();
    let comm = comm_of(workload.pid());
    let coord = FakeCoordinator::start().await;
    let url = coord.url();
    let mut agent = AgentProcess::start(&[
        "--coordinator",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--allow-comm",
        &comm,
    ]);
    let addr = agent.wait_listening().await;
    let mut client = sampling_client(addr).await;

    // One allowed, one not: the run goes on, the refused subtask carries the reason.
    let resp = client
        .sample(sample_request(
            vec![
                by_pid("allowed", workload.pid(), "spin-0"),
                by_pid("refused", sleeper.pid(), ""),
            ],
            2,
            5,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.subtasks[0].error.is_empty(),
        "{}",
        resp.subtasks[0].error
    );
    assert_eq!(resp.subtasks[0].samples.len(), 2);
    assert_eq!(resp.subtasks[1].subtask_key, "refused");
    assert!(!resp.subtasks[1].error.is_empty());
    assert!(resp.subtasks[1].samples.is_empty());
    // The kind travels beside the text, from the contract's fixed vocabulary, so the
    // coordinator can show why without showing the agent's words.
    assert_eq!(
        resp.subtasks[1].failure,
        v1::SubtaskFailure::OutsideAllowList as i32
    );
    assert_eq!(
        resp.subtasks[0].failure,
        v1::SubtaskFailure::Unspecified as i32
    );

    // Nothing allowed: PERMISSION_DENIED with the reason.
    let status = client
        .sample(sample_request(
            vec![by_pid("refused", sleeper.pid(), "")],
            1,
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("refused"),
        "{:?}",
        status.message()
    );

    // The agent never samples itself, even when its comm is on the list.
    let status = client
        .sample(sample_request(vec![by_pid("self", agent.pid(), "")], 1, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_token_are_unauthenticated() {
    let token_file = temp_path("token");
    std::fs::write(&token_file, "agent-token-0123456789abcdef").unwrap();
    let s = setup(&["--token-file", token_file.to_str().unwrap()]).await;
    let pid = s.workload.pid();
    let mut client = sampling_client(s.addr).await;
    let req = || sample_request(vec![by_pid("spin", pid, "spin-0")], 1, 0);

    let status = client.sample(req()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no token: {status:?}");
    for wrong in [
        "Bearer agent-token-0123456789abcdeX",
        "Bearer agent-token",
        "agent-token-0123456789abcdef",
    ] {
        let mut r = tonic::Request::new(req());
        r.metadata_mut()
            .insert("authorization", wrong.parse().unwrap());
        let status = client.sample(r).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{wrong}: {status:?}");
    }
    let mut r = tonic::Request::new(ThreadDumpRequest {
        selectors: vec![by_pid("d", pid, "")],
        max_depth: 10,
    });
    r.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        client.thread_dump(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut r = tonic::Request::new(req());
    r.metadata_mut().insert(
        "authorization",
        "Bearer agent-token-0123456789abcdef".parse().unwrap(),
    );
    let resp = client.sample(r).await.unwrap().into_inner();
    assert!(
        resp.subtasks[0].error.is_empty(),
        "{}",
        resp.subtasks[0].error
    );

    poll("the refusal in the log with the peer", || {
        s.agent
            .stderr()
            .lines()
            .any(|l| l.contains("refused a sampling call") && l.contains("127.0.0.1"))
            .then_some(())
    })
    .await;
    assert!(
        !s.agent.stderr().contains("agent-token-0123456789abcdef"),
        "the token must never be logged"
    );
    let _ = std::fs::remove_file(token_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_limit_are_resource_exhausted() {
    let s = setup(&["--max-concurrent-runs", "1"]).await;
    let pid = s.workload.pid();
    let client = sampling_client(s.addr).await;

    let long = hold_the_only_slot(&s, &client).await;
    let mut probe = client.clone();
    let refused = {
        let mut refused = None;
        let start = std::time::Instant::now();
        while refused.is_none() {
            assert!(
                !long.is_finished(),
                "the long run ended before a second run was refused"
            );
            assert!(start.elapsed() < HANG_GUARD, "no RESOURCE_EXHAUSTED");
            match probe
                .sample(sample_request(vec![by_pid("short", pid, "spin-1")], 1, 0))
                .await
            {
                Err(status) if status.code() == Code::ResourceExhausted => refused = Some(status),
                Err(status) => panic!("unexpected refusal {status:?}"),
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        refused.unwrap()
    };
    assert!(
        refused.message().contains("--max-concurrent-runs"),
        "{:?}",
        refused.message()
    );
    long.abort();
}

/// A thread the kernel will not let the agent trace (another tracer holds it): the whole
/// request is refused with PERMISSION_DENIED and the reason, not reported as a missing process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_held_by_another_tracer_is_permission_denied() {
    // The refusal is ptrace's: perf events need no attach, so `--sampler perf` (and `auto`)
    // sample a running thread another tracer holds.
    let s = setup(&["--sampler", "ptrace"]).await;
    let tid = s
        .workload
        .tid_of("spin-0")
        .expect("the workload has spin-0");
    // This test process seizes spin-0 (the tracee keeps running) until the hold is dropped.
    let hold = TracerHold::seize(tid);

    let mut client = sampling_client(s.addr).await;
    let status = client
        .sample(sample_request(
            vec![by_pid("held", s.workload.pid(), "spin-0")],
            3,
            5,
        ))
        .await
        .unwrap_err();
    drop(hold);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("another tracer"),
        "{:?}",
        status.message()
    );
    assert!(
        !status.message().contains("no such process"),
        "{:?}",
        status.message()
    );
    // The workload is whole afterwards: no thread left stopped.
    assert!(
        s.workload.stopped_threads().is_empty(),
        "{:?}",
        s.workload.stopped_threads()
    );
}

/// 1,024 subtasks selecting the same threads (issue 12, finding 5): sampled once, every
/// subtask answered. Sampled once per selector they would be 1,024 × threads × 200
/// thread-samples, past the per-run cap, and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_selectors_are_sampled_once_and_each_reported() {
    let s = setup(&[]).await;
    let pid = s.workload.pid();
    let mut client = sampling_client(s.addr).await;
    let selectors: Vec<v1::ThreadSelector> = (0..1024)
        .map(|i| by_pid(&format!("subtask-{i}"), pid, "spin-.*"))
        .collect();
    let resp = client
        .sample(sample_request(selectors, 200, 1))
        .await
        .expect("identical selectors are one target, within the bounds")
        .into_inner();
    assert_eq!(resp.subtasks.len(), 1024);
    for (i, sub) in resp.subtasks.iter().enumerate() {
        assert_eq!(sub.subtask_key, format!("subtask-{i}"));
        assert!(sub.error.is_empty(), "{}", sub.error);
        assert!(!sub.samples.is_empty(), "subtask {i} has no samples");
    }
    assert!(s.workload.stopped_threads().is_empty());
}

/// Work per request is bounded: threads × samples (distinct selectors of one thread each) and
/// samples × delay (a run of hours holding a slot) are INVALID_ARGUMENT with the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_thread_samples_or_too_long_runs_are_invalid() {
    let s = setup(&[]).await;
    let pid = s.workload.pid();
    let mut client = sampling_client(s.addr).await;
    let distinct: Vec<v1::ThreadSelector> = (0..1024)
        .map(|i| by_pid(&format!("k{i}"), pid, &format!("spin-0|never-{i}")))
        .collect();
    expect_invalid(
        &mut client,
        sample_request(distinct, 1000, 1),
        "1024 threads × 1000 samples",
    )
    .await;
    let slow = sample_request(vec![by_pid("slow", pid, "spin-0")], 1000, 10_000);
    expect_invalid(&mut client, slow, "600000").await;
    // Identical selectors are sampled once, but each is answered: the answer is bounded too.
    let same: Vec<v1::ThreadSelector> = (0..1024)
        .map(|i| by_pid(&format!("s{i}"), pid, "spin-0"))
        .collect();
    expect_invalid(&mut client, sample_request(same, 1000, 1), "500000").await;
}

/// Sends `req` and asserts it is refused with INVALID_ARGUMENT whose message names `numbers`.
async fn expect_invalid(
    client: &mut v1::sampling_client::SamplingClient<tonic::transport::Channel>,
    req: SampleRequest,
    numbers: &str,
) {
    match client.sample(req).await {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains(numbers),
                "{numbers:?} not in {:?}",
                status.message()
            );
        }
        Ok(_) => panic!("a request over the bound ({numbers}) was served"),
    }
}

/// Thread-name patterns are compiled only once a request holds a run slot: with every slot
/// taken, a request with a bad pattern is RESOURCE_EXHAUSTED, not INVALID_ARGUMENT; with a
/// slot free it is INVALID_ARGUMENT naming the selector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_are_compiled_only_with_a_run_slot() {
    let s = setup(&["--max-concurrent-runs", "1"]).await;
    let pid = s.workload.pid();
    let client = sampling_client(s.addr).await;
    let long = hold_the_only_slot(&s, &client).await;
    let mut probe = client.clone();
    let bad = || sample_request(vec![by_pid("bad", pid, "spin-(")], 1, 0);
    let status = probe.sample(bad()).await.unwrap_err();
    assert!(
        !long.is_finished(),
        "the long run ended too early for this test"
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    long.abort();
    let status = poll_status(&mut probe, bad, Code::InvalidArgument).await;
    assert!(
        status.message().contains("selector 0"),
        "{:?}",
        status.message()
    );
}

/// Retries `make` until the call fails with `code` (the slot of an aborted call frees once its
/// run has noticed).
async fn poll_status(
    client: &mut v1::sampling_client::SamplingClient<tonic::transport::Channel>,
    make: impl Fn() -> SampleRequest,
    code: Code,
) -> tonic::Status {
    let start = std::time::Instant::now();
    loop {
        match client.sample(make()).await {
            Err(status) if status.code() == code => return status,
            _ => {
                assert!(start.elapsed() < HANG_GUARD, "never got {code:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// A refusal says *that* the process is outside the allow-list, for samples and thread dumps
/// alike, and never echoes the process's uid or comm or what the list holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_only_that_a_process_is_outside_the_allow_list() {
    let workload = flamegrid_workloads::spawn(Workload::CFramePointers, &spin_mix()).unwrap();
    let comm = comm_of(workload.pid());
    let coord = FakeCoordinator::start().await;
    let url = coord.url();
    let mut agent = AgentProcess::start(&[
        "--coordinator",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--allow-user",
        "65534",
        "--allow-comm",
        "some-allowed-name",
    ]);
    let addr = agent.wait_listening().await;
    let mut client = sampling_client(addr).await;
    let sample = client
        .sample(sample_request(vec![by_pid("w", workload.pid(), "")], 1, 0))
        .await
        .unwrap_err();
    let dump = client
        .thread_dump(ThreadDumpRequest {
            selectors: vec![by_pid("w", workload.pid(), "")],
            max_depth: 0,
        })
        .await
        .unwrap_err();
    for status in [sample, dump] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let text = status.message();
        assert!(text.contains("allow-list"), "{text:?}");
        for secret in [comm.as_str(), "uid", "65534", "some-allowed-name"] {
            assert!(!text.contains(secret), "{secret:?} echoed: {text:?}");
        }
    }
}
