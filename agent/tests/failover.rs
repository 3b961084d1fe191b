//! `flamegrid-agent run` given several coordinators (`--coordinator A,B`): real coordinator
//! processes on loopback (their own `--data-dir`, or one `--database-url` when a test
//! PostgreSQL server is configured: the replicated case), SIGKILLed under the agent.
//!
//! The agent settles on the first coordinator that answers, moves to the next one when the one
//! in use dies (logged once, counted in `/metrics`), keeps heartbeating there, goes round the
//! list with its backoff while every coordinator is down, and comes back when one returns. A bad
//! URL anywhere in the list is refused at start, naming it.
//!
//! The coordinator's executable must be built: `cargo build -p flamegrid-coordinator --bin
//! flamegrid-coordinator` (`cargo test --workspace` builds it first).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod run_support;

use flamegrid_testkit::{free_port, temp_dir};
use run_support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// The coordinators' heartbeat timeout in these tests: beats every 2 s.
const HEARTBEAT_TIMEOUT_S: &str = "6";

/// What the agent logs when it moves to another coordinator.
const MOVE_LINE: &str = "failing over to the next coordinator";

/// A real `flamegrid-coordinator` on loopback ports of its own; SIGKILLed when dropped.
struct CoordinatorProcess {
    process: KillOnDrop,
    rest: u16,
    rpc: u16,
}

impl CoordinatorProcess {
    /// Starts on fresh free ports.
    fn start(data_dir: &Path, database_url: Option<&str>) -> Self {
        Self::start_on(free_port(), free_port(), data_dir, database_url)
    }

    /// Starts on the given ports (a restart where the agent expects it).
    fn start_on(rest: u16, rpc: u16, data_dir: &Path, database_url: Option<&str>) -> Self {
        let mut command = Command::new(flamegrid_testkit::executable("flamegrid-coordinator"));
        command
            .args(["--rest-addr", &format!("127.0.0.1:{rest}")])
            .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--heartbeat-timeout-s", HEARTBEAT_TIMEOUT_S]);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLAMEGRID_") {
                command.env_remove(k);
            }
        }
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let coordinator = CoordinatorProcess {
            process: KillOnDrop(command.spawn().unwrap()),
            rest,
            rpc,
        };
        flamegrid_testkit::wait_for("the coordinator's REST listener", || {
            (http_get(rest, "/taskmanagers").map(|(status, _)| status) == Some(200)).then_some(())
        });
        coordinator
    }

    /// The URL agents register at.
    fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc)
    }

    /// The epoch-ms time of the agent's last heartbeat, if this coordinator lists the agent.
    fn last_heartbeat(&self, agent: &str) -> Option<i64> {
        let (status, body) = http_get(self.rest, "/taskmanagers")?;
        assert_eq!(status, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        doc["taskmanagers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|tm| tm["id"] == agent)
            .map(|tm| tm["timeSinceLastHeartbeat"].as_i64().unwrap())
    }

    /// Waits until the agent has heartbeaten this coordinator after `after_ms`, twice (so it
    /// keeps heartbeating here); returns the time since `start` at which it was first seen.
    fn wait_heartbeats_after(&self, agent: &str, after_ms: i64) -> std::time::Duration {
        let start = std::time::Instant::now();
        let first = flamegrid_testkit::wait_for("a heartbeat of the agent", || {
            self.last_heartbeat(agent).filter(|&t| t > after_ms)
        });
        let seen_after = start.elapsed();
        flamegrid_testkit::wait_for("a later heartbeat of the agent", || {
            self.last_heartbeat(agent).filter(|&t| t > first)
        });
        seen_after
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        self.process.kill();
    }
}

/// `GET path` on a loopback REST port with HTTP/1.0 (no chunking): (status, body), or `None`
/// when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The agent's `/metrics` as (name, value) of unlabelled samples and `url` of the info metric.
fn agent_metrics(port: u16) -> (Vec<(String, f64)>, String) {
    let (status, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let mut values = Vec::new();
    let mut url = String::new();
    for line in body.lines() {
        if let Some((name, labels, value)) = flamegrid_proto::prometheus::parse_line(line).unwrap()
        {
            if name == "flamegrid_agent_coordinator_info" {
                url = labels
                    .into_iter()
                    .find(|(k, _)| k == "url")
                    .map(|(_, v)| v)
                    .unwrap();
            } else if labels.is_empty() {
                values.push((name, value));
            }
        }
    }
    (values, url)
}

/// A real agent given the `--coordinator` flags `coordinators` (one comma-separated list, or
/// the flag repeated), with id `id` and `/metrics` on a port of its own, once it listens.
async fn agent_for(coordinators: &[&str], id: &str) -> (AgentProcess, u16) {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut args = coordinators.to_vec();
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--id",
        id,
        "--metrics-listen",
        &metrics,
    ]);
    let mut agent = AgentProcess::start(&args);
    agent.wait_listening().await;
    (agent, metrics_port)
}

/// Asserts that the agent's `/metrics` (on `port`) names `url`, the `index`-th of its list, as
/// the coordinator in use; returns the unlabelled samples.
fn assert_in_use(port: u16, url: &str, index: usize) -> Vec<(String, f64)> {
    let (values, in_use) = agent_metrics(port);
    assert_eq!(in_use, url);
    assert_eq!(
        metric(&values, "flamegrid_agent_coordinator_index"),
        index as f64
    );
    values
}

fn metric(values: &[(String, f64)], name: &str) -> f64 {
    values
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {values:?}"))
        .1
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The `retry_in_ms` of every failure line the agent logged in `log`.
fn retries(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("retry_in_ms=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// The move lines of `log`.
fn moves(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(MOVE_LINE))
        .map(str::to_string)
        .collect()
}

/// Two coordinators, an agent given both: it registers with the first; the first is killed and
/// it heartbeats the second; both are killed and it goes round the list with its backoff; the
/// first restarts and the agent is back there.
async fn fails_over_and_back(database_url: Option<&str>) {
    let (dir_a, dir_b) = (temp_dir("failover-a"), temp_dir("failover-b"));
    let mut a = CoordinatorProcess::start(dir_a.path(), database_url);
    let mut b = CoordinatorProcess::start(dir_b.path(), database_url);
    let (a_url, b_url) = (a.rpc_url(), b.rpc_url());
    let agent_id = "failover-agent";
    let both = format!("{a_url},{b_url}");
    let (mut agent, metrics_port) = agent_for(&["--coordinator", &both], agent_id).await;

    // The first coordinator of the list, which answers, is the one in use.
    a.wait_heartbeats_after(agent_id, 0);
    let values = assert_in_use(metrics_port, &a_url, 0);
    assert_eq!(
        metric(&values, "flamegrid_agent_coordinator_failovers_total"),
        0.0
    );
    assert_eq!(metric(&values, "flamegrid_agent_coordinator_up"), 1.0);
    if database_url.is_none() {
        assert_eq!(
            b.last_heartbeat(agent_id),
            None,
            "the second coordinator has not heard of the agent"
        );
    }
    assert!(moves(&agent.stderr()).is_empty(), "{}", agent.stderr());

    // The first dies: the agent heartbeats the second, keeping its id.
    let killed_at = now_ms();
    let log_before = agent.stderr().len();
    a.kill();
    let took = b.wait_heartbeats_after(agent_id, killed_at);
    eprintln!(
        "the second coordinator heard the agent {} ms after the first was killed \
         (heartbeat timeout {HEARTBEAT_TIMEOUT_S} s)",
        took.as_millis()
    );
    let log = agent.stderr();
    let moved = moves(&log);
    assert_eq!(moved.len(), 1, "one move, logged once:\n{log}");
    assert!(
        moved[0].contains(&format!("from={a_url}")) && moved[0].contains(&format!("to={b_url}")),
        "the move says from where to where: {}",
        moved[0]
    );
    assert!(
        moved[0].contains("calls to it failed in a row") || moved[0].contains("failing for"),
        "the move says why: {}",
        moved[0]
    );
    // One refused call retried after the first backoff step, the second leaves at once.
    assert_eq!(
        retries(&log[log_before..]),
        [500, 0],
        "{}",
        &log[log_before..]
    );
    let values = assert_in_use(metrics_port, &b_url, 1);
    assert_eq!(
        metric(&values, "flamegrid_agent_coordinator_failovers_total"),
        1.0
    );

    // Both down: round-robin, one call per backoff step, no spinning.
    let log_before = agent.stderr().len();
    b.kill();
    let down = poll("the agent to try both coordinators a few times", || {
        let log = agent.stderr()[log_before..].to_string();
        (retries(&log).len() >= 5).then_some(log)
    })
    .await;
    assert_eq!(
        retries(&down)[..5],
        [500, 0, 1000, 2000, 4000],
        "a retry after the first backoff step, the move at once, then one call per doubling \
         step:\n{down}"
    );
    assert!(
        moves(&down).len() >= 4,
        "with every coordinator down, each failed call moves on:\n{down}"
    );
    let (values, _) = agent_metrics(metrics_port);
    assert_eq!(metric(&values, "flamegrid_agent_coordinator_up"), 0.0);

    // The first comes back where it was: the agent finds it and heartbeats it.
    let restarted_at = now_ms();
    let a_again = CoordinatorProcess::start_on(a.rest, a.rpc, dir_a.path(), database_url);
    a_again.wait_heartbeats_after(agent_id, restarted_at);
    let values = assert_in_use(metrics_port, &a_url, 0);
    assert_eq!(metric(&values, "flamegrid_agent_coordinator_up"), 1.0);
    assert!(agent.try_exit().is_none(), "the agent kept running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_between_coordinators_with_their_own_data_dirs() {
    fails_over_and_back(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_between_replicas_on_one_database() {
    let Some(database) = flamegrid_testkit::postgres::scratch_database("agent_failover") else {
        return;
    };
    fails_over_and_back(Some(&database.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_coordinator_that_answers_is_used() {
    let dir = temp_dir("failover-first");
    let live = CoordinatorProcess::start(dir.path(), None);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let agent_id = "first-answering";
    let live_url = live.rpc_url();
    let (agent, metrics_port) = agent_for(
        &["--coordinator", &dead, "--coordinator", &live_url],
        agent_id,
    )
    .await;
    live.wait_heartbeats_after(agent_id, 0);
    assert_in_use(metrics_port, &live_url, 1);
    let log = agent.stderr();
    let moved = moves(&log);
    assert_eq!(moved.len(), 1, "{log}");
    assert!(
        moved[0].contains("has not answered") && moved[0].contains(&format!("from={dead}")),
        "{}",
        moved[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_in_the_list_is_refused_at_start() {
    let good = format!("http://127.0.0.1:{}", free_port());
    for (args, env) in [
        (
            vec![
                "--coordinator",
                good.as_str(),
                "--coordinator",
                "ftp://nope:1",
            ],
            vec![],
        ),
        (
            vec![],
            vec![("FLAMEGRID_COORDINATOR", "http://a:1,ftp://nope:1")],
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--listen", "127.0.0.1:0"]);
        let mut agent = AgentProcess::start_with_env(&all, &env);
        let status = agent.wait_exit().await;
        let log = agent.stderr();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains("ftp://nope:1"),
            "the error names the bad URL: {log}"
        );
        assert!(!log.contains("listening on"), "nothing was started: {log}");
    }
}
