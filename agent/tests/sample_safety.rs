//! Safety of the sampler for the sampled program: no thread is ever left stopped and no signal
//! is ever swallowed — not after normal runs, not when several runs overlap, and not when the
//! sampler is killed with SIGKILL at random instants.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod common;

use common::*;
use flamegrid_sampler::SamplerError;
use flamegrid_sampler::SamplerOptions;
use flamegrid_sampler::selection::{AccessPolicy, ProcessRef, ThreadSelector};
use flamegrid_workloads::{Mix, Workload, spawn};
use rand::Rng;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn opts(samples: u32, delay_ms: u64) -> SamplerOptions {
    SamplerOptions {
        num_samples: samples,
        delay: Duration::from_millis(delay_ms),
        max_depth: 100,
        kernel_stacks: false,
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

#[ignore = "slow tier (browser, load, kill loops): cargo test --workspace -- --ignored"]
#[test]
fn sigkill_at_random_moments_never_leaves_a_thread_stopped() {
    let wl = spawn(
        Workload::CNoFramePointers,
        &Mix {
            spin: 2,
            sleep: 2,
            wait: 1,
            lock: 1,
            churn: 1,
            report_rate: false,
        },
    )
    .unwrap();
    let pid = wl.pid().to_string();
    let spinner = wl.tid_of("spin-0").unwrap();
    let mut rng = rand::rng();
    let budget = Instant::now() + Duration::from_secs(20);
    let mut kills = 0;
    while kills < 150 && Instant::now() < budget {
        let child = Command::new(agent_bin())
            .args([
                "sample",
                "--pid",
                &pid,
                "--samples",
                "100000",
                "--interval-ms",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        // Random instant: sometimes before the tracer starts, mostly in the middle of rounds.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..40_000)));
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        kills += 1;
        assert!(
            eventually(Duration::from_secs(2), || wl.stopped_threads().is_empty()),
            "after kill #{kills}: stopped threads {:?} (states {:?})",
            wl.stopped_threads(),
            wl.thread_states()
        );
    }
    assert!(kills >= 20, "only {kills} kills in the time budget");
    // The program still makes progress.
    let before = wl.cpu_ticks(spinner).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || wl
            .cpu_ticks(spinner)
            .unwrap_or(0)
            > before),
        "spinner is stuck"
    );
    eprintln!("{kills} SIGKILLs, no thread left stopped");
}

#[test]
fn overlapping_runs_and_every_language_leave_nothing_stopped() {
    let sampler = test_sampler();
    let workloads: Vec<_> = Workload::all_native()
        .into_iter()
        .map(|w| {
            spawn(
                w,
                &Mix {
                    spin: 1,
                    sleep: 1,
                    wait: 1,
                    lock: 1,
                    churn: 1,
                    report_rate: false,
                },
            )
            .unwrap()
        })
        .collect();
    let targets: Vec<(String, ThreadSelector)> = workloads
        .iter()
        .map(|w| (format!("{:?}", w.workload()), ThreadSelector::pid(w.pid())))
        .collect();
    // Three runs at once over all four processes, plus one that names a thread twice.
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let sampler = sampler.clone();
                let targets = targets.clone();
                scope.spawn(move || {
                    sampler.sample(&targets, &AccessPolicy::unrestricted(), &opts(20, 1))
                })
            })
            .collect();
        for run in runs {
            let run = run.join().unwrap();
            assert_eq!(run.subtasks.len(), 4);
            assert!(run.start_ms <= run.end_ms);
            for (key, result) in run.subtasks {
                let set = result.unwrap_or_else(|e| panic!("{key}: {e}"));
                assert!(
                    set.samples.len() >= 20 * 5,
                    "{key}: {} samples",
                    set.samples.len()
                );
                set.validate().unwrap();
            }
        }
    });
    let w0 = &workloads[0];
    let twice = vec![
        ("a".to_string(), ThreadSelector::pid(w0.pid())),
        (
            "b".to_string(),
            ThreadSelector {
                process: ProcessRef::Pid(w0.pid()),
                tids: vec![],
                thread_name: Some(ThreadSelector::compile_thread_name("wait-.*").unwrap()),
            },
        ),
    ];
    let run = sampler.sample(&twice, &AccessPolicy::unrestricted(), &opts(3, 1));
    // By name: the oldest process with that comm (other tests may run the same program).
    let by_name = ThreadSelector {
        process: ProcessRef::Name(w0.workload().process_name().to_string()),
        tids: vec![],
        thread_name: None,
    };
    let found =
        flamegrid_sampler::selection::resolve(&by_name, &AccessPolicy::unrestricted()).unwrap();
    assert_eq!(found.comm, w0.workload().process_name());
    let b = run.subtasks[1].1.as_ref().unwrap();
    assert_eq!(
        b.samples.len(),
        3,
        "the doubly selected thread is sampled in both subtasks"
    );
    assert!(run.subtasks[0].1.as_ref().unwrap().samples.len() >= 15);
    for w in &workloads {
        assert!(
            eventually(Duration::from_secs(2), || w.stopped_threads().is_empty()),
            "{:?}",
            w.workload()
        );
    }
}

#[test]
fn policy_refusals_and_missing_processes_are_reported_per_target() {
    let sampler = test_sampler();
    let wl = spawn(Workload::CFramePointers, &Mix::one_of_each()).unwrap();
    let only_other_comm = AccessPolicy::new(&[], &["no-such-comm".to_string()]).unwrap();
    let targets = vec![
        ("ok".to_string(), ThreadSelector::pid(wl.pid())),
        ("self".to_string(), ThreadSelector::pid(std::process::id())),
        ("gone".to_string(), ThreadSelector::pid(4_194_000)),
    ];
    let run = sampler.sample(&targets, &AccessPolicy::unrestricted(), &opts(2, 1));
    assert!(run.subtasks[0].1.is_ok());
    assert!(
        matches!(
            run.subtasks[1].1,
            Err(SamplerError::PermissionDenied { .. })
        ),
        "{:?}",
        run.subtasks[1].1
    );
    assert!(
        matches!(run.subtasks[2].1, Err(SamplerError::NoSuchProcess(_))),
        "{:?}",
        run.subtasks[2].1
    );
    let run = sampler.sample(&targets[..1], &only_other_comm, &opts(1, 1));
    match &run.subtasks[0].1 {
        Err(SamplerError::PermissionDenied { reason, .. }) => {
            assert!(reason.contains("allow-list"), "{reason}")
        }
        other => panic!("expected an allow-list refusal, got {other:?}"),
    }
    // Allowed by comm.
    let by_comm =
        AccessPolicy::new(&[], &[Workload::CFramePointers.process_name().to_string()]).unwrap();
    assert!(
        sampler
            .sample(&targets[..1], &by_comm, &opts(1, 1))
            .subtasks[0]
            .1
            .is_ok()
    );
    assert!(wl.stopped_threads().is_empty());
}

/// A process counting SIGUSR1s; each signal is sent only after the previous one was counted,
/// so none can merge with another. Sampled back to back meanwhile: every signal must arrive.
#[test]
fn signals_arriving_while_sampled_are_delivered() {
    let script = r#"
import signal, sys, time
n = 0
def h(sig, frame):
    global n
    n += 1
signal.signal(signal.SIGUSR1, h)
sys.stdout.write("ready\n")
sys.stdout.flush()
# The handler only counts; the main loop reports. (A handler that printed would nest: the next
# signal arrives right after its flush, before it returns, and a long run of signals overflows
# Python's recursion limit.)
shown = 0
while True:
    if n != shown:
        shown = n
        sys.stdout.write("%d\n" % shown)
        sys.stdout.flush()
    time.sleep(0.0005)
"#;
    let child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.0.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let sampler = test_sampler();
    // A finite run of back-to-back rounds; signals flow before, during and after it, so the
    // run certainly overlaps them however the two threads get scheduled.
    let sampling = {
        let sampler = sampler.clone();
        std::thread::spawn(move || {
            sampler.sample(
                &[("py".into(), ThreadSelector::pid(pid))],
                &AccessPolicy::unrestricted(),
                &opts(2_000, 0),
            )
        })
    };
    let mut sent = 0u32;
    while sent < 200 || !sampling.is_finished() {
        assert!(sent < 1_000_000, "the sampling run never ended");
        sent += 1;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        let line = lines.next().expect("python3 exited").unwrap();
        assert_eq!(line, sent.to_string(), "signal {sent} was lost or doubled");
    }
    let run = sampling.join().unwrap();
    let set = run.subtasks[0].1.as_ref().unwrap();
    assert!(!set.samples.is_empty());
    assert!(eventually(Duration::from_secs(2), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit_once(')')
                    .unwrap()
                    .1
                    .trim_start()
                    .starts_with(['t', 'T'])
            })
            .unwrap_or(false)
    }));
}

/// With `kernel_stacks`, off-CPU samples continue into the kernel: a thread blocked on a futex
/// shows the kernel's futex wait as `... [k]` frames, innermost (root only: skipped when
/// `/proc/<pid>/task/<tid>/stack` is not readable).
#[test]
fn kernel_stacks_continue_off_cpu_stacks() {
    let wl = spawn(Workload::CFramePointers, &Mix::one_of_each()).unwrap();
    let wait = wl.tid_of("wait-0").unwrap();
    if std::fs::read_to_string(format!("/proc/{}/task/{wait}/stack", wl.pid())).is_err() {
        eprintln!("kernel stacks not readable here; skipped");
        return;
    }
    let sampler = test_sampler();
    let mut o = opts(10, 5);
    o.kernel_stacks = true;
    let sel = ThreadSelector {
        process: ProcessRef::Pid(wl.pid()),
        tids: vec![wait],
        thread_name: None,
    };
    let run = sampler.sample(&[("k".into(), sel)], &AccessPolicy::unrestricted(), &o);
    let set = run.subtasks[0].1.as_ref().unwrap();
    // Right after our own interrupt the waiter is briefly restarting its futex call, so one
    // sample's kernel stack can be empty; every sample keeps its user stack, kernel frames are
    // always innermost, and most samples have them.
    let mut with_kernel = 0;
    for s in &set.samples {
        let frames: Vec<_> = set.stack_frames(s).collect();
        let first_kernel = frames
            .iter()
            .position(|f| f.module == "[kernel]")
            .unwrap_or(frames.len());
        assert!(
            frames[first_kernel..]
                .iter()
                .all(|f| f.module == "[kernel]"),
            "kernel frames are innermost"
        );
        assert!(
            frames[..first_kernel]
                .iter()
                .any(|f| f.name == "wait_inner"),
            "user stack kept"
        );
        assert!(
            frames[first_kernel..]
                .iter()
                .all(|f| f.name.ends_with(" [k]")),
            "kernel frames are marked [k]"
        );
        let futex = frames[first_kernel..]
            .iter()
            .any(|f| f.name.contains("futex"));
        with_kernel += usize::from(futex);
    }
    assert!(
        with_kernel > 0,
        "no sample of {} had the futex wait in its kernel frames",
        set.samples.len()
    );
}

/// The kernel's refusal (here: another tracer holds the thread) is the target's answer at once,
/// not after the remaining rounds: 50 rounds a minute apart end as soon as the first round was
/// refused. In a whole-process run the refused thread is named in `warnings` and the other
/// threads are sampled.
#[test]
fn refused_threads_end_the_run_at_once_or_are_named_in_a_warning() {
    if !running_as_root() {
        eprintln!("skipped: seizing a workload thread from the test needs root");
        return;
    }
    let wl = spawn(Workload::CFramePointers, &Mix::one_of_each()).unwrap();
    let held = wl.tid_of("wait-0").unwrap();
    let hold = TracerHold::seize(held);
    let sampler = test_sampler();
    let only_held = ThreadSelector {
        process: ProcessRef::Pid(wl.pid()),
        tids: vec![held],
        thread_name: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let s = sampler.clone();
    let runner = std::thread::spawn(move || {
        let run = s.sample(
            &[("held".to_string(), only_held)],
            &AccessPolicy::unrestricted(),
            &opts(50, 60_000),
        );
        let _ = tx.send(run);
    });
    let run = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a refused run must end at once, not after its 50 rounds");
    runner.join().unwrap();
    match &run.subtasks[0].1 {
        Err(SamplerError::PermissionDenied { reason, .. }) => {
            assert!(reason.contains("another tracer"), "{reason}")
        }
        other => panic!("expected a refusal: {other:?}"),
    }

    let run = sampler.sample(
        &[("all".to_string(), ThreadSelector::pid(wl.pid()))],
        &AccessPolicy::unrestricted(),
        &opts(2, 1),
    );
    let set = run.subtasks[0]
        .1
        .as_ref()
        .expect("the other threads are sampled");
    assert!(set.threads.iter().any(|t| t.name == "spin-0"));
    assert!(set.threads.iter().all(|t| t.tid != held));
    // One warning names the refused thread. With perf events a loaded host may add the honest
    // report of records the kernel dropped; nothing else.
    let (refusals, others): (Vec<_>, Vec<_>) = run
        .warnings
        .iter()
        .partition(|(_, w)| w.contains("could not sample"));
    assert_eq!(refusals.len(), 1, "{:?}", run.warnings);
    assert_eq!(refusals[0].0, "all");
    assert!(
        refusals[0].1.contains(&held.to_string()) && refusals[0].1.contains("another tracer"),
        "{:?}",
        run.warnings
    );
    assert!(
        others
            .iter()
            .all(|(_, w)| w.starts_with("perf: the kernel dropped")),
        "{:?}",
        run.warnings
    );
    drop(hold);
    assert!(eventually(Duration::from_secs(2), || wl
        .stopped_threads()
        .is_empty()));
}
