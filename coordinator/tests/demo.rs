//! `flamegrid-coordinator --demo` as a user runs it: the real binary, a real agent (in-process)
//! and the real demo pipeline program, on free ports and a scratch `--data-dir`.
//!
//! Two promises of the demo are checked here, without a browser:
//!
//! * **Ctrl-C stops everything.** The test sends SIGINT, as a terminal does, and expects a
//!   clean exit (status 0) and the workload process gone, not left running or orphaned.
//! * **A restart does not pile up jobs.** The registry is durable, so a second `--demo` on the
//!   same data directory finds the first one's job; it must cancel it, leaving exactly one
//!   RUNNING demo job and no stale RUNNING or FAILED copy.
//!
//! The pid and the job id are read from what the demo prints
//! (`flamegrid demo: agent <id> samples workload pid <pid>; job <jid>`), the line a user reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/demo.rs"]
mod demo_support;

use demo_support::{DemoProcess, TerminateOnDrop, wait_for};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

/// The demo job's name, as the demo registers it.
const DEMO_JOB_NAME: &str = "flamegrid-demo pipeline";

/// A running `--demo` and what it printed.
struct Demo {
    process: TerminateOnDrop,
    rest: u16,
    workload_pid: u32,
    job_id: String,
}

impl Demo {
    /// Starts `--demo` on `data_dir` and waits for its "workload pid" line.
    fn start(data_dir: &Path) -> Demo {
        let demo = DemoProcess::start(data_dir, &[]);
        let started = regex::Regex::new(r"workload pid (\d+); job ([0-9a-f]{32})").unwrap();
        let (workload_pid, job_id) = demo.wait_line("the demo's workload pid line", |line| {
            let c = started.captures(line)?;
            Some((c[1].parse::<u32>().unwrap(), c[2].to_string()))
        });
        Demo {
            process: demo.process,
            rest: demo.rest,
            workload_pid,
            job_id,
        }
    }

    /// GET a REST path as JSON; `None` while the server is not answering.
    fn json(&self, path: &str) -> Option<serde_json::Value> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .get(format!("http://127.0.0.1:{}/{path}", self.rest))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.json().await.ok()
        })
    }

    /// Sends SIGINT (what Ctrl-C in a terminal sends) and waits for the exit.
    fn interrupt(mut self) -> (ExitStatus, u32) {
        let pid = i32::try_from(self.process.0.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        let status = wait_for("the demo to exit after SIGINT", || {
            self.process.0.try_wait().unwrap()
        });
        (status, self.workload_pid)
    }
}

/// True while a process with this pid exists (a zombie counts: it was not reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The demo jobs in `/jobs/overview`, as (jid, state).
fn demo_jobs(overview: &serde_json::Value) -> Vec<(String, String)> {
    overview["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["name"] == DEMO_JOB_NAME)
        .map(|j| {
            (
                j["jid"].as_str().unwrap().to_string(),
                j["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn ctrl_c_stops_the_coordinator_the_agent_and_the_workload() {
    let scratch = tempfile::tempdir().unwrap();
    let demo = Demo::start(&scratch.path().join("data"));
    assert!(
        process_exists(demo.workload_pid),
        "the printed workload pid {} is not a process",
        demo.workload_pid
    );
    let (status, workload_pid) = demo.interrupt();
    assert!(
        status.success(),
        "the demo exited with {status} after SIGINT"
    );
    wait_for("the workload process to be gone", || {
        (!process_exists(workload_pid)).then_some(())
    });
}

#[test]
fn a_second_demo_on_the_same_data_dir_cancels_the_first_ones_job() {
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = scratch.path().join("data");

    let first = Demo::start(&data_dir);
    let first_job = first.job_id.clone();
    let (status, _) = first.interrupt();
    assert!(status.success(), "the first demo exited with {status}");

    let second = Demo::start(&data_dir);
    assert_ne!(
        second.job_id, first_job,
        "the second demo registers a new job"
    );
    let jobs = wait_for("the jobs overview", || second.json("jobs/overview"));
    let demos = demo_jobs(&jobs);
    let running: Vec<_> = demos.iter().filter(|(_, s)| s == "RUNNING").collect();
    assert_eq!(
        running,
        vec![&(second.job_id.clone(), "RUNNING".to_string())],
        "exactly the new demo job runs: {demos:?}"
    );
    assert!(
        demos.contains(&(first_job.clone(), "CANCELED".to_string())),
        "the first demo's job is CANCELED: {demos:?}"
    );
    assert!(
        demos
            .iter()
            .all(|(jid, s)| jid == &second.job_id || s == "CANCELED"),
        "a stale demo job is left: {demos:?}"
    );
    let (status, _) = second.interrupt();
    assert!(status.success(), "the second demo exited with {status}");
}
