//! End-to-end tests of `flamegrid-agent sample` against real workload processes (C with and
//! without frame pointers, C++, Rust): exact call chains under the right `--type`, thread
//! states, demangled and inlined names, thread selection, churning threads, bad input.
//! The sampling tests run with both backends (`--sampler perf` and `--sampler ptrace`,
//! [`each_backend`]): the same assertions hold for both.
//!
//! Every test starts its own workload (killed when the test ends) and checks afterwards that no
//! thread of it was left stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
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
    each_backend(|_| {
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
    });
}

#[test]
fn names_are_demangled_and_inlined_frames_shown() {
    each_backend(|_| {
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
    });
}

#[test]
fn tid_and_thread_name_select_exactly() {
    each_backend(|_| {
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
        // The process exists: this is not "no such process".
        assert!(!err.contains("no such process"), "{err}");
        assert_nothing_stopped(&wl);
    });
}

#[test]
fn churning_threads_do_not_break_a_run() {
    each_backend(|_| {
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
    });
}

#[test]
fn depth_limit_keeps_the_innermost_frames() {
    each_backend(|_| {
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
    });
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

/// Samples of the innermost frame `leaf` (user stack, no system call below it).
fn samples_in<'a>(samples: &'a [JsonSample], leaf: &str) -> Vec<&'a JsonSample> {
    samples
        .iter()
        .filter(|s| s.names().last().is_some_and(|n| n == leaf))
        .collect()
}

/// A thread our interrupt caught in user code was running, whatever `/proc` said just before
/// the round: the demo's duty-cycled sources alternate between compute (`hash_field`) and
/// 2 ms timed waits, so a state letter read before the stop is often stale. Compute frames
/// must never be counted as waiting (they would pollute OFF_CPU graphs), over many samples.
#[test]
fn threads_stopped_in_user_code_are_runnable() {
    each_backend(|_| {
        let wl = start(Workload::Demo, &Mix::default());
        let pid = wl.pid().to_string();
        let json = sample_ok(&[
            "--pid",
            &pid,
            "--thread-name",
            "source-.*",
            "--samples",
            "300",
            "--interval-ms",
            "1",
            "--format",
            "json",
        ]);
        let samples = parse_json(&json);
        let computing = samples_in(&samples, "hash_field");
        assert!(!computing.is_empty(), "no sample in hash_field");
        let waiting: Vec<_> = computing
            .iter()
            .filter(|s| s.state != "RUNNABLE")
            .map(|s| (&s.thread, &s.state))
            .collect();
        assert!(
            waiting.is_empty(),
            "{} of {} samples in hash_field are not RUNNABLE: {waiting:?}",
            waiting.len(),
            computing.len()
        );
        // The same holds for the pure spinners of every language, over many samples.
        for w in Workload::all_native() {
            let wl = start(w, &Mix::one_of_each());
            let pid = wl.pid().to_string();
            let json = sample_ok(&[
                "--pid",
                &pid,
                "--thread-name",
                "spin-0",
                "--samples",
                "100",
                "--interval-ms",
                "0",
                "--format",
                "json",
            ]);
            let samples = parse_json(&json);
            assert_eq!(samples.len(), 100, "{w:?}");
            assert!(
                samples.iter().all(|s| s.state == "RUNNABLE"),
                "{w:?}: spinner states {:?}",
                samples.iter().map(|s| &s.state).collect::<Vec<_>>()
            );
            assert_nothing_stopped(&wl);
        }
        assert_nothing_stopped(&wl);
    });
}

/// `flamegrid-agent sample ARGS...` run as user `nobody` (uid/gid 65534, no groups, no
/// capabilities) through util-linux's `setpriv`.
fn sample_as_nobody(args: &[&str]) -> std::process::Child {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            agent_bin().as_str(),
            "sample",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run setpriv")
}

/// Another user's process without CAP_SYS_PTRACE: the kernel refuses `/proc/PID/maps` and the
/// attach. That is a refusal with its reason (the uid), in one line, non-zero, and at once:
/// the run asks for 100 samples a minute apart, so a refusal found only after the rounds
/// would keep it for hours (polled up to a generous bound, far below that).
#[test]
fn another_users_process_is_refused_with_the_uid_reason() {
    if !running_as_root() || !have_program("setpriv") {
        eprintln!("skipped: needs root and util-linux's setpriv to run the agent as nobody");
        return;
    }
    let wl = start(Workload::CNoFramePointers, &Mix::one_of_each());
    let pid = wl.pid().to_string();
    let child = KillOnDrop(sample_as_nobody(&[
        "--pid",
        &pid,
        "--samples",
        "100",
        "--interval-ms",
        "60000",
    ]));
    let mut child = child;
    assert!(
        eventually(Duration::from_secs(60), || matches!(
            child.0.try_wait(),
            Ok(Some(_))
        )),
        "the refused run did not end at once"
    );
    let out = std::mem::replace(
        &mut child.0,
        std::process::Command::new("true").spawn().unwrap(),
    )
    .wait_with_output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(&format!("may not trace pid {pid}")), "{err}");
    assert!(
        err.contains("belongs to uid 0") && err.contains("uid 65534 without CAP_SYS_PTRACE"),
        "not the uid reason: {err}"
    );
    assert!(!err.contains("no such process"), "{err}");
    assert!(out.stdout.is_empty());
    assert_nothing_stopped(&wl);
}

/// A thread that another tracer holds: selected alone, the run is refused with the "another
/// tracer" reason; in a whole-process run the other threads are sampled and one warning line
/// names the refused thread.
#[test]
fn a_thread_held_by_another_tracer_is_named_and_explained() {
    if !running_as_root() {
        eprintln!("skipped: seizing a workload thread from the test needs root");
        return;
    }
    let wl = start(Workload::CFramePointers, &Mix::one_of_each());
    let pid = wl.pid().to_string();
    let held = wl.tid_of("sleep-0").unwrap();
    let hold = TracerHold::seize(held);

    let out = sample(&["--pid", &pid, "--tid", &held.to_string(), "--samples", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("another tracer is attached"), "{err}");
    assert!(err.contains("TracerPid "), "{err}");

    let out = sample(&["--pid", &pid, "--samples", "2", "--format", "json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {err}");
    // Besides the refusal, a loaded host may add perf's honest report of dropped records.
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning:") && !l.contains("perf: the kernel dropped"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains(&held.to_string()) && warnings[0].contains("another tracer"),
        "{err}"
    );
    let samples = parse_json(&String::from_utf8(out.stdout).unwrap());
    assert!(samples.iter().all(|s| s.tid != held));
    assert!(samples.iter().any(|s| s.thread == "spin-0"));
    drop(hold);
    assert_nothing_stopped(&wl);
}

/// A process in its own mount namespace whose binary exists only there (a private tmpfs), and
/// an agent without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE (so no `/proc/PID/map_files`):
/// the names come from the process's own files through `/proc/PID/root`.
#[test]
fn symbols_of_a_binary_only_in_another_mount_namespace() {
    if !running_as_root() || !have_program("unshare") || !have_program("setpriv") {
        eprintln!("skipped: needs root, unshare and setpriv");
        return;
    }
    let dir = temp_dir("mntns");
    let hidden = dir.path().join("nswl-hidden");
    let script = format!(
        "mount -t tmpfs none {dir} && cp {bin} {hidden} && exec {hidden} 1 1 0 0 0",
        dir = dir.path().display(),
        bin = Workload::CNoFramePointers.path().display(),
        hidden = hidden.display(),
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let Some(wl) = spawn_until_ready(cmd) else {
        eprintln!("skipped: could not start a workload in a new mount namespace");
        return;
    };
    assert!(
        !hidden.exists(),
        "the copy must not exist in the agent's mount namespace"
    );
    let pid = wl.0.id().to_string();
    let out = std::process::Command::new("setpriv")
        .args([
            "--inh-caps=-sys_admin,-checkpoint_restore",
            "--bounding-set=-sys_admin,-checkpoint_restore",
            agent_bin().as_str(),
            "sample",
            "--pid",
            &pid,
            "--samples",
            "3",
            "--interval-ms",
            "1",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let folded = parse_folded(&String::from_utf8(out.stdout).unwrap());
    let chains = Workload::CNoFramePointers.chains();
    for chain in [chains.spin, chains.sleep] {
        assert!(
            folded.iter().any(|(s, _)| contains_chain(s, chain)),
            "{chain:?} missing: {folded:?}"
        );
    }
}

/// `main` starts a spinner and calls `pthread_exit`: the process lives on with a zombie main
/// thread whose `/proc/PID/maps` is empty. Frames are still named (maps, files and the
/// symbolizer are reached through a live thread).
#[test]
fn process_whose_main_thread_exited_is_symbolized() {
    const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) unsigned long orphan_spin_leaf(unsigned long x) {
    for (int i = 0; i < 1000; i++) x = x * 6364136223846793005UL + 1;
    __asm__ volatile("" ::: "memory");
    return x;
}
__attribute__((noinline)) void *orphan_spinner(void *arg) {
    volatile unsigned long x = 1;
    for (;;) x = orphan_spin_leaf(x);
    return arg;
}
static void *stdin_watch(void *arg) {
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    exit(0);
    return arg;
}
int main(void) {
    pthread_t a, b;
    pthread_create(&a, NULL, orphan_spinner, NULL);
    pthread_setname_np(a, "orphan-spin");
    pthread_create(&b, NULL, stdin_watch, NULL);
    printf("ready\n");
    fflush(stdout);
    pthread_exit(NULL);
}
"#;
    let dir = temp_dir("pthread-exit");
    let Some(bin) = compile_c(dir.path(), "orphan-main", SOURCE) else {
        eprintln!("skipped: no C compiler (cc)");
        return;
    };
    let wl = spawn_until_ready(std::process::Command::new(&bin)).expect("start orphan-main");
    let pid = wl.0.id();
    // Wait until the main thread is gone (its maps empty), the case under test.
    assert!(eventually(Duration::from_secs(10), || std::fs::read(
        format!("/proc/{pid}/maps")
    )
    .is_ok_and(|m| m.is_empty())));
    let folded = parse_folded(&sample_ok(&[
        "--pid",
        &pid.to_string(),
        "--thread-name",
        "orphan-spin",
        "--samples",
        "5",
        "--interval-ms",
        "1",
    ]));
    assert!(
        folded
            .iter()
            .any(|(s, _)| contains_chain(s, &["orphan_spinner", "orphan_spin_leaf"])),
        "{folded:?}"
    );
    assert!(
        !folded
            .iter()
            .any(|(s, _)| s.iter().any(|f| f == "[unknown]")),
        "{folded:?}"
    );
}

/// A binary without a symbol table still unwinds (CFI stays in `.eh_frame`), and its own
/// functions come out as `module+0xoffset`, never as errors or `[unknown]`.
#[test]
fn stripped_binary_gives_module_offset_frames() {
    if !have_program("strip") {
        eprintln!("skipped: binutils' strip is not installed");
        return;
    }
    let dir = temp_dir("stripped");
    let bin = dir.path().join("stripped-wl");
    std::fs::copy(Workload::CNoFramePointers.path(), &bin).unwrap();
    let status = std::process::Command::new("strip")
        .args(["--strip-all"])
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success());
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["1", "0", "0", "0", "0"]);
    let wl = spawn_until_ready(cmd).expect("start the stripped workload");
    let folded = parse_folded(&sample_ok(&[
        "--pid",
        &wl.0.id().to_string(),
        "--thread-name",
        "spin-0",
        "--samples",
        "5",
        "--interval-ms",
        "1",
    ]));
    let frames: Vec<&String> = folded.iter().flat_map(|(s, _)| s).collect();
    assert!(
        frames.iter().any(|f| f.starts_with("stripped-wl+0x")),
        "{folded:?}"
    );
    assert!(
        !frames.iter().any(|f| f.as_str() == "spin_inner"),
        "{folded:?}"
    );
}
