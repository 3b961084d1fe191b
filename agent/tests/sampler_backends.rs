//! The two backends side by side on real workloads: `--sampler perf` and `--sampler ptrace` give
//! the same chains with the same ON_CPU / OFF_CPU split, and perf mode never stops a running
//! thread (counted with the kernel's voluntary context switch counter, not timed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod common;

use common::*;
use flamegrid_workloads::{Mix, RunningWorkload, Workload, spawn};
use std::collections::BTreeSet;

fn start(w: Workload, mix: &Mix) -> RunningWorkload {
    spawn(w, mix).unwrap_or_else(|e| panic!("start {w:?}: {e}"))
}

/// `voluntary_ctxt_switches` of one thread.
fn voluntary_switches(pid: u32, tid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in status")
}

fn sampler_field(json: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    doc["sampler"].as_str().unwrap_or_default().to_string()
}

/// Which of the workload's chains a folded output contains.
fn chains_in(folded: &str, w: Workload) -> BTreeSet<&'static str> {
    let stacks = parse_folded(folded);
    let c = w.chains();
    [
        ("spin", c.spin),
        ("sleep", c.sleep),
        ("wait", c.wait),
        ("lock", c.lock),
    ]
    .into_iter()
    .filter(|(_, chain)| stacks.iter().any(|(s, _)| contains_chain(s, chain)))
    .map(|(name, _)| name)
    .collect()
}

#[test]
fn both_backends_give_the_same_chains_and_split() {
    for w in Workload::all_native() {
        let wl = start(w, &Mix::one_of_each());
        let pid = wl.pid().to_string();
        let mut seen = Vec::new();
        for backend in BACKENDS {
            let folded = |ty: &str| {
                sample_ok(&[
                    "--pid",
                    &pid,
                    "--samples",
                    "10",
                    "--interval-ms",
                    "5",
                    "--type",
                    ty,
                    "--sampler",
                    backend,
                ])
            };
            let (on_text, off_text) = (folded("on-cpu"), folded("off-cpu"));
            let (on, off) = (chains_in(&on_text, w), chains_in(&off_text, w));
            // The sleeper is awake for an instant now and then: it may show up on-CPU.
            let on: BTreeSet<_> = on.into_iter().filter(|c| *c != "sleep").collect();
            assert_eq!(
                (on.clone(), off.clone()),
                (
                    BTreeSet::from(["spin"]),
                    BTreeSet::from(["sleep", "wait", "lock"])
                ),
                "{w:?} --sampler {backend}: on-cpu {on:?}, off-cpu {off:?}\n\
                 on-cpu:\n{on_text}\noff-cpu:\n{off_text}"
            );
            seen.push((on, off));
        }
        assert_eq!(seen[0], seen[1], "{w:?}: perf and ptrace differ");
        assert!(
            wl.stopped_threads().is_empty(),
            "{w:?}: threads left stopped"
        );
    }
}

#[test]
fn perf_mode_never_stops_a_spinning_thread() {
    let wl = start(
        Workload::CNoFramePointers,
        &Mix {
            spin: 1,
            ..Mix::default()
        },
    );
    let pid = wl.pid();
    let spin = wl.tid_of("spin-0").expect("spin-0");
    let (pid_s, tid_s) = (pid.to_string(), spin.to_string());
    let mut added = Vec::new();
    for backend in BACKENDS {
        let before = voluntary_switches(pid, spin);
        let json = sample_ok(&[
            "--pid",
            &pid_s,
            "--tid",
            &tid_s,
            "--samples",
            "100",
            "--interval-ms",
            "2",
            "--format",
            "json",
            "--sampler",
            backend,
        ]);
        let after = voluntary_switches(pid, spin);
        let samples = parse_json(&json);
        assert_eq!(samples.len(), 100, "--sampler {backend}");
        // Every sample is RUNNABLE in the spinner, nearly all of them with the whole spin
        // chain: a sample taken at an exact instant (perf mode) can land in the outer spin
        // function between two calls of the inner ones, and ptrace on a loaded host may give
        // up on a stop now and then (a sample without frames), never more than a few.
        let chain = Workload::CNoFramePointers.chains().spin;
        let with_chain = samples
            .iter()
            .filter(|s| s.state == "RUNNABLE" && contains_chain(&s.names(), chain))
            .count();
        let in_spinner = samples
            .iter()
            .filter(|s| s.state == "RUNNABLE" && contains_chain(&s.names(), &chain[..1]))
            .count();
        let without_frames = samples.iter().filter(|s| s.frames.is_empty()).count();
        assert!(
            in_spinner + without_frames == 100 && with_chain >= 90,
            "--sampler {backend}: {:?}",
            samples
                .iter()
                .map(|s| (&s.state, s.names()))
                .collect::<Vec<_>>()
        );
        assert_eq!(sampler_field(&json), backend);
        added.push((backend, after - before));
    }
    assert!(
        added[0].1 < 10,
        "perf mode added {} voluntary context switches to a spinning thread sampled 100 \
         times (ptrace: {})",
        added[0].1,
        added[1].1
    );
    assert!(
        added[1].1 >= 90,
        "ptrace mode added only {} voluntary context switches in 100 samples: the counter \
         does not show stops",
        added[1].1
    );
}

/// `--sampler` is checked like every flag, and `auto` says what it chose.
#[test]
fn sampler_flag_is_checked_and_auto_names_its_choice() {
    let out = sample(&["--pid", "1", "--sampler", "ebpf"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sampler"), "{err}");
    let wl = start(Workload::Cpp, &Mix::one_of_each());
    let pid = wl.pid().to_string();
    let json = sample_ok(&["--pid", &pid, "--format", "json", "--sampler", "auto"]);
    // Root here: perf events are allowed.
    assert_eq!(sampler_field(&json), "perf");
}

/// `--perf-ring-memory-mib` (or its variable) caps the perf rings: threads beyond it are read
/// with ptrace, the JSON output says so, the log says why once, and a value out of range is
/// refused.
#[test]
fn perf_ring_memory_cap_sends_the_other_threads_to_ptrace() {
    let out = sample(&["--pid", "1", "--perf-ring-memory-mib", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--perf-ring-memory-mib"), "{err}");
    let wl = start(Workload::CNoFramePointers, &Mix::one_of_each());
    let pid = wl.pid().to_string();
    // 1 MiB: less than one thread's two rings, so every thread goes to ptrace.
    let out = std::process::Command::new(agent_bin())
        .args([
            "sample",
            "--pid",
            &pid,
            "--format",
            "json",
            "--sampler",
            "perf",
        ])
        .env("FLAMEGRID_PERF_RING_MEMORY_MIB", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (json, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{log}");
    let field = sampler_field(&json);
    assert!(
        field.starts_with("ptrace (perf ring memory cap reached (1024 KiB"),
        "{field}"
    );
    assert_eq!(
        log.matches("perf ring memory cap reached").count(),
        1,
        "{log}"
    );
    // Every thread was still sampled, each with its chain.
    let stacks: Vec<Vec<String>> = parse_json(&json).iter().map(|s| s.names()).collect();
    let c = Workload::CNoFramePointers.chains();
    for chain in [c.spin, c.sleep, c.wait, c.lock] {
        assert!(
            stacks.iter().any(|s| contains_chain(s, chain)),
            "{chain:?} missing: {stacks:?}"
        );
    }
    assert!(wl.stopped_threads().is_empty());
}
