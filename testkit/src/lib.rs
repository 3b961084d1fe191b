//! What every flamegrid test needs, written once.
//!
//! The end-to-end tests start real processes (agents, coordinators, workloads), talk to them
//! over real sockets and wait for them to reach a state. The pieces for that used to be written
//! in each test crate, a little differently each time; they live here:
//!
//! * [`KillOnDrop`] and [`TerminateOnDrop`]: a child process that is stopped however the test
//!   ends (a failed assertion unwinds through it), so no test leaves a workload spinning or a
//!   port taken;
//! * [`wait_for`], [`poll`] and [`eventually`]: polling with one bound for hangs
//!   ([`HANG_GUARD`]). The bound exists so a broken build fails instead of hanging CI; nothing
//!   is asserted about speed (timed assertions are flaky on shared 2-core machines, so speed
//!   lives in `benches/`);
//! * [`temp_dir`]: a scratch directory through `tempfile`, removed on drop;
//! * [`free_port`]: a loopback port nothing listens on;
//! * [`executable`]: a binary of the workspace (`flamegrid-agent`, `flamegrid-coordinator`,
//!   `flamegrid-demo`) from the target directory the test itself was built into;
//! * [`postgres::scratch_database`]: a database of its own on the test PostgreSQL server, for
//!   the replicated coordinator's tests.
//!
//! Nothing here imitates a flamegrid part: tests drive the real binaries.

pub mod postgres;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Upper bound on any wait in a test. It only turns a hang into a failure; a healthy machine
/// ends every wait far sooner.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// How often the polling helpers look again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A child process that is killed (SIGKILL) and reaped when the handle is dropped: for
/// workloads and other processes that have nothing to clean up.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills and reaps the process now, so `/proc/<pid>` disappears (a test that makes a
    /// sampled process vanish).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process that is asked to stop (SIGTERM) when the handle is dropped and killed if it
/// has not exited after [`TERMINATE_GRACE`]; always reaped. For processes with children or
/// state of their own (a coordinator running `--demo` stops its agent and workload on SIGTERM,
/// an agent detaches from its targets), so a failed test leaves nothing behind.
#[derive(Debug)]
pub struct TerminateOnDrop(pub Child);

/// How long [`TerminateOnDrop`] waits after SIGTERM before it kills.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(5);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait()
            && let Ok(pid) = i32::try_from(self.0.id())
        {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet, so
            // the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + TERMINATE_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(POLL_EVERY);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` until it returns `Some`, blocking the thread; panics naming `what` after
/// [`HANG_GUARD`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < HANG_GUARD, "gave up waiting for {what}");
        std::thread::sleep(POLL_EVERY);
    }
}

/// Polls the future `check` makes until it yields `Some`, without blocking the runtime; panics
/// naming `what` after [`HANG_GUARD`].
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < HANG_GUARD, "gave up waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` until it is true or `limit` passes, and says which. For a caller that asserts
/// on the answer itself, or that wants to know that something did *not* happen within `limit`.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A fresh empty directory under the system temporary directory, removed with its contents
/// when dropped. `tag` goes into its name, so a directory a crashed test left behind says
/// whose it was.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    match tempfile::Builder::new()
        .prefix(&format!("flamegrid-{tag}-"))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a temporary directory for {tag}: {e}"),
    }
}

/// A loopback port nothing listens on right now (the kernel's choice for an ephemeral bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// The workspace executable `name` from the target directory this test was built into
/// (`target/<profile>/<name>`; cargo puts every workspace binary there, and the test itself
/// runs from `target/<profile>/deps/`).
///
/// It is never built from here: a nested `cargo build` would wait for the lock the running
/// `cargo test` holds. `cargo test --workspace` builds every binary of the workspace first; a
/// test run of one package that needs another package's binary says what to build.
pub fn executable(name: &str) -> PathBuf {
    let dir = std::env::current_exe().ok().and_then(|test| {
        let deps = test.parent()?;
        // target/<profile>/deps/<test>-<hash> → target/<profile>
        Some(deps.parent()?.to_path_buf())
    });
    let Some(dir) = dir else {
        panic!("cannot tell the target directory of this test executable");
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (or `cargo test --workspace`, \
         which builds every binary first)",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_dropped_child_is_gone_and_reaped() {
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(KillOnDrop(child));
        // Reaped: not even a zombie is left under this pid.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_terminated_child_is_gone_and_reaped() {
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(TerminateOnDrop(child));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn wait_for_returns_the_first_answer() {
        let mut n = 0;
        let got = wait_for("n to reach 3", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    fn eventually_says_no_when_the_limit_passes() {
        assert!(!eventually(Duration::from_millis(10), || false));
        assert!(eventually(Duration::from_millis(10), || true));
    }

    #[test]
    fn a_temp_dir_is_removed_on_drop() {
        let dir = temp_dir("kit");
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), b"x").expect("write");
        assert!(
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("flamegrid-kit-"))
        );
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn a_free_port_is_one_the_kernel_hands_out() {
        let port = free_port();
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("ip_local_port_range");
        let bounds: Vec<u16> = range
            .split_whitespace()
            .map(|n| n.parse().expect("a port number"))
            .collect();
        assert!(
            (bounds[0]..=bounds[1]).contains(&port),
            "{port} outside {range}"
        );
    }

    #[tokio::test]
    async fn poll_awaits_its_check() {
        let mut n = 0;
        let got = poll("n to reach 2", || {
            n += 1;
            let now = n;
            async move { (now == 2).then_some(now) }
        })
        .await;
        assert_eq!(got, 2);
    }
}
