//! `flamegrid-agent run`: the long-running agent.
//!
//! Three things run side by side once [`serve`] returns:
//!
//! * the **sampling server** ([`crate::service::SamplingService`] behind tonic, optionally TLS,
//!   optionally checking a shared token) on `--listen`;
//! * the **registration loop** ([`crate::registration`]) that registers with a coordinator of
//!   `--coordinator` and heartbeats, failing over to the next one of the list when it stops
//!   answering; it never blocks the server, so sampling goes on while the coordinators are away;
//! * a **supervisor** task that waits for the shutdown signal, then (in this order) cancels the
//!   sampling runs in flight so they return what they have, stops the registration loop and lets
//!   the server drain its connections.
//!
//! [`serve`] is a library function so that `flamegrid-coordinator --demo` can start an agent in
//! its own process: it binds first and only then returns, so the caller learns the real address
//! (`--listen 127.0.0.1:0` picks a free port). [`main`] is the CLI around it, with SIGTERM and
//! SIGINT as the shutdown signal.
//!
//! Defaults that need a decision, documented on the flags too:
//! * `--advertise`: listening on a concrete IP advertises that IP; listening on `0.0.0.0`/`::`
//!   advertises the local IP of the interface that routes to the first coordinator (found by
//!   "connecting" a UDP socket, which sends nothing), so an agent on loopback next to its
//!   coordinator advertises `127.0.0.1` and one on a LAN its LAN address; if even that fails, the
//!   host name. The scheme is `https` with `--tls-cert`, else `http`.
//! * `--id`: 32 hex digits of a 128-bit FNV-1a hash of the host name and the *bound* listen
//!   address, so restarts of the same agent keep their id while two agents on one host (or two
//!   `:0` ports) never share one.

use crate::registration::{self, CoordinatorLink, RegistrationConfig};
use crate::service::{BearerTokenCheck, SamplingService, ServiceSettings};
use anyhow::{Context, bail, ensure};
use clap::Args;
use flamegrid_proto::credential_flags::{CredentialFlags, GRPC_CREDENTIAL_FLAGS, read_token_file};
use flamegrid_proto::exposure::{self, Exposure, Listener};
use flamegrid_proto::host::host_name;
use flamegrid_proto::v1::sampling_server::SamplingServer;
use flamegrid_sampler::Sampler;
use flamegrid_sampler::selection::AccessPolicy;
use std::future::Future;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// Async worker threads of the agent's runtime (see [`main`]).
pub const ASYNC_WORKER_THREADS: usize = 2;

/// Blocking-pool threads beyond one per concurrent sampling run: heartbeat probes and file
/// reads.
pub const BLOCKING_THREADS_SPARE: usize = 4;

/// Concurrent calls one connection may have open on the sampling service.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// How long the agent waits at exit for blocking work still running (a sampling run past its
/// cancel point, a file read that never returns) before it exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Most concurrent sampling runs `--max-concurrent-runs` accepts.
pub const MAX_CONCURRENT_RUNS_LIMIT: usize = 256;

/// Most coordinators `--coordinator` accepts (after duplicates are removed).
pub const MAX_COORDINATORS: usize = 64;

/// Flags of `flamegrid-agent run` (DESIGN.md). Every flag also reads `FLAMEGRID_<FLAG>`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The coordinator's registry address, e.g. http://coordinator:6123 (https:// with TLS).
    /// Several coordinators (replicas on one --database-url) may be given, comma-separated
    /// and/or by repeating the flag (env FLAMEGRID_COORDINATOR: comma-separated); every URL is
    /// checked at start, duplicates are dropped, at most 64. The agent talks to one at a time:
    /// the first of the list that answers, and stays with it. After a failed call it moves to
    /// the next one (round-robin, keeping its id; it registers there only if that coordinator
    /// does not know it) when that coordinator has not answered since the agent turned to it,
    /// when two calls to it failed in a row, or when its calls have failed for a heartbeat
    /// interval (a heartbeat's deadline is its interval, 2 to 10 s). With the coordinator's
    /// default 30 s heartbeat timeout that is about 5.5 s after a killed coordinator's last
    /// answer and 10 s after a hung one's. Every move is logged once; with every coordinator
    /// down, one call per backoff step (0.5 s doubling to 10 s).
    #[arg(
        long,
        env = "FLAMEGRID_COORDINATOR",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        required = true
    )]
    pub coordinator: Vec<String>,

    /// Where to serve the sampling gRPC service (port 0 picks a free port). An address other
    /// hosts can reach needs --token-file or mutual TLS (--tls-cert, --tls-key, --tls-ca): without,
    /// the agent refuses to start unless --insecure is given.
    #[arg(
        long,
        env = "FLAMEGRID_LISTEN",
        default_value = "0.0.0.0:6122",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// The address the coordinator uses to reach this agent, e.g. http://10.0.0.5:6122.
    /// Default: the listen IP; for 0.0.0.0/:: the local IP that routes to the first coordinator
    /// (127.0.0.1 when the coordinator is on loopback), else the host name; https with TLS.
    #[arg(long, env = "FLAMEGRID_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,

    /// This agent's id as shown in /taskmanagers: 1 to 128 characters of [A-Za-z0-9._:-].
    /// Default: 32 hex digits derived from the host name and the bound listen address.
    #[arg(long, env = "FLAMEGRID_ID", value_name = "ID")]
    pub id: Option<String>,

    /// Allow sampling processes of this user (name or uid); repeatable or comma-separated.
    /// Without --allow-user and --allow-comm only processes of the agent's own user are allowed.
    /// The strong form of the allow-list: a process can not change its uids.
    #[arg(
        long = "allow-user",
        env = "FLAMEGRID_ALLOW_USER",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub allow_user: Vec<String>,

    /// Allow sampling processes with this kernel name (comm); repeatable or comma-separated.
    /// Weaker than --allow-user: any process can give itself any name (prctl PR_SET_NAME,
    /// argv[0]), so every local user can make a process this list admits; prefer --allow-user.
    #[arg(
        long = "allow-comm",
        env = "FLAMEGRID_ALLOW_COMM",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub allow_comm: Vec<String>,

    /// `--token-file`, `--tls-cert`, `--tls-key`, `--tls-ca`: the same flags as the
    /// coordinator's.
    #[command(flatten)]
    pub credentials: CredentialFlags,

    /// The coordinator's heartbeat timeout; accepted for symmetry with the coordinator.
    #[arg(long, env = "FLAMEGRID_HEARTBEAT_TIMEOUT_S", default_value_t = 30, value_name = "S",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub heartbeat_timeout_s: u64,

    /// Sampling runs served at once; more are refused with RESOURCE_EXHAUSTED (1..=256).
    #[arg(long, env = "FLAMEGRID_MAX_CONCURRENT_RUNS", default_value_t = crate::service::DEFAULT_MAX_CONCURRENT_RUNS,
          value_name = "N", value_parser = parse_max_runs)]
    pub max_concurrent_runs: usize,

    /// Append the kernel stacks of off-CPU threads (needs root).
    #[arg(long, env = "FLAMEGRID_KERNEL_STACKS")]
    pub kernel_stacks: bool,

    /// How stacks are read: auto (perf events where allowed, else ptrace; the choice is
    /// logged), perf (running threads are never stopped; needs CAP_PERFMON or root) or ptrace
    /// (every sample stops each thread briefly). See `flamegrid-agent sample --help`.
    #[arg(long, env = "FLAMEGRID_SAMPLER", value_enum, ignore_case = true, default_value_t = super::SamplerArg::Auto)]
    pub sampler: super::SamplerArg,

    /// Most memory the perf events' ring buffers may take, MiB (1..=65536; each thread sampled
    /// with perf maps about 1 MiB). Threads beyond it are read with ptrace, logged once with the
    /// reason. Without CAP_IPC_LOCK the kernel's own limit applies too (kernel.
    /// perf_event_mlock_kb per CPU plus RLIMIT_MEMLOCK) and the cap is lowered to it.
    #[arg(long, env = "FLAMEGRID_PERF_RING_MEMORY_MIB", value_name = "MIB",
          default_value_t = super::DEFAULT_PERF_RING_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub perf_ring_memory_mib: u32,

    /// Start even though --listen is reachable from other hosts without credentials. By
    /// default a non-loopback --listen needs --token-file or mutual TLS (--tls-cert, --tls-key
    /// and --tls-ca) and the agent refuses to start without; with --insecure anyone who can
    /// reach the port may make this privileged agent ptrace any allowed process (a warning is
    /// logged at start). Loopback addresses never need it.
    #[arg(long, env = "FLAMEGRID_INSECURE")]
    pub insecure: bool,

    /// Serve the agent's own metrics in Prometheus' text format at http://ADDR/metrics (runs
    /// served by outcome, their durations, samples taken, ptrace stops, subtask errors, runs
    /// in flight, the coordinator in use and the failovers between coordinators); off by
    /// default. The endpoint takes no credentials, so an address other hosts can reach needs
    /// --insecure; port 0 picks a free port (logged at start).
    #[arg(long, env = "FLAMEGRID_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_max_runs(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (1..=MAX_CONCURRENT_RUNS_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 1 and {MAX_CONCURRENT_RUNS_LIMIT}"))
    }
}

impl RunArgs {
    /// The flags' defaults with `coordinator` set (one URL, or several comma-separated), for
    /// callers that start an agent in-process (e.g. the coordinator's `--demo`); adjust fields
    /// such as `listen` before calling [`serve`]. `sampler` is read from `FLAMEGRID_SAMPLER` as
    /// the flag would be.
    pub fn new(coordinator: impl Into<String>) -> Self {
        RunArgs {
            coordinator: vec![coordinator.into()],
            listen: SocketAddr::from(([0, 0, 0, 0], 6122)),
            advertise: None,
            id: None,
            allow_user: Vec::new(),
            allow_comm: Vec::new(),
            credentials: CredentialFlags::default(),
            heartbeat_timeout_s: 30,
            max_concurrent_runs: crate::service::DEFAULT_MAX_CONCURRENT_RUNS,
            kernel_stacks: false,
            sampler: super::SamplerArg::from_env(),
            perf_ring_memory_mib: super::DEFAULT_PERF_RING_MEMORY_MIB,
            insecure: false,
            metrics_listen: None,
        }
    }
}

/// A started agent: where it listens and who it says it is. Dropping it does not stop the agent;
/// the shutdown future given to [`serve`] does.
#[derive(Debug)]
pub struct RunningAgent {
    /// The address the sampling server is bound to (the real port when `listen` had port 0).
    pub local_addr: SocketAddr,
    /// The address registered with the coordinator.
    pub advertised_address: String,
    /// The id registered with the coordinator.
    pub agent_id: String,
    /// The address `/metrics` is served on (`--metrics-listen`, the real port), if any.
    pub metrics_addr: Option<SocketAddr>,
    supervisor: JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    /// Waits until the agent has shut down (after the shutdown future completed and the server
    /// drained), or failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.supervisor
            .await
            .context("the agent's supervisor task failed")?
    }
}

/// Everything [`serve`] needs, checked and loaded from the flags before anything starts, so a bad
/// flag changes nothing.
struct Checked {
    /// The `--coordinator` list, in order, without duplicates: (URL as given, endpoint).
    coordinators: Vec<(String, Endpoint)>,
    token: Option<String>,
    server_tls: Option<ServerTlsConfig>,
    policy: AccessPolicy,
    /// The warning to log at start when `--insecure` opened the listener on purpose.
    exposure_warning: Option<String>,
    /// The same for `--metrics-listen`.
    metrics_warning: Option<String>,
}

fn check_args(args: &RunArgs) -> anyhow::Result<Checked> {
    let coordinators = coordinator_list(&args.coordinator)?;
    if let Some(id) = &args.id {
        check_id(id)?;
    }
    if let Some(a) = &args.advertise {
        check_url("--advertise", a)?;
    }
    let token = args
        .credentials
        .token_file
        .as_deref()
        .map(|path| read_token_file(path, "token file"))
        .transpose()?;

    let identity = match (&args.credentials.tls_cert, &args.credentials.tls_key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(
            read_file(cert, "--tls-cert")?,
            read_file(key, "--tls-key")?,
        )),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let ca = match &args.credentials.tls_ca {
        Some(path) => {
            ensure!(
                identity.is_some(),
                "--tls-ca needs --tls-cert and --tls-key"
            );
            Some(Certificate::from_pem(read_file(path, "--tls-ca")?))
        }
        None => None,
    };
    let server_tls = identity.as_ref().map(|id| {
        let tls = ServerTlsConfig::new().identity(id.clone());
        match &ca {
            Some(ca) => tls.client_ca_root(ca.clone()),
            None => tls,
        }
    });
    let coordinators = coordinators
        .into_iter()
        .map(|(url, endpoint)| {
            if !url.starts_with("https://") {
                return Ok((url, endpoint));
            }
            let Some(ca) = &ca else {
                bail!(
                    "--coordinator {url}: an https:// coordinator needs --tls-ca (the CA that \
                     signed its certificate)"
                );
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(ca.clone());
            if let Some(id) = &identity {
                tls = tls.identity(id.clone());
            }
            let endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("configuring TLS towards the coordinator {url}"))?;
            Ok((url, endpoint))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let policy = if args.allow_user.is_empty() && args.allow_comm.is_empty() {
        AccessPolicy::own_user()
    } else {
        AccessPolicy::new(&args.allow_user, &args.allow_comm)
            .context("--allow-user / --allow-comm")?
    };
    ensure!(
        (1..=MAX_CONCURRENT_RUNS_LIMIT).contains(&args.max_concurrent_runs),
        "--max-concurrent-runs must be between 1 and {MAX_CONCURRENT_RUNS_LIMIT}"
    );
    ensure!(
        args.heartbeat_timeout_s >= 1,
        "--heartbeat-timeout-s must be at least 1"
    );
    // DESIGN.md "Secure defaults": callers of a listener other hosts can reach must prove who
    // they are, with the shared token or a client certificate signed by --tls-ca.
    let listener = Listener {
        what: "sampling gRPC service",
        addr_flag: "--listen",
        addr: args.listen,
        has_credentials: token.is_some() || (server_tls.is_some() && ca.is_some()),
        credential_flags: GRPC_CREDENTIAL_FLAGS,
    };
    let exposure_warning = match exposure::check(&listener, args.insecure) {
        Ok(Exposure::Guarded) => None,
        Ok(Exposure::OpenByChoice(warning)) => Some(warning),
        Err(reason) => bail!(reason),
    };
    // The metrics endpoint takes no credentials at all: only loopback, or --insecure.
    let metrics_warning = match args.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = Listener {
                what: "metrics endpoint",
                addr_flag: "--metrics-listen",
                addr,
                has_credentials: false,
                credential_flags: "nothing (it takes no credentials)",
            };
            match exposure::check(&listener, args.insecure) {
                Ok(Exposure::Guarded) => None,
                Ok(Exposure::OpenByChoice(warning)) => Some(warning),
                Err(reason) => bail!(reason),
            }
        }
    };
    Ok(Checked {
        coordinators,
        token,
        server_tls,
        policy,
        exposure_warning,
        metrics_warning,
    })
}

fn check_url(flag: &str, url: &str) -> anyhow::Result<Endpoint> {
    ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "{flag} must be an http:// or https:// URL, got {url:?}"
    );
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("{flag} {url:?} is not a valid URL"))?;
    ensure!(
        endpoint.uri().host().is_some_and(|h| !h.is_empty()),
        "{flag} {url:?} has no host"
    );
    Ok(endpoint)
}

fn coordinator_endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let endpoint = check_url("--coordinator", url)?;
    ensure!(
        !endpoint
            .uri()
            .authority()
            .is_some_and(|a| a.as_str().contains('@')),
        "--coordinator {url:?}: a URL with user info is refused (credentials go in --token-file)"
    );
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(registration::MAX_CALL_DEADLINE)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// The `--coordinator` values (each one URL or several comma-separated) as one list in the
/// order given: every URL checked (the error names the bad one), blanks around commas trimmed,
/// duplicates (the same URI) dropped after their first place, at most [`MAX_COORDINATORS`].
fn coordinator_list(values: &[String]) -> anyhow::Result<Vec<(String, Endpoint)>> {
    let mut list: Vec<(String, Endpoint)> = Vec::new();
    for url in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        ensure!(
            !url.is_empty(),
            "--coordinator has an empty entry (two commas in a row, or one at an end)"
        );
        let endpoint = coordinator_endpoint(url)?;
        if list.iter().any(|(_, e)| e.uri() == endpoint.uri()) {
            continue;
        }
        list.push((url.to_string(), endpoint));
        ensure!(
            list.len() <= MAX_COORDINATORS,
            "--coordinator names more than {MAX_COORDINATORS} coordinators"
        );
    }
    ensure!(!list.is_empty(), "--coordinator needs at least one URL");
    Ok(list)
}

/// Checks a user-given agent id: it appears in REST paths and logs, so only a safe alphabet.
pub fn check_id(id: &str) -> anyhow::Result<()> {
    ensure!(!id.is_empty(), "--id must not be empty");
    ensure!(id.len() <= 128, "--id must be at most 128 characters");
    ensure!(
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')),
        "--id may only contain letters, digits and . _ : -, got {id:?}"
    );
    Ok(())
}

fn read_file(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// The default id: 32 hex digits of FNV-1a-128 over `host|addr`. FNV is not a secure hash, and
/// need not be: the id only has to be stable and unlikely to collide.
pub fn derive_id(host: &str, addr: &SocketAddr) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let input = format!("{host}|{addr}");
    let hash = input
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    format!("{hash:032x}")
}

/// The default advertised address (see the module comment).
async fn default_advertise(local: SocketAddr, coordinator: &Endpoint, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if local.ip().is_unspecified()
        && let Some(routed) = route_towards(coordinator).await
    {
        return format!("{scheme}://{}", SocketAddr::new(routed, local.port()));
    }
    default_advertise_without_route(local, tls)
}

/// The default advertised address when no route is known: the listen address, or the host name
/// for 0.0.0.0/::.
fn default_advertise_without_route(local: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if !local.ip().is_unspecified() {
        return format!("{scheme}://{local}");
    }
    format!("{scheme}://{}:{}", host_name(), local.port())
}

/// The local IP the kernel would use to reach the coordinator. A UDP `connect` only picks a
/// route; no packet is sent.
async fn route_towards(coordinator: &Endpoint) -> Option<IpAddr> {
    let uri = coordinator.uri();
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(6123);
    let target = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(target).await.ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Starts the agent: checks the flags, binds `--listen`, starts the sampling server and the
/// registration loop, and returns once the server is listening. The agent runs until `shutdown`
/// completes; then in-flight runs are cancelled (they answer with what they have) and the server
/// drains. Await [`RunningAgent::wait`] to know when that is over.
pub async fn serve(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningAgent> {
    let checked = check_args(&args)?;
    for warning in [&checked.exposure_warning, &checked.metrics_warning]
        .into_iter()
        .flatten()
    {
        tracing::warn!("{warning}");
    }
    let sampler = Sampler::with_perf_ring_memory(
        args.sampler.into(),
        (args.perf_ring_memory_mib as usize) << 20,
    )
    .context("starting the sampler")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    let tls = checked.server_tls.is_some();
    let advertised_address = match (&args.advertise, checked.coordinators.first()) {
        (Some(a), _) => a.clone(),
        (None, Some((_, first))) => default_advertise(local_addr, first, tls).await,
        (None, None) => default_advertise_without_route(local_addr, tls),
    };
    let agent_id = args
        .id
        .clone()
        .unwrap_or_else(|| derive_id(&host_name(), &local_addr));

    if args.kernel_stacks && std::fs::read_to_string("/proc/self/stack").is_err() {
        // Said once here rather than per sample: the runs go on with user stacks only.
        tracing::warn!(
            "--kernel-stacks: the kernel does not let this agent read /proc/<pid>/task/<tid>/stack \
             (it needs root); sampling goes on without kernel frames"
        );
    }
    let service = SamplingService::new(
        sampler,
        ServiceSettings {
            policy: checked.policy.clone(),
            max_concurrent_runs: args.max_concurrent_runs,
            kernel_stacks: args.kernel_stacks,
        },
    );
    // Bounds on what one peer can hold open: streams per connection (each sampling call is
    // refused past --max-concurrent-runs anyway, this keeps waiting calls bounded too), and no
    // call outlives the longest run by much.
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .timeout(
            Duration::from_millis(crate::service::MAX_RUN_DURATION_MS) + Duration::from_secs(60),
        );
    if let Some(tls_config) = checked.server_tls {
        builder = builder
            .tls_config(tls_config)
            .context("configuring TLS for the sampling service")?;
    }
    let router = builder.add_service(tonic::service::interceptor::InterceptedService::new(
        SamplingServer::new(service.clone())
            .max_decoding_message_size(crate::service::MAX_REQUEST_BYTES),
        BearerTokenCheck::new(checked.token.as_deref()),
    ));

    let coordinator_urls: Vec<String> = checked
        .coordinators
        .iter()
        .map(|(url, _)| url.clone())
        .collect();
    let link = CoordinatorLink::new(coordinator_urls.clone());

    // --metrics-listen: bound before anything is served, so a taken port fails the start.
    let metrics = match args.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot bind"))?;
            let bound = listener.local_addr().context("reading the bound address")?;
            let telemetry = service.telemetry();
            let runs = service.clone();
            let link = Arc::clone(&link);
            let render: Arc<dyn Fn() -> String + Send + Sync> =
                Arc::new(move || telemetry.render(runs.runs_in_flight()) + &link.render());
            tracing::info!("metrics served on http://{bound}/metrics");
            Some((
                bound,
                tokio::spawn(crate::telemetry::serve(listener, render)),
            ))
        }
    };
    let metrics_addr = metrics.as_ref().map(|(addr, _)| *addr);

    let (stop_tx, stop_rx) = watch::channel(false);
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            // Answers are single messages; don't let Nagle hold back their last segment.
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let mut server =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));

    let registration_config = RegistrationConfig {
        agent_id: agent_id.clone(),
        advertised_address: advertised_address.clone(),
        token: checked.token.clone(),
        policy: checked.policy.clone(),
    };
    let coordinators = checked
        .coordinators
        .iter()
        .map(|(url, endpoint)| registration::Coordinator {
            url: url.clone(),
            channel: endpoint.connect_lazy(),
        })
        .collect();
    let registration = tokio::spawn(registration::run(
        registration_config,
        coordinators,
        link,
        stopped(stop_rx),
    ));

    tracing::info!(
        id = %agent_id,
        advertise = %advertised_address,
        coordinators = %coordinator_urls.join(","),
        tls,
        token = checked.token.is_some(),
        max_concurrent_runs = args.max_concurrent_runs,
        policy = ?checked.policy,
        "sampling service listening on {local_addr}"
    );

    let supervisor = tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {}
            served = &mut server => {
                // The server ended without being asked to: report why.
                stop_tx.send_replace(true);
                let _ = registration.await;
                return match served {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the sampling server stopped unexpectedly")),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("the sampling server failed")),
                    Err(e) => Err(anyhow::Error::new(e).context("the sampling server task failed")),
                };
            }
        }
        tracing::info!(
            runs_in_flight = service.runs_in_flight(),
            "shutting down: ending sampling runs in flight"
        );
        service.cancel_in_flight();
        if let Some((_, task)) = &metrics {
            task.abort();
        }
        stop_tx.send_replace(true);
        let served = server.await.context("the sampling server task failed")?;
        if let Ok(Err(e)) = registration.await {
            tracing::warn!(error = %e, "the registration loop ended with an error");
        }
        served.context("the sampling server failed")?;
        tracing::info!("stopped");
        Ok(())
    });

    Ok(RunningAgent {
        local_addr,
        advertised_address,
        agent_id,
        metrics_addr,
        supervisor,
    })
}

/// Completes once the watch value is `true` (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

/// Runs the subcommand: logs to stderr, serves until SIGTERM or SIGINT, exits 0 after a clean
/// shutdown.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    // Before any thread exists, so every arena follows the settings.
    flamegrid_sampler::memory::tune_allocator();
    // The async side only moves requests and heartbeats (sampling runs on the blocking pool and
    // the sampler's own threads), so two workers suffice on any host; the default of one per
    // core would give a 64-core host 64 idle threads, each with stacks and allocator state.
    // The blocking pool holds one thread per sampling run plus a few for heartbeats.
    let max_blocking = args.max_concurrent_runs + BLOCKING_THREADS_SPARE;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ASYNC_WORKER_THREADS)
        .max_blocking_threads(max_blocking)
        .enable_all()
        .thread_name("flamegrid-agent")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let agent = serve(args, shutdown).await?;
        agent.wait().await
    });
    // Dropping the runtime would wait for every blocking task without end; a run stuck in the
    // kernel must not keep a stopped agent alive.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// tracing to stderr, `RUST_LOG` honoured, `info` by default; colours only on a terminal.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn derived_ids_are_stable_32_hex_and_distinct() {
        let a: SocketAddr = "0.0.0.0:6122".parse().unwrap();
        let b: SocketAddr = "0.0.0.0:6124".parse().unwrap();
        let id = derive_id("host-1", &a);
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, derive_id("host-1", &a));
        assert_ne!(id, derive_id("host-1", &b));
        assert_ne!(id, derive_id("host-2", &a));
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("tm-1:6122").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("with space").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        let w = Wrapper::try_parse_from(["x", "--coordinator", "http://127.0.0.1:6123"]).unwrap();
        assert_eq!(w.run.listen, "0.0.0.0:6122".parse().unwrap());
        assert_eq!(w.run.max_concurrent_runs, 4);
        assert_eq!(w.run.heartbeat_timeout_s, 30);
        let w = Wrapper::try_parse_from([
            "x",
            "--coordinator",
            "http://c:1",
            "--allow-user",
            "a,b",
            "--allow-comm",
            "w",
            "--allow-comm",
            "v",
        ])
        .unwrap();
        assert_eq!(w.run.allow_user, ["a", "b"]);
        assert_eq!(w.run.allow_comm, ["w", "v"]);
        assert!(
            Wrapper::try_parse_from([
                "x",
                "--coordinator",
                "http://c:1",
                "--max-concurrent-runs",
                "0"
            ])
            .is_err()
        );
        assert!(
            Wrapper::try_parse_from(["x", "--coordinator", "http://c:1", "--tls-cert", "a"])
                .is_err()
        );
    }

    fn urls(values: &[String]) -> Vec<String> {
        coordinator_list(values)
            .unwrap()
            .into_iter()
            .map(|(url, _)| url)
            .collect()
    }

    #[test]
    fn coordinator_lists_comma_separated_or_repeated_are_the_same() {
        let comma =
            Wrapper::try_parse_from(["x", "--coordinator", "http://a:6123,http://b:6123"]).unwrap();
        let repeated = Wrapper::try_parse_from([
            "x",
            "--coordinator",
            "http://a:6123",
            "--coordinator",
            "http://b:6123",
        ])
        .unwrap();
        let mixed = Wrapper::try_parse_from([
            "x",
            "--coordinator",
            "http://a:6123",
            "--coordinator",
            "http://b:6123,http://a:6123/",
        ])
        .unwrap();
        let want = ["http://a:6123", "http://b:6123"];
        assert_eq!(comma.run.coordinator, want);
        assert_eq!(repeated.run.coordinator, want);
        for args in [&comma, &repeated, &mixed] {
            assert_eq!(
                urls(&args.run.coordinator),
                want,
                "duplicates dropped, order kept"
            );
        }
        // RunArgs::new takes the comma-separated form too; blanks around commas are trimmed.
        assert_eq!(
            urls(&RunArgs::new("http://a:6123, http://b:6123").coordinator),
            want
        );
        assert!(
            Wrapper::try_parse_from(["x"]).is_err(),
            "--coordinator is required"
        );
    }

    #[test]
    fn a_bad_url_in_the_coordinator_list_is_named() {
        for (list, bad) in [
            ("http://a:6123,ftp://b:1", "ftp://b:1"),
            ("http://a:6123,not a url", "not a url"),
            ("http://user:pw@a:6123", "user info"),
            ("http://a:6123,,http://b:6123", "empty entry"),
            ("http://a:6123,", "empty entry"),
        ] {
            let mut args = RunArgs::new(list);
            args.listen = "127.0.0.1:0".parse().unwrap();
            let Err(err) = check_args(&args) else {
                panic!("{list:?} must be refused");
            };
            assert!(format!("{err:#}").contains(bad), "{list:?}: {err:#}");
        }
        let many: Vec<String> = (0..=MAX_COORDINATORS)
            .map(|i| format!("http://c{i}:6123"))
            .collect();
        let err = coordinator_list(&many).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        // An https:// coordinator anywhere in the list needs --tls-ca, and the error names it.
        let mut args = RunArgs::new("http://a:6123,https://b:6123");
        args.listen = "127.0.0.1:0".parse().unwrap();
        let err = check_args(&args).err().unwrap();
        assert!(err.to_string().contains("https://b:6123"), "{err}");
    }

    #[test]
    fn an_open_metrics_listener_needs_insecure() {
        let mut args = RunArgs::new("http://127.0.0.1:6123");
        args.listen = "127.0.0.1:0".parse().unwrap();
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        let checked = check_args(&args).unwrap();
        assert!(checked.metrics_warning.is_none());
        args.metrics_listen = Some("0.0.0.0:9100".parse().unwrap());
        let Err(err) = check_args(&args) else {
            panic!("a reachable --metrics-listen without --insecure must be refused");
        };
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
        args.insecure = true;
        let checked = check_args(&args).unwrap();
        assert!(
            checked
                .metrics_warning
                .is_some_and(|w| w.contains("metrics endpoint"))
        );
        let w = Wrapper::try_parse_from([
            "x",
            "--coordinator",
            "http://c:1",
            "--metrics-listen",
            "127.0.0.1:9100",
        ])
        .unwrap();
        assert_eq!(
            w.run.metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert!(
            Wrapper::try_parse_from(["x", "--coordinator", "http://c:1", "--metrics-listen", "x"])
                .is_err()
        );
    }

    #[test]
    fn an_open_listener_needs_credentials_or_insecure() {
        let mut args = RunArgs::new("http://127.0.0.1:6123");
        let Err(err) = check_args(&args) else {
            panic!("0.0.0.0 without credentials must be refused");
        };
        assert!(err.to_string().contains("--token-file"), "{err}");
        args.insecure = true;
        let checked = check_args(&args).unwrap();
        assert!(
            checked
                .exposure_warning
                .is_some_and(|w| w.contains("--insecure"))
        );
        args.insecure = false;
        args.listen = "127.0.0.1:6122".parse().unwrap();
        assert!(check_args(&args).unwrap().exposure_warning.is_none());
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(check_args(&RunArgs::new("ftp://x:1")).is_err());
        assert!(check_args(&RunArgs::new("not a url")).is_err());
        let mut args = RunArgs::new("http://127.0.0.1:6123");
        args.advertise = Some("10.0.0.1:6122".into());
        assert!(check_args(&args).is_err());
        assert!(
            check_args(&RunArgs::new("https://127.0.0.1:6123")).is_err(),
            "https needs --tls-ca"
        );
    }
}
