//! Flame graphs end to end: a coordinator (in this process, real HTTP and gRPC on loopback),
//! real `flamegrid-agent run` processes registering with it, and a workload from
//! `flamegrid-workloads` whose threads have known call chains.
//!
//! Every child process (agents, workloads) is killed when its guard drops. Nothing here asserts
//! on time: waits are polls with a generous hang guard.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_model::folded::parse_line;
use flamegrid_workloads::Workload;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    KillOnDrop, TestAgent, TestCoordinator, children, graph, has_chain, poll, running_job,
    spinners_and_sleeper, start_agent,
};

/// Slack on top of a run's deadline (sampling window + grace) within which a partial graph must
/// be served. Generous on purpose: these machines are shared, and the point is that a dead or
/// frozen agent does not hold the graph until some much later timeout, not speed.
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// The sampling window of [`FLAGS`]: 20 samples × 10 ms.
const WINDOW: Duration = Duration::from_millis(200);

/// Samples per run in these tests: enough for every thread to show, short enough to be quick.
/// Heartbeats may lapse for long (a frozen agent must not turn its subtasks FAILED mid-test).
const FLAGS: &[&str] = &[
    "--flamegraph-num-samples",
    "20",
    "--flamegraph-delay-ms",
    "10",
    "--heartbeat-timeout-s",
    "120",
];

/// [`FLAGS`] with a grace of 2 s for agents to answer.
fn flags() -> Vec<&'static str> {
    let mut f = FLAGS.to_vec();
    f.extend(["--flamegraph-rpc-grace-ms", "2000"]);
    f
}

/// A job with a spinning vertex (subtask i = thread `spin-i`, on `tms[i]`) and a sleeping one.
fn job(tms: [&str; 2], pid: u32) -> Value {
    json!({
        "name": "flamegraph-e2e",
        "vertices": [
            {"name": "Source: spin", "parallelism": 2, "subtasks": [
                {"taskmanager": tms[0], "pid": pid, "thread_name": "spin-0"},
                {"taskmanager": tms[1], "pid": pid, "thread_name": "spin-1"}]},
            {"name": "Sink: sleep", "parallelism": 1, "inputs": [0], "subtasks": [
                {"taskmanager": tms[0], "pid": pid, "thread_name": "sleep-0"}]}
        ]
    })
}

/// Every frame name in the tree.
fn names(node: &Value, out: &mut Vec<String>) {
    out.push(node["name"].as_str().unwrap().to_string());
    for c in children(node) {
        names(c, out);
    }
}

/// Checks Flink's node invariants: `name`, `value`, `children` only, children's values add up
/// to at most the parent's, children sorted by name.
fn check_flink_shape(node: &Value) {
    let obj = node.as_object().unwrap();
    assert_eq!(obj.len(), 3, "{node}");
    let value = node["value"].as_u64().unwrap();
    let kids = children(node);
    assert!(
        kids.iter()
            .map(|c| c["value"].as_u64().unwrap())
            .sum::<u64>()
            <= value
    );
    let kid_names: Vec<&str> = kids.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(kid_names.is_sorted(), "{kid_names:?}");
    kids.iter().for_each(check_flink_shape);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_and_sleeping_vertices_show_their_chains() {
    let c = TestCoordinator::start(&flags()).await;
    let tm = "a0000000000000000000000000000001";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let chains = Workload::CFramePointers.chains();
    let (jobid, v) = running_job(&c, &job([tm, tm], w.pid())).await;
    let base = format!("/jobs/{jobid}/vertices");

    // The spinning vertex, ON_CPU in the dashboard's lower case: the spin chain, no sleeping.
    let on = graph(&c, &format!("{base}/{}/flamegraph?type=on_cpu", v[0])).await;
    let root = &on["data"];
    assert_eq!(root["name"], "root");
    assert!(
        on.get("missing").is_none(),
        "complete graph is Flink-shaped: {on}"
    );
    check_flink_shape(root);
    assert!(
        has_chain(root, chains.spin),
        "spin chain {:?} not in {root}",
        chains.spin
    );
    let mut all = Vec::new();
    names(root, &mut all);
    for sleeping in chains.sleep.iter().chain(&["nanosleep", "clock_nanosleep"]) {
        assert!(
            !all.iter().any(|n| n == sleeping),
            "{sleeping} in an ON_CPU graph of spinners"
        );
    }
    // The same run serves the other types; endTimestamp only changes with a new run.
    let full = c.get_ok(&format!("{base}/{}/flamegraph", v[0])).await;
    assert_eq!(full["endTimestamp"], on["endTimestamp"]);
    assert!(full["data"]["value"].as_u64().unwrap() >= root["value"].as_u64().unwrap());

    // The sleeping vertex, OFF_CPU: the sleep chain, no spinning.
    let off = graph(&c, &format!("{base}/{}/flamegraph?type=OFF_CPU", v[1])).await;
    assert!(
        has_chain(&off["data"], chains.sleep),
        "sleep chain {:?} not in {off}",
        chains.sleep
    );
    assert!(!has_chain(
        &off["data"],
        &chains.spin[chains.spin.len() - 1..]
    ));

    // subtaskindex narrows to one subtask (one thread): served from the vertex run.
    let whole = full["data"]["value"].as_u64().unwrap();
    let one = c
        .get_ok(&format!("{base}/{}/flamegraph?subtaskindex=1", v[0]))
        .await;
    assert_eq!(
        one["endTimestamp"], full["endTimestamp"],
        "filled by the whole-vertex run"
    );
    let one_value = one["data"]["value"].as_u64().unwrap();
    assert!(
        one_value > 0 && one_value <= 20 && one_value < whole,
        "{one_value} of {whole}"
    );

    // Folded text: every line parses, the spin chain is in it.
    let folded = c
        .http
        .get(c.url(&format!("{base}/{}/flamegraph.folded?type=on_cpu", v[0])))
        .send()
        .await
        .unwrap();
    assert!(
        folded.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = folded.text().await.unwrap();
    let stacks: Vec<(Vec<&str>, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap())
        .collect();
    assert!(!stacks.is_empty());
    assert!(
        stacks
            .iter()
            .any(|(s, _)| s.windows(chains.spin.len()).any(|w| w == chains.spin)),
        "{text}"
    );
    // Same run as the JSON: the same samples, except that a sample whose stack could not be
    // read counts at the JSON root but has no folded line.
    let folded_total = stacks.iter().map(|s| s.1).sum::<u64>();
    assert!(folded_total > 0 && folded_total <= root["value"].as_u64().unwrap());

    // SVG: the frames, a title naming the vertex, well-formed XML.
    let svg = c
        .http
        .get(c.url(&format!(
            "{base}/{}/flamegraph.svg?type=on_cpu&subtaskindex=0",
            v[0]
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let svg = svg.text().await.unwrap();
    assert!(svg.contains(chains.spin[chains.spin.len() - 1]));
    assert!(svg.contains("Source: spin") && svg.contains("subtask 0") && svg.contains("ON_CPU"));
    assert_well_formed_xml(&svg);

    // Thread dump of the task manager: jstack-like blocks, innermost frame first.
    let dump = c.get_ok(&format!("/taskmanagers/{tm}/thread-dump")).await;
    let infos = dump["threadInfos"].as_array().unwrap();
    let spin0 = infos
        .iter()
        .find(|t| t["threadName"] == "spin-0")
        .expect("spin-0 in the dump");
    let text = spin0["stringifiedThreadInfo"].as_str().unwrap();
    let tid = w.tid_of("spin-0").unwrap();
    assert!(text.starts_with(&format!("\"spin-0\" Id={tid} ")), "{text}");
    let frames: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("\tat "))
        .collect();
    let pos = |f: &str| frames.iter().position(|l| l.split(' ').next() == Some(f));
    assert!(pos(chains.spin[1]).is_some(), "{text}");
    assert!(
        pos(chains.spin[0]) > pos(chains.spin[1]),
        "innermost first: {text}"
    );
    // The dump is of whole processes, not only the threads the subtask selectors name: the
    // workload's main thread (tid = pid, named by no selector) is in it, every thread once,
    // at most Flink's 50 frames deep.
    let pid = w.pid();
    let first_lines: Vec<&str> = infos
        .iter()
        .map(|t| t["stringifiedThreadInfo"].as_str().unwrap())
        .map(|t| t.lines().next().unwrap())
        .collect();
    assert!(
        first_lines
            .iter()
            .any(|l| l.contains(&format!("\" Id={pid} "))),
        "main thread {pid} not in the dump: {first_lines:?}"
    );
    let mut unique = first_lines.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), first_lines.len(), "{first_lines:?}");
    for t in infos {
        let text = t["stringifiedThreadInfo"].as_str().unwrap();
        assert!(
            text.lines().filter(|l| l.starts_with("\tat ")).count() <= 50,
            "{text}"
        );
    }
}

fn assert_well_formed_xml(text: &str) {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0i64;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => depth += 1,
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "SVG is not well-formed XML at {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(depth, 0, "unbalanced SVG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_cause_one_run_and_the_svg_waits_for_it() {
    // A generous grace: the agent's first run pays the cold symbolization (glibc's DWARF) in a
    // debug build, which on a loaded CI host has taken more than the usual 2 s; this test is
    // about coalescing and waiting, not about the deadline.
    let mut f = FLAGS.to_vec();
    f.extend(["--flamegraph-rpc-grace-ms", "15000"]);
    let c = TestCoordinator::start(&f).await;
    let tm = "a0000000000000000000000000000002";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let (jobid, v) = running_job(&c, &job([tm, tm], w.pid())).await;
    let service = &c.coordinator.as_ref().unwrap().app_state().flamegraphs;
    assert_eq!(service.runs_started(), 0);

    let json_path = c.url(&format!("/jobs/{jobid}/vertices/{}/flamegraph", v[0]));
    let svg_path = c.url(&format!("/jobs/{jobid}/vertices/{}/flamegraph.svg", v[0]));
    let (a, b, svg) = tokio::join!(
        c.http.get(&json_path).send(),
        c.http.get(&json_path).send(),
        c.http.get(&svg_path).send()
    );
    let (a, b): (Value, Value) = (
        a.unwrap().json().await.unwrap(),
        b.unwrap().json().await.unwrap(),
    );
    let svg = svg.unwrap().text().await.unwrap();
    // The JSON never waits; the SVG waited for the run in flight and shows a real graph.
    for answer in [&a, &b] {
        let ts = answer["endTimestamp"].as_i64().unwrap();
        assert!(ts == -3 || ts > 0, "{answer}");
    }
    let chains = Workload::CFramePointers.chains();
    assert!(
        svg.contains(chains.spin[chains.spin.len() - 1]),
        "first SVG request shows the graph, got: {}",
        &svg[..svg.len().min(2000)]
    );
    assert_eq!(
        service.runs_started(),
        1,
        "three concurrent requests, one run"
    );
    let metric = c
        .get_ok("/jobmanager/metrics?get=flamegrid.flamegraph.runs")
        .await;
    assert_eq!(
        metric,
        json!([{"id": "flamegrid.flamegraph.runs", "value": "1"}])
    );

    // More polls while fresh: no new run, same endTimestamp.
    let first = graph(
        &c,
        &format!("/jobs/{jobid}/vertices/{}/flamegraph?type=full", v[0]),
    )
    .await;
    let again = c
        .get_ok(&format!(
            "/jobs/{jobid}/vertices/{}/flamegraph?type=on_cpu&subtaskindex=0",
            v[0]
        ))
        .await;
    assert_eq!(again["endTimestamp"], first["endTimestamp"]);
    assert_eq!(service.runs_started(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_costs_only_its_subtasks() {
    let c = TestCoordinator::start(&flags()).await;
    let (tm_a, tm_b) = (
        "a0000000000000000000000000000003",
        "b0000000000000000000000000000003",
    );
    let _agent_a = start_agent(&c, tm_a).await;
    let mut agent_b = start_agent(&c, tm_b).await;
    let w = spinners_and_sleeper();
    let (jobid, v) = running_job(&c, &job([tm_a, tm_b], w.pid())).await;
    let chains = Workload::CFramePointers.chains();

    // Agent b is killed: its RPC fails at once; subtask 1 is missing, subtask 0 is drawn, and
    // within the run's deadline (grace 2 s), not at some later timeout.
    agent_b.kill();
    let path = format!("/jobs/{jobid}/vertices/{}/flamegraph?type=on_cpu", v[0]);
    let asked = Instant::now();
    let partial = graph(&c, &path).await;
    let took = asked.elapsed();
    let bound = WINDOW + Duration::from_millis(2000) + DEADLINE_SLACK;
    assert!(
        took <= bound,
        "partial graph after {took:?}, bound {bound:?}"
    );
    assert_eq!(partial["missing"], json!([1]), "{partial}");
    assert!(has_chain(&partial["data"], chains.spin));
    let folded = c
        .http
        .get(c.url(&format!(
            "/jobs/{jobid}/vertices/{}/flamegraph.folded",
            v[0]
        )))
        .send()
        .await
        .unwrap();
    // The missing subtasks travel in a header and in a `#` header line of the body, which
    // inferno (and flamegraph.pl) skip without inventing frames.
    assert_eq!(folded.headers()["x-flamegrid-missing"], "1");
    let text = folded.text().await.unwrap();
    assert_eq!(
        text.lines().next(),
        Some("# missing subtasks: 1 (agent unreachable)"),
        "{text}"
    );
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(
        &mut inferno::flamegraph::Options::default(),
        text.lines(),
        &mut svg,
    )
    .unwrap();
    let svg = String::from_utf8(svg).unwrap();
    let frame_titles: Vec<&str> = svg
        .split("<title>")
        .skip(1)
        .filter_map(|t| t.split("</title>").next())
        .collect();
    assert!(
        frame_titles.iter().any(|t| t.contains(chains.spin[0])),
        "{frame_titles:?}"
    );
    assert!(
        !frame_titles.iter().any(|t| t.starts_with('#')),
        "a comment read as a frame: {frame_titles:?}"
    );

    // A subtask whose only agent is gone: still -3 (nothing cached; the next poll samples
    // again), but once its run has failed the answer says why.
    let lone_path = format!("/jobs/{jobid}/vertices/{}/flamegraph?subtaskindex=1", v[0]);
    let lone = poll("the lone subtask's reason", || async {
        let body = c.get_ok(&lone_path).await;
        body.get("missingReasons").is_some().then_some(body)
    })
    .await;
    assert_eq!(lone["endTimestamp"], -3, "{lone}");
    assert!(lone.get("data").is_none(), "{lone}");
    assert_eq!(lone["missing"], json!([1]), "{lone}");
    assert_eq!(
        lone["missingReasons"],
        json!({"1": "agent unreachable"}),
        "{lone}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_reported_missing_after_the_deadline() {
    let mut short_grace = FLAGS.to_vec();
    short_grace.extend(["--flamegraph-rpc-grace-ms", "500"]);
    // The workload is declared first so it is dropped last: a frozen agent may hold one of its
    // threads as a ptrace tracee, and an exited traced thread can only be reaped once its tracer
    // is gone; the agents' guards SIGKILL them (the kernel then releases every tracee) before
    // the workload's guard waits for it.
    let w = spinners_and_sleeper();
    let c = TestCoordinator::start(&short_grace).await;
    let (tm_a, tm_b) = (
        "a0000000000000000000000000000004",
        "b0000000000000000000000000000004",
    );
    let _agent_a = start_agent(&c, tm_a).await;
    let agent_b = start_agent(&c, tm_b).await;
    let (jobid, v) = running_job(&c, &job([tm_a, tm_b], w.pid())).await;

    // Freeze agent b (SIGSTOP): its connection stays open but it never answers. The run ends
    // at its deadline with subtask 1 missing. The guard's SIGKILL ends the stopped agent.
    let _ = Command::new("kill")
        .args(["-STOP", &agent_b.pid().to_string()])
        .status();
    let asked = Instant::now();
    let partial = graph(&c, &format!("/jobs/{jobid}/vertices/{}/flamegraph", v[0])).await;
    let took = asked.elapsed();
    let bound = WINDOW + Duration::from_millis(500) + DEADLINE_SLACK;
    assert!(
        took <= bound,
        "partial graph after {took:?}, bound {bound:?}"
    );
    assert_eq!(partial["missing"], json!([1]), "{partial}");
    assert!(partial["data"]["value"].as_u64().unwrap() > 0);
}

/// GET → (JSON body, `X-Flamegrid-Sampling`).
async fn graph_and_sampling(c: &TestCoordinator, path: &str) -> (Value, bool) {
    let response = c.http.get(c.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let sampling = match response.headers()["x-flamegrid-sampling"].to_str().unwrap() {
        "true" => true,
        "false" => false,
        other => panic!("X-Flamegrid-Sampling: {other:?}"),
    };
    (response.json().await.unwrap(), sampling)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_true_starts_a_run_now_and_the_sampling_header_shows_it() {
    let c = TestCoordinator::start(&flags()).await;
    let tm = "a0000000000000000000000000000006";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let (jobid, v) = running_job(&c, &job([tm, tm], w.pid())).await;
    let path = format!("/jobs/{jobid}/vertices/{}/flamegraph", v[0]);
    let runs = || async {
        c.get_ok("/jobmanager/metrics?get=flamegrid.flamegraph.runs")
            .await[0]["value"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // The first request starts a run and says so; polls see `true` until it lands.
    let (first, sampling) = graph_and_sampling(&c, &path).await;
    assert_eq!(first["endTimestamp"], -3);
    assert!(sampling, "the run this request started is in flight");
    let landed = poll("the first run to land", || async {
        let (body, sampling) = graph_and_sampling(&c, &path).await;
        (body["endTimestamp"].as_i64().unwrap() > 0 && !sampling).then_some(body)
    })
    .await;
    assert_eq!(runs().await, "1");

    // Fresh (refresh interval 60 s): plain polls start nothing; `refresh=false` neither.
    let (again, sampling) = graph_and_sampling(&c, &format!("{path}?refresh=false")).await;
    assert_eq!(again["endTimestamp"], landed["endTimestamp"]);
    assert!(!sampling);
    assert_eq!(runs().await, "1");

    // `refresh=true`: a second run starts now, the answer is immediate and is the cached
    // graph; the header is true while that run is in flight, false once it has landed.
    let (now, sampling_now) = graph_and_sampling(&c, &format!("{path}?refresh=true")).await;
    assert_eq!(
        now["endTimestamp"], landed["endTimestamp"],
        "served from the cache"
    );
    assert_eq!(runs().await, "2");
    let landed_at = landed["endTimestamp"].as_i64().unwrap();
    let mut seen_sampling = sampling_now;
    let mut newer = None;
    // A poll with a hang guard (not a speed assertion).
    for _ in 0..600 {
        let (body, sampling) = graph_and_sampling(&c, &path).await;
        seen_sampling |= sampling;
        if !sampling && body["endTimestamp"].as_i64() != Some(landed_at) {
            newer = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newer = newer.expect("the refreshed run never landed");
    assert!(
        seen_sampling,
        "X-Flamegrid-Sampling was never true during the refresh"
    );
    assert!(newer["endTimestamp"].as_i64().unwrap() > landed_at);
    assert_eq!(runs().await, "2", "polls after the refresh start nothing");

    // Bad values are Flink-style 400s and start nothing.
    for bad in ["yes", "TRUE", "", "1"] {
        let (status, body) = c.get(&format!("{path}?refresh={bad}")).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("Cannot resolve query parameter (refresh)"),
            "{body}"
        );
    }
    assert_eq!(runs().await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_bad_requests() {
    let c = TestCoordinator::start(&flags()).await;
    let tm = "a0000000000000000000000000000005";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let (jobid, v) = running_job(&c, &job([tm, tm], w.pid())).await;
    let base = format!("/jobs/{jobid}/vertices/{}", v[0]);
    let unknown = "0123456789abcdef0123456789abcdef";

    for (path, status, message) in [
        (
            format!("{base}/flamegraph?type=cpu"),
            400,
            "Cannot resolve query parameter (type)",
        ),
        (
            format!("{base}/flamegraph.svg?subtaskindex=-1"),
            400,
            "Cannot resolve query parameter (subtaskindex)",
        ),
        (
            format!("{base}/flamegraph.folded?subtaskindex=x"),
            400,
            "(subtaskindex)",
        ),
        (
            format!("/jobs/nothex/vertices/{}/flamegraph", v[0]),
            400,
            "Cannot resolve path parameter (jobid)",
        ),
        (
            format!("{base}/flamegraph?subtaskindex=2"),
            404,
            "Invalid subtask index for vertex",
        ),
        (
            format!("/jobs/{unknown}/vertices/{}/flamegraph", v[0]),
            404,
            "not found",
        ),
        (
            format!("/jobs/{jobid}/vertices/{unknown}/flamegraph"),
            404,
            "No vertex with ID",
        ),
        (format!("/v1{base}/flamegraph?type=bogus"), 400, "(type)"),
    ] {
        let (got, body) = c.get(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body["errors"][0].as_str().unwrap().contains(message),
            "{path}: {body}"
        );
    }

    // A canceled job's vertices are terminated: -1, and the SVG says so in a valid document.
    assert_eq!(c.patch(&format!("/jobs/{jobid}")).await.0, 202);
    assert_eq!(
        c.get_ok(&format!("{base}/flamegraph")).await,
        json!({"endTimestamp": -1})
    );
    let svg = c
        .http
        .get(c.url(&format!("{base}/flamegraph.svg")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(svg.contains("terminated"));
    assert_well_formed_xml(&svg);

    // Switched off: -2 for any well-formed ids, bad ids still 400.
    let off = TestCoordinator::start(&["--flamegraph-enabled", "false"]).await;
    assert_eq!(
        off.get_ok(&format!("/jobs/{unknown}/vertices/{unknown}/flamegraph"))
            .await,
        json!({"endTimestamp": -2})
    );
    assert_eq!(
        off.get(&format!("/jobs/{unknown}/vertices/xyz/flamegraph"))
            .await
            .0,
        400
    );
}

// ---- issue 13: a graph on the first request, and every absent subtask named with its reason --

/// Flags for the reason tests: like [`flags`], but agents heartbeat only every 200 s, so that
/// after an agent's first heartbeat nothing confirms (or fails) a new job's subtasks while the
/// test looks at them: what it sees is what sampling found, not what a heartbeat decided. The
/// grace is the default 10 s: a live agent on a loaded machine must not count as timed out
/// (dead agents here refuse connections at once, so it costs nothing).
fn rare_heartbeats() -> Vec<&'static str> {
    vec![
        "--flamegraph-num-samples",
        "20",
        "--flamegraph-delay-ms",
        "10",
        "--flamegraph-rpc-grace-ms",
        "10000",
        "--heartbeat-timeout-s",
        "600",
    ]
}

/// Waits for agent `tm`'s first heartbeat (it follows registration at once): its host metrics
/// are listed only once a heartbeat brought them. After it, the next one is far away.
async fn first_heartbeat(c: &TestCoordinator, tm: &str) {
    poll(&format!("agent {tm}'s first heartbeat"), || async {
        let metrics = c.get_ok(&format!("/taskmanagers/{tm}/metrics")).await;
        metrics
            .as_array()
            .is_some_and(|m| !m.is_empty())
            .then_some(())
    })
    .await;
}

/// The job's vertex ids, in order.
async fn vertex_ids(c: &TestCoordinator, jobid: &str) -> Vec<String> {
    c.get_ok(&format!("/jobs/{jobid}")).await["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// GET a waiting view (`.svg`, `.folded`) → (`X-Flamegrid-Missing`, body).
async fn view(c: &TestCoordinator, path: &str) -> (Option<String>, String) {
    let response = c.http.get(c.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let missing = response
        .headers()
        .get("x-flamegrid-missing")
        .map(|v| v.to_str().unwrap().to_string());
    (missing, response.text().await.unwrap())
}

/// Frame titles inferno draws for `folded` (which it must read without error): a `#` header
/// line must never become a frame.
fn inferno_frames(folded: &str) -> Vec<String> {
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(
        &mut inferno::flamegraph::Options::default(),
        folded.lines(),
        &mut svg,
    )
    .unwrap();
    let svg = String::from_utf8(svg).unwrap();
    svg.split("<title>")
        .skip(1)
        .filter_map(|t| t.split("</title>").next())
        .map(str::to_string)
        .collect()
}

/// A pid that no process has: a child that has exited and been reaped.
fn vanished_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_post_jobs_gets_a_graph_and_a_never_confirmed_subtask_is_named() {
    let c = TestCoordinator::start(&rare_heartbeats()).await;
    let (tm_a, tm_b) = (
        "a0000000000000000000000000000013",
        "b0000000000000000000000000000013",
    );
    let _agent_a = start_agent(&c, tm_a).await;
    first_heartbeat(&c, tm_a).await;
    // Agent b registers and dies before it ever heartbeats: nothing listens at its address.
    let mut dead = TestAgent::connect(&c.rpc, tm_b).await;
    dead.address = "http://127.0.0.1:1".to_string();
    dead.register().await;
    let w = spinners_and_sleeper();
    let chains = Workload::CFramePointers.chains();

    // Registered, and at once the SVG: a real graph of subtask 0 (not yet confirmed by any
    // heartbeat), and subtask 1 named as never confirmed.
    let jobid = c.register_job(&job([tm_a, tm_b], w.pid())).await;
    let v = vertex_ids(&c, &jobid).await;
    let base = format!("/jobs/{jobid}/vertices");
    let (header, svg) = view(&c, &format!("{base}/{}/flamegraph.svg", v[0])).await;
    assert!(
        svg.contains(chains.spin[chains.spin.len() - 1]),
        "the first SVG after POST /jobs shows the workload: {}",
        &svg[..svg.len().min(3000)]
    );
    assert!(
        svg.contains("missing subtasks: 1 (never confirmed (agent lost))"),
        "the SVG names the absent subtask and why: {}",
        &svg[..svg.len().min(3000)]
    );
    assert_eq!(header.as_deref(), Some("1"));

    // The JSON: the same run, the half graph says it is half.
    let json = c.get_ok(&format!("{base}/{}/flamegraph", v[0])).await;
    assert!(json["endTimestamp"].as_i64().unwrap() > 0, "{json}");
    assert!(has_chain(&json["data"], chains.spin), "{json}");
    assert_eq!(json["missing"], json!([1]), "{json}");
    assert_eq!(
        json["missingReasons"],
        json!({"1": "never confirmed (agent lost)"}),
        "{json}"
    );

    // The folded text: a `#` header line with the reason, and stacks inferno reads as before.
    let (header, folded) = view(&c, &format!("{base}/{}/flamegraph.folded", v[0])).await;
    assert_eq!(header.as_deref(), Some("1"));
    assert_eq!(
        folded.lines().next(),
        Some("# missing subtasks: 1 (never confirmed (agent lost))"),
        "{folded}"
    );
    assert!(
        folded.lines().skip(1).all(|l| parse_line(l).is_some()),
        "{folded}"
    );
    let frames = inferno_frames(&folded);
    assert!(
        frames.iter().any(|t| t.contains(chains.spin[0])),
        "{frames:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|t| t.starts_with('#') || t.contains("missing")),
        "a comment read as a frame: {frames:?}"
    );

    // The JSON endpoint starts a run on its first poll, too (the sink vertex, not yet asked):
    // -3 with the run in flight, then the graph.
    let sink = format!("{base}/{}/flamegraph?type=off_cpu", v[1]);
    let (first, sampling) = graph_and_sampling(&c, &sink).await;
    assert_eq!(first["endTimestamp"], -3);
    assert!(sampling, "the first poll started a run: {first}");
    let landed = graph(&c, &sink).await;
    assert!(has_chain(&landed["data"], chains.sleep), "{landed}");
    assert!(landed.get("missing").is_none(), "{landed}");
}

/// A `sleep` of user `nobody` (65534): outside an agent's default allow-list (its own user).
/// `None` unless the test runs as root, which alone can start a process of another user.
fn sleeper_of_nobody() -> Option<KillOnDrop> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let child = Command::new("sleep")
        .arg("600")
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    Some(KillOnDrop(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_outside_the_allow_list_or_without_a_process_are_named_with_their_reason() {
    let Some(nobody) = sleeper_of_nobody() else {
        eprintln!("not root: cannot start a process of another user; skipped");
        return;
    };
    let c = TestCoordinator::start(&rare_heartbeats()).await;
    let tm = "a0000000000000000000000000000113";
    let _agent = start_agent(&c, tm).await;
    first_heartbeat(&c, tm).await;
    let w = spinners_and_sleeper();
    // A process of user `nobody`: outside the agent's allow-list (by default its own user).
    let gone = vanished_pid();
    let body = json!({
        "name": "reasons",
        "vertices": [
            {"name": "Source: mixed", "parallelism": 3, "subtasks": [
                {"taskmanager": tm, "pid": w.pid(), "thread_name": "spin-0"},
                {"taskmanager": tm, "pid": nobody.pid()},
                {"taskmanager": tm, "pid": gone}]},
            {"name": "Sink: nobody", "parallelism": 1, "inputs": [0], "subtasks": [
                {"taskmanager": tm, "pid": nobody.pid()}]}
        ]
    });
    let jobid = c.register_job(&body).await;
    let v = vertex_ids(&c, &jobid).await;
    let base = format!("/jobs/{jobid}/vertices");
    let chains = Workload::CFramePointers.chains();

    // Three subtasks on one agent: one delivers, two say why they do not.
    let (header, svg) = view(&c, &format!("{base}/{}/flamegraph.svg", v[0])).await;
    assert_eq!(header.as_deref(), Some("1,2"));
    for expected in ["1 (outside the allow-list)", "2 (process not found)"] {
        assert!(
            svg.contains(expected),
            "{expected} not in {}",
            &svg[..svg.len().min(3000)]
        );
    }
    assert!(svg.contains(chains.spin[0]));
    let json = c.get_ok(&format!("{base}/{}/flamegraph", v[0])).await;
    assert_eq!(json["missing"], json!([1, 2]), "{json}");
    assert_eq!(
        json["missingReasons"],
        json!({"1": "outside the allow-list", "2": "process not found"}),
        "{json}"
    );
    let (_, folded) = view(&c, &format!("{base}/{}/flamegraph.folded", v[0])).await;
    let head = folded.lines().next().unwrap();
    assert!(
        head.starts_with("# missing subtasks: ")
            && head.contains("1 (outside the allow-list)")
            && head.contains("2 (process not found)"),
        "{folded}"
    );
    let frames = inferno_frames(&folded);
    assert!(!frames.iter().any(|t| t.starts_with('#')), "{frames:?}");

    // A vertex with nothing it may sample: no "retry", the reason, in every view. The agent
    // refuses such a call as a whole; the coordinator still names the reason, never the
    // agent's text (no uid, no allow-list).
    let (header, svg) = view(&c, &format!("{base}/{}/flamegraph.svg", v[1])).await;
    assert_eq!(header.as_deref(), Some("0"));
    assert!(
        svg.contains("missing subtasks: 0 (outside the allow-list)") && !svg.contains("retry"),
        "{svg}"
    );
    assert!(
        !svg.contains("65534") && !svg.contains("--allow-user"),
        "{svg}"
    );
    let json = c.get_ok(&format!("{base}/{}/flamegraph", v[1])).await;
    assert_eq!(json["endTimestamp"], -3, "{json}");
    assert_eq!(json["missing"], json!([0]), "{json}");
    assert_eq!(
        json["missingReasons"],
        json!({"0": "outside the allow-list"}),
        "{json}"
    );
    let (_, folded) = view(&c, &format!("{base}/{}/flamegraph.folded", v[1])).await;
    assert!(
        folded.starts_with("# no samples: missing subtasks: 0 (outside the allow-list)")
            && folded.lines().count() == 1
            && !folded.contains("retry"),
        "{folded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_is_named_as_unreachable() {
    let c = TestCoordinator::start(&flags()).await;
    let (tm_a, tm_b) = (
        "a0000000000000000000000000000213",
        "b0000000000000000000000000000213",
    );
    let _agent_a = start_agent(&c, tm_a).await;
    let mut agent_b = start_agent(&c, tm_b).await;
    let w = spinners_and_sleeper();
    // Both agents confirmed their subtasks; then b dies.
    let (jobid, v) = running_job(&c, &job([tm_a, tm_b], w.pid())).await;
    agent_b.kill();
    let path = format!("/jobs/{jobid}/vertices/{}/flamegraph", v[0]);
    let partial = graph(&c, &path).await;
    assert_eq!(partial["missing"], json!([1]), "{partial}");
    assert_eq!(
        partial["missingReasons"],
        json!({"1": "agent unreachable"}),
        "{partial}"
    );
    let (_, svg) = view(
        &c,
        &format!("/jobs/{jobid}/vertices/{}/flamegraph.svg", v[0]),
    )
    .await;
    assert!(
        svg.contains("missing subtasks: 1 (agent unreachable)"),
        "{svg}"
    );
}

/// Vertex `vid`'s subtask states, in index order.
async fn subtask_states(c: &TestCoordinator, jobid: &str, vid: &str) -> Vec<String> {
    c.get_ok(&format!("/jobs/{jobid}/vertices/{vid}")).await["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_ended_by_a_heartbeat_keep_their_reason_in_every_view() {
    let Some(nobody) = sleeper_of_nobody() else {
        eprintln!("not root: cannot start a process of another user; skipped");
        return;
    };
    // Heartbeats every few seconds: they, not sampling, end the subtasks here.
    let c = TestCoordinator::start(&flags()).await;
    let tm = "a0000000000000000000000000000313";
    let _agent = start_agent(&c, tm).await;
    let w = spinners_and_sleeper();
    let mut victim = support::sleeper();
    let gone = vanished_pid();
    let body = json!({
        "name": "ended",
        "vertices": [
            {"name": "Source: nothing to sample", "parallelism": 2, "subtasks": [
                {"taskmanager": tm, "pid": gone},
                {"taskmanager": tm, "pid": nobody.pid()}]},
            {"name": "Map: half", "parallelism": 2, "inputs": [0], "subtasks": [
                {"taskmanager": tm, "pid": w.pid(), "thread_name": "spin-0"},
                {"taskmanager": tm, "pid": victim.pid()}]}
        ]
    });
    let jobid = c.register_job(&body).await;
    let v = vertex_ids(&c, &jobid).await;
    // The agent's heartbeat fails the first vertex's subtasks (no process, not allowed) and
    // confirms the second's; then one process of the second vertex is killed.
    poll("the heartbeat to decide every subtask", || async {
        let ended = subtask_states(&c, &jobid, &v[0]).await;
        let running = subtask_states(&c, &jobid, &v[1]).await;
        (ended.iter().all(|s| s == "FAILED") && running.iter().all(|s| s == "RUNNING"))
            .then_some(())
    })
    .await;
    victim.kill();
    poll("the killed subtask to finish", || async {
        (subtask_states(&c, &jobid, &v[1]).await == ["RUNNING", "FINISHED"]).then_some(())
    })
    .await;
    let base = format!("/jobs/{jobid}/vertices");

    // A vertex with nothing to sample: -1 as in Flink, and why, in every view.
    let json = c.get_ok(&format!("{base}/{}/flamegraph", v[0])).await;
    assert_eq!(json["endTimestamp"], -1, "{json}");
    assert_eq!(json["missing"], json!([0, 1]), "{json}");
    assert_eq!(
        json["missingReasons"],
        json!({"0": "process not found", "1": "outside the allow-list"}),
        "{json}"
    );
    let one = c
        .get_ok(&format!("{base}/{}/flamegraph?subtaskindex=1", v[0]))
        .await;
    assert_eq!(
        one,
        json!({"endTimestamp": -1, "missing": [1], "missingReasons": {"1": "outside the allow-list"}})
    );
    let (header, svg) = view(&c, &format!("{base}/{}/flamegraph.svg", v[0])).await;
    assert_eq!(header.as_deref(), Some("0,1"));
    assert!(
        svg.contains("0 (process not found)")
            && svg.contains("1 (outside the allow-list)")
            && !svg.contains("retry"),
        "{svg}"
    );
    assert!(!svg.contains("65534"), "never the agent's text: {svg}");
    let (header, folded) = view(&c, &format!("{base}/{}/flamegraph.folded", v[0])).await;
    assert_eq!(header.as_deref(), Some("0,1"));
    assert!(
        folded.lines().count() == 1
            && folded.starts_with("# no samples: ")
            && folded
                .contains("missing subtasks: 0 (process not found); 1 (outside the allow-list)"),
        "{folded}"
    );

    // A vertex still running: the graph of the live subtask, the finished one named.
    let chains = Workload::CFramePointers.chains();
    let (header, svg) = view(&c, &format!("{base}/{}/flamegraph.svg", v[1])).await;
    assert_eq!(header.as_deref(), Some("1"));
    assert!(
        svg.contains(chains.spin[0]) && svg.contains("missing subtasks: 1 (process not found)"),
        "{}",
        &svg[..svg.len().min(3000)]
    );
    let json = c.get_ok(&format!("{base}/{}/flamegraph", v[1])).await;
    assert!(has_chain(&json["data"], chains.spin), "{json}");
    assert_eq!(json["missingReasons"], json!({"1": "process not found"}));
    let (_, folded) = view(&c, &format!("{base}/{}/flamegraph.folded", v[1])).await;
    assert_eq!(
        folded.lines().next(),
        Some("# missing subtasks: 1 (process not found)"),
        "{folded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_graph_is_served_with_the_reasons_of_a_later_run_that_delivered_nothing() {
    // Heartbeat timeout 120 s: a killed agent stays registered for the whole test, so what the
    // views show is what the later run found.
    let c = TestCoordinator::start(&flags()).await;
    let (tm_a, tm_b) = (
        "a0000000000000000000000000000413",
        "b0000000000000000000000000000413",
    );
    let mut agent_a = start_agent(&c, tm_a).await;
    let _agent_b = start_agent(&c, tm_b).await;
    let w = spinners_and_sleeper();
    let doomed = spinners_and_sleeper();
    let one = |tm: &str, pid: u32| {
        json!({"name": "one", "vertices": [{"name": "Source: spin", "parallelism": 1,
            "subtasks": [{"taskmanager": tm, "pid": pid, "thread_name": "spin-0"}]}]})
    };
    let chains = Workload::CFramePointers.chains();

    // A good graph, then its agent dies, then a new run: nothing delivers.
    let (job_a, va) = running_job(&c, &one(tm_a, w.pid())).await;
    let path = format!("/jobs/{job_a}/vertices/{}/flamegraph", va[0]);
    let good = graph(&c, &path).await;
    assert!(good.get("missing").is_none(), "{good}");
    let good_end = good["endTimestamp"].as_i64().unwrap();
    agent_a.kill();
    let _ = c.get_ok(&format!("{path}?refresh=true")).await;
    let after = poll("the refresh run to end", || async {
        let (body, sampling) = graph_and_sampling(&c, &path).await;
        (!sampling).then_some(body)
    })
    .await;
    // The cached graph is still served (Flink's semantics), with the later run's reasons.
    assert_eq!(after["endTimestamp"], good_end, "{after}");
    assert!(has_chain(&after["data"], chains.spin), "{after}");
    assert_eq!(after["missing"], json!([0]), "{after}");
    assert_eq!(
        after["missingReasons"],
        json!({"0": "agent unreachable"}),
        "{after}"
    );
    assert!(
        after["latestRunEndTimestamp"].as_i64().unwrap() > good_end,
        "{after}"
    );
    let base = format!("/jobs/{job_a}/vertices/{}", va[0]);
    let (header, svg) = view(&c, &format!("{base}/flamegraph.svg")).await;
    assert_eq!(header.as_deref(), Some("0"));
    assert!(
        svg.contains(chains.spin[0])
            && svg.contains(
                "delivered nothing, this graph is older: missing subtasks: 0 (agent unreachable)"
            ),
        "{}",
        &svg[..svg.len().min(3000)]
    );
    let (header, folded) = view(&c, &format!("{base}/flamegraph.folded")).await;
    assert_eq!(header.as_deref(), Some("0"));
    let head = folded.lines().next().unwrap();
    assert!(
        head.starts_with("# the latest run (")
            && head.ends_with(
                "delivered nothing, this graph is older: missing subtasks: 0 (agent unreachable)"
            ),
        "{folded}"
    );
    assert!(
        folded.lines().skip(1).all(|l| parse_line(l).is_some()) && folded.lines().count() > 1,
        "{folded}"
    );
    let (header, one_svg) = view(&c, &format!("{base}/flamegraph.svg?subtaskindex=0")).await;
    assert_eq!(
        header.as_deref(),
        Some("0"),
        "the subtask's graph says it too"
    );
    assert!(one_svg.contains("0 (agent unreachable)"));

    // The process killed after a good run: before the agent's heartbeat notices, the cached
    // graph with the later run's reason; after it, -1 with the same reason. Either way the
    // answer says why.
    let (job_b, vb) = running_job(&c, &one(tm_b, doomed.pid())).await;
    let path = format!("/jobs/{job_b}/vertices/{}/flamegraph", vb[0]);
    let good = graph(&c, &path).await;
    let good_end = good["endTimestamp"].as_i64().unwrap();
    drop(doomed); // SIGKILL + reap
    let why = poll("the killed process's reason", || async {
        let _ = c.get_ok(&format!("{path}?refresh=true")).await;
        let body = poll("the refresh run to end", || async {
            let (body, sampling) = graph_and_sampling(&c, &path).await;
            (!sampling).then_some(body)
        })
        .await;
        body.get("missingReasons").is_some().then_some(body)
    })
    .await;
    assert_eq!(
        why["missingReasons"],
        json!({"0": "process not found"}),
        "{why}"
    );
    let end = why["endTimestamp"].as_i64().unwrap();
    assert!(end == good_end || end == -1, "{why}");
    assert_eq!(
        why.get("latestRunEndTimestamp").is_some(),
        end == good_end,
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_of_a_lost_agent_are_named_agent_lost_or_never_confirmed() {
    // Agents lost after 1 s of silence. One confirms its subtasks and goes silent, the other
    // registers and never heartbeats; both are then dropped and their subtasks FAILED.
    let c = TestCoordinator::start(&["--heartbeat-timeout-s", "1"]).await;
    let (tm_a, tm_b) = (
        "a0000000000000000000000000000513",
        "b0000000000000000000000000000513",
    );
    let mut confirmed = TestAgent::connect(&c.rpc, tm_a).await;
    confirmed.register().await;
    let mut silent = TestAgent::connect(&c.rpc, tm_b).await;
    silent.register().await;
    let worker = support::sleeper();
    let jobid = c.register_job(&job([tm_a, tm_b], worker.pid())).await;
    confirmed.heartbeat().await;
    confirmed.heartbeat().await;
    let v = vertex_ids(&c, &jobid).await;
    poll("both agents to be lost", || async {
        (subtask_states(&c, &jobid, &v[0]).await == ["FAILED", "FAILED"]).then_some(())
    })
    .await;
    let path = format!("/jobs/{jobid}/vertices/{}/flamegraph", v[0]);
    assert_eq!(
        c.get_ok(&path).await,
        json!({"endTimestamp": -1, "missing": [0, 1],
            "missingReasons": {"0": "agent lost", "1": "never confirmed (agent lost)"}})
    );
    let (header, svg) = view(&c, &format!("{path}.svg")).await;
    assert_eq!(header.as_deref(), Some("0,1"));
    assert!(
        svg.contains("missing subtasks: 1 (never confirmed (agent lost)); 0 (agent lost)")
            && !svg.contains("retry"),
        "{svg}"
    );
}
