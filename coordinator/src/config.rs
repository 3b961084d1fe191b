//! The coordinator's settings: every flag of DESIGN.md, each also read from an environment
//! variable `FLAMEGRID_<FLAG_IN_CAPS>` and from an optional TOML file (`--config FILE`).
//!
//! Precedence is command line > environment > config file > default. The file is applied by
//! [`apply_config_file`], which turns each of its keys into the matching environment variable
//! when that variable is not already set, before clap parses the command line; so one code path
//! (clap's) validates every value, wherever it came from.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Serves flame graphs of native worker threads in Apache Flink's REST dialect.
#[derive(Debug, Clone, Parser)]
#[command(name = "flamegrid-coordinator", version, about, long_about = None)]
pub struct CoordinatorConfig {
    /// Address of the REST API and the dashboard.
    #[arg(long, env = "FLAMEGRID_REST_ADDR", default_value = "127.0.0.1:8081")]
    pub rest_addr: SocketAddr,

    /// Address of the registry gRPC service that agents register with.
    #[arg(long, env = "FLAMEGRID_RPC_ADDR", default_value = "127.0.0.1:6123")]
    pub rpc_addr: SocketAddr,

    /// Directory of the embedded registry database (created if missing).
    #[arg(long, env = "FLAMEGRID_DATA_DIR", default_value = "./flamegrid-data")]
    pub data_dir: PathBuf,

    /// Also start a local agent and a demo workload registered as a running job, and print the
    /// dashboard URL: the quickest way to see everything work. Runs the `flamegrid-agent` and
    /// `flamegrid-demo` executables found next to this one (else on PATH).
    #[arg(long, env = "FLAMEGRID_DEMO")]
    pub demo: bool,

    /// TOML file with any of these settings, keyed by flag name (`rest-addr = "0.0.0.0:8081"`).
    #[arg(long, env = "FLAMEGRID_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve flame graphs (Flink's rest.flamegraph.enabled; when false the endpoint answers
    /// {"endTimestamp":-2}).
    #[arg(long, env = "FLAMEGRID_FLAMEGRAPH_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub flamegraph_enabled: bool,

    /// Samples per thread in a flame graph run (rest.flamegraph.num-samples), 1..=1000.
    #[arg(long, env = "FLAMEGRID_FLAMEGRAPH_NUM_SAMPLES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flamegraph_num_samples: u32,

    /// Delay between samples in ms (rest.flamegraph.delay-between-samples), 1..=10000.
    #[arg(long, env = "FLAMEGRID_FLAMEGRAPH_DELAY_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub flamegraph_delay_ms: u32,

    /// Frames kept per stack (rest.flamegraph.stack-depth), 1..=1024.
    #[arg(long, env = "FLAMEGRID_FLAMEGRAPH_MAX_DEPTH", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub flamegraph_max_depth: u32,

    /// Seconds after which a cached flame graph is stale and the next request starts a new run
    /// (rest.flamegraph.refresh-interval).
    #[arg(
        long,
        env = "FLAMEGRID_FLAMEGRAPH_REFRESH_INTERVAL_S",
        default_value_t = 60
    )]
    pub flamegraph_refresh_interval_s: u64,

    /// Seconds after which a flame graph nobody asked for is dropped from the cache
    /// (rest.flamegraph.cleanup-interval).
    #[arg(
        long,
        env = "FLAMEGRID_FLAMEGRAPH_CLEANUP_INTERVAL_S",
        default_value_t = 600
    )]
    pub flamegraph_cleanup_interval_s: u64,

    /// Extra time, beyond samples x delay, that an agent has to answer a flame graph run before
    /// its subtasks are reported missing.
    #[arg(
        long,
        env = "FLAMEGRID_FLAMEGRAPH_RPC_GRACE_MS",
        default_value_t = 10000
    )]
    pub flamegraph_rpc_grace_ms: u64,

    /// Flame graph runs kept per vertex (and per subtask), the latest included, for
    /// .../flamegraph/history, `?at=<endTimestamp>` and diff.svg; 0 or 1 keeps only the latest,
    /// at most 1000. Counted in the cache's memory bound.
    #[arg(
        long,
        env = "FLAMEGRID_FLAMEGRAPH_HISTORY",
        default_value_t = 10,
        value_name = "N",
        value_parser = parse_history
    )]
    pub flamegraph_history: usize,

    /// A flame graph run pushed down into history is kept packed (the shared database's
    /// format, about a tenth of its decoded size, decoded again for `?at=` and diffs) when it
    /// holds at least this many KiB decoded; smaller runs stay decoded. A huge value keeps
    /// every run decoded (the behaviour before packing).
    #[arg(
        long,
        env = "FLAMEGRID_FLAMEGRAPH_PACK_FROM_KIB",
        default_value_t = 256,
        value_name = "KIB"
    )]
    pub flamegraph_pack_from_kib: usize,

    /// The dashboard's polling period in ms (/config's refresh-interval, Flink's
    /// web.refresh-interval).
    #[arg(long, env = "FLAMEGRID_REFRESH_INTERVAL_MS", default_value_t = 3000)]
    pub refresh_interval_ms: u64,

    /// Seconds without a heartbeat after which an agent counts as lost.
    #[arg(long, env = "FLAMEGRID_HEARTBEAT_TIMEOUT_S", default_value_t = 30)]
    pub heartbeat_timeout_s: u64,

    /// Start even though a listener on a non-loopback address has no credentials (the REST API
    /// without --rest-token-file or --read-only, the registry without --token-file or mutual
    /// TLS). Without it the coordinator refuses to start and names the missing flag; with it, it
    /// starts and logs a warning per open listener. Anyone who reaches an open REST port can make
    /// agents ptrace processes; anyone who reaches an open registry can register as an agent.
    #[arg(long, env = "FLAMEGRID_INSECURE")]
    pub insecure: bool,

    /// An origin (scheme://host[:port]) whose web pages may call this API from a browser: its
    /// cross-origin reads get Access-Control-Allow-Origin, its preflights are answered, and its
    /// writes are accepted (with the token, when --rest-token-file is set). Repeat the flag, or
    /// give a comma-separated list (FLAMEGRID_CORS_ORIGIN, or a TOML list in --config). No
    /// wildcards. Pages of any other origin cannot read answers, and their writes get 403; a page
    /// served by this coordinator itself under a host name (not an IP address or localhost) must
    /// be listed too, which stops DNS rebinding. Clients that send no Origin (curl, scripts,
    /// Flink's REST clients) are not affected.
    #[arg(
        long = "cors-origin",
        env = "FLAMEGRID_CORS_ORIGIN",
        value_name = "URL",
        value_delimiter = ',',
        value_parser = crate::rest::cross_site::parse_cors_origin
    )]
    pub cors_origin: Vec<crate::rest::cross_site::Origin>,

    /// Seconds a REST client has to send a request's headers (also the longest an idle
    /// keep-alive connection is kept); a client that sends them slower (slowloris) is
    /// disconnected. 1..=3600.
    #[arg(long, env = "FLAMEGRID_REST_HEADER_TIMEOUT_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub rest_header_timeout_s: u64,

    /// Seconds a REST request may take from its headers to its answer (body upload included);
    /// then it is answered 408. Never shorter than a flame graph run's deadline plus a margin,
    /// because .svg and .folded wait for a run in flight (samples x delay +
    /// --flamegraph-rpc-grace-ms). 1..=86400.
    #[arg(long, env = "FLAMEGRID_REST_REQUEST_TIMEOUT_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub rest_request_timeout_s: u64,

    /// REST connections served at once; further clients wait in the listen backlog until one
    /// closes (or is cut off by the timeouts above), so a flood of connections cannot exhaust
    /// the coordinator's memory or file descriptors. 1..=65536.
    #[arg(long, env = "FLAMEGRID_REST_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub rest_max_connections: u32,

    /// `--token-file`, `--tls-cert`, `--tls-key`, `--tls-ca`: the same flags as the agent's.
    #[command(flatten)]
    pub credentials: flamegrid_proto::credential_flags::CredentialFlags,

    /// File holding the bearer token REST writes (POST, PATCH, DELETE) must present
    /// (`Authorization: Bearer <token>`, compared in constant time). An unreadable or empty file
    /// stops the coordinator from starting. Reads stay open, as in Flink.
    #[arg(long, env = "FLAMEGRID_REST_TOKEN_FILE", value_name = "FILE")]
    pub rest_token_file: Option<PathBuf>,

    /// Refuse every REST write (403): the REST API may then listen on any address without a
    /// token.
    #[arg(long, env = "FLAMEGRID_READ_ONLY")]
    pub read_only: bool,

    /// Seconds a FINISHED, CANCELED or FAILED job is kept after it ended; then it is removed
    /// from memory and the database and answers 404 (Flink's jobstore.expiration-time).
    #[arg(
        long,
        env = "FLAMEGRID_JOB_RETENTION_S",
        default_value_t = 3600,
        value_name = "SECONDS"
    )]
    pub job_retention_s: u64,

    /// Most FINISHED, CANCELED or FAILED jobs kept; beyond it the oldest are removed first
    /// (Flink's jobstore.max-capacity).
    #[arg(
        long,
        env = "FLAMEGRID_JOB_RETENTION_MAX",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub job_retention_max: usize,

    /// Keep the registry, the sampling leases and the flame graph runs in this PostgreSQL
    /// database (`postgres://user:password@host:5432/dbname`) instead of the embedded SQLite file
    /// under --data-dir. Coordinators given the same URL are replicas: each answers every REST
    /// request the same way, one sampling run per vertex (or subtask) runs across all of them,
    /// and any of them can die (README, "Running replicated"). The schema is created or migrated
    /// at start. Prefer the environment variable (or a Secret) to the command line, where other
    /// users of the host can read the password; logs show the URL without it. TLS as libpq
    /// reads it: sslmode=disable, prefer (the default: TLS when the server offers it, not
    /// verified), require (TLS or nothing; verified against sslrootcert if given), verify-ca
    /// (the certificate chains to sslrootcert, or to the system's roots without it) or
    /// verify-full (and names the host); sslrootcert=/path/ca.pem (PEM, one or more CAs: a
    /// managed database's CA bundle), sslcert/sslkey for a client certificate. Use verify-full
    /// across any network you do not trust:
    /// `postgres://user:pw@db.example:5432/flamegrid?sslmode=verify-full&sslrootcert=/etc/ca.pem`.
    #[arg(
        long,
        env = "FLAMEGRID_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Connections to the --database-url database this coordinator keeps open at most (each
    /// REST read that misses memory, flush, sync and flame graph lease takes one for a moment).
    /// Replicas times this must stay below the server's max_connections.
    #[arg(
        long,
        env = "FLAMEGRID_DATABASE_POOL_SIZE",
        default_value_t = 16,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub database_pool_size: u32,

    /// Seconds the first connection to the --database-url database is retried at start (with
    /// backoff, each attempt logged) before the coordinator gives up, so that one started
    /// beside its database waits for it; 0 tries once. A wrong password or an unknown database
    /// fails at once.
    #[arg(
        long,
        env = "FLAMEGRID_DATABASE_CONNECT_TIMEOUT_S",
        default_value_t = 30,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub database_connect_timeout_s: u64,

    /// Seconds a replica's claim on a flame graph run (its lease in the database) lasts: if the
    /// replica dies mid-run, another one starts the next run once the lease has expired. Only
    /// used with --database-url.
    #[arg(
        long,
        env = "FLAMEGRID_FLAMEGRAPH_LEASE_S",
        default_value_t = 10,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub flamegraph_lease_s: u64,
}

impl CoordinatorConfig {
    /// The job retention `--job-retention-s` and `--job-retention-max` ask for.
    pub fn job_retention(&self) -> crate::registry::JobRetention {
        crate::registry::JobRetention {
            max_age: std::time::Duration::from_secs(self.job_retention_s),
            max_count: self.job_retention_max,
        }
    }
}

/// The most flame graph runs `--flamegraph-history` may keep per vertex: each is held in memory.
/// (The cache clamps what it is given to the same bound on its own, whoever builds it.)
pub const MAX_FLAMEGRAPH_HISTORY: usize = 1000;

/// `--flamegraph-history`: a count of runs, 0..=[`MAX_FLAMEGRAPH_HISTORY`].
fn parse_history(raw: &str) -> Result<usize, String> {
    let max = MAX_FLAMEGRAPH_HISTORY;
    match raw.trim().parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        Ok(n) => Err(format!(
            "{n} runs is too many to keep per vertex; at most {max} (each run is held in memory)"
        )),
        Err(_) => Err(format!(
            "{raw:?} is not a number of runs (0..={max}; 0 or 1 keep only the latest)"
        )),
    }
}

/// Error reading the `--config` file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value is not a string, number, boolean or list of strings.
    #[error("config file {path}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Finds `--config FILE` (or `FLAMEGRID_CONFIG`) in `args` and exports each of the file's keys
/// as `FLAMEGRID_<KEY>` unless that variable is already set. Call before any thread starts.
pub fn apply_config_file(args: &[String]) -> Result<(), ConfigFileError> {
    let mut path = std::env::var_os("FLAMEGRID_CONFIG").map(PathBuf::from);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list (`cors-origin = ["https://a", "https://b"]`) becomes the comma-separated
            // form the environment variable takes.
            toml::Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        other => {
                            return Err(ConfigFileError::Parse {
                                path,
                                msg: format!(
                                    "key {key:?}: a list may hold only strings, got {}",
                                    other.type_str()
                                ),
                            });
                        }
                    }
                }
                parts.join(",")
            }
            other => {
                return Err(ConfigFileError::Parse {
                    path,
                    msg: format!(
                        "key {key:?}: expected a string, number, boolean or list of strings, got {}",
                        other.type_str()
                    ),
                });
            }
        };
        let var = format!("FLAMEGRID_{}", key.replace('-', "_").to_ascii_uppercase());
        if std::env::var_os(&var).is_none() {
            // SAFETY: called from main before the runtime or any other thread starts.
            unsafe { std::env::set_var(var, value) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let c = CoordinatorConfig::parse_from(["flamegrid-coordinator"]);
        assert_eq!(c.rest_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.rpc_addr.to_string(), "127.0.0.1:6123");
        assert!(c.flamegraph_enabled);
        assert_eq!(
            (
                c.flamegraph_num_samples,
                c.flamegraph_delay_ms,
                c.flamegraph_max_depth
            ),
            (100, 50, 100)
        );
        assert_eq!(
            (
                c.flamegraph_refresh_interval_s,
                c.flamegraph_cleanup_interval_s
            ),
            (60, 600)
        );
        assert_eq!(c.refresh_interval_ms, 3000);
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(
            CoordinatorConfig::try_parse_from(["x", "--flamegraph-num-samples", "1001"]).is_err()
        );
        assert!(CoordinatorConfig::try_parse_from(["x", "--flamegraph-enabled", "false"]).is_ok());
    }

    /// The token and TLS flags are the agent's (one definition in `flamegrid_proto`): same names
    /// and variables, same rules (`--tls-ca` adds to `--tls-cert`/`--tls-key`, never alone).
    #[test]
    fn credential_flags_follow_the_shared_rules() {
        assert!(CoordinatorConfig::try_parse_from(["x", "--tls-ca", "ca.pem"]).is_err());
        assert!(CoordinatorConfig::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        let mutual = CoordinatorConfig::try_parse_from([
            "x",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-ca",
            "ca.pem",
        ])
        .unwrap();
        assert!(mutual.credentials.mutual_tls());
        let token = CoordinatorConfig::try_parse_from(["x", "--token-file", "t"]).unwrap();
        assert!(token.credentials.guards_listener());
    }

    #[test]
    fn history_is_bounded_with_a_clear_error() {
        let parse = |v: &str| CoordinatorConfig::try_parse_from(["x", "--flamegraph-history", v]);
        assert_eq!(CoordinatorConfig::parse_from(["x"]).flamegraph_history, 10);
        for ok in ["0", "1", "1000"] {
            assert_eq!(parse(ok).unwrap().flamegraph_history.to_string(), ok);
        }
        let too_many = parse("1001").unwrap_err().to_string();
        assert!(too_many.contains("at most 1000"), "{too_many}");
        let not_a_number = parse("ten").unwrap_err().to_string();
        assert!(
            not_a_number.contains("not a number of runs"),
            "{not_a_number}"
        );
    }
}
