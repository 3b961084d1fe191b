//! Flame graph history, `?at=` and differential graphs end to end: a coordinator (in this
//! process, real HTTP and gRPC on loopback), a real `flamegrid-agent run` process and a C
//! workload from `flamegrid-workloads` whose hot code changes while it runs
//! ([`RunningWorkload::start_extra_spinner`]).
//!
//! The coordinator runs with a refresh interval of 0 s, so every poll of the JSON endpoint that
//! finds no run in flight starts one: runs come as fast as they can be sampled (10 samples ×
//! 10 ms). Nothing here asserts on time: waits are polls with a generous hang guard, and every
//! child process is killed when its guard drops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use flamegrid_coordinator::flamegraph::svg::utc;
use flamegrid_model::folded::parse_line;
use flamegrid_workloads::{Mix, RunningWorkload, Workload};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::{TestCoordinator, children, graph_where, has_chain, poll, start_agent};

/// Quick runs, refreshed on every read, `history` runs kept per key.
fn flags(history: &'static str) -> Vec<&'static str> {
    vec![
        "--flamegraph-num-samples",
        "10",
        "--flamegraph-delay-ms",
        "10",
        "--flamegraph-refresh-interval-s",
        "0",
        "--flamegraph-rpc-grace-ms",
        "2000",
        "--heartbeat-timeout-s",
        "120",
        "--flamegraph-history",
        history,
    ]
}

/// Registers a one-vertex job over `selector` (a subtask body without `taskmanager`), waits
/// until it runs, and returns the vertex's base path `/jobs/<jid>/vertices/<vid>`.
async fn one_vertex_job(c: &TestCoordinator, tm: &str, mut selector: Value) -> String {
    selector["taskmanager"] = json!(tm);
    let jobid = c
        .register_job(&json!({
            "name": "history-e2e",
            "vertices": [{"name": "Source: work", "parallelism": 1, "subtasks": [selector]}]
        }))
        .await;
    let vid = c.get_ok(&format!("/jobs/{jobid}")).await["vertices"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/jobs/{jobid}/vertices/{vid}");
    poll("the subtask RUNNING", || async {
        let v = c.get_ok(&path).await;
        (v["subtasks"][0]["status"] == "RUNNING").then_some(())
    })
    .await;
    path
}

/// GET → (status, body text).
async fn get_text(c: &TestCoordinator, path: &str) -> (u16, String) {
    let r = c.http.get(c.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The kept runs' endTimestamps, newest first.
async fn history(c: &TestCoordinator, vertex: &str, query: &str) -> Vec<i64> {
    let h = c
        .get_ok(&format!("{vertex}/flamegraph/history{query}"))
        .await;
    h["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["endTimestamp"].as_i64().unwrap())
        .collect()
}

/// The folded stacks a Flink tree stands for: each node's own samples (value minus its
/// children's) as one `root-path count` pair, the root itself left out.
fn tree_to_folded(node: &Value) -> BTreeSet<(Vec<String>, u64)> {
    fn walk(node: &Value, path: &mut Vec<String>, out: &mut BTreeSet<(Vec<String>, u64)>) {
        let kids: u64 = children(node)
            .iter()
            .map(|c| c["value"].as_u64().unwrap())
            .sum();
        let own = node["value"].as_u64().unwrap() - kids;
        if own > 0 && !path.is_empty() {
            out.insert((path.clone(), own));
        }
        for c in children(node) {
            path.push(c["name"].as_str().unwrap().to_string());
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(node, &mut Vec::new(), &mut out);
    out
}

fn folded_set(text: &str) -> BTreeSet<(Vec<String>, u64)> {
    text.lines()
        .filter_map(parse_line)
        .map(|(frames, n)| (frames.iter().map(|f| f.to_string()).collect(), n))
        .collect()
}

/// The fill of the first frame whose tooltip starts with `name (`, as (r, g, b).
fn fill_of(svg: &str, name: &str) -> Option<(u8, u8, u8)> {
    let at = svg.find(&format!("<title>{name} ("))?;
    let rest = &svg[at..];
    let fill = rest.find("fill=\"rgb(")? + "fill=\"rgb(".len();
    let end = rest[fill..].find(')')?;
    let mut parts = rest[fill..fill + end]
        .split(',')
        .map(|p| p.trim().parse::<u8>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_n_runs_and_at_serves_exactly_that_run() {
    const KEPT: usize = 3;
    let c = TestCoordinator::start(&flags("3")).await;
    let tm = "b0000000000000000000000000000001";
    let _agent = start_agent(&c, tm).await;
    let w: RunningWorkload = flamegrid_workloads::spawn(
        Workload::CFramePointers,
        &Mix {
            spin: 1,
            sleep: 1,
            ..Mix::default()
        },
    )
    .unwrap();
    let vertex = one_vertex_job(
        &c,
        tm,
        json!({"pid": w.pid(), "thread_name": "spin-0|sleep-0"}),
    )
    .await;
    assert_eq!(
        history(&c, &vertex, "").await,
        Vec::<i64>::new(),
        "nothing yet"
    );

    // Poll until KEPT + 2 runs have been seen: the first two must have been dropped.
    let mut seen: Vec<i64> = Vec::new();
    while seen.len() < KEPT + 2 {
        let g = graph_where(&c, &format!("{vertex}/flamegraph"), |g| {
            seen.last() != Some(&g["endTimestamp"].as_i64().unwrap())
        })
        .await;
        seen.push(g["endTimestamp"].as_i64().unwrap());
    }
    // From here on nothing starts a run (history and `at` never do), except the one the last
    // poll may have started: at most one more run lands.
    let kept = history(&c, &vertex, "").await;
    assert_eq!(kept.len(), KEPT, "{kept:?}");
    assert!(kept.is_sorted_by(|a, b| a > b), "newest first: {kept:?}");
    assert!(
        !kept.contains(&seen[0]) && !kept.contains(&seen[1]),
        "oldest dropped: kept {kept:?}, seen {seen:?}"
    );
    assert!(kept.contains(&seen[KEPT + 1]) || kept[0] > seen[KEPT + 1]);
    let h = c
        .get_ok(&format!("{vertex}/flamegraph/history?type=on_cpu"))
        .await;
    for run in h["runs"].as_array().unwrap() {
        assert_eq!(run.as_object().unwrap().len(), 3, "{run}");
        assert!(run["samples"].as_u64().unwrap() > 0, "{run}");
        let threads = run["threads"].as_u64().unwrap();
        assert!(
            (1..=2).contains(&threads),
            "the spinner, maybe the sleeper: {run}"
        );
    }

    // What history costs, for the record (not asserted: sizes are the cache's business).
    let cache = c
        .coordinator
        .as_ref()
        .unwrap()
        .app_state()
        .flamegraphs
        .cache();
    let (keys, bytes) = cache.usage();
    eprintln!(
        "cache: {keys} keys, {} runs kept, {bytes} bytes estimated",
        cache.kept_runs()
    );

    // `at` names a kept run (the middle one stays kept even if one more run lands).
    let at = kept[1];
    let j = c.get_ok(&format!("{vertex}/flamegraph?at={at}")).await;
    assert_eq!(j["endTimestamp"], at);
    let j_sub = c
        .get_ok(&format!(
            "{vertex}/flamegraph?at={at}&subtaskindex=0&type=on_cpu"
        ))
        .await;
    assert_eq!(j_sub["endTimestamp"], at, "subtask keys keep history too");
    let (status, folded) = get_text(&c, &format!("{vertex}/flamegraph.folded?at={at}")).await;
    assert_eq!(status, 200, "{folded}");
    assert_eq!(
        folded_set(&folded),
        tree_to_folded(&j["data"]),
        "the folded view shows the same kept run as the JSON"
    );
    let (status, svg) = get_text(&c, &format!("{vertex}/flamegraph.svg?at={at}")).await;
    assert_eq!(status, 200);
    assert!(svg.contains(&utc(at)), "the SVG says when its run ended");

    // The exports honour `at` as well (they resolve through the same code).
    let (status, body) =
        get_text(&c, &format!("{vertex}/flamegraph.speedscope.json?at={at}")).await;
    assert_eq!(status, 200, "{body}");

    // Not kept → 404 saying where the kept runs are listed; not a number → 400.
    for path in [
        format!("{vertex}/flamegraph?at={}", seen[0]),
        format!("{vertex}/flamegraph.folded?at={}", seen[0]),
        format!("{vertex}/flamegraph.svg?at=1"),
        format!("{vertex}/flamegraph/history?at=1"),
        format!("{vertex}/flamegraph.pb.gz?at=1"),
    ] {
        let (status, body) = c.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        let msg = body["errors"][0].as_str().unwrap();
        assert!(
            msg.contains("Kept runs end at") && msg.contains("/flamegraph/history"),
            "{msg}"
        );
    }
    for path in [
        format!("{vertex}/flamegraph?at=yesterday"),
        format!("{vertex}/flamegraph.folded?at=1.5"),
        format!("{vertex}/flamegraph.svg?at=-"),
    ] {
        let (status, body) = c.get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("query parameter (at)"),
            "{body}"
        );
    }
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_a_new_hot_function_as_grown() {
    let c = TestCoordinator::start(&flags("10")).await;
    let tm = "b0000000000000000000000000000002";
    let _agent = start_agent(&c, tm).await;
    // At first nothing spins: the process sleeps (sleep-0) and waits on stdin (main).
    let mut w = flamegrid_workloads::spawn(
        Workload::CFramePointers,
        &Mix {
            sleep: 1,
            ..Mix::default()
        },
    )
    .unwrap();
    let spin = Workload::CFramePointers.chains().spin;
    let hot = spin[spin.len() - 1];
    let vertex = one_vertex_job(&c, tm, json!({"pid": w.pid()})).await;
    let json_path = format!("{vertex}/flamegraph");

    let before = graph_where(&c, &json_path, |_| true).await;
    assert!(
        !has_chain(&before["data"], &[hot]),
        "nothing spins yet: {before}"
    );
    let base = before["endTimestamp"].as_i64().unwrap();

    // Now the hot function appears: poll until a run has the whole spin chain.
    w.start_extra_spinner().unwrap();
    let after = graph_where(&c, &json_path, |g| has_chain(&g["data"], spin)).await;
    let later = after["endTimestamp"].as_i64().unwrap();
    assert!(later > base);

    let (status, svg) = get_text(
        &c,
        &format!("{vertex}/flamegraph/diff.svg?base={base}&at={later}&type=full"),
    )
    .await;
    assert_eq!(status, 200, "{svg}");
    assert!(svg.contains("Differential FULL flame graph"), "{svg}");
    assert!(
        svg.contains(&utc(base)) && svg.contains(&utc(later)),
        "the title names both runs"
    );
    let (r, g, b) = fill_of(&svg, hot).unwrap_or_else(|| panic!("{hot} not drawn: {svg}"));
    assert!(
        r == 255 && g == b && g < 250,
        "{hot} grew, so it is red: rgb({r},{g},{b})"
    );
    // The sleeper kept sleeping but lost share: its innermost frame (where its own samples
    // are; inferno colours a frame by the change of its own samples) is blue.
    let blue = svg
        .match_indices("fill=\"rgb(")
        .filter_map(|(i, m)| {
            let rest = &svg[i + m.len()..];
            let v: Vec<u8> = rest[..rest.find(')')?]
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .any(|(r, g, b)| b == 255 && r == g && r < 250);
    assert!(blue, "something shrank: {svg}");

    // Against the latest run (no `at`), per subtask too.
    let (status, svg) = get_text(
        &c,
        &format!("{vertex}/flamegraph/diff.svg?base={base}&subtaskindex=0"),
    )
    .await;
    assert_eq!(status, 200, "{svg}");
    assert!(svg.contains("<svg"));

    // base: missing or not a number → 400, not kept → 404.
    let (status, body) = c.get(&format!("{vertex}/flamegraph/diff.svg")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("(base)"));
    let (status, body) = c
        .get(&format!("{vertex}/flamegraph/diff.svg?base=x1"))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = c.get(&format!("{vertex}/flamegraph/diff.svg?base=1")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("(base)"));
}
