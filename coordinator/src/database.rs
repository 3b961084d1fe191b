//! The shared database of replicated coordinators (`--database-url postgres://…`, issue 16).
//!
//! Several coordinators may share one PostgreSQL database (DESIGN.md, "Operational rules"):
//! the registry keeps its jobs and task managers there ([`crate::registry`]'s PostgreSQL store),
//! and the flame graph service keeps its sampling leases and the runs' results there, so that
//! every replica answers every request the same way and any of them can die. Without a URL the
//! coordinator keeps its embedded SQLite file and none of this is used.
//!
//! This module is only the connection: a pool ([`deadpool_postgres`] over [`tokio_postgres`]),
//! the schema migrations applied at start, and a bridge for the registry's synchronous store.
//!
//! ## One runtime for the database
//!
//! Every connection lives on a small runtime of its own (one thread, `flamegrid-db`), and every
//! piece of database work runs there: [`Database::run`] from async code, [`Database::blocking`]
//! from synchronous code (the registry's store is called on blocking threads, and once when the
//! registry is dropped, which may be anywhere). So no caller can stall the connections by
//! blocking the runtime they were created on, and a test's short-lived runtime never takes
//! pooled connections down with it.
//!
//! ## Migrations
//!
//! [`MIGRATIONS`] is an ordered list of SQL scripts, applied at [`Database::connect`] in one
//! transaction under an advisory lock, so replicas starting together apply each exactly once.
//! The table `flamegrid_schema` records what was applied; a database migrated by a newer
//! coordinator (a version this one does not know) is refused with a message saying so rather
//! than used with a layout this coordinator does not understand.
//!
//! ## Starting beside the database
//!
//! The first connection is retried with backoff for `--database-connect-timeout-s` (each
//! attempt logged), so a coordinator started together with its database (a Kubernetes
//! Deployment beside a StatefulSet) waits for it instead of crash-looping. What retrying cannot
//! mend fails at once: a URL that does not parse, a certificate file that cannot be read, a TLS
//! handshake refused (a server certificate that does not verify, a server without TLS under
//! `sslmode=require`), a wrong user or password, a database that does not exist
//! ([`DatabaseError::Refused`]). Every error keeps the driver's cause (the server's own
//! message, or the I/O error with the host and port), never the password.
//!
//! ## TLS
//!
//! `sslmode` (`disable`, `prefer` the default, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert`, `sslcert` and `sslkey` of the URL mean what they mean to libpq; see [`tls`].

pub mod tls;

use crate::error_chain::error_chain;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The schema, one script per version, applied in order (see the module docs).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_registry.sql")),
    (2, include_str!("../migrations/0002_flamegraph_runs.sql")),
    (3, include_str!("../migrations/0003_replica_vouching.sql")),
];

/// Key of the advisory lock that serialises migrations between replicas starting together.
const MIGRATION_LOCK: i64 = 0x666c_616d_6567_7269; // "flamegri"

/// Connections kept open by one coordinator unless `--database-pool-size` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long the first connection is retried unless `--database-connect-timeout-s` says
/// otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wait between two attempts at the first connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a coordinator connects (`--database-pool-size`, `--database-connect-timeout-s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Connections kept open at most (at least 1).
    pub pool_size: usize,
    /// How long the first connection is retried at start; zero: one attempt.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// The pool's state now, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections it may open at most (`--database-pool-size`).
    pub max_size: usize,
    /// Connections open now.
    pub open: usize,
    /// Connections handed out to work now.
    pub in_use: usize,
    /// Pieces of work waiting for a connection now.
    pub waiting: usize,
}

/// How long a piece of database work may wait for a connection or the server before it fails
/// (a dead database must not hang a REST request or the flusher forever).
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the shared database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL does not parse, or asks for something this build cannot do.
    #[error("--database-url: {0}")]
    Url(String),
    /// The server could not be reached (retried at start, see the module docs).
    #[error("database {url}: {message}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// Why.
        message: String,
    },
    /// The server answered but refused us: wrong user or password, no such database. Retrying
    /// does not help.
    #[error("database {url}: {message}")]
    Refused {
        /// The URL without its password.
        url: String,
        /// Why.
        message: String,
    },
    /// The schema could not be applied, or is newer than this coordinator.
    #[error("database {url}: schema: {message}")]
    Schema {
        /// The URL without its password.
        url: String,
        /// Why.
        message: String,
    },
    /// A query failed (the server went away, a constraint, a timeout).
    #[error("database {url}: {message}")]
    Query {
        /// The URL without its password.
        url: String,
        /// Why.
        message: String,
    },
}

/// A pool of connections to the shared database, with its own runtime (see the module docs).
/// Cheap to clone: clones share the pool and the runtime.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    /// The runtime every connection lives on; dropped with the last clone.
    runtime: std::sync::Arc<DbRuntime>,
    /// The URL without its password, for logs and errors.
    url: String,
    /// This process's name among the replicas (host name, pid and a random suffix), the holder
    /// written into lease rows.
    replica_id: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url)
            .field("replica_id", &self.replica_id)
            .finish()
    }
}

/// Owns the database runtime; shuts it down without waiting (dropping a runtime inside another
/// one's async context would panic).
struct DbRuntime(Option<tokio::runtime::Runtime>);

impl Drop for DbRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Database {
    /// [`Database::connect_with`] the default options.
    pub fn connect(url: &str) -> Result<Database, DatabaseError> {
        Database::connect_with(url, &ConnectOptions::default())
    }

    /// Connects to `url` (`postgres://user:password@host:port/dbname`, or the key=value form,
    /// with libpq's TLS settings: see [`tls`]), checks that the server answers, and applies the
    /// migrations; retries the first connection for `options.connect_timeout` (see the module
    /// docs). Fails with a message that names the URL (without its password), the driver's
    /// cause and what to do.
    pub fn connect_with(url: &str, options: &ConnectOptions) -> Result<Database, DatabaseError> {
        let redacted = redact(url);
        let (driver_url, tls_settings) =
            tls::split(url).map_err(|e| DatabaseError::Url(format!("{redacted}: {e}")))?;
        let mut config = tokio_postgres::Config::from_str(&driver_url)
            .map_err(|e| DatabaseError::Url(format!("{redacted}: {}", error_chain(&e))))?;
        // The driver hands TLS the host's name (for SNI and the name check) and refuses TLS
        // to a server given by hostaddr alone. libpq takes the address then, and so do we,
        // except under verify-full, whose name check needs the name the certificate holds.
        if config.get_hosts().is_empty() && tls_settings.mode != tls::SslMode::Disable {
            if tls_settings.mode == tls::SslMode::VerifyFull {
                return Err(DatabaseError::Url(format!(
                    "{redacted}: sslmode=verify-full needs the server's name (host=, the name \
                     its certificate holds) besides hostaddr"
                )));
            }
            for addr in config.get_hostaddrs().to_vec() {
                config.host(addr.to_string());
            }
        }
        // Certificate files are read now, so that a missing one is named before any attempt.
        let tls = tls::connector(&tls_settings)
            .map_err(|e| DatabaseError::Url(format!("{redacted}: {e}")))?;
        let endpoints = endpoints(&config);
        // Every statement is bounded by the server too; set once per connection at start-up
        // (not once per use: that would be a round trip on every piece of work).
        let startup = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or(""),
            DATABASE_TIMEOUT.as_millis()
        );
        config.options(startup.trim_start());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flamegrid-db")
            .enable_all()
            .build()
            .map_err(|e| DatabaseError::Connect {
                url: redacted.clone(),
                message: format!("cannot start the database thread: {e}"),
            })?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(DATABASE_TIMEOUT))
                .create_timeout(Some(DATABASE_TIMEOUT))
                .recycle_timeout(Some(DATABASE_TIMEOUT))
                .build()
                .map_err(|e| DatabaseError::Connect {
                    url: redacted.clone(),
                    message: e.to_string(),
                })?
        };
        let host = sysinfo::System::host_name().unwrap_or_else(|_| "unknown-host".into());
        let db = Database {
            pool,
            runtime: std::sync::Arc::new(DbRuntime(Some(runtime))),
            url: redacted,
            replica_id: format!(
                "{host}/{}/{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        for attempt in 1.. {
            match db.blocking(|client| async move { migrate(client).await }) {
                Ok(()) => break,
                // Unreachable, or reached but no answer in time (a server still starting, or
                // stalled on I/O): worth another attempt. The migration is one transaction, so
                // an attempt cut short applied nothing.
                Err(
                    DatabaseError::Connect { url, message } | DatabaseError::Query { url, message },
                ) => {
                    let waited = started.elapsed();
                    if waited + backoff > options.connect_timeout {
                        return Err(DatabaseError::Connect {
                            url,
                            message: format!(
                                "{message}; server {endpoints}, {attempt} attempt(s) in {} s \
                                 (--database-connect-timeout-s {})",
                                waited.as_secs(),
                                options.connect_timeout.as_secs()
                            ),
                        });
                    }
                    tracing::warn!(attempt, database = %url, server = %endpoints, error = %message,
                        retry_in_ms = backoff.as_millis() as u64,
                        "database not reachable yet; retrying (--database-connect-timeout-s)");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(db)
    }

    /// The pool's state now (open connections, in use, waiting), for `/metrics`.
    pub fn pool_status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            max_size: status.max_size,
            open: status.size,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting,
        }
    }

    /// The URL without its password, for logs and errors.
    pub fn describe(&self) -> &str {
        &self.url
    }

    /// This process's name among the replicas: what lease rows name as their holder.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Runs `work` with a pooled connection on the database runtime and returns its result;
    /// for async callers. Fails if no connection can be had within [`DATABASE_TIMEOUT`], or if
    /// the work itself takes longer than that.
    pub async fn run<T, F, Fut>(&self, work: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DatabaseError>> + Send + 'static,
    {
        let handle = self.spawn(work)?;
        handle
            .await
            .map_err(|e| self.query_error(format!("database task failed: {e}")))?
    }

    /// [`Database::run`] for synchronous callers: blocks the calling thread (never the database
    /// runtime) until the work is done. May be called from any thread, inside an async context
    /// or not, but blocks it: async code uses [`Database::run`].
    pub fn blocking<T, F, Fut>(&self, work: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DatabaseError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let rt = self.runtime_handle()?;
        let pool = self.pool.clone();
        let url = self.url.clone();
        rt.spawn(async move {
            let result = with_client(pool, url, work).await;
            let _ = tx.send(result);
        });
        rx.recv()
            .map_err(|_| self.query_error("the database thread stopped".into()))?
    }

    /// An error of this database with `message`.
    pub fn query_error(&self, message: String) -> DatabaseError {
        DatabaseError::Query {
            url: self.url.clone(),
            message,
        }
    }

    fn runtime_handle(&self) -> Result<tokio::runtime::Handle, DatabaseError> {
        self.runtime
            .0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| self.query_error("the database thread stopped".into()))
    }

    fn spawn<T, F, Fut>(
        &self,
        work: F,
    ) -> Result<tokio::task::JoinHandle<Result<T, DatabaseError>>, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DatabaseError>> + Send + 'static,
    {
        let rt = self.runtime_handle()?;
        Ok(rt.spawn(with_client(self.pool.clone(), self.url.clone(), work)))
    }
}

/// Takes a connection from `pool` and runs `work` on it, bounded by [`DATABASE_TIMEOUT`].
async fn with_client<T, F, Fut>(pool: Pool, url: String, work: F) -> Result<T, DatabaseError>
where
    F: FnOnce(Object) -> Fut,
    Fut: Future<Output = Result<T, DatabaseError>>,
{
    let client = pool.get().await.map_err(|e| connect_error(&url, &e))?;
    match tokio::time::timeout(DATABASE_TIMEOUT + Duration::from_secs(1), work(client)).await {
        // Work builds its errors without the URL (it has none); name the database here.
        Ok(result) => result.map_err(|e| match e {
            DatabaseError::Query { message, .. } => DatabaseError::Query { url, message },
            DatabaseError::Schema { message, .. } => DatabaseError::Schema { url, message },
            other => other,
        }),
        Err(_) => Err(DatabaseError::Query {
            url,
            message: format!(
                "no answer within {} s",
                (DATABASE_TIMEOUT + Duration::from_secs(1)).as_secs()
            ),
        }),
    }
}

/// A failed query as a [`DatabaseError::Query`] with the driver's whole cause (the URL is
/// filled in by [`Database::run`]).
pub fn query_failed(e: tokio_postgres::Error) -> DatabaseError {
    DatabaseError::Query {
        url: String::new(),
        message: error_chain(&e),
    }
}

/// Why no connection could be had: [`DatabaseError::Refused`] when the server refused us for
/// good (authentication, no such database), with what to do; else [`DatabaseError::Connect`].
fn connect_error(url: &str, e: &deadpool_postgres::PoolError) -> DatabaseError {
    // The driver's words without the pool's wrapping ("Error occurred while creating a new
    // object: db error: …"): the server's own message when it sent one.
    let (message, code) = match e {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => (db.to_string().replace('\n', " "), Some(db.code().code())),
            None => {
                if let Some(refused) = tls_refusal(e) {
                    return DatabaseError::Refused {
                        url: url.to_string(),
                        message: refused,
                    };
                }
                (error_chain(e), None)
            }
        },
        other => (error_chain(other), None),
    };
    let fix = match code {
        Some(c) if c.starts_with("28") => {
            "check the user and password of --database-url (FLAMEGRID_DATABASE_URL)"
        }
        Some("3D000") => {
            "create the database (CREATE DATABASE …, owned by the URL's user) or fix its name in \
             --database-url"
        }
        _ => {
            return DatabaseError::Connect {
                url: url.to_string(),
                message: format!("{message} (is the server running and reachable?)"),
            };
        }
    };
    DatabaseError::Refused {
        url: url.to_string(),
        message: format!("{message} ({fix})"),
    }
}

/// Why TLS failed for good, when it did: a handshake refused (the server's certificate, see
/// [`tls::TlsFailure::is_permanent`]) or a server that does not offer TLS to a URL that
/// requires it. Neither mends by retrying (a connection broken mid-handshake may, and is not
/// one of them).
fn tls_refusal(e: &tokio_postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(failure) = c.downcast_ref::<tls::TlsFailure>() {
            return failure.is_permanent().then(|| failure.to_string());
        }
        cause = c.source();
    }
    error_chain(e)
        .contains("server does not support TLS")
        .then(|| {
            "the server does not offer TLS, and the URL's sslmode (require, verify-ca or \
         verify-full) requires it: turn TLS on at the server (ssl = on, with ssl_cert_file and \
         ssl_key_file, in postgresql.conf), or use sslmode=prefer (TLS when offered) or \
         sslmode=disable"
                .to_string()
        })
}

/// The servers `config` connects to, `host:port` (or the socket directory), for errors.
fn endpoints(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    }
}

/// Applies the [`MIGRATIONS`] this database lacks, in one transaction under an advisory lock.
async fn migrate(mut client: Object) -> Result<(), DatabaseError> {
    let schema = |message: String| DatabaseError::Schema {
        url: String::new(),
        message,
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| schema(error_chain(&e)))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| {
            schema(format!(
                "cannot take the migration lock: {}",
                error_chain(&e)
            ))
        })?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS flamegrid_schema (
             version    BIGINT PRIMARY KEY,
             applied_ms BIGINT NOT NULL
         )",
    )
    .await
    .map_err(|e| schema(e.to_string()))?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM flamegrid_schema",
            &[],
        )
        .await
        .map_err(|e| schema(error_chain(&e)))?
        .get(0);
    let known = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
    if applied > known {
        return Err(schema(format!(
            "version {applied} is newer than this coordinator's ({known}): upgrade the coordinator \
             (replicas of one database must run the same version or newer)"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| schema(format!("migration {version}: {}", error_chain(&e))))?;
        tx.execute(
            "INSERT INTO flamegrid_schema (version, applied_ms) VALUES ($1, $2)",
            &[version, &flamegrid_model::clock::now_ms()],
        )
        .await
        .map_err(|e| schema(format!("migration {version}: {}", error_chain(&e))))?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(|e| schema(error_chain(&e)))
}

/// `url` without its password (`postgres://user:***@host/db`), for logs and errors. A URL that
/// does not parse as one is shown only up to its scheme.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        return match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                let tail = redact_query(tail);
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}{tail}")
                } else {
                    format!("{scheme}://{user}@{host}{tail}")
                }
            }
            None => format!("{scheme}://{authority}{}", redact_query(tail)),
        };
    }
    redact_key_values(url)
}

/// The key=value form without its password: each `key = value` pair, read as libpq reads it
/// ([`tls::pairs`]: a value bare or in single quotes, with `\'` and `\\` escapes), written back
/// as `key=value`, with `password=***`. A quoted password with spaces is hidden whole.
fn redact_key_values(text: &str) -> String {
    tls::pairs(text)
        .into_iter()
        .map(|pair| match pair.raw_value {
            None => pair.key, // not a pair: kept as it is (the parser refuses it anyway)
            Some(_) if is_secret(&pair.key) => format!("{}=***", pair.key),
            Some(raw) => format!("{}={raw}", pair.key),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the setting `key` holds a secret: the password, or a client key's passphrase.
fn is_secret(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

/// Hides `password=` and `sslpassword=` query parameters.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            // The driver percent-decodes keys too: `pass%77ord=` is a password.
            Some((key, _))
                if is_secret(&percent_encoding::percent_decode_str(key).decode_utf8_lossy()) =>
            {
                format!("{key}=***")
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://fg:s3cret@db:5432/flamegrid"),
            "postgres://fg:***@db:5432/flamegrid"
        );
        assert_eq!(redact("postgres://fg@db/x"), "postgres://fg@db/x");
        assert_eq!(
            redact("postgres://db/x?user=fg&password=s3cret"),
            "postgres://db/x?user=fg&password=***"
        );
        assert_eq!(
            redact("host=db user=fg password=s3cret dbname=x"),
            "host=db user=fg password=*** dbname=x"
        );
        assert!(!redact("postgresql://a:b:c@h/d").contains("b:c"));
        // Quoted passwords of the key=value form, with spaces and escapes, are hidden whole.
        for (url, secret) in [
            ("host=db password='my s3cret pw' dbname=x", "s3cret"),
            ("host=db password = 'it\\'s a secret' user=fg", "secret"),
            ("host=db PASSWORD='a\\\\b c' user=fg", "b c"),
            ("password=bare user=fg", "bare"),
        ] {
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} → {shown}");
            assert!(
                shown.to_lowercase().contains("password=***"),
                "{url} → {shown}"
            );
            assert!(
                shown.contains("host=db") || shown.contains("user=fg"),
                "{shown}"
            );
        }
        assert_eq!(
            redact("host=db password='my s3cret pw' dbname=x"),
            "host=db password=*** dbname=x"
        );
    }

    #[test]
    fn passwords_never_reach_logs_with_tls_settings() {
        for url in [
            "postgres://fg:s3cret@db/x?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgres://db/x?sslrootcert=%2Fca.pem&password=s3cret&sslmode=require",
            "postgres://db/x?sslrootcert=%2Fca.pem&pass%77ord=s3cret",
            "host=db sslrootcert='/my ca.pem' password='s3cret pw' sslmode=verify-ca",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("s3cret"), "{url} → {shown}");
            assert!(shown.contains("ca.pem"), "{url} → {shown}");
        }
        // Nor the passphrase of a client key (refused, but shown in the refusal's URL).
        for url in [
            "postgres://fg:s3cret@db/x?sslpassword=s3cret",
            "postgres://db/x?sslPassword=s3cret",
            "host=db sslpassword='s3cret' password=s3cret",
        ] {
            let err = connect_once(url);
            assert!(err.to_lowercase().contains("sslpassword"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err =
            connect_once("postgres://fg:s3cret@db/x?sslmode=verify-full&sslrootcert=/no/ca.pem");
        assert!(
            err.contains("/no/ca.pem") && !err.contains("s3cret"),
            "{err}"
        );
    }

    use flamegrid_testkit::postgres::with_params;

    /// Whether the session of a connection to `url` is encrypted (pg_stat_ssl), or the
    /// connection's error.
    fn session_ssl(url: &str) -> Result<bool, String> {
        session_ssl_column(url, "ssl")
    }

    /// `column` of pg_stat_ssl for the session of a connection to `url`, or the connection's
    /// error.
    fn session_ssl_column<T>(url: &str, column: &'static str) -> Result<T, String>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a> + Send + 'static,
    {
        let once = ConnectOptions {
            connect_timeout: Duration::ZERO,
            pool_size: 1,
        };
        let db = Database::connect_with(url, &once).map_err(|e| e.to_string())?;
        db.blocking(move |client| async move {
            let row = client
                .query_one(
                    &format!("SELECT {column} FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
                    &[],
                )
                .await
                .map_err(query_failed)?;
            Ok(row.get::<_, T>(0))
        })
        .map_err(|e| e.to_string())
    }

    /// The test server's scratch database and its CA, or `None` when either is missing outside
    /// CI.
    fn tls_database(tag: &str) -> Option<(flamegrid_testkit::postgres::ScratchDatabase, String)> {
        let db = flamegrid_testkit::postgres::scratch_database(tag)?;
        let ca = flamegrid_testkit::postgres::test_ca()?;
        Some((db, ca.display().to_string()))
    }

    /// A CA of the test's own, which signed nothing the server shows.
    fn another_ca(dir: &std::path::Path) -> String {
        let (key, cert) = (dir.join("other-ca.key"), dir.join("other-ca.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
            ])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-days",
                "2",
                "-subj",
                "/CN=not the CA",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        assert!(
            made.as_ref().is_ok_and(|o| o.status.success()),
            "openssl: {made:?}"
        );
        cert.display().to_string()
    }

    #[test]
    fn prefer_and_require_encrypt_and_disable_does_not() {
        // The CA says the server was set up for TLS (.ci/run); this test does not use it.
        let Some((db, _)) = tls_database("tls_modes") else {
            return;
        };
        // The server offers TLS (ssl = on): prefer, the default, takes it; require insists.
        for (params, encrypted) in [
            ("sslmode=require", true),
            ("sslmode=prefer", true),
            ("application_name=default", true),
            ("sslmode=disable", false),
        ] {
            let url = with_params(&db.url, params);
            assert_eq!(session_ssl(&url), Ok(encrypted), "{params}");
        }
    }

    #[test]
    fn verify_full_with_the_right_root_and_name_connects() {
        let Some((db, ca)) = tls_database("tls_verify_full") else {
            return;
        };
        // By the IP address (the certificate names 127.0.0.1) and by the name localhost, with
        // channel binding required (SCRAM-SHA-256-PLUS over the session's certificate).
        let by_ip = with_params(
            &db.url,
            &format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
        );
        assert!(by_ip.contains("@127.0.0.1:"), "{by_ip}");
        assert_eq!(session_ssl(&by_ip), Ok(true));
        let by_name = by_ip.replacen("@127.0.0.1:", "@localhost:", 1);
        assert_eq!(session_ssl(&by_name), Ok(true));
        // The key=value form, its root in quotes.
        let config = tokio_postgres::Config::from_str(&db.url).map_err(|e| e.to_string());
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        let password = String::from_utf8_lossy(config.get_password().unwrap_or_default());
        let key_values = format!(
            "host=localhost port={} user={} password='{}' dbname={} sslmode = verify-full \
             sslrootcert='{ca}'",
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_user().unwrap_or_default(),
            password.replace('\\', "\\\\").replace('\'', "\\'"),
            config.get_dbname().unwrap_or_default(),
        );
        assert_eq!(session_ssl(&key_values), Ok(true));
        // require with a root checks the chain as verify-ca does, and is satisfied.
        let require = with_params(&db.url, &format!("sslmode=require&sslrootcert={ca}"));
        assert_eq!(session_ssl(&require), Ok(true));
    }

    #[test]
    fn verify_full_with_a_wrong_root_is_refused_as_unknown_issuer() {
        let Some((db, _)) = tls_database("tls_wrong_root") else {
            return;
        };
        let dir = flamegrid_testkit::temp_dir("pg-tls-wrong-root");
        let other = another_ca(dir.path());
        for mode in ["verify-full", "verify-ca", "require"] {
            let url = with_params(&db.url, &format!("sslmode={mode}&sslrootcert={other}"));
            let started = Instant::now();
            let err = session_ssl(&url).err().unwrap_or_default();
            assert!(err.contains("unknown issuer"), "{mode}: {err}");
            assert!(
                err.contains(&format!("not signed by a CA in sslrootcert {other}")),
                "{mode}: {err}"
            );
            assert!(err.contains("set sslrootcert"), "{mode}: {err}");
            assert!(!err.contains(":flamegrid@"), "{mode}: {err}");
            // Refused at once, not retried as if the server were down.
            assert!(started.elapsed() < Duration::from_secs(5), "{mode}: {err}");
        }
    }

    #[test]
    fn verify_full_names_the_host_the_certificate_does_not_hold() {
        let Some((db, ca)) = tls_database("tls_wrong_name") else {
            return;
        };
        // The right server (hostaddr) under a name its certificate does not hold.
        let url = with_params(
            &db.url
                .replacen("@127.0.0.1:", "@flamegrid-wrong.invalid:", 1),
            &format!("hostaddr=127.0.0.1&sslrootcert={ca}"),
        );
        assert!(url.contains("@flamegrid-wrong.invalid:"), "{url}");
        let err = session_ssl(&with_params(&url, "sslmode=verify-full"))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("does not name the host asked for, \"flamegrid-wrong.invalid\""),
            "{err}"
        );
        assert!(err.contains("localhost"), "what it does name: {err}");
        assert!(err.contains("sslmode=verify-ca"), "{err}");
        // verify-ca checks the chain only, and lets it in.
        assert_eq!(
            session_ssl(&with_params(&url, "sslmode=verify-ca")),
            Ok(true)
        );
    }

    #[test]
    fn a_server_given_by_address_alone_is_encrypted_but_not_checked_by_name() {
        let Some((db, ca)) = tls_database("tls_hostaddr") else {
            return;
        };
        let config = tokio_postgres::Config::from_str(&db.url).map_err(|e| e.to_string());
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        let password = String::from_utf8_lossy(config.get_password().unwrap_or_default());
        let base = format!(
            "hostaddr=127.0.0.1 port={} user={} password='{}' dbname={}",
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_user().unwrap_or_default(),
            password.replace('\\', "\\\\").replace('\'', "\\'"),
            config.get_dbname().unwrap_or_default(),
        );
        assert_eq!(session_ssl(&base), Ok(true), "prefer");
        assert_eq!(
            session_ssl(&format!("{base} sslmode=verify-ca sslrootcert={ca}")),
            Ok(true)
        );
        let err = session_ssl(&format!("{base} sslmode=verify-full sslrootcert={ca}"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("needs the server's name (host="), "{err}");
    }

    #[test]
    fn a_client_certificate_is_shown_when_asked_for() {
        let Some((db, ca)) = tls_database("tls_client_cert") else {
            return;
        };
        let dir = std::path::Path::new(&ca)
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let url = with_params(
            &db.url,
            &format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={dir}/client.pem&sslkey={dir}/client.key"
            ),
        );
        let client_dn = session_ssl_column::<Option<String>>(&url, "client_dn");
        // The server asks (ssl_ca_file, .ci/run) and knows the certificate's subject.
        assert_eq!(client_dn, Ok(Some("/CN=flamegrid".to_string())));
    }

    /// A fake server on loopback that answers every connection's opening SSLRequest (8 bytes)
    /// with `reply` and nothing more; its port.
    fn answers_ssl_request(reply: &'static [u8]) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0");
        let Ok(listener) = listener else {
            panic!("{listener:?}");
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            while let Ok((mut peer, _)) = listener.accept() {
                let mut request = [0u8; 8];
                if peer.read_exact(&mut request).is_ok() {
                    let _ = peer.write_all(reply);
                }
            }
        });
        port
    }

    #[test]
    fn a_server_without_tls_is_refused_under_require() {
        // What a server with ssl = off answers to the SSLRequest that opens every connection
        // asking for TLS: one byte, 'N'. (The shared test cluster keeps TLS on.)
        let port = answers_ssl_request(b"N");
        let started = Instant::now();
        let err = connect_once(&format!(
            "postgres://fg:s3cret@127.0.0.1:{port}/x?sslmode=verify-full&sslrootcert=/dev/null"
        ));
        // The root file is read first: /dev/null has no certificate.
        assert!(err.contains("sslrootcert /dev/null"), "{err}");
        let err = connect_within(
            &format!("postgres://fg:s3cret@127.0.0.1:{port}/x?sslmode=require"),
            Duration::from_secs(60),
        );
        assert!(err.contains("the server does not offer TLS"), "{err}");
        assert!(err.contains("sslmode=prefer"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        // A refusal is final: not retried until --database-connect-timeout-s (60 s here).
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "retried: {err}"
        );
    }

    #[test]
    fn a_connection_broken_mid_handshake_is_retried() {
        // A server that agrees to TLS ('S') and then goes away, as one restarting might: not a
        // refusal, so start-up keeps trying until --database-connect-timeout-s.
        let port = answers_ssl_request(b"S");
        let err = connect_within(
            &format!("postgres://fg:s3cret@127.0.0.1:{port}/x?sslmode=require"),
            Duration::from_secs(1),
        );
        assert!(err.contains("TLS handshake with 127.0.0.1 failed"), "{err}");
        assert!(
            err.contains("attempt(s)") && !err.contains(" 1 attempt(s)"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    /// `url` with its user's password (or its database name) replaced.
    fn with(url: &str, from: &str, to: &str) -> String {
        assert!(url.contains(from), "{url} has no {from}");
        url.replacen(from, to, 1)
    }

    /// The message of connecting to `url` with one attempt.
    fn connect_once(url: &str) -> String {
        connect_within(url, Duration::ZERO)
    }

    /// The message of connecting to `url`, retrying for `timeout` (empty if it connects).
    fn connect_within(url: &str, timeout: Duration) -> String {
        let options = ConnectOptions {
            connect_timeout: timeout,
            ..ConnectOptions::default()
        };
        Database::connect_with(url, &options)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_wrong_password_says_so_in_the_servers_words() {
        let Some(db) = flamegrid_testkit::postgres::scratch_database("wrong_password") else {
            return;
        };
        let Some(password) = url_password(&db.url) else {
            return; // a URL without a password cannot have a wrong one
        };
        let url = with(&db.url, &format!(":{password}@"), ":not-the-password@");
        let err = connect_once(&url);
        assert!(
            err.contains("password authentication failed for user"),
            "{err}"
        );
        assert!(err.contains("check the user and password"), "{err}");
        assert!(!err.contains("not-the-password"), "{err}");
    }

    /// The password of a `postgres://user:password@…` URL.
    fn url_password(url: &str) -> Option<String> {
        let rest = url.split_once("://")?.1;
        let userinfo = rest.rsplit_once('@')?.0;
        Some(userinfo.split_once(':')?.1.to_string())
    }

    #[test]
    fn an_unknown_database_says_so_in_the_servers_words() {
        let Some(db) = flamegrid_testkit::postgres::scratch_database("unknown_db") else {
            return;
        };
        let (base, _) = db.url.rsplit_once('/').unwrap_or((&db.url, ""));
        let err = connect_once(&format!("{base}/no_such_database_here"));
        assert!(
            err.contains("database \"no_such_database_here\" does not exist"),
            "{err}"
        );
        assert!(err.contains("create the database"), "{err}");
    }

    #[test]
    fn nobody_listening_names_the_server_and_the_attempts() {
        let port = flamegrid_testkit::free_port();
        let err = Database::connect_with(
            &format!("postgres://fg:pw@127.0.0.1:{port}/x"),
            &ConnectOptions {
                connect_timeout: Duration::from_secs(1),
                ..ConnectOptions::default()
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.to_lowercase().contains("connection refused"), "{err}");
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("attempt(s)"), "{err}");
        // Retried (more than one attempt), and gave up (bounded by the hang guard only).
        assert!(!err.contains(" 1 attempt(s)"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_before_anything_starts() {
        let err = Database::connect("postgres://fg:pw@db:notaport/x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("--database-url"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let Some(db) = flamegrid_testkit::postgres::scratch_database("migrations") else {
            return;
        };
        let first = Database::connect(&db.url).map_err(|e| e.to_string());
        assert!(first.is_ok(), "{first:?}");
        // Every connection carries the server-side statement timeout.
        let timeout = first.as_ref().map(|d| {
            d.blocking(|client| async move {
                let row = client
                    .query_one("SHOW statement_timeout", &[])
                    .await
                    .map_err(|e| DatabaseError::Query {
                        url: String::new(),
                        message: e.to_string(),
                    })?;
                Ok(row.get::<_, String>(0))
            })
            .map_err(|e| e.to_string())
        });
        assert_eq!(timeout, Ok(Ok("10s".to_string())));
        // A second replica on the same database applies nothing and starts.
        assert!(Database::connect(&db.url).is_ok());
        let applied =
            flamegrid_testkit::postgres::psql(&db.url, "SELECT count(*) FROM flamegrid_schema");
        assert_eq!(applied, MIGRATIONS.len().to_string());
        flamegrid_testkit::postgres::psql(&db.url, "INSERT INTO flamegrid_schema VALUES (9999, 0)");
        let err = Database::connect(&db.url)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("newer than this coordinator"), "{err}");
    }
}
