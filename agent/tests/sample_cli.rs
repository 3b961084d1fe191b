//! End-to-end tests of `flamegrid-agent sample` against real workload processes (C with and
//! without frame pointers, C++, Rust): exact call chains under the right `--type`, thread
//! states, demangled and inlined names, thread selection, churning threads, bad input.
//!
//! Every test starts its own workload (killed when the test ends) and checks afterwards that no
//! thread of it was left stopped.

mod common;

use common::*;
use flamegrid_workloads::{CPP_INLINED_FUNCTION, Mix, RunningWorkload, Workload, spawn};
use std::time::Duration;

fn start(w: Workload, mix: &Mix) -> RunningWorkload {
    spawn(w, mix).unwrap_or_else(|e| panic!("start {w:?}: {e}"))
}

fn assert_nothing_stopped(w: &RunningWorkload) {
    // A thread may be in the middle of its own unrelated stop for an instant; poll briefly.
    assert!(
        eventually(Duration::from_secs(2), || w.stopped_threads().is_empty()),
        "threads left stopped: {:?}",
        w.stopped_threads()
    );
}

/// Samples of `thread` (by name) in JSON output.
fn of_thread<'a>(samples: &'a [JsonSample], thread: &str) -> Vec<&'a JsonSample> {
    samples.iter().filter(|s| s.thread == thread).collect()
}

#[test]
fn exact_chains_and_states_for_every_language() {
    for w in Workload::all_native() {
        let wl = start(w, &Mix::one_of_each());
        let pid = wl.pid().to_string();
        let chains = w.chains();
        let json = sample_ok(&[
            "--pid",
            &pid,
            "--samples",
            "8",
            "--interval-ms",
            "5",
            "--format",
            "json",
        ]);
        let samples = parse_json(&json);
        assert!(!samples.is_empty(), "{w:?}: no samples");

        // Spinner: RUNNABLE, with the whole chain in at least one sample.
        let spin = of_thread(&samples, "spin-0");
        assert!(!spin.is_empty(), "{w:?}: spin-0 not sampled");
        assert!(
            spin.iter().all(|s| s.state == "RUNNABLE"),
            "{w:?}: spinner states {spin:?}"
        );
        assert!(
            spin.iter().any(|s| contains_chain(&s.names(), chains.spin)),
            "{w:?}: spin chain {:?} missing from {:#?}",
            chains.spin,
            spin.iter().map(|s| s.names()).collect::<Vec<_>>()
        );

        // Sleeper: TIMED_WAITING (RUNNABLE for the instant it is awake), chain present.
        let sleep = of_thread(&samples, "sleep-0");
        assert!(
            sleep
                .iter()
                .all(|s| s.state == "TIMED_WAITING" || s.state == "RUNNABLE"),
            "{w:?}: {sleep:?}"
        );
        assert!(
            sleep
                .iter()
                .any(|s| s.state == "TIMED_WAITING" && contains_chain(&s.names(), chains.sleep)),
            "{w:?}: sleep chain {:?} missing from {:#?}",
            chains.sleep,
            sleep
                .iter()
                .map(|s| (&s.state, s.names()))
                .collect::<Vec<_>>()
        );

        // Waiter and locker: WAITING (no timeout), chain in every sample.
        for (name, chain) in [("wait-0", chains.wait), ("lock-0", chains.lock)] {
            let th = of_thread(&samples, name);
            assert_eq!(th.len(), 8, "{w:?}: {name} sampled {} times", th.len());
            for s in th {
                assert_eq!(s.state, "WAITING", "{w:?}: {name}");
                assert!(
                    contains_chain(&s.names(), chain),
                    "{w:?}: {name} chain {chain:?} missing from {:?}",
                    s.names()
                );
            }
        }

        // The same chains under --type: spinners only ON_CPU, blocked threads only OFF_CPU.
        let on = parse_folded(&sample_ok(&[
            "--pid",
            &pid,
            "--samples",
            "5",
            "--interval-ms",
            "2",
            "--type",
            "on-cpu",
        ]));
        let off = parse_folded(&sample_ok(&[
            "--pid",
            &pid,
            "--samples",
            "5",
            "--interval-ms",
            "2",
            "--type",
            "off-cpu",
        ]));
        assert!(
            on.iter().any(|(s, _)| contains_chain(s, chains.spin)),
            "{w:?}: spin chain not on-cpu: {on:?}"
        );
        assert!(
            !off.iter().any(|(s, _)| contains_chain(s, chains.spin)),
            "{w:?}: spin chain off-cpu: {off:?}"
        );
        for chain in [chains.wait, chains.lock] {
            assert!(
                off.iter().any(|(s, _)| contains_chain(s, chain)),
                "{w:?}: {chain:?} not off-cpu: {off:?}"
            );
            assert!(
                !on.iter().any(|(s, _)| contains_chain(s, chain)),
                "{w:?}: {chain:?} on-cpu: {on:?}"
            );
        }
        // Folded stacks start at the root: the thread start routine, never the leaf.
        assert!(
            off.iter().all(|(s, _)| !s.is_empty() && s.len() >= 3),
            "{w:?}: shallow stacks {off:?}"
        );
        assert_nothing_stopped(&wl);
    }
}

#[test]
fn names_are_demangled_and_inlined_frames_shown() {
    let cpp = start(Workload::Cpp, &Mix::one_of_each());
    let samples = parse_json(&sample_ok(&[
        "--pid",
        &cpp.pid().to_string(),
        "--samples",
        "10",
        "--interval-ms",
        "3",
        "--format",
        "json",
    ]));
    let all: Vec<&(String, bool)> = samples.iter().flat_map(|s| s.frames.iter()).collect();
    assert!(
        all.iter()
            .any(|(n, _)| n == "demo::Worker<unsigned long>::recurse"),
        "template name missing"
    );
    // The inlined function shows up as its own frame, marked inlined.
    assert!(
        all.iter().any(|(n, inl)| n == CPP_INLINED_FUNCTION && *inl),
        "inlined {CPP_INLINED_FUNCTION} missing: {:?}",
        samples
            .iter()
            .filter(|s| s.thread == "spin-0")
            .map(|s| s.frames.clone())
            .collect::<Vec<_>>()
    );
    for (n, _) in &all {
        assert!(!n.starts_with("_Z"), "mangled C++ name {n}");
        assert!(
            !n.ends_with(')') || n.ends_with("operator()"),
            "argument list kept in {n}"
        );
    }
    assert_nothing_stopped(&cpp);

    let rust = start(Workload::Rust, &Mix::one_of_each());
    let samples = parse_json(&sample_ok(&[
        "--pid",
        &rust.pid().to_string(),
        "--samples",
        "5",
        "--interval-ms",
        "3",
        "--format",
        "json",
    ]));
    let names: Vec<String> = samples.iter().flat_map(|s| s.names()).collect();
    assert!(
        names.iter().any(|n| n == "rust_workload::spin::inner"),
        "rust path missing: {names:?}"
    );
    let hash = regex::Regex::new(r"::h[0-9a-f]{16}$").unwrap();
    for n in &names {
        assert!(!hash.is_match(n), "Rust hash kept in {n}");
        assert!(
            !n.starts_with("_ZN") && !n.starts_with("_R"),
            "mangled Rust name {n}"
        );
        assert!(
            !n.contains("$LT$") && !n.contains("$u20$"),
            "escaped Rust name {n}"
        );
    }
    assert_nothing_stopped(&rust);
}

#[test]
fn tid_and_thread_name_select_exactly() {
    let wl = start(
        Workload::CNoFramePointers,
        &Mix {
            spin: 2,
            sleep: 2,
            wait: 2,
            lock: 1,
            churn: 0,
            report_rate: false,
        },
    );
    let pid = wl.pid().to_string();
    let tid_of = |name: &str| {
        wl.tid_of(name)
            .unwrap_or_else(|| panic!("no thread {name}"))
    };
    let threads_in = |args: &[&str]| -> std::collections::BTreeSet<String> {
        let mut all = vec![
            "--pid",
            &pid,
            "--samples",
            "3",
            "--interval-ms",
            "1",
            "--format",
            "json",
        ];
        all.extend_from_slice(args);
        parse_json(&sample_ok(&all))
            .into_iter()
            .map(|s| s.thread)
            .collect()
    };
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };

    let (sleep1, wait0) = (tid_of("sleep-1").to_string(), tid_of("wait-0").to_string());
    assert_eq!(
        threads_in(&["--tid", &sleep1, "--tid", &wait0]),
        set(&["sleep-1", "wait-0"])
    );
    assert_eq!(
        threads_in(&["--thread-name", "spin-.*|lock-0"]),
        set(&["spin-0", "spin-1", "lock-0"])
    );
    // Whole-name match: `spin-1` does not select `spin-10`-like names, `spin` selects nothing.
    assert_eq!(threads_in(&["--thread-name", "spin-1"]), set(&["spin-1"]));
    // Both given: threads in the list whose name matches.
    assert_eq!(
        threads_in(&[
            "--tid",
            &sleep1,
            "--tid",
            &wait0,
            "--thread-name",
            "wait-.*"
        ]),
        set(&["wait-0"])
    );
    // From the environment, like every flag.
    let out = std::process::Command::new(agent_bin())
        .args(["sample", "--format", "json"])
        .env("FLAMEGRID_PID", &pid)
        .env("FLAMEGRID_THREAD_NAME", "sleep-0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: std::collections::BTreeSet<String> =
        parse_json(&String::from_utf8(out.stdout).unwrap())
            .into_iter()
            .map(|s| s.thread)
            .collect();
    assert_eq!(names, set(&["sleep-0"]));

    // A name that matches nothing is an error with one line, not an empty success.
    let out = sample(&["--pid", &pid, "--thread-name", "spin"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("matches the selection"), "{err}");
    assert_nothing_stopped(&wl);
}

#[test]
fn churning_threads_do_not_break_a_run() {
    let wl = start(
        Workload::CFramePointers,
        &Mix {
            spin: 1,
            sleep: 1,
            wait: 1,
            lock: 0,
            churn: 4,
            report_rate: false,
        },
    );
    let pid = wl.pid().to_string();
    for _ in 0..3 {
        let text = sample_ok(&[
            "--pid",
            &pid,
            "--samples",
            "40",
            "--interval-ms",
            "0",
            "--format",
            "json",
        ]);
        let samples = parse_json(&text);
        assert!(samples.iter().any(|s| s.thread == "spin-0"));
        assert!(
            samples.iter().filter(|s| s.thread == "wait-0").count() == 40,
            "steady threads sampled every round"
        );
        assert_nothing_stopped(&wl);
    }
}

#[test]
fn depth_limit_keeps_the_innermost_frames() {
    let wl = start(Workload::Cpp, &Mix::one_of_each());
    let pid = wl.pid().to_string();
    let samples = parse_json(&sample_ok(&[
        "--pid",
        &pid,
        "--max-depth",
        "3",
        "--format",
        "json",
        "--thread-name",
        "wait-0",
    ]));
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!(s.frames.len(), 3);
    assert!(s.truncated);
    let folded = sample_ok(&["--pid", &pid, "--max-depth", "3", "--thread-name", "wait-0"]);
    assert!(folded.starts_with("[truncated];"), "{folded}");
    // The innermost frames are the futex wait inside glibc, not the thread's start.
    assert!(
        !s.names()
            .iter()
            .any(|n| n == "start_thread" || n == "clone3"),
        "{:?}",
        s.names()
    );
}

#[test]
fn bad_input_gives_one_line_and_nonzero_exit() {
    let wl = start(Workload::CFramePointers, &Mix::one_of_each());
    let spin_tid = wl.tid_of("spin-0").unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--pid", "4194303"], "no such process"),
        (vec!["--pid", "0"], "--pid"),
        (vec!["--pid", "abc"], "--pid"),
        (vec![], "--pid"),
        (vec!["--pid", "1", "--samples", "0"], "--samples"),
        (vec!["--pid", "1", "--max-depth", "5000"], "--max-depth"),
        (vec!["--pid", "1", "--type", "sideways"], "--type"),
        (vec!["--pid", "1", "--format", "xml"], "--format"),
        (
            vec!["--pid", "1", "--thread-name", "spin-("],
            "thread name pattern",
        ),
        (vec!["--pid", &spin_tid], "is a thread of process"),
        (vec!["--pid", "1", "--bogus"], "--bogus"),
    ];
    for (args, expect) in cases {
        let out = sample(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(err.starts_with("flamegrid-agent: "), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err:?} lacks {expect:?}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_nothing_stopped(&wl);
}
