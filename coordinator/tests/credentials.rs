//! Credential files are read once, at start, into one value that every part uses (the registry's
//! token check, the calls to agents): a `--token-file` that can be read only once (a FIFO fed
//! the token one time) is enough for the coordinator to start. A second read of the same file
//! would wait for a writer that never comes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use clap::Parser;
use flamegrid_coordinator::config::CoordinatorConfig;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[test]
fn the_token_file_is_read_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    mkfifo(&token);
    // One writer, one token: the first reader gets it, a second read finds no writer.
    let fed = token.clone();
    let writer = std::thread::spawn(move || std::fs::write(&fed, "s3cret\n"));

    let config = CoordinatorConfig::parse_from([
        "flamegrid-coordinator",
        "--rest-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let (done, started) = mpsc::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let coordinator = flamegrid_coordinator::start(config)
                .await
                .map_err(|e| e.to_string())?;
            coordinator.shutdown().await.map_err(|e| e.to_string())
        });
        let _ = done.send(result);
    });
    match started.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result.expect("the coordinator starts with a token read once"),
        Err(_) => {
            // Release the second read (end of file: "is empty") so the thread can end.
            let _ = std::fs::write(&token, "");
            panic!(
                "the coordinator read --token-file a second time (that read waited for a writer)"
            );
        }
    }
    writer.join().unwrap().unwrap();
}
