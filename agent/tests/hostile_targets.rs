//! Sampled processes that attack the agent through the files they map (issue 12, finding 1 and
//! the truncation point of finding 7). Every target is a real process built by the test; the
//! agent is the real binary, with the capabilities the deploy files give it (CAP_SYS_PTRACE,
//! no CAP_SYS_ADMIN, so no `/proc/PID/map_files`).
//!
//! * A FIFO where a mapped library was (at its path and at `path (deleted)`): `sample` returns
//!   with that module's frames as `module+0xoffset`; a running agent answers, keeps serving
//!   other processes, and stops on SIGTERM with such a run in flight.
//! * A library truncated and rewritten in place while the agent samples processes that map it
//!   (a deploy copying over a running library): the agent never dies of SIGBUS.
//!
//! Run against another agent build with `FLAMEGRID_TEST_AGENT_BIN=/path/to/flamegrid-agent`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod common;
mod run_support;

use common::{
    KillOnDrop, WITHOUT_SYS_ADMIN, compile_c_with, have_program, parse_folded, run_bounded,
    running_as_root, spawn_until_ready, temp_dir,
};
use flamegrid_proto::v1;
use flamegrid_workloads::{Mix, Workload};
use run_support::{AgentProcess, FakeCoordinator, HANG_GUARD, by_pid, poll, sampling_client};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The library the targets map: a spinning thread and a blocked thread live in it. Many small
/// functions with debug information make it a file whose parse takes a while.
fn library_source() -> String {
    let mut src = String::from(
        r#"
#include <unistd.h>
__attribute__((noinline)) unsigned long hostile_leaf(unsigned long x) {
    for (int i = 0; i < 1000; i++) x = x * 6364136223846793005UL + 1;
    __asm__ volatile("" ::: "memory");
    return x;
}
void *hostile_spin(void *arg) {
    volatile unsigned long x = 1;
    for (;;) x = hostile_leaf(x);
    return arg;
}
__attribute__((noinline)) void hostile_wait_here(void) {
    for (;;) pause();
}
void *hostile_block(void *arg) {
    hostile_wait_here();
    return arg;
}
"#,
    );
    for i in 0..3000 {
        src.push_str(&format!(
            "struct padding_{i} {{ int a{i}; long b{i}; }};\n\
             __attribute__((noinline)) long padding_fn_{i}(struct padding_{i} *p) \
             {{ return p->a{i} + p->b{i} * {i}; }}\n"
        ));
    }
    src
}

/// The program: dlopens `argv[1]`, runs its function `argv[2]` on a thread named `hostile`, and
/// lives until its stdin closes.
const MAIN_SOURCE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void *(*entry)(void *) = (void *(*)(void *))dlsym(h, argv[2]);
    if (!entry) return 1;
    pthread_t t;
    pthread_create(&t, NULL, entry, NULL);
    pthread_setname_np(t, "hostile");
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"#;

/// The built library and program.
struct Programs {
    dir: tempfile::TempDir,
    main: PathBuf,
    /// The library as built (never mapped; copied to where targets load it).
    library: PathBuf,
}

impl Programs {
    /// Builds both, or `None` (the test then skips) without root, setpriv or a C compiler.
    fn build(tag: &str) -> Option<Programs> {
        if !running_as_root() || !have_program("setpriv") {
            eprintln!("skipped: needs root and util-linux's setpriv (to drop CAP_SYS_ADMIN)");
            return None;
        }
        let dir = temp_dir(tag);
        let built = compile_c_with(
            dir.path(),
            "libhostile-built.so",
            &library_source(),
            &["-shared", "-fPIC"],
        );
        let main = compile_c_with(dir.path(), "hostile-main", MAIN_SOURCE, &["-ldl"]);
        match (built, main) {
            (Some(library), Some(main)) => Some(Programs { dir, main, library }),
            _ => {
                eprintln!("skipped: no C compiler (cc)");
                None
            }
        }
    }

    /// Starts a target that maps `library` (a copy of the built one) and runs `entry` in it.
    fn start(&self, library: &Path, entry: &str) -> KillOnDrop {
        let mut cmd = std::process::Command::new(&self.main);
        cmd.arg(library).arg(entry);
        spawn_until_ready(cmd).expect("start the hostile target")
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// A target spinning inside a library whose file was then replaced by FIFOs, at its path and
/// at the `path (deleted)` name that `/proc/PID/maps` now shows.
fn fifo_target(programs: &Programs) -> KillOnDrop {
    let library = programs.dir.path().join("libhostile.so");
    std::fs::copy(&programs.library, &library).unwrap();
    let target = programs.start(&library, "hostile_spin");
    std::fs::remove_file(&library).unwrap();
    mkfifo(&library);
    let mut deleted = library.clone().into_os_string();
    deleted.push(" (deleted)");
    mkfifo(Path::new(&deleted));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.0.id())).unwrap();
    assert!(
        maps.contains("libhostile.so (deleted)"),
        "the mapping shows the replaced file: {maps}"
    );
    target
}

/// Tids of `pid` in a ptrace or job-control stop.
fn stopped_threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| matches!(state, "t" | "T"))
            })
        })
        .collect()
}

/// The frame names of every sample of every subtask of an answer.
fn all_frames(resp: &v1::SampleResponse) -> Vec<String> {
    (0..resp.subtasks.len())
        .flat_map(|i| run_support::stacks(resp, i))
        .flatten()
        .collect()
}

fn request(selectors: Vec<v1::ThreadSelector>, n: u32, delay_ms: u32) -> v1::SampleRequest {
    v1::SampleRequest {
        request_id: 1,
        selectors,
        num_samples: n,
        delay_ms,
        max_depth: 64,
    }
}

/// `flamegrid-agent sample` on a process whose mapped library is now a FIFO returns (it used
/// to wait forever in a blocking open on the tracer thread) with the library's frames as
/// `libhostile.so+0x...`.
#[test]
fn sample_returns_with_module_offsets_when_a_mapped_library_became_a_fifo() {
    let Some(programs) = Programs::build("fifo-cli") else {
        return;
    };
    let target = fifo_target(&programs);
    let pid = target.0.id().to_string();
    let out = run_bounded(
        &WITHOUT_SYS_ADMIN,
        &[
            "sample",
            "--pid",
            &pid,
            "--thread-name",
            "hostile",
            "--samples",
            "3",
            "--interval-ms",
            "1",
        ],
        HANG_GUARD,
    )
    .expect("`flamegrid-agent sample` hung on a FIFO in place of a mapped library");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let folded = parse_folded(&String::from_utf8_lossy(&out.stdout));
    assert!(
        folded
            .iter()
            .flat_map(|(s, _)| s)
            .any(|f| f.starts_with("libhostile.so+0x")),
        "the library's frames are module+0xoffset: {folded:?}"
    );
    assert_eq!(stopped_threads(target.0.id()), Vec::<u32>::new());
}

/// A running agent asked to sample the FIFO target answers, and then still samples another
/// process with its real names (one hostile process used to stop all sampling on its host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_answers_for_a_fifo_target_and_keeps_serving() {
    let Some(programs) = Programs::build("fifo-run") else {
        return;
    };
    let target = fifo_target(&programs);
    let coord = FakeCoordinator::start().await;
    let mut agent = AgentProcess::start_wrapped(
        &WITHOUT_SYS_ADMIN,
        &["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"],
        &[],
    );
    let addr = agent.wait_listening().await;
    let mut client = sampling_client(addr).await;
    let hostile = tokio::time::timeout(
        HANG_GUARD,
        client.sample(request(
            vec![by_pid("hostile", target.0.id(), "hostile")],
            3,
            1,
        )),
    )
    .await
    .expect("the agent hung on a FIFO in place of a mapped library")
    .expect("the agent answers")
    .into_inner();
    assert!(
        hostile.subtasks[0].error.is_empty(),
        "{}",
        hostile.subtasks[0].error
    );
    let frames = all_frames(&hostile);
    assert!(
        frames.iter().any(|f| f.starts_with("libhostile.so+0x")),
        "{frames:?}"
    );

    let workload = flamegrid_workloads::spawn(
        Workload::CFramePointers,
        &Mix {
            spin: 1,
            sleep: 1,
            wait: 0,
            lock: 0,
            churn: 0,
            report_rate: false,
        },
    )
    .unwrap();
    let other = tokio::time::timeout(
        HANG_GUARD,
        client.sample(request(
            vec![by_pid("other", workload.pid(), "spin-.*")],
            3,
            1,
        )),
    )
    .await
    .expect("a later run of another process hung")
    .expect("the agent answers")
    .into_inner();
    let stacks = run_support::stacks(&other, 0);
    let chain = Workload::CFramePointers.chains().spin;
    assert!(
        stacks.iter().any(|s| run_support::contains_chain(s, chain)),
        "{chain:?} missing: {stacks:?}"
    );
    assert!(
        agent.try_exit().is_none(),
        "the agent died:\n{}",
        agent.stderr()
    );
}

/// SIGTERM while a long run samples the FIFO target: the agent exits (the hung tracer used to
/// ignore it) and leaves no thread of the target stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_with_a_run_on_a_fifo_target_in_flight() {
    let Some(programs) = Programs::build("fifo-term") else {
        return;
    };
    let target = fifo_target(&programs);
    let pid = target.0.id();
    let coord = FakeCoordinator::start().await;
    let mut agent = AgentProcess::start_wrapped(
        &WITHOUT_SYS_ADMIN,
        &["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"],
        &[],
    );
    let addr = agent.wait_listening().await;
    let mut client = sampling_client(addr).await;
    // 500 samples a second apart: far longer than the test waits.
    let long = tokio::spawn(async move {
        client
            .sample(request(vec![by_pid("all", pid, "")], 500, 1000))
            .await
    });
    poll("the run to start", || {
        agent
            .stderr()
            .contains("sampling run started")
            .then_some(())
    })
    .await;
    agent.terminate();
    // The hang guard bounds the wait; nothing is asserted about how fast.
    let status = agent.wait_exit().await;
    assert!(
        status.success(),
        "agent exit status {status}:\n{}",
        agent.stderr()
    );
    long.abort();
    for _ in 0..5 {
        assert_eq!(
            stopped_threads(pid),
            Vec::<u32>::new(),
            "a thread was left stopped"
        );
    }
}

/// Truncates `path` and writes `content` back into the same inode, over and over, until
/// `stop` is set; leaves the file whole.
fn deploy_over_and_over(
    path: PathBuf,
    content: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::io::Write;
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open the library for writing");
            // Stay short for a moment, as a copy does between its truncate and its writes.
            std::thread::yield_now();
            f.write_all(&content).expect("rewrite the library");
            rounds += 1;
        }
        rounds
    })
}

/// A library rewritten in place (truncated, then written again, as `cp` over a running library
/// does) while the agent samples processes that map it: the agent must never die of SIGBUS
/// (blazesym maps whole files; reading a map past the end of a file that shrank kills the
/// reader). Each target is a new process, so every run names its frames afresh.
#[ignore = "slow tier (browser, load, kill loops): cargo test --workspace -- --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_rewritten_in_place_while_sampled_never_crashes_the_agent() {
    let Some(programs) = Programs::build("truncate") else {
        return;
    };
    let library = programs.dir.path().join("libdeployed.so");
    std::fs::copy(&programs.library, &library).unwrap();
    let content = std::fs::read(&library).unwrap();
    let coord = FakeCoordinator::start().await;
    // Full capabilities: this agent reads the files through /proc/PID/map_files as well.
    let mut agent =
        AgentProcess::start(&["--coordinator", &coord.url(), "--listen", "127.0.0.1:0"]);
    let addr = agent.wait_listening().await;
    let mut client = sampling_client(addr).await;
    for round in 0..30 {
        // The target's thread blocks in pause() called from the library, so the library's code
        // is never executed again while the file is short (the target itself survives).
        let target = programs.start(&library, "hostile_block");
        let pid = target.0.id();
        poll("the target's thread to block", || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .ok()?
                .filter_map(|e| e.ok())
                .any(|e| {
                    let task = e.path();
                    std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == "hostile")
                        && std::fs::read_to_string(task.join("wchan"))
                            .is_ok_and(|w| w.trim() != "0" && !w.trim().is_empty())
                })
                .then_some(())
        })
        .await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deployer = deploy_over_and_over(library.clone(), content.clone(), stop.clone());
        let answer = tokio::time::timeout(
            HANG_GUARD,
            client.sample(request(vec![by_pid("t", pid, "hostile")], 3, 1)),
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let rewrites = deployer.join().unwrap();
        if let Some(status) = agent.try_exit() {
            panic!(
                "round {round}: the agent died ({status}) while the library was rewritten \
                 {rewrites} times:\n{}",
                agent.stderr()
            );
        }
        match answer {
            Ok(Ok(resp)) => assert_eq!(resp.into_inner().subtasks.len(), 1),
            failed => {
                // A crashed agent breaks the call before it is reaped: wait for that.
                let died =
                    common::eventually(Duration::from_secs(10), || agent.try_exit().is_some());
                panic!(
                    "round {round}: the call failed ({failed:?}); the agent {}:\n{}",
                    if died { "died" } else { "lives" },
                    agent.stderr()
                );
            }
        }
        drop(target);
    }
    assert!(
        agent.try_exit().is_none(),
        "the agent died:\n{}",
        agent.stderr()
    );
    // The blocked thread's frames in the intact library are still named afterwards.
    let target = programs.start(&library, "hostile_block");
    let named = poll_named(&mut client, target.0.id()).await;
    assert!(named, "hostile_wait_here is named from the intact library");
}

/// Samples `pid`'s `hostile` thread until a frame is named `hostile_wait_here` (the thread may
/// not have reached its wait on the first try).
async fn poll_named(
    client: &mut v1::sampling_client::SamplingClient<tonic::transport::Channel>,
    pid: u32,
) -> bool {
    for _ in 0..50 {
        let resp = client
            .sample(request(vec![by_pid("t", pid, "hostile")], 1, 0))
            .await
            .expect("the agent answers")
            .into_inner();
        if all_frames(&resp).iter().any(|f| f == "hostile_wait_here") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
