//! A scratch PostgreSQL database per test, for the replicated coordinator's tests (issue 16).
//!
//! The tests need a real server: `.ci/run` installs Debian's `postgresql`, starts a cluster,
//! creates a role that may create databases and exports its URL as
//! [`TEST_POSTGRES_URL_ENV`]. Each test then asks for [`scratch_database`], which creates a
//! database of its own on that server (so tests run in parallel without seeing each other's
//! rows) and drops it when the test ends, however it ends.
//!
//! Without the variable the tests are skipped with a line saying so, except under CI
//! (`CI` set), where a missing server is a failure: a suite that silently tests nothing is
//! worse than a red build.

use std::process::Command;

/// The environment variable naming the server the tests may create databases on:
/// `postgres://user:password@host:port/dbname`, the role having `CREATEDB`.
pub const TEST_POSTGRES_URL_ENV: &str = "FLAMEGRID_TEST_POSTGRES_URL";

/// The environment variable naming the CA certificate (PEM) that signed the test server's
/// certificate, for the TLS tests (`sslmode=verify-full`). `.ci/run` makes that CA, a server
/// certificate for `localhost` and `127.0.0.1`, and a client certificate (CN `flamegrid`,
/// `client.pem` and `client.key` beside the CA) signed by it, and has the server use them.
pub const TEST_POSTGRES_CA_ENV: &str = "FLAMEGRID_TEST_POSTGRES_CA";

/// The test server's CA certificate ([`TEST_POSTGRES_CA_ENV`]), or `None` (after printing why)
/// when it is not set outside CI. Panics in CI without it: the TLS tests must run there.
pub fn test_ca() -> Option<std::path::PathBuf> {
    match std::env::var_os(TEST_POSTGRES_CA_ENV) {
        Some(path) => Some(path.into()),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{TEST_POSTGRES_CA_ENV} is not set: CI must give the PostgreSQL server a \
                 certificate of a test CA (see .ci/run)"
            );
            eprintln!(
                "skipped: {TEST_POSTGRES_CA_ENV} is not set (no test CA for the server's \
                 certificate)"
            );
            None
        }
    }
}

/// A database created for one test, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    /// The URL of the new database, for `--database-url`.
    pub url: String,
    admin_url: String,
    name: String,
}

/// A new, empty database on the test server, or `None` (after printing why) when no server
/// is configured outside CI. Panics in CI without a server, or when the server refuses.
pub fn scratch_database(tag: &str) -> Option<ScratchDatabase> {
    let Ok(admin_url) = std::env::var(TEST_POSTGRES_URL_ENV) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{TEST_POSTGRES_URL_ENV} is not set: CI must start a PostgreSQL server (see .ci/run)"
        );
        eprintln!("skipped: {TEST_POSTGRES_URL_ENV} is not set (no PostgreSQL server to test on)");
        return None;
    };
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!(
        "fgtest_{tag}_{}_{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() & 0xffff_ffff)
            .unwrap_or(0)
    );
    psql(&admin_url, &format!("CREATE DATABASE {name}"));
    Some(ScratchDatabase {
        url: with_database(&admin_url, &name),
        admin_url,
        name,
    })
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin_url.as_str(),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Runs one SQL command with `psql` on `url`; panics with psql's message on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-XAtqc", sql])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql (is postgresql-client installed?): {e}"));
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `url` with `params` (`k=v&…`) added to its query (the TLS settings of a test's
/// connection, say).
pub fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            super::with_database("postgres://u:p@h:5432/flamegrid", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u@h/flamegrid?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
    }
}
