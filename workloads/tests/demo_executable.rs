//! `flamegrid-demo`, the executable `flamegrid-coordinator --demo` starts as a sibling: its
//! `--vertices` answer is the one job layout of [`flamegrid_workloads::demo_vertices`], and it
//! runs the pipeline until its stdin closes.
//!
//! This integration test is also what makes `cargo test --workspace` build the executable into
//! `target/<profile>/` (cargo builds a package's binaries for its integration tests), where the
//! coordinator's demo tests find it next to `flamegrid-coordinator` and `flamegrid-agent`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use flamegrid_testkit::{KillOnDrop, wait_for};
use flamegrid_workloads::{demo_vertices, demo_vertices_json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const DEMO: &str = env!("CARGO_BIN_EXE_flamegrid-demo");

#[test]
fn vertices_prints_the_demo_jobs_layout() {
    let out = Command::new(DEMO).arg("--vertices").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&demo_vertices_json(demo_vertices())).unwrap();
    assert_eq!(printed, expected);
}

#[test]
fn an_unknown_argument_is_refused_with_the_usage() {
    let out = Command::new(DEMO).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: flamegrid-demo"));
}

#[test]
fn the_pipeline_runs_its_named_threads_until_stdin_closes() {
    let mut demo = KillOnDrop(
        Command::new(DEMO)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(demo.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = demo.pid();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            std::fs::read_to_string(t.path().join("comm")).ok()
        })
        .map(|n| n.trim().to_string())
        .collect();
    for vertex in demo_vertices() {
        for thread in vertex.subtask_thread_names {
            let pattern = regex::Regex::new(&format!("^(?:{thread})$")).unwrap();
            assert!(
                names.iter().any(|n| pattern.is_match(n)),
                "no thread {thread} in {names:?}"
            );
        }
    }
    drop(demo.0.stdin.take());
    wait_for("the demo to exit at end of stdin", || {
        demo.0.try_wait().unwrap()
    });
}
