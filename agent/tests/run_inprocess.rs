//! The library entry point `flamegrid_agent::cli::run::serve`, as the coordinator's `--demo`
//! uses it: an agent inside the caller's process, on a port the caller learns, stopped by a
//! future the caller completes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod run_support;

use flamegrid_agent::cli::run::{RunArgs, serve};
use flamegrid_proto::v1;
use run_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_in_process_reports_its_address_and_stops_on_request() {
    let coord = FakeCoordinator::start().await;
    let mut args = RunArgs::new(coord.url());
    args.listen = "127.0.0.1:0".parse().unwrap();
    args.id = Some("demo-agent".into());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = serve(args, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    assert_ne!(agent.local_addr.port(), 0, "the real port is reported");
    assert_eq!(
        agent.advertised_address,
        format!("http://{}", agent.local_addr)
    );
    assert_eq!(agent.agent_id, "demo-agent");

    let (reg, _) = coord.wait_registration(1).await;
    assert_eq!(
        (reg.agent_id.as_str(), reg.address.as_str()),
        ("demo-agent", agent.advertised_address.as_str())
    );
    assert_eq!(reg.pid, std::process::id());

    let mut client = sampling_client(agent.local_addr).await;
    let status = client
        .sample(v1::SampleRequest {
            selectors: vec![by_pid("x", 1, "")],
            num_samples: 1,
            max_depth: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    stop.send(()).unwrap();
    agent.wait().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(agent_addr_after_stop(&reg.address))
            .await
            .is_err(),
        "still listening"
    );
}

fn agent_addr_after_stop(address: &str) -> std::net::SocketAddr {
    address.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_bad_arguments_before_binding() {
    let mut args = RunArgs::new("http://127.0.0.1:1");
    args.listen = "127.0.0.1:0".parse().unwrap();
    args.id = Some(String::new());
    let err = serve(args, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("--id"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_all_interfaces_advertises_the_route_to_the_coordinator() {
    let coord = FakeCoordinator::start().await;
    let mut args = RunArgs::new(coord.url());
    args.listen = "0.0.0.0:0".parse().unwrap();
    // Reachable from other hosts without credentials: only with --insecure.
    args.insecure = true;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = serve(args, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    // The coordinator is on loopback, so loopback is the address it can reach the agent at.
    assert_eq!(
        agent.advertised_address,
        format!("http://127.0.0.1:{}", agent.local_addr.port())
    );
    let (reg, _) = coord.wait_registration(1).await;
    assert_eq!(reg.address, agent.advertised_address);
    stop.send(()).unwrap();
    agent.wait().await.unwrap();
}
