//! Issue 12 ("Safe by default") at the REST edge, each finding as an attack over real HTTP (and
//! raw TCP) against a coordinator started in-process on loopback port 0, with real gRPC for the
//! agents:
//!
//! * **Cross-site writes** (finding 4): the bodies a plain HTML form can send
//!   (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`) get 415; a JSON
//!   write carrying a foreign `Origin` (or `null`, or a DNS-rebound host name) gets 403; nothing
//!   is stored or canceled on a refusal (jobs counted before and after).
//! * **Cross-site reads**: no `Access-Control-Allow-Origin` for a foreign origin, the listed origin
//!   echoed (`Vary: Origin`), preflights answered for listed origins only; same-origin pages and
//!   clients without `Origin` keep working.
//! * **REST limits** (finding 6): a client that sends its headers a byte at a time, or nothing
//!   at all, is disconnected; a body sent a byte at a time is cut off with 408 and stores
//!   nothing; connections over the limit wait and are served once others close, and the server
//!   keeps answering.
//! * **Say little to strangers** (finding 7): a fake agent speaking the real gRPC contract
//!   refuses a thread dump with text naming a uid, a command name and an allow-list; the REST
//!   answer says only that the process is outside the allow-list.
//!
//! Start refusals and `--insecure` need the real binary: they are in `hardening.rs`.
//!
//! Nothing here asserts on time: hangs are bounded by generous timeouts that fail the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_proto::v1;
use flamegrid_proto::v1::sampling_server::{Sampling, SamplingServer};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestAgent, TestCoordinator, sleeper, two_vertex_job};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TM: &str = "0123456789abcdef0123456789abcdef";
const LISTED: &str = "https://dashboard.example.org";
const FOREIGN: &str = "https://evil.example";

/// A hang guard: generous, so only a real hang trips it.
const HANG: Duration = Duration::from_secs(60);

async fn job_count(c: &TestCoordinator) -> usize {
    c.get_ok("/jobs").await["jobs"].as_array().unwrap().len()
}

async fn job_state(c: &TestCoordinator, jobid: &str) -> String {
    c.get_ok(&format!("/jobs/{jobid}")).await["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A coordinator with one registered agent and one job on a real process; returns the job id.
async fn with_a_job(c: &TestCoordinator, pid: u32) -> String {
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    c.register_job(&two_vertex_job(TM, pid)).await
}

/// Sends `method path` with these headers and body; → (status, JSON body, headers).
async fn request(
    c: &TestCoordinator,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut builder = c.http.request(method, c.url(path));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(json!({ "raw": text }));
    (status, body, headers)
}

// ---- cross-site writes -----------------------------------------------------------------------

/// What an HTML form (or `navigator.sendBeacon`) on any web page can send without a preflight:
/// every body type a form has, and no type at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_posts_get_415_and_store_nothing() {
    let c = TestCoordinator::start(&[]).await;
    let worker = sleeper();
    let jobid = with_a_job(&c, worker.pid()).await;
    let before = job_count(&c).await;
    let job = two_vertex_job(TM, worker.pid()).to_string();
    let form_types = [
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=xyz"),
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/jsonx"),
        None,
    ];
    for content_type in form_types {
        let mut headers = vec![];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        // The JSON text itself is a valid job: only the declared type stands in the way.
        for path in ["/jobs", "/v1/jobs"] {
            let (status, body, _) =
                request(&c, reqwest::Method::POST, path, &headers, Some(job.clone())).await;
            assert_eq!(status, 415, "POST {path} as {content_type:?}: {body}");
            assert!(
                body["errors"][0]
                    .as_str()
                    .unwrap()
                    .contains("application/json"),
                "{body}"
            );
        }
        let (status, body, _) = request(
            &c,
            reqwest::Method::PATCH,
            &format!("/jobs/{jobid}?mode=cancel"),
            &headers,
            None,
        )
        .await;
        assert_eq!(status, 415, "PATCH as {content_type:?}: {body}");
    }
    assert_eq!(job_count(&c).await, before, "nothing was registered");
    assert_ne!(
        job_state(&c, &jobid).await,
        "CANCELED",
        "nothing was canceled"
    );
    // Parameters on the JSON type are fine, and so is a client without Origin.
    let (status, body, _) = request(
        &c,
        reqwest::Method::POST,
        "/jobs",
        &[("content-type", "Application/JSON; charset=utf-8")],
        Some(job),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(job_count(&c).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_json_writes_get_403_and_store_nothing() {
    let c = TestCoordinator::start(&["--cors-origin", LISTED]).await;
    let worker = sleeper();
    let jobid = with_a_job(&c, worker.pid()).await;
    let before = job_count(&c).await;
    let job = two_vertex_job(TM, worker.pid()).to_string();
    let port = c.base.rsplit(':').next().unwrap().to_string();
    let json = ("content-type", "application/json");
    let rebound_host = format!("evil.example:{port}");
    let rebound_origin = format!("http://evil.example:{port}");
    let other_port = format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() ^ 1);
    let attacks: Vec<Vec<(&str, &str)>> = vec![
        vec![json, ("origin", FOREIGN)],
        vec![json, ("origin", "null")],
        vec![
            json,
            ("origin", "https://dashboard.example.org.evil.example"),
        ],
        // Same host, another port or scheme: another origin.
        vec![json, ("origin", &other_port)],
        // DNS rebinding: a hostile name resolved to this server looks same-origin by name.
        vec![json, ("origin", &rebound_origin), ("host", &rebound_host)],
    ];
    for headers in &attacks {
        let (status, body, _) = request(
            &c,
            reqwest::Method::POST,
            "/jobs",
            headers,
            Some(job.clone()),
        )
        .await;
        assert_eq!(status, 403, "POST with {headers:?}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("--cors-origin"),
            "{body}"
        );
        let (status, body, _) = request(
            &c,
            reqwest::Method::PATCH,
            &format!("/jobs/{jobid}"),
            headers,
            None,
        )
        .await;
        assert_eq!(status, 403, "PATCH with {headers:?}: {body}");
    }
    assert_eq!(job_count(&c).await, before, "nothing was registered");
    assert_ne!(
        job_state(&c, &jobid).await,
        "CANCELED",
        "nothing was canceled"
    );

    // The page of this server itself, a listed origin and a client without Origin may write.
    let same_origin = c.base.clone();
    for headers in [
        vec![json, ("origin", same_origin.as_str())],
        vec![json, ("origin", LISTED)],
        vec![json],
    ] {
        let (status, body, _) = request(
            &c,
            reqwest::Method::POST,
            "/jobs",
            &headers,
            Some(job.clone()),
        )
        .await;
        assert_eq!(status, 202, "POST with {headers:?}: {body}");
    }
    assert_eq!(job_count(&c).await, before + 3);
    let (status, body, _) = request(
        &c,
        reqwest::Method::PATCH,
        &format!("/jobs/{jobid}"),
        &[json, ("origin", LISTED)],
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(job_state(&c, &jobid).await, "CANCELED");
}

/// Methods a path does not serve and unknown paths keep their 405 and 404 (the write checks
/// run only where a path serves the method).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_do_not_hide_405_and_404() {
    let c = TestCoordinator::start(&[]).await;
    let form = [
        ("content-type", "text/plain"),
        ("origin", "https://evil.example"),
    ];
    let (status, _, _) = request(&c, reqwest::Method::POST, "/config", &form, None).await;
    assert_eq!(status, 405);
    let (status, _, _) = request(&c, reqwest::Method::DELETE, "/jobs", &form, None).await;
    assert_eq!(status, 405);
    let (status, _, _) = request(&c, reqwest::Method::POST, "/no/such/path", &form, None).await;
    assert_eq!(status, 404);
}

// ---- cross-site reads ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_origins_may_read_across_origins() {
    let c = TestCoordinator::start(&["--cors-origin", LISTED]).await;
    // A foreign page is answered (reads are open) but its browser may not read the answer.
    let (status, _, headers) = request(
        &c,
        reqwest::Method::GET,
        "/jobs/overview",
        &[("origin", FOREIGN)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "{headers:?}"
    );
    assert_eq!(headers["vary"], "origin");
    // A listed origin is echoed, never `*`.
    let (status, _, headers) = request(
        &c,
        reqwest::Method::GET,
        "/jobs/overview",
        &[("origin", "HTTPS://Dashboard.Example.org:443")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "HTTPS://Dashboard.Example.org:443"
    );
    assert_eq!(headers["vary"], "origin");
    // Preflights: answered for the listed origin, refused for others.
    let preflight = |origin: &'static str| {
        c.http
            .request(reqwest::Method::OPTIONS, c.url("/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let ok = preflight(LISTED).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], LISTED);
    let methods = ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(
        methods.contains("POST") && methods.contains("PATCH"),
        "{methods}"
    );
    let headers = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(
        headers.contains("content-type") && headers.contains("authorization"),
        "{headers}"
    );
    let refused = preflight(FOREIGN).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    // Without --cors-origin nobody is listed.
    let closed = TestCoordinator::start(&[]).await;
    let (_, _, headers) = request(
        &closed,
        reqwest::Method::GET,
        "/config",
        &[("origin", LISTED)],
        None,
    )
    .await;
    assert!(!headers.contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_forbids_framing_and_sniffing() {
    let c = TestCoordinator::start(&[]).await;
    for path in ["/", "/assets/app.js", "/config", "/openapi.json"] {
        let response = c.http.get(c.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let h = response.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    let page = c.http.get(c.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
}

// ---- REST limits -----------------------------------------------------------------------------

fn rest_addr(c: &TestCoordinator) -> String {
    c.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or resets it); `true` when it did so within
/// the hang guard.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. an error answer before the close
        }
    }
}

/// Slowloris: the request head a byte at a time (each byte well within any sane read timeout,
/// the whole head far beyond the header-read bound). The server hangs up before the head is
/// complete and keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_a_byte_at_a_time_is_disconnected() {
    let c = TestCoordinator::start(&["--rest-header-timeout-s", "2"]).await;
    let mut stream = TcpStream::connect(rest_addr(&c)).await.unwrap();
    // 200 bytes at 4 a second: 50 s to finish, the bound is 2 s.
    let head = format!(
        "GET /config HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(160)
    );
    let mut cut_off_after = None;
    let mut buf = [0u8; 256];
    'sending: for (i, byte) in head.bytes().enumerate() {
        if stream.write_all(&[byte]).await.is_err() {
            cut_off_after = Some(i);
            break;
        }
        // Wait a quarter second, watching for the server hanging up meanwhile.
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off_after = Some(i + 1);
                break 'sending;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    !text.contains(" 200 "),
                    "the slow head was answered: {text}"
                );
            }
        }
    }
    let sent = cut_off_after.expect("the server waited for the whole slow head");
    assert!(
        sent < head.len(),
        "cut off only after the head was complete"
    );
    // The server still answers a normal client.
    assert_eq!(c.get("/config").await.0, 200);
}

/// A connection that sends nothing at all is closed too (it would otherwise hold a connection
/// slot forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed() {
    let c = TestCoordinator::start(&["--rest-header-timeout-s", "1"]).await;
    let mut stream = TcpStream::connect(rest_addr(&c)).await.unwrap();
    assert!(
        closed_by_server(&mut stream).await,
        "an idle connection was kept open past the hang guard"
    );
}

/// More connections than the limit: the surplus waits (unanswered) instead of taking the server
/// down, and is served as soon as the others close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_and_are_served_once_others_close() {
    let c = TestCoordinator::start(&[
        "--rest-max-connections",
        "4",
        "--rest-header-timeout-s",
        "600",
    ])
    .await;
    let addr = rest_addr(&c);
    // Four silent connections take every slot (the server accepts them and waits for heads).
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(&addr).await.unwrap());
    }
    // A fifth client sends a whole request; it is not served while the slots are taken.
    let mut waiting = TcpStream::connect(&addr).await.unwrap();
    waiting
        .write_all(b"GET /config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(2), waiting.read_buf(&mut buf)).await;
    assert!(
        early.is_err(),
        "answered over the connection limit: {}",
        String::from_utf8_lossy(&buf)
    );
    // The holders leave; the waiting request is served.
    drop(holders);
    tokio::time::timeout(HANG, waiting.read_to_end(&mut buf))
        .await
        .expect("the waiting request was never served")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(c.get("/config").await.0, 200);
}

/// Many slow clients at once, more than the limit, all cut off by the header timeout; a normal
/// request gets through afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_take_the_server_down() {
    let c = TestCoordinator::start(&[
        "--rest-max-connections",
        "4",
        "--rest-header-timeout-s",
        "1",
    ])
    .await;
    let addr = rest_addr(&c);
    let mut flood = Vec::new();
    for _ in 0..32 {
        flood.push(TcpStream::connect(&addr).await.unwrap());
    }
    let (status, _) = tokio::time::timeout(HANG, c.get("/config"))
        .await
        .expect("a normal request never got through the flood");
    assert_eq!(status, 200);
    drop(flood);
}

/// A request body sent a byte at a time is cut off by the request timeout (408) and stores
/// nothing. The flame graph settings make a run's deadline tiny, so the timeout is its floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_gets_408_and_stores_nothing() {
    let c = TestCoordinator::start(&[
        "--rest-request-timeout-s",
        "1",
        "--flamegraph-num-samples",
        "1",
        "--flamegraph-delay-ms",
        "1",
        "--flamegraph-rpc-grace-ms",
        "0",
    ])
    .await;
    let worker = sleeper();
    let before = {
        let mut agent = TestAgent::connect(&c.rpc, TM).await;
        agent.register().await;
        job_count(&c).await
    };
    let body = two_vertex_job(TM, worker.pid()).to_string();
    let mut stream = TcpStream::connect(rest_addr(&c)).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for byte in body.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(HANG, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--rest-request-timeout-s"), "{answer}");
    assert_eq!(job_count(&c).await, before, "nothing was registered");
}

// ---- say little to strangers -----------------------------------------------------------------

/// What the fake agent puts in its refusal: things a REST client must never learn.
const SECRETS: [&str; 3] = ["uid 4321", "secret-worker", "alice,bob"];

/// An agent over the real gRPC contract that refuses every thread dump with `code` and a message
/// full of [`SECRETS`], as an old or careless agent would.
#[derive(Clone)]
struct OverSharingAgent(tonic::Code);

#[tonic::async_trait]
impl Sampling for OverSharingAgent {
    async fn sample(
        &self,
        _: tonic::Request<v1::SampleRequest>,
    ) -> Result<tonic::Response<v1::SampleResponse>, tonic::Status> {
        Err(tonic::Status::new(self.0, SECRETS.join(" ")))
    }

    async fn thread_dump(
        &self,
        _: tonic::Request<v1::ThreadDumpRequest>,
    ) -> Result<tonic::Response<v1::SampleResponse>, tonic::Status> {
        Err(tonic::Status::new(
            self.0,
            format!(
                "process 77 ({}) runs as {}, not in the allow-list [{}]",
                SECRETS[1], SECRETS[0], SECRETS[2]
            ),
        ))
    }
}

async fn over_sharing_agent(code: tonic::Code) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SamplingServer::new(OverSharingAgent(code)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_thread_dump_does_not_echo_the_agents_words() {
    for (code, status, phrase) in [
        (
            tonic::Code::PermissionDenied,
            403,
            "outside the agent's allow-list",
        ),
        (tonic::Code::NotFound, 503, "no such process"),
        (tonic::Code::Internal, 503, "the agent failed"),
    ] {
        let c = TestCoordinator::start(&[]).await;
        let worker = sleeper();
        let mut agent = TestAgent::connect(&c.rpc, TM).await;
        agent.address = over_sharing_agent(code).await;
        agent.register().await;
        c.register_job(&two_vertex_job(TM, worker.pid())).await;
        // Two heartbeats: the first brings the watch list, the second reports the process alive.
        agent.heartbeat().await;
        agent.heartbeat().await;
        let (got, body) =
            tokio::time::timeout(HANG, c.get(&format!("/taskmanagers/{TM}/thread-dump")))
                .await
                .expect("thread dump hung");
        assert_eq!(got, status, "{code:?}: {body}");
        let text = body.to_string();
        assert!(text.contains(phrase), "{code:?}: {text}");
        for secret in SECRETS {
            assert!(!text.contains(secret), "{code:?} echoed {secret:?}: {text}");
        }
    }
}

/// The flags reach the REST layer through the environment too (FLAMEGRID_CORS_ORIGIN takes a
/// comma-separated list): checked on a parsed configuration, as the binary builds it.
#[test]
fn cors_origins_repeat_and_split_on_commas() {
    use clap::Parser;
    let config = flamegrid_coordinator::config::CoordinatorConfig::try_parse_from([
        "x",
        "--cors-origin",
        "https://a.example,http://b.example:8080",
        "--cors-origin",
        "https://c.example/",
    ])
    .unwrap();
    let listed: Vec<String> = config.cors_origin.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        listed,
        [
            "https://a.example",
            "http://b.example:8080",
            "https://c.example"
        ]
    );
    for wildcard in ["*", "https://*.example"] {
        let err = flamegrid_coordinator::config::CoordinatorConfig::try_parse_from([
            "x",
            "--cors-origin",
            wildcard,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("no wildcards"), "{err}");
    }
}
