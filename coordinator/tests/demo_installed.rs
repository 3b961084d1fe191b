//! `flamegrid-coordinator --demo` wherever the binaries are installed, with the source tree out
//! of reach (issue 14): the demo finds `flamegrid-agent` and `flamegrid-demo` next to its own
//! executable, not through anything Cargo left in the build.
//!
//! The built executables are copied into an empty directory, and the coordinator runs from
//! there with its working directory in another empty one and an environment without Cargo's
//! variables (no `CARGO_MANIFEST_DIR`, no `OUT_DIR`) and without the target directory on `PATH`.
//!
//! The agent and demo executables are binaries of other packages: `cargo test --workspace` (or
//! `cargo build`) builds them into the target directory next to this test's `deps/`; a plain
//! `cargo test -p flamegrid-coordinator` does not, and the tests then say so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/demo.rs"]
mod demo_support;

use demo_support::{DemoProcess, TerminateOnDrop, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};

/// A `PATH` with the system's programs only: no cargo, no target directory.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Copies the named executables into `dir` (permissions kept).
fn install(dir: &Path, names: &[&str]) {
    for name in names {
        std::fs::copy(flamegrid_testkit::executable(name), dir.join(name)).unwrap();
    }
}

/// The installed coordinator, run from `work` with an environment that knows nothing of Cargo.
fn installed_coordinator(bin: &Path, work: &Path) -> Command {
    let mut command = Command::new(bin.join("flamegrid-coordinator"));
    command
        .current_dir(work)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("HOME", work);
    command
}

#[test]
fn the_demo_runs_from_a_folder_of_copied_executables() {
    let bin = flamegrid_testkit::temp_dir("demo-installed");
    let work = flamegrid_testkit::temp_dir("demo-installed");
    install(
        bin.path(),
        &["flamegrid-coordinator", "flamegrid-agent", "flamegrid-demo"],
    );
    let demo = DemoProcess::start_command(
        installed_coordinator(bin.path(), work.path()),
        &work.path().join("flamegrid-data"),
        &[
            "--flamegraph-num-samples",
            "20",
            "--flamegraph-delay-ms",
            "20",
            // A first run that finds the subtasks still starting (or, on a loaded machine,
            // catches no sample in hash_field) is replaced a second later, not after a minute.
            "--flamegraph-refresh-interval-s",
            "1",
        ],
    );
    let url = regex::Regex::new(r"flamegrid dashboard: (http://\S+)").unwrap();
    let base = demo.wait_line("the dashboard URL", |line| {
        url.captures(line)
            .map(|c| c[1].trim_end_matches('/').to_string())
    });
    let started = regex::Regex::new(r"workload pid (\d+); job ([0-9a-f]{32})").unwrap();
    let job = demo.wait_line("the demo's started line", |line| {
        started.captures(line).map(|c| c[2].to_string())
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).send();
        runtime.block_on(async {
            let response = tokio::time::timeout(flamegrid_testkit::HANG_GUARD, request)
                .await
                .ok()?
                .ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    };
    let (status, details) = get(format!("/jobs/{job}")).unwrap();
    assert_eq!(status, 200, "{details}");
    let details: serde_json::Value = serde_json::from_str(&details).unwrap();
    let source = details["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("Source")))
        .unwrap_or_else(|| panic!("no source vertex in {details}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The SVG waits for a sampling run; a first one may still find the subtasks starting.
    // What each answer lacked is printed when it changes, so a failure says why.
    let mut last = String::new();
    let svg = wait_for("a flame graph SVG with the demo's CPU chain", || {
        let (status, svg) = get(format!(
            "/jobs/{job}/vertices/{source}/flamegraph.svg?type=on_cpu"
        ))?;
        if status == 200 && svg.contains("hash_field") {
            return Some(svg);
        }
        let seen = format!("{status}: {}", svg_frame_names(&svg).join(" "));
        if seen != last {
            eprintln!("waiting for hash_field in the on-CPU SVG, got {seen}");
            last = seen;
        }
        None
    });
    for name in ["parse_records", "tokenize", "hash_field"] {
        assert!(svg.contains(name), "{name} missing from the SVG");
    }
}

/// The frame names an SVG flame graph shows (its `<title>`s, counts cut off), at most 40.
fn svg_frame_names(svg: &str) -> Vec<&str> {
    svg.split("<title>")
        .skip(1)
        .filter_map(|rest| rest.split(['(', '<']).next())
        .map(str::trim)
        .take(40)
        .collect()
}

#[test]
fn without_the_agent_next_to_it_the_demo_fails_fast_naming_it() {
    let bin = flamegrid_testkit::temp_dir("demo-installed");
    let work = flamegrid_testkit::temp_dir("demo-installed");
    install(bin.path(), &["flamegrid-coordinator"]);
    let child = installed_coordinator(bin.path(), work.path())
        .args([
            "--demo",
            "--rest-addr",
            "127.0.0.1:0",
            "--rpc-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = TerminateOnDrop(child);
    let status = wait_for("--demo without flamegrid-agent to exit", || {
        child.0.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot find flamegrid-agent") && stderr.contains("cargo build"),
        "the error names the missing executable and how to build it: {stderr}"
    );
}

/// The direct children of `pid` (every thread's `children` list).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children
}

/// True while `pid` exists and is not a zombie (an orphan nobody reaps counts as gone).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

#[test]
fn kill_9_of_the_coordinator_takes_the_demo_children_with_it() {
    let work = flamegrid_testkit::temp_dir("demo-installed");
    let mut demo = DemoProcess::start(&work.path().join("flamegrid-data"), &[]);
    let started = regex::Regex::new(r"workload pid (\d+); job").unwrap();
    let workload: u32 = demo.wait_line("the demo's started line", |line| {
        started.captures(line).and_then(|c| c[1].parse().ok())
    });
    let coordinator = demo.process.0.id();
    let children = children_of(coordinator);
    assert!(
        children.contains(&workload) && children.len() >= 2,
        "the agent and the workload are the coordinator's children: {children:?}"
    );
    demo.process.0.kill().unwrap(); // SIGKILL: no destructor, no signal handler runs
    demo.process.0.wait().unwrap();
    wait_for("the demo's agent and workload to exit", || {
        children.iter().all(|&pid| !is_running(pid)).then_some(())
    });
}
