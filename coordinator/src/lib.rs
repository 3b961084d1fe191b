//! flamegrid's coordinator.
//!
//! * [`config`]: flags, environment, config file.
//! * [`bearer`]: the shared token on every call to an agent (a tonic interceptor).
//! * [`credentials`]: the token and TLS files, read once at start.
//! * [`database`]: the shared PostgreSQL database of replicated coordinators (`--database-url`).
//! * [`registry`]: task managers (registration, heartbeats, liveness) and jobs (embedded store).
//! * [`sampling`]: what is sampled (a vertex's subtasks, where they run, a run's parameters).
//! * [`missing`]: why a subtask is absent from a graph, in a fixed vocabulary every view shows.
//! * [`fanout`]: one sampling RPC per agent, deadlines, partial results.
//! * [`flamegraph`]: Flink's tree algorithm over the samples, the cache with coalescing, views.
//! * [`rest`]: one module per REST resource; handlers only translate between HTTP and the domain.
//! * [`dashboard`]: the embedded web page.
//!
//! Arrows point one way: rest → flamegraph/registry → fanout → proto.
//!
//! Starting a coordinator is [`start`] (or [`start_on`] with listeners the caller bound): it
//! opens the registry, serves REST and gRPC, runs the liveness sweeper, and returns a
//! [`Coordinator`] handle with the bound addresses and a graceful [`Coordinator::shutdown`].
//! Tests and the demo start one on port 0 in-process this way; [`run`] is the binary's loop
//! around it.
//!
//! Before anything is served, both listeners pass the secure-default rule
//! ([`flamegrid_proto::exposure::check`], DESIGN.md "Secure defaults"): one that other hosts can
//! reach without credentials stops the start with a one-line reason naming the missing flag,
//! unless `--insecure`. The REST listener runs in [`rest::serve`]'s accept loop (header-read and
//! request timeouts, a connection limit); what a web page may do is [`rest::cross_site`].
//!
//! With `--tls-cert`/`--tls-key` the registry port speaks TLS (mutual with `--tls-ca`) through
//! [`registry::tls`], an accept loop of our own, so that every refused handshake is logged with
//! the peer that tried; the same files serve as client credentials towards `https://` agents
//! ([`fanout`]).

pub mod bearer;
pub mod config;
pub mod credentials;
pub mod dashboard;
pub mod database;
pub mod demo;
pub mod error_chain;
pub mod fanout;
pub mod flamegraph;
pub mod missing;
pub mod registry;
pub mod rest;
pub mod sampling;

use config::CoordinatorConfig;
use registry::grpc::{RegistryService, TokenCheck};
use registry::{Registry, RegistryError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the coordinator could not start or stopped with a fault.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Binding or reading a listener address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The registry (data directory, database, token file) failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A token file (`--token-file`, `--rest-token-file`) could not be read or is empty, or the
    /// credentials cannot be used to call agents.
    #[error("{0}")]
    Credentials(String),
    /// A TLS file could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener would be reachable from other hosts without credentials (DESIGN.md, "Secure
    /// defaults"); the one-line reason names the missing flag.
    #[error("{0}")]
    Exposed(String),
    /// A server task failed.
    #[error("{0}")]
    Server(String),
    /// The shared database (`--database-url`) could not be reached or migrated.
    #[error(transparent)]
    Database(#[from] database::DatabaseError),
}

/// A running coordinator. Dropping it without [`Coordinator::shutdown`] leaves the servers
/// running until the runtime ends.
pub struct Coordinator {
    rest_addr: SocketAddr,
    rpc_addr: SocketAddr,
    registry: Arc<Registry>,
    state: rest::state::AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), CoordinatorError>>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("rest_addr", &self.rest_addr)
            .field("rpc_addr", &self.rpc_addr)
            .finish()
    }
}

impl Coordinator {
    /// Where the REST API (and dashboard) listens.
    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    /// Where the registry gRPC service listens.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The registry, e.g. for the demo to register a job directly.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The state shared by the REST handlers.
    pub fn app_state(&self) -> &rest::state::AppState {
        &self.state
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits for the servers.
    pub async fn shutdown(self) -> Result<(), CoordinatorError> {
        let _ = self.shutdown.send(true);
        self.join().await
    }

    /// Waits until the servers stop (after [`Coordinator::shutdown`] elsewhere, or a fault).
    async fn join(self) -> Result<(), CoordinatorError> {
        let mut result = Ok(());
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => {
                    result = Err(CoordinatorError::Server(format!("server task failed: {e}")))
                }
            }
        }
        result
    }
}

/// Binds `--rest-addr` and `--rpc-addr` and starts everything (see [`start_on`]).
pub async fn start(config: CoordinatorConfig) -> Result<Coordinator, CoordinatorError> {
    let rest = TcpListener::bind(config.rest_addr)
        .await
        .map_err(|source| CoordinatorError::Listen {
            addr: config.rest_addr,
            source,
        })?;
    let rpc =
        TcpListener::bind(config.rpc_addr)
            .await
            .map_err(|source| CoordinatorError::Listen {
                addr: config.rpc_addr,
                source,
            })?;
    start_on(config, rest, rpc).await
}

/// Starts the coordinator on listeners the caller bound: opens the registry under
/// `--data-dir`, serves REST on `rest` and the registry gRPC service on `rpc`, and sweeps for
/// lost agents every quarter of the heartbeat timeout.
pub async fn start_on(
    config: CoordinatorConfig,
    rest: TcpListener,
    rpc: TcpListener,
) -> Result<Coordinator, CoordinatorError> {
    let rest_addr = rest
        .local_addr()
        .map_err(|source| CoordinatorError::Listen {
            addr: config.rest_addr,
            source,
        })?;
    let rpc_addr = rpc
        .local_addr()
        .map_err(|source| CoordinatorError::Listen {
            addr: config.rpc_addr,
            source,
        })?;
    check_exposure(&config, rest_addr, rpc_addr)?;
    let timeout = Duration::from_secs(config.heartbeat_timeout_s.max(1));
    let data_dir = config.data_dir.clone();
    let retention = config.job_retention();
    // The shared database of replicas, connected and migrated before anything is served.
    let database = match config.database_url.clone() {
        Some(url) => {
            let options = database::ConnectOptions {
                pool_size: config.database_pool_size as usize,
                connect_timeout: Duration::from_secs(config.database_connect_timeout_s),
            };
            let db = tokio::task::spawn_blocking(move || {
                database::Database::connect_with(&url, &options)
            })
            .await
            .map_err(|e| {
                CoordinatorError::Server(format!("connecting the database failed: {e}"))
            })??;
            tracing::info!(database = %db.describe(), replica = %db.replica_id(), "shared database ready");
            Some(db)
        }
        None => None,
    };
    // The registry on the shared database when there is one (replicas, registry/replication.rs),
    // else on the embedded SQLite file under --data-dir.
    let shared_store = database.clone();
    let registry = Arc::new(
        tokio::task::spawn_blocking(move || match shared_store {
            Some(db) => Registry::open_with_store(
                Box::new(registry::postgres::PgStore::new(db)),
                timeout,
                retention,
            ),
            None => Registry::open_with_retention(&data_dir, timeout, retention),
        })
        .await
        .map_err(|e| CoordinatorError::Server(format!("opening the registry failed: {e}")))??,
    );
    let credentials = credentials::Credentials::load(&config)?;
    let token = match &credentials.grpc_token {
        Some(token) => TokenCheck::require(token),
        None => TokenCheck::disabled(),
    };
    let tls = grpc_tls(&credentials)?;
    let write_guard =
        rest::auth::WriteGuard::new(config.read_only, credentials.rest_token.as_deref());
    let flamegraphs = match &database {
        // Replicas share their runs: one per key for all, stored, followed (flamegraph/shared.rs).
        Some(db) => flamegraph::FlameGraphService::replicated(
            flamegraph_settings(&config),
            credentials.agent_auth()?,
            flamegraph::shared::SharedRuns::new(
                db.clone(),
                Duration::from_secs(config.flamegraph_lease_s),
            ),
        ),
        None => flamegraph::FlameGraphService::with_settings(
            flamegraph_settings(&config),
            credentials.agent_auth()?,
        ),
    };
    let config = Arc::new(config);
    let state = rest::state::AppState {
        registry: registry.clone(),
        flamegraphs: Arc::new(flamegraphs),
        config: config.clone(),
        database,
    };
    let (shutdown, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    // REST, within the limits of rest::serve.
    let limits = rest::serve::ServeLimits {
        header_read_timeout: Duration::from_secs(config.rest_header_timeout_s.max(1)),
        write_stall_timeout: rest::request_timeout(&state),
        max_connections: config.rest_max_connections.max(1) as usize,
    };
    // The dashboard is mounted beside the API, under the same conventions.
    let app = rest::router(state.clone(), write_guard, dashboard::routes());
    let stop = stopped.clone();
    tasks.push(tokio::spawn(async move {
        rest::serve::serve(rest, app, limits, stop)
            .await
            .map_err(|e| CoordinatorError::Server(format!("REST server: {e}")))
    }));

    // gRPC registry, in plain text or behind our own TLS accept loop (which logs refusals), on
    // a runtime of its own: one thread. A thousand agents heartbeat some 200 times a second,
    // each a few microseconds of work; on the shared multi-threaded runtime every one of them
    // also woke a parked worker thread (context switches were most of the coordinator's idle
    // CPU). One thread takes them in turn, and the flame graph runs and REST keep the rest.
    let service = RegistryService::new(registry.clone()).into_server(token);
    let stop = stopped.clone();
    let rpc = rpc
        .into_std()
        .map_err(|e| CoordinatorError::Server(format!("registry gRPC listener: {e}")))?;
    let (served_tx, served_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flamegrid-registry".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the registry's runtime: {e}"))
                .and_then(|rt| {
                    rt.block_on(serve_registry(service, rpc, tls, stop))
                        .map_err(|e| format!("registry gRPC server: {e}"))
                });
            let _ = served_tx.send(served);
        })
        .map_err(|e| CoordinatorError::Server(format!("cannot start the registry thread: {e}")))?;
    tasks.push(tokio::spawn(async move {
        match served_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(CoordinatorError::Server(message)),
            Err(_) => Err(CoordinatorError::Server(
                "the registry thread ended without a word".into(),
            )),
        }
    }));

    // Heartbeat state reaches the store in batches (registry/flusher.rs), and once more on stop.
    let flusher = registry::flusher::run(registry.clone(), stopped.clone());
    tasks.push(tokio::spawn(async move {
        flusher.await;
        Ok(())
    }));

    // Liveness sweeper, which also expires terminal jobs (--job-retention-*) and frees their
    // flame graphs.
    let sweeper_registry = registry.clone();
    let sweeper_graphs = state.flamegraphs.clone();
    let mut stop = stopped;
    let period = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    tasks.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            let registry = sweeper_registry.clone();
            let swept = tokio::task::spawn_blocking(move || {
                registry.expire()?;
                registry.expire_jobs()
            });
            match swept.await {
                Ok(Ok(removed_jobs)) => {
                    for job in removed_jobs {
                        sweeper_graphs.cache().forget_job(&job);
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "liveness sweep failed"),
                Err(e) => tracing::error!(error = %e, "liveness sweep panicked"),
            }
        }
    }));

    tracing::info!(%rest_addr, %rpc_addr, "coordinator started");
    Ok(Coordinator {
        rest_addr,
        rpc_addr,
        registry,
        state,
        shutdown,
        tasks,
    })
}

/// The secure-default rule ([`flamegrid_proto::exposure::check`]) for both listeners: a
/// non-loopback REST API needs `--rest-token-file` or `--read-only`, a non-loopback registry
/// `--token-file` or mutual TLS, unless `--insecure` (then one warning per open listener).
/// Whether the credential files are usable is checked when they are read, right after: an
/// unusable file stops the start too, never leaving a listener open.
fn check_exposure(
    config: &CoordinatorConfig,
    rest_addr: SocketAddr,
    rpc_addr: SocketAddr,
) -> Result<(), CoordinatorError> {
    use flamegrid_proto::exposure::{Exposure, Listener, check};
    let listeners = [
        Listener {
            what: "REST API",
            addr_flag: "--rest-addr",
            addr: rest_addr,
            has_credentials: config.rest_token_file.is_some() || config.read_only,
            credential_flags: "--rest-token-file (or --read-only)",
        },
        Listener {
            what: "registry gRPC service",
            addr_flag: "--rpc-addr",
            addr: rpc_addr,
            has_credentials: config.credentials.guards_listener(),
            credential_flags: flamegrid_proto::credential_flags::GRPC_CREDENTIAL_FLAGS,
        },
    ];
    for listener in &listeners {
        match check(listener, config.insecure) {
            Ok(Exposure::Guarded) => {}
            Ok(Exposure::OpenByChoice(warning)) => tracing::warn!("{warning}"),
            Err(reason) => return Err(CoordinatorError::Exposed(reason)),
        }
    }
    Ok(())
}

/// The registry's TLS acceptor from `--tls-cert`/`--tls-key` (and `--tls-ca` for mutual TLS),
/// or `None` for plain text.
fn grpc_tls(
    credentials: &credentials::Credentials,
) -> Result<Option<tokio_rustls::TlsAcceptor>, CoordinatorError> {
    let Some(identity) = &credentials.tls_identity else {
        return Ok(None);
    };
    registry::tls::acceptor(identity, credentials.tls_ca.as_ref()).map(Some)
}

/// The flame graph service's settings from the `--flamegraph-*` flags: the service takes these
/// plain values, not the command line, so it can be built (in tests, benches) without one.
pub fn flamegraph_settings(config: &CoordinatorConfig) -> flamegraph::FlameGraphSettings {
    use flamegraph::cache::CacheLimits;
    use sampling::SamplingParams;
    use std::time::Duration;
    flamegraph::FlameGraphSettings {
        enabled: config.flamegraph_enabled,
        params: SamplingParams {
            num_samples: config.flamegraph_num_samples,
            delay_ms: config.flamegraph_delay_ms,
            max_depth: config.flamegraph_max_depth,
        },
        limits: CacheLimits {
            history: config.flamegraph_history,
            pack_from_bytes: config.flamegraph_pack_from_kib.saturating_mul(1024),
            ..CacheLimits::new(
                Duration::from_secs(config.flamegraph_refresh_interval_s),
                Duration::from_secs(config.flamegraph_cleanup_interval_s),
            )
        },
        rpc_grace: Duration::from_millis(config.flamegraph_rpc_grace_ms),
    }
}

/// Serves the registry's gRPC `service` on `rpc` (in plain text, or behind `tls`) until `stop`
/// says so; on the registry's own runtime (see [`start_on`]).
async fn serve_registry(
    service: tonic::service::interceptor::InterceptedService<
        flamegrid_proto::v1::registry_server::RegistryServer<RegistryService>,
        TokenCheck,
    >,
    rpc: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let rpc = tokio::net::TcpListener::from_std(rpc).map_err(|e| e.to_string())?;
    let server = tonic::transport::Server::builder().add_service(service);
    let until_stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let served = match tls {
        Some(acceptor) => {
            server
                .serve_with_incoming_shutdown(registry::tls::incoming(rpc, acceptor), until_stopped)
                .await
        }
        None => {
            server
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(rpc),
                    until_stopped,
                )
                .await
        }
    };
    served.map_err(|e| e.to_string())
}

/// Prints a line for the user on stdout, ignoring a closed stdout (`println!` would panic
/// there, e.g. under `| head -1` or a supervisor that stopped reading): these lines are
/// information, and the coordinator keeps serving without them.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Runs the coordinator until SIGINT/SIGTERM.
pub fn run(config: CoordinatorConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let demo = config.demo;
        // Agents must be pointed at https:// when the registry speaks TLS.
        let rpc_scheme = if config.credentials.tls() {
            "https"
        } else {
            "http"
        };
        // Listen for Ctrl-C and SIGTERM before anything starts: from here on, a signal means
        // "stop cleanly", even one that arrives while the demo is still starting (a signal
        // before the handler exists would kill the process and leave the demo's workload).
        let mut stop_signal = StopSignal::install();
        let coordinator = start(config).await?;
        say!("flamegrid dashboard: http://{}/", coordinator.rest_addr());
        say!(
            "flamegrid registry (gRPC): {rpc_scheme}://{}",
            coordinator.rpc_addr()
        );
        let demo = if demo {
            say!("flamegrid demo: starting a local agent and the demo workload...");
            let handle = tokio::select! {
                started = demo::start(&coordinator) => started?,
                () = stop_signal.received() => {
                    // Dropping the half-started demo kills its workload and stops its agent.
                    tracing::info!("stopped while the demo was starting");
                    coordinator.shutdown().await?;
                    return Ok(());
                }
            };
            let rest = coordinator.rest_addr();
            say!(
                "flamegrid demo: agent {} samples workload pid {}; job {}",
                handle.agent_id,
                handle.workload_pid,
                handle.job_id
            );
            say!("flamegrid demo job: http://{rest}/#/jobs/{}", handle.job_id);
            say!("Open the dashboard URL above in a browser; Ctrl-C stops everything.");
            Some(handle)
        } else {
            None
        };
        stop_signal.received().await;
        tracing::info!("shutting down");
        if let Some(handle) = demo {
            handle.stop().await;
        }
        coordinator.shutdown().await?;
        Ok(())
    })
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from [`StopSignal::install`] on, so a signal that
/// arrives at any point after that is seen by [`StopSignal::received`] instead of killing the
/// process with the default action.
struct StopSignal {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    /// Installs the handlers now (inside a Tokio runtime).
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            StopSignal {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            StopSignal {}
        }
    }

    /// Resolves once Ctrl-C or SIGTERM was received (since [`StopSignal::install`]).
    async fn received(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            if self.interrupt.is_none() && self.terminate.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = next(&mut self.interrupt) => {}
                () = next(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
