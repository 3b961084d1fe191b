//! Helpers shared by the sampler's integration tests: running the real `flamegrid-agent`
//! binary, reading its folded and JSON output, and polling (never sleeping a fixed time).

#![allow(dead_code)]

// Not every test crate that includes this module uses every re-export.
#[allow(unused_imports)]
pub use flamegrid_testkit::{KillOnDrop, eventually, temp_dir};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The `flamegrid-agent` binary under test: the one cargo built for these tests, or the one
/// `FLAMEGRID_TEST_AGENT_BIN` names (to run a test against another build, e.g. to see an attack
/// test fail on an older agent).
pub fn agent_bin() -> String {
    std::env::var("FLAMEGRID_TEST_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_flamegrid-agent").to_string())
}

std::thread_local! {
    /// The `--sampler` backend [`sample`] runs with (through `FLAMEGRID_SAMPLER`), set by
    /// [`each_backend`]; the test's own `FLAMEGRID_SAMPLER` otherwise.
    static BACKEND: std::cell::Cell<&'static str> = std::cell::Cell::new(env_backend());
}

/// The sampler's two backends, in the order [`each_backend`] runs them.
pub const BACKENDS: [&str; 2] = ["perf", "ptrace"];

/// The backend the test run asks for with `FLAMEGRID_SAMPLER` (`auto` when unset): the whole
/// suite runs once per mode (`FLAMEGRID_SAMPLER=ptrace cargo test ...`, then `=perf`).
pub fn env_backend() -> &'static str {
    match flamegrid_sampler::Backend::from_env() {
        Ok(b) => b.as_str(),
        Err(e) => panic!("{e}"),
    }
}

/// The in-process sampler of a test, in the mode `FLAMEGRID_SAMPLER` names.
pub fn test_sampler() -> flamegrid_sampler::Sampler {
    let backend = flamegrid_sampler::Backend::from_env().expect("FLAMEGRID_SAMPLER");
    flamegrid_sampler::Sampler::with_backend(backend).expect("start the sampler")
}

/// Runs `body` once per backend (`perf`, then `ptrace`), every [`sample`] call in it with that
/// `--sampler`: the same assertions must hold for both. When the test run names a mode
/// (`FLAMEGRID_SAMPLER=perf` or `ptrace`), only that one.
pub fn each_backend(body: impl Fn(&'static str)) {
    let chosen = env_backend();
    for backend in BACKENDS {
        if chosen != "auto" && chosen != backend {
            continue;
        }
        BACKEND.with(|b| b.set(backend));
        eprintln!("--- with --sampler {backend}");
        body(backend);
    }
    BACKEND.with(|b| b.set(env_backend()));
}

/// Runs `flamegrid-agent sample ARGS...` to completion (with the backend of [`each_backend`]).
pub fn sample(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("sample")
        .args(args)
        .env_remove("RUST_LOG")
        .env("FLAMEGRID_SAMPLER", BACKEND.with(std::cell::Cell::get))
        .stdin(Stdio::null())
        .output()
        .expect("run flamegrid-agent")
}

/// Runs `sample` and returns stdout, failing the test with stderr if it did not succeed.
pub fn sample_ok(args: &[&str]) -> String {
    let out = sample(args);
    assert!(
        out.status.success(),
        "flamegrid-agent sample {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Parses folded output into (frames root first, count).
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (stack, count) = l.rsplit_once(' ').expect("folded line has a count");
            (
                stack.split(';').map(str::to_string).collect(),
                count.parse().expect("count"),
            )
        })
        .collect()
}

/// Whether `chain` occurs in `stack` as a contiguous run.
pub fn contains_chain(stack: &[String], chain: &[&str]) -> bool {
    !chain.is_empty()
        && stack
            .windows(chain.len())
            .any(|w| w.iter().zip(chain).all(|(a, b)| a == b))
}

/// One sample of the JSON output.
#[derive(Debug, Clone)]
pub struct JsonSample {
    pub tid: u32,
    pub thread: String,
    pub state: String,
    pub timestamp_ms: i64,
    pub truncated: bool,
    /// (name, inlined), outermost first.
    pub frames: Vec<(String, bool)>,
}

impl JsonSample {
    pub fn names(&self) -> Vec<String> {
        self.frames.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Parses `--format json` output.
pub fn parse_json(text: &str) -> Vec<JsonSample> {
    let doc: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    doc["samples"]
        .as_array()
        .expect("samples array")
        .iter()
        .map(|s| JsonSample {
            tid: s["tid"].as_u64().expect("tid") as u32,
            thread: s["thread"].as_str().expect("thread").to_string(),
            state: s["state"].as_str().expect("state").to_string(),
            timestamp_ms: s["timestamp_ms"].as_i64().expect("timestamp"),
            truncated: s["truncated"].as_bool().unwrap_or(false),
            frames: s["frames"]
                .as_array()
                .expect("frames")
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().expect("name").to_string(),
                        f["inlined"].as_bool().unwrap_or(false),
                    )
                })
                .collect(),
        })
        .collect()
}

/// Whether the tests run as root (the permission and namespace tests need to switch users or
/// drop capabilities, which only root can).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `program` can be run (found on `PATH`).
pub fn have_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts `command` with piped stdin/stdout and returns once it printed `ready` on stdout (the
/// workload convention). Its stdin stays open in the returned value, so a program that exits
/// on end-of-file lives as long as the test holds it. `None` (with the child killed) when it
/// exits or prints something else first; the caller decides whether that skips or fails.
pub fn spawn_until_ready(mut command: Command) -> Option<KillOnDrop> {
    use std::io::BufRead as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take();
    let guard = KillOnDrop(child);
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stdout?);
    reader.read_line(&mut line).ok()?;
    (line.trim() == "ready").then_some(guard)
}

/// Holds `tid` as its tracer (PTRACE_SEIZE, which does not stop it) until dropped, from a
/// thread of this test process: the "another tracer" of a debugger or profiler already
/// attached. The kernel detaches the tracee when the holding thread exits.
pub struct TracerHold {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TracerHold {
    pub fn seize(tid: u32) -> TracerHold {
        let (seized_tx, seized_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let target = nix::unistd::Pid::from_raw(tid as i32);
            let r = nix::sys::ptrace::seize(target, nix::sys::ptrace::Options::empty());
            seized_tx.send(r).unwrap();
            let _ = release_rx.recv();
            // Exiting this thread detaches the (running) tracee.
        });
        seized_rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("seize {tid}: {e}"));
        TracerHold {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

impl Drop for TracerHold {
    fn drop(&mut self) {
        self.release.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Compiles a small C program into `dir` with the system C compiler; `None` if there is none.
pub fn compile_c(dir: &Path, name: &str, source: &str) -> Option<std::path::PathBuf> {
    compile_c_with(dir, name, source, &[])
}

/// [`compile_c`] with extra compiler arguments (`-shared -fPIC` for a library, `-ldl`).
pub fn compile_c_with(
    dir: &Path,
    name: &str,
    source: &str,
    extra: &[&str],
) -> Option<std::path::PathBuf> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let status = Command::new("cc")
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(extra)
        .status()
        .ok()?;
    status.success().then_some(bin)
}

/// The arguments that run a program through util-linux's `setpriv` without CAP_SYS_ADMIN and
/// CAP_CHECKPOINT_RESTORE (so without `/proc/PID/map_files`) but with everything else root has,
/// CAP_SYS_PTRACE included: the capabilities the deploy files give the agent.
pub const WITHOUT_SYS_ADMIN: [&str; 3] = [
    "setpriv",
    "--inh-caps=-sys_admin,-checkpoint_restore",
    "--bounding-set=-sys_admin,-checkpoint_restore",
];

/// Runs `flamegrid-agent ARGS...` through `wrapper` (e.g. [`WITHOUT_SYS_ADMIN`]) and waits at
/// most `limit` for it to finish: `None` when it had to be killed (it hung).
pub fn run_bounded(wrapper: &[&str], args: &[&str], limit: Duration) -> Option<Output> {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(agent_bin());
            c
        }
        None => Command::new(agent_bin()),
    };
    let mut child = cmd
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flamegrid-agent");
    // Read both pipes on their own threads so a full pipe never stalls the child.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let mut guard = KillOnDrop(child);
    let mut status = None;
    eventually(limit, || {
        status = guard.0.try_wait().ok().flatten();
        status.is_some()
    });
    let status = status?;
    drop(guard);
    Some(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
