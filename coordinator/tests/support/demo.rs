//! Shared by the tests that run `flamegrid-coordinator --demo` the way a user does
//! (`dashboard.rs`, `demo.rs`; included with `#[path]`): the real binary on free loopback
//! ports and a scratch `--data-dir`, its output read line by line, and polling with a bound
//! for hangs. Every process started here is stopped when its handle is dropped.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

// Not every test crate that includes this module uses every re-export.
#[allow(unused_imports)]
pub use flamegrid_testkit::{HANG_GUARD, TerminateOnDrop, free_port, wait_for};

/// A running `flamegrid-coordinator --demo`.
pub struct DemoProcess {
    pub process: TerminateOnDrop,
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
        let mut process = TerminateOnDrop(command.spawn().unwrap());
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

    /// Waits for the first printed line `pick` accepts and returns what it picked. Fails at
    /// once, not after the hang guard, when the coordinator closed its output (it exited: its
    /// stderr, inherited, says why).
    pub fn wait_line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        wait_for(what, || {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => pick(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the coordinator exited before printing {what}")
                }
            }
        })
    }
}
