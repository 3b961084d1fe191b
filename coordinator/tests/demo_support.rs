//! Shared by the tests that run `flamegrid-coordinator --demo` the way a user does
//! (`dashboard.rs`, `demo.rs`; included with `#[path]`): the real binary on free loopback
//! ports and a scratch `--data-dir`, its output read line by line, and polling with a bound
//! for hangs. Every process started here is stopped when its handle is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for a condition before it gives up (a bound for hangs, not a
/// performance assertion: on a healthy machine every wait ends far sooner).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A child process that is stopped when the test ends, however it ends: SIGTERM first (so the
/// coordinator stops its demo agent and workload itself), SIGKILL after five seconds.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait()
            && let Ok(pid) = i32::try_from(self.0.id())
        {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` until it returns `Some`, panicking with `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `flamegrid-coordinator --demo`.
pub struct DemoProcess {
    pub process: KillOnDrop,
    /// The REST port (`--rest-addr 127.0.0.1:<rest>`).
    pub rest: u16,
    /// The registry's gRPC port (`--rpc-addr 127.0.0.1:<rpc>`), where agents register.
    pub rpc: u16,
    /// What it prints on stdout, a line at a time.
    pub lines: mpsc::Receiver<String>,
}

impl DemoProcess {
    /// Starts `--demo` on free ports with `data_dir` and the `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> DemoProcess {
        let command = Command::new(env!("CARGO_BIN_EXE_flamegrid-coordinator"));
        DemoProcess::start_command(command, data_dir, extra)
    }

    /// [`DemoProcess::start`] of a coordinator `command` the caller prepared (another copy of
    /// the executable, its working directory, its environment).
    pub fn start_command(mut command: Command, data_dir: &Path, extra: &[&str]) -> DemoProcess {
        let (rest, rpc) = (free_port(), free_port());
        command
            .arg("--demo")
            .args(["--rest-addr", &format!("127.0.0.1:{rest}")])
            .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = KillOnDrop(command.spawn().unwrap());
        let (tx, lines) = mpsc::channel();
        let stdout = process.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            // Keep reading after the test stopped listening: a closed pipe would make the
            // coordinator's next line fail to print.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        DemoProcess {
            process,
            rest,
            rpc,
            lines,
        }
    }

    /// Waits for the first printed line `pick` accepts and returns what it picked.
    pub fn wait_line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        wait_for(what, || {
            let line = self.lines.recv_timeout(Duration::from_millis(100)).ok()?;
            pick(&line)
        })
    }
}
