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

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// The schema, one script per version, applied in order (see the module docs).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_registry.sql")),
    (2, include_str!("../migrations/0002_flamegraph_runs.sql")),
];

/// Key of the advisory lock that serialises migrations between replicas starting together.
const MIGRATION_LOCK: i64 = 0x666c_616d_6567_7269; // "flamegri"

/// Connections kept open by one coordinator.
const POOL_SIZE: usize = 16;

/// How long a piece of database work may wait for a connection or the server before it fails
/// (a dead database must not hang a REST request or the flusher forever).
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the shared database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL does not parse, or asks for something this build cannot do.
    #[error("--database-url: {0}")]
    Url(String),
    /// The server could not be reached or refused us.
    #[error("database {url}: {message}")]
    Connect {
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
    /// Connects to `url` (`postgres://user:password@host:port/dbname`, or the key=value form),
    /// checks that the server answers, and applies the migrations. Fails with a message that
    /// names the URL (without its password) and what to do.
    pub fn connect(url: &str) -> Result<Database, DatabaseError> {
        let redacted = redact(url);
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| DatabaseError::Url(format!("{redacted}: {e}")))?;
        // Every statement is bounded by the server too; set once per connection at start-up
        // (not once per use: that would be a round trip on every piece of work).
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or(""),
            DATABASE_TIMEOUT.as_millis()
        );
        config.options(options.trim_start());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flamegrid-db")
            .enable_all()
            .build()
            .map_err(|e| DatabaseError::Connect {
                url: redacted.clone(),
                message: format!("cannot start the database thread: {e}"),
            })?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
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
        db.blocking(|client| async move { migrate(client).await })?;
        Ok(db)
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
    let client = pool.get().await.map_err(|e| DatabaseError::Connect {
        url: url.clone(),
        message: format!("{e} (is the server running, and do the URL's user and password hold?)"),
    })?;
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

/// Applies the [`MIGRATIONS`] this database lacks, in one transaction under an advisory lock.
async fn migrate(mut client: Object) -> Result<(), DatabaseError> {
    let schema = |message: String| DatabaseError::Schema {
        url: String::new(),
        message,
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| schema(e.to_string()))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| schema(format!("cannot take the migration lock: {e}")))?;
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
        .map_err(|e| schema(e.to_string()))?
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
            .map_err(|e| schema(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO flamegrid_schema (version, applied_ms) VALUES ($1, $2)",
            &[version, &flamegrid_model::clock::now_ms()],
        )
        .await
        .map_err(|e| schema(format!("migration {version}: {e}")))?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(|e| schema(e.to_string()))
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
    // The key=value form: hide `password=...`.
    url.split_whitespace()
        .map(|kv| {
            if kv.to_ascii_lowercase().starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Hides a `password=` query parameter.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query = query
        .split('&')
        .map(|kv| {
            if kv.to_ascii_lowercase().starts_with("password=") {
                "password=***"
            } else {
                kv
            }
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
