//! Each program starts, reports `ready` with the expected threads in the expected states, and
//! is gone after its handle is dropped or its stdin closes.

use super::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn mix() -> Mix {
    Mix {
        spin: 2,
        sleep: 2,
        wait: 1,
        lock: 1,
        churn: 1,
        report_rate: false,
    }
}

/// Polls `condition` until it holds; panics with `what` after the testkit's hang guard.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    flamegrid_testkit::wait_for(what, || condition().then_some(()))
}

fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

#[test]
fn every_native_workload_starts_with_named_threads_and_dies_on_drop() {
    for w in Workload::all_native() {
        let running = spawn(w, &mix()).unwrap();
        let pid = running.pid();
        let names: BTreeSet<String> = running
            .threads()
            .unwrap()
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        for expected in ["spin-0", "spin-1", "sleep-0", "sleep-1", "wait-0", "lock-0"] {
            assert!(
                names.contains(expected),
                "{w:?}: no thread {expected} in {names:?}"
            );
        }
        assert!(
            names.contains(w.process_name()),
            "{w:?}: main thread missing in {names:?}"
        );
        let allowed: BTreeSet<&str> = [
            w.process_name(),
            "spin-0",
            "spin-1",
            "sleep-0",
            "sleep-1",
            "wait-0",
            "lock-0",
            "churn-0",
        ]
        .into();
        for name in &names {
            assert!(
                allowed.contains(name.as_str()),
                "{w:?}: unexpected thread {name}"
            );
        }
        assert_eq!(running.tid_of(w.process_name()), Some(pid));
        drop(running);
        assert!(!proc_dir(pid).exists(), "{w:?}: pid {pid} survived drop");
    }
}

#[test]
fn threads_reach_their_roles_states() {
    for w in Workload::all_native() {
        let running = spawn(w, &mix()).unwrap();
        let state_of = |name: &str| {
            let tid = running.tid_of(name).unwrap();
            running
                .thread_states()
                .into_iter()
                .find(|&(t, _)| t == tid)
                .map(|(_, s)| s)
        };
        // Blocked threads settle into S; spinners keep burning CPU.
        for name in ["sleep-0", "wait-0", "lock-0"] {
            eventually(&format!("{w:?} {name} sleeping"), || {
                state_of(name) == Some('S')
            });
        }
        let spinner = running.tid_of("spin-0").unwrap();
        let before = running.cpu_ticks(spinner).unwrap();
        eventually(&format!("{w:?} spin-0 burning CPU"), || {
            running.cpu_ticks(spinner).unwrap() > before
        });
        assert!(running.stopped_threads().is_empty());
    }
}

#[test]
fn churn_threads_come_and_go() {
    let running = spawn(
        Workload::CNoFramePointers,
        &Mix {
            churn: 1,
            ..Mix::default()
        },
    )
    .unwrap();
    let first = running.tid_of("churn-0");
    eventually("a new churn-0 thread", || {
        let now = running.tid_of("churn-0");
        now.is_some() && now != first
    });
}

#[test]
fn workloads_exit_when_stdin_closes() {
    for w in Workload::all_native().into_iter().chain([Workload::Demo]) {
        let mut running = spawn(w, &Mix::one_of_each()).unwrap();
        // Exit must work while waiters are really blocked (a C++ static condition variable's
        // destructor would wait for them forever).
        let waiter = if w == Workload::Demo {
            "sink-1"
        } else {
            "wait-0"
        };
        let tid = running.tid_of(waiter).unwrap();
        eventually(&format!("{w:?} {waiter} blocked"), || {
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/wchan", running.pid()))
                .is_ok_and(|wchan| wchan.contains("futex"))
        });
        running.close_stdin();
        let mut status = None;
        eventually(&format!("{w:?} exits after stdin closed"), || {
            status = running.try_wait().unwrap();
            status.is_some()
        });
        let status = status.unwrap();
        assert!(status.success(), "{w:?} exited with {status}");
    }
}

#[test]
fn rate_lines_report_spinner_progress() {
    for w in Workload::all_native() {
        let mut running = spawn(
            w,
            &Mix {
                spin: 1,
                report_rate: true,
                ..Mix::default()
            },
        )
        .unwrap();
        let rate = running.next_rate().unwrap();
        assert!(rate > 0, "{w:?} reported rate 0");
    }
    let mut quiet = spawn(Workload::CFramePointers, &Mix::one_of_each()).unwrap();
    assert_eq!(quiet.next_rate(), None);
}

#[test]
fn demo_runs_the_pipeline_threads_of_its_vertices() {
    let running = spawn(Workload::Demo, &Mix::default()).unwrap();
    let names: BTreeSet<String> = running
        .threads()
        .unwrap()
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    for vertex in demo_vertices() {
        for thread in vertex.subtask_thread_names {
            assert!(names.contains(*thread), "demo lacks {thread}: {names:?}");
        }
        for &input in vertex.inputs {
            assert!(input < demo_vertices().len());
        }
    }
    let pid = running.pid();
    drop(running);
    assert!(!proc_dir(pid).exists());
}

#[test]
fn bad_command_lines_are_refused() {
    let status = std::process::Command::new(Workload::Cpp.path())
        .args(["1", "x", "0", "0", "0"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let status = std::process::Command::new(Workload::Rust.path())
        .arg("1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn chains_are_nonempty_and_demangled() {
    for w in Workload::all_native() {
        let chains = w.chains();
        for chain in [chains.spin, chains.sleep, chains.wait, chains.lock] {
            assert!(!chain.is_empty());
            for frame in chain {
                assert!(!frame.contains('('), "{frame} carries arguments");
                assert!(!frame.contains("::h"), "{frame} carries a hash");
            }
        }
    }
    assert_eq!(
        Workload::Cpp.chains().spin.last(),
        Some(&CPP_INLINED_FUNCTION)
    );
}

#[test]
fn extra_spinners_start_while_the_program_runs() {
    for w in [Workload::CFramePointers, Workload::CNoFramePointers] {
        let mut running = spawn(w, &Mix::default()).unwrap();
        assert!(running.tid_of("spin-0").is_none());
        assert_eq!(running.start_extra_spinner().unwrap(), "spin-extra-0");
        assert_eq!(running.start_extra_spinner().unwrap(), "spin-extra-1");
        let tid = running
            .tid_of("spin-extra-1")
            .expect("named before the answer");
        eventually("the extra spinner burns CPU", || {
            running.cpu_ticks(tid).is_some_and(|t| t > 0)
        });
    }
    let mut rust = spawn(Workload::Rust, &Mix::default()).unwrap();
    let err = rust.start_extra_spinner().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
}
