//! `flamegrid-agent run` against a stand-in coordinator: registration with host facts,
//! heartbeats with metrics and liveness, re-registration, a coordinator that is away at first,
//! and the shared token on registry calls.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod run_support;

use flamegrid_proto::v1;
use flamegrid_workloads::{Mix, Workload};
use run_support::*;
use std::sync::atomic::Ordering;

fn spin_mix() -> Mix {
    Mix {
        spin: 2,
        sleep: 1,
        wait: 0,
        lock: 0,
        churn: 0,
        report_rate: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_host_facts_then_heartbeats_metrics() {
    let coord = FakeCoordinator::start().await;
    let mut agent =
        AgentProcess::start(&["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"]);
    let listening = agent.wait_listening().await;

    let (reg, auth) = coord.wait_registration(1).await;
    assert_eq!(auth, None, "no token configured, none sent");
    assert_eq!(
        reg.address,
        format!("http://{listening}"),
        "loopback listen advertises itself"
    );
    assert_eq!(
        reg.agent_id.len(),
        32,
        "default id is 32 hex: {:?}",
        reg.agent_id
    );
    assert!(reg.agent_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(reg.pid, agent.pid());
    let host = reg.host.expect("host facts");
    assert!(!host.hostname.is_empty());
    assert!(host.cpu_cores >= 1);
    assert!(host.physical_memory > 0);
    assert!(host.free_memory > 0 && host.free_memory <= host.physical_memory);
    assert!(!host.os.is_empty());
    assert!(!host.kernel.is_empty());
    assert_eq!(host.agent_version, env!("CARGO_PKG_VERSION"));

    let hb = coord
        .wait_heartbeat("a heartbeat with metrics", |h| !h.metrics.is_empty())
        .await;
    assert_eq!(hb.agent_id, reg.agent_id);
    assert!(hb.free_memory > 0);
    for name in [
        "System.CPU.Usage",
        "System.CPU.Load1",
        "System.Memory.Used",
        "System.Memory.Free",
        "System.Memory.Total",
        "System.Threads.Count",
    ] {
        assert!(
            hb.metrics.contains_key(name),
            "heartbeat lacks {name}: {:?}",
            hb.metrics
        );
    }
    assert_eq!(
        hb.metrics["System.Memory.Total"],
        host.physical_memory as f64
    );
    // Heartbeats keep coming.
    let seen = coord.heartbeats().len();
    poll("more heartbeats", || {
        (coord.heartbeats().len() >= seen + 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_report_liveness_of_watched_workload() {
    let workload = flamegrid_workloads::spawn(Workload::CFramePointers, &spin_mix()).unwrap();
    let pid = workload.pid();
    let coord = FakeCoordinator::start().await;
    *coord.state.watch.lock().unwrap() = vec![
        by_pid("spinners", pid, "spin-.*"),
        by_pid("everything", pid, ""),
        by_pid("nobody", pid, "no-such-thread"),
        v1::ThreadSelector {
            subtask_key: "by-name".into(),
            process: Some(v1::thread_selector::Process::ProcessName(comm_of(pid))),
            ..Default::default()
        },
    ];
    let _agent = AgentProcess::start(&["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"]);

    let find = |h: &v1::HeartbeatRequest, key: &str| {
        h.liveness.iter().find(|l| l.subtask_key == key).cloned()
    };
    let alive = coord
        .wait_heartbeat("liveness of the running workload", |h| {
            find(h, "spinners").is_some_and(|l| l.alive)
        })
        .await;
    assert_eq!(alive.liveness.len(), 4, "one entry per watched selector");
    let spinners = find(&alive, "spinners").unwrap();
    assert_eq!((spinners.pid, spinners.threads), (pid, 2));
    let everything = find(&alive, "everything").unwrap();
    assert!(
        everything.alive && everything.threads >= 4,
        "main + 2 spinners + sleeper: {everything:?}"
    );
    let nobody = find(&alive, "nobody").unwrap();
    assert!(
        !nobody.alive,
        "a thread selection matching nothing is not alive: {nobody:?}"
    );
    assert_eq!(nobody.failure(), v1::SubtaskFailure::NoMatchingThread);
    assert_eq!(spinners.failure(), v1::SubtaskFailure::Unspecified);
    // By name: the oldest process of that comm, which may be another test's workload.
    let by_name = find(&alive, "by-name").unwrap();
    assert!(by_name.alive && by_name.pid != 0, "{by_name:?}");

    drop(workload); // SIGKILL + reap
    let gone = coord
        .wait_heartbeat("liveness of the killed workload", |h| {
            find(h, "spinners").is_some_and(|l| !l.alive)
                && find(h, "everything").is_some_and(|l| !l.alive)
        })
        .await;
    let spinners = find(&gone, "spinners").unwrap();
    assert_eq!(spinners.threads, 0);
    // Why, in the sampling answer's words: the coordinator keeps it for every flame graph view.
    assert_eq!(spinners.failure(), v1::SubtaskFailure::ProcessNotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregisters_when_the_coordinator_asks() {
    let coord = FakeCoordinator::start().await;
    let _agent = AgentProcess::start(&[
        "--coordinator",
        &coord.url(),
        "--listen",
        "127.0.0.1:0",
        "--id",
        "tm-1",
    ]);
    let (first, _) = coord.wait_registration(1).await;
    assert_eq!(first.agent_id, "tm-1");
    poll("a heartbeat", || {
        (!coord.heartbeats().is_empty()).then_some(())
    })
    .await;
    coord.state.reregister_next.store(true, Ordering::SeqCst);
    let (second, _) = coord.wait_registration(2).await;
    assert_eq!(second.agent_id, "tm-1");
    assert_eq!(second.address, first.address);
    // And heartbeats resume after the second registration.
    let seen = coord.heartbeats().len();
    poll("heartbeats after re-registration", || {
        (coord.heartbeats().len() > seen).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_sampling_while_the_coordinator_is_away_then_registers() {
    // Reserve a port for the coordinator, then leave it closed for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coord_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut agent = AgentProcess::start(&[
        "--coordinator",
        &format!("http://{coord_addr}"),
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = agent.wait_listening().await;
    poll("a logged registration failure", || {
        agent.stderr().contains("register failed").then_some(())
    })
    .await;

    // Sampling is served meanwhile (a bounds error proves the service answers; it needs no sampler).
    let mut client = sampling_client(addr).await;
    let status = client
        .sample(v1::SampleRequest {
            selectors: vec![by_pid("x", 1, "")],
            num_samples: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let coord = FakeCoordinator::start_on(coord_addr).await;
    let (reg, _) = coord.wait_registration(1).await;
    assert_eq!(reg.address, format!("http://{addr}"));
    poll("a logged recovery", || {
        agent
            .stderr()
            .contains("coordinator reachable again")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_the_shared_token_to_the_coordinator() {
    let token_file = temp_path("token");
    std::fs::write(&token_file, "s3cret-token-for-tests-0123456789\n").unwrap();
    let coord = FakeCoordinator::start().await;
    let _agent = AgentProcess::start(&[
        "--coordinator",
        &coord.url(),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let (_, auth) = coord.wait_registration(1).await;
    assert_eq!(
        auth.as_deref(),
        Some("Bearer s3cret-token-for-tests-0123456789")
    );
    poll("a heartbeat", || {
        (!coord.heartbeats().is_empty()).then_some(())
    })
    .await;
    assert!(
        coord
            .heartbeats()
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer s3cret-token-for-tests-0123456789"))
    );
    let _ = std::fs::remove_file(token_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_fail_with_one_line_and_start_nothing() {
    for args in [
        vec![
            "--coordinator",
            "ftp://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ],
        vec![
            "--coordinator",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--id",
            "a/b",
        ],
        vec![
            "--coordinator",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            "/nonexistent/token",
        ],
        vec![
            "--coordinator",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--advertise",
            "10.0.0.1:6122",
        ],
        vec![
            "--coordinator",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--max-concurrent-runs",
            "0",
        ],
    ] {
        let mut agent = AgentProcess::start(&args);
        let status = agent.wait_exit().await;
        assert!(!status.success(), "{args:?} should fail");
        let err = agent.stderr();
        assert!(
            !err.contains("listening on"),
            "{args:?} must not start serving:\n{err}"
        );
        assert!(!err.trim().is_empty(), "{args:?}: no reason given");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flag_also_reads_its_environment_variable() {
    let coord = FakeCoordinator::start().await;
    let url = coord.url();
    let mut agent = AgentProcess::start_with_env(
        &[],
        &[
            ("FLAMEGRID_COORDINATOR", url.as_str()),
            ("FLAMEGRID_LISTEN", "127.0.0.1:0"),
            ("FLAMEGRID_ID", "from-env"),
            ("FLAMEGRID_ADVERTISE", "http://agent.example:6122"),
            ("FLAMEGRID_MAX_CONCURRENT_RUNS", "2"),
            ("FLAMEGRID_ALLOW_COMM", "sleep,cat"),
            ("FLAMEGRID_HEARTBEAT_TIMEOUT_S", "45"),
        ],
    );
    agent.wait_listening().await;
    let (reg, _) = coord.wait_registration(1).await;
    assert_eq!(reg.agent_id, "from-env");
    assert_eq!(reg.address, "http://agent.example:6122");
    assert!(
        agent.stderr().contains("max_concurrent_runs=2"),
        "{}",
        agent.stderr()
    );
}

/// A watched subtask naming a process outside the allow-list is reported exactly like one
/// naming a process that does not exist: not alive, pid 0 (issue 12, finding 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_honours_the_allow_list() {
    let workload = flamegrid_workloads::spawn(Workload::CFramePointers, &spin_mix()).unwrap();
    let coord = FakeCoordinator::start().await;
    *coord.state.watch.lock().unwrap() = vec![
        by_pid("outside", workload.pid(), ""),
        by_pid("missing", u32::MAX - 7, ""),
    ];
    let _agent = AgentProcess::start(&[
        "--coordinator",
        &coord.url(),
        "--listen",
        "127.0.0.1:0",
        "--allow-user",
        "65534",
    ]);
    let beat = coord
        .wait_heartbeat("liveness of the watched selectors", |h| {
            h.liveness.len() == 2
        })
        .await;
    let outside = beat.liveness[0].clone();
    let missing = beat.liveness[1].clone();
    assert_eq!(
        (outside.alive, outside.pid, outside.threads),
        (missing.alive, missing.pid, missing.threads),
        "a process outside the allow-list must look like a missing one: {outside:?} vs {missing:?}"
    );
    assert!(!outside.alive && outside.pid == 0, "{outside:?}");
}

/// A heartbeat answer watching 100,000 subtasks (about 9 MB, past tonic's 4 MiB default) is
/// accepted, and the next heartbeat reports the liveness of every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_100000_watched_subtasks() {
    let workload = flamegrid_workloads::spawn(Workload::CFramePointers, &spin_mix()).unwrap();
    let pid = workload.pid();
    let coord = FakeCoordinator::start().await;
    // Keys as long as the coordinator's (job id, vertex id, subtask index).
    *coord.state.watch.lock().unwrap() = (0..100_000)
        .map(|i| {
            by_pid(
                &format!("0123456789abcdef0123456789abcdef:fedcba9876543210fedcba9876543210:{i}"),
                pid,
                if i % 2 == 0 { "spin-.*" } else { "" },
            )
        })
        .collect();
    let _agent = AgentProcess::start(&["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"]);
    let beat = coord
        .wait_heartbeat("a heartbeat with 100,000 liveness entries", |h| {
            h.liveness.len() == 100_000
        })
        .await;
    assert!(beat.liveness.iter().all(|l| l.alive && l.pid == pid));
    assert_eq!(beat.liveness[0].threads, 2, "{:?}", beat.liveness[0]);
}

/// DESIGN.md "Secure defaults": `run` on a non-loopback --listen without --token-file or
/// mutual TLS refuses to start with one line naming --token-file; --insecure (or
/// FLAMEGRID_INSECURE) starts with a warning; --help explains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reachable_listener_needs_credentials_or_insecure() {
    let coord = FakeCoordinator::start().await;
    let url = coord.url();
    let mut refused = AgentProcess::start(&["--coordinator", &url, "--listen", "0.0.0.0:0"]);
    let status = refused.wait_exit().await;
    assert!(!status.success(), "must refuse to start");
    let err = refused.stderr();
    assert!(!err.contains("listening on"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--token-file") && err.contains("--insecure"),
        "{err}"
    );

    for (args, env) in [
        (vec!["--listen", "0.0.0.0:0", "--insecure"], vec![]),
        (
            vec!["--listen", "0.0.0.0:0"],
            vec![("FLAMEGRID_INSECURE", "true")],
        ),
    ] {
        let mut all = vec!["--coordinator", url.as_str()];
        all.extend(args);
        let mut agent = AgentProcess::start_with_env(&all, &env);
        agent.wait_listening().await;
        assert!(
            agent.stderr().contains("WARN") && agent.stderr().contains("--insecure"),
            "{}",
            agent.stderr()
        );
    }

    let token_file = temp_path("token");
    std::fs::write(&token_file, "a-long-enough-shared-token-0123456789\n").unwrap();
    let token_arg = token_file.to_string_lossy().into_owned();
    let mut guarded = AgentProcess::start(&[
        "--coordinator",
        &url,
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        &token_arg,
    ]);
    guarded.wait_listening().await;
    assert!(
        !guarded.stderr().contains("--insecure"),
        "{}",
        guarded.stderr()
    );
    let _ = std::fs::remove_file(token_file);

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_flamegrid-agent"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["--insecure", "FLAMEGRID_INSECURE", "PR_SET_NAME"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
