//! Shared pieces of the `flamegrid-agent run` end-to-end tests: the real agent binary as a child
//! process (killed when dropped), a small in-test Registry server standing in for the coordinator
//! (the agent's real peer, speaking real gRPC), and a polling helper.
//!
//! Nothing here mocks the sampler: the agent under test is the real binary, sampling real
//! processes from `flamegrid-workloads`.

#![allow(dead_code)]

use flamegrid_proto::v1::{
    self, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    registry_server::{Registry, RegistryServer},
    sampling_client::SamplingClient,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[allow(unused_imports)]
pub use flamegrid_testkit::{HANG_GUARD, KillOnDrop};

/// Polls `check` until it yields a value, panicking with `what` after [`HANG_GUARD`]: the
/// testkit's poll for a check that needs no `.await`.
pub async fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    flamegrid_testkit::poll(what, || std::future::ready(check())).await
}

/// A file under cargo's per-target temp dir, unique per call.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()))
}

/// What the stand-in coordinator saw, and what it answers.
#[derive(Debug, Default)]
pub struct CoordinatorState {
    /// Every Register call with its `authorization` header.
    pub registrations: Mutex<Vec<(RegisterRequest, Option<String>)>>,
    /// Every Heartbeat call with its `authorization` header.
    pub heartbeats: Mutex<Vec<(HeartbeatRequest, Option<String>)>>,
    /// The watch list sent in every heartbeat answer.
    pub watch: Mutex<Vec<v1::ThreadSelector>>,
    /// When set, the next heartbeat is answered `reregister = true` (and the flag is cleared).
    pub reregister_next: AtomicBool,
    /// The heartbeat interval handed out at registration.
    pub interval_ms: AtomicU64,
}

#[derive(Clone)]
struct RegistryService(Arc<CoordinatorState>);

fn auth_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let auth = auth_of(&req);
        self.0
            .registrations
            .lock()
            .unwrap()
            .push((req.into_inner(), auth));
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: self.0.interval_ms.load(Ordering::SeqCst),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let auth = auth_of(&req);
        self.0
            .heartbeats
            .lock()
            .unwrap()
            .push((req.into_inner(), auth));
        let reregister = self.0.reregister_next.swap(false, Ordering::SeqCst);
        Ok(Response::new(HeartbeatResponse {
            reregister,
            watch: self.0.watch.lock().unwrap().clone(),
        }))
    }
}

/// An in-test Registry server on a loopback port. Stops when dropped.
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    pub state: Arc<CoordinatorState>,
    server: tokio::task::JoinHandle<()>,
    tls: bool,
}

impl FakeCoordinator {
    /// Starts on a free loopback port; heartbeats every 100 ms so tests move quickly.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, None).await
    }

    /// Starts on a free loopback port serving TLS with `tls`.
    pub async fn start_tls(tls: tonic::transport::ServerTlsConfig) -> Self {
        Self::start_with("127.0.0.1:0".parse().unwrap(), Some(tls)).await
    }

    async fn start_with(addr: SocketAddr, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(CoordinatorState::default());
        state.interval_ms.store(100, Ordering::SeqCst);
        // As large as the agent's own limit: heartbeats of 100,000 watched subtasks.
        let svc = RegistryServer::new(RegistryService(Arc::clone(&state)))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let tls_on = tls.is_some();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = builder.add_service(svc).serve_with_incoming(incoming).await;
        });
        FakeCoordinator {
            addr,
            state,
            server,
            tls: tls_on,
        }
    }

    /// The URL to give the agent's `--coordinator`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Registrations so far.
    pub fn registrations(&self) -> Vec<(RegisterRequest, Option<String>)> {
        self.state.registrations.lock().unwrap().clone()
    }

    /// Heartbeats so far.
    pub fn heartbeats(&self) -> Vec<(HeartbeatRequest, Option<String>)> {
        self.state.heartbeats.lock().unwrap().clone()
    }

    /// Waits for the n-th registration (1-based).
    pub async fn wait_registration(&self, n: usize) -> (RegisterRequest, Option<String>) {
        poll(&format!("registration #{n}"), || {
            self.registrations().get(n - 1).cloned()
        })
        .await
    }

    /// Waits for a heartbeat after the first `skip` ones that satisfies `pred`.
    pub async fn wait_heartbeat(
        &self,
        what: &str,
        pred: impl Fn(&HeartbeatRequest) -> bool,
    ) -> HeartbeatRequest {
        poll(what, || {
            self.heartbeats()
                .into_iter()
                .map(|(h, _)| h)
                .find(|h| pred(h))
        })
        .await
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The real `flamegrid-agent run` as a child process; SIGKILLed and reaped when dropped.
pub struct AgentProcess {
    child: Child,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl AgentProcess {
    /// Starts `flamegrid-agent run ARGS...` with debug logs of the agent crate in a file.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`AgentProcess::start`], with extra environment variables (`FLAMEGRID_*` from the
    /// test's own environment are removed first, except `FLAMEGRID_SAMPLER`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(&[], args, env)
    }

    /// Like [`AgentProcess::start_with_env`], run through `wrapper` (`wrapper[0]
    /// wrapper[1..] flamegrid-agent run ARGS...`), e.g. `setpriv` with capabilities dropped.
    /// The wrapper must exec the agent, so the pid is the agent's.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let stderr_path = temp_path("agent-stderr");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        // FLAMEGRID_TEST_AGENT_BIN runs the test against another build (see common::agent_bin).
        let agent = std::env::var("FLAMEGRID_TEST_AGENT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_flamegrid-agent").to_string());
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&agent);
                c
            }
            None => Command::new(agent),
        };
        cmd.arg("run").args(args);
        for (k, _) in std::env::vars() {
            // FLAMEGRID_SAMPLER is kept: the suite runs once per sampling mode.
            if k.starts_with("FLAMEGRID_") && k != "FLAMEGRID_SAMPLER" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        cmd.env(
            "RUST_LOG",
            "info,flamegrid_agent=debug,flamegrid_sampler=debug",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        let child = cmd.spawn().unwrap();
        AgentProcess {
            child,
            stderr_path,
            exit: None,
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the "listening on ADDR" log line and returns ADDR.
    pub async fn wait_listening(&mut self) -> SocketAddr {
        let marker = "sampling service listening on ";
        poll("the agent to listen", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited with {status} before listening:\n{}",
                    self.stderr()
                );
            }
            let log = self.stderr();
            let rest = &log[log.find(marker)? + marker.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .await
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        self.exit = Some(status);
        Some(status)
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let status = poll("the agent to exit", || self.child.try_wait().unwrap()).await;
        self.exit = Some(status);
        status
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A gRPC client of the agent at `addr`.
pub async fn sampling_client(addr: SocketAddr) -> SamplingClient<Channel> {
    let url = format!("http://{addr}");
    flamegrid_testkit::poll(&format!("a connection to {url}"), || async {
        SamplingClient::connect(url.clone()).await.ok()
    })
    .await
    .max_decoding_message_size(64 << 20)
}

/// A selector by pid with an optional thread-name regex.
pub fn by_pid(key: &str, pid: u32, thread_name: &str) -> v1::ThreadSelector {
    v1::ThreadSelector {
        subtask_key: key.to_string(),
        process: Some(v1::thread_selector::Process::Pid(pid)),
        tids: Vec::new(),
        thread_name: thread_name.to_string(),
    }
}

/// The frame names of every sample of subtask `i`, outermost first.
pub fn stacks(resp: &v1::SampleResponse, i: usize) -> Vec<Vec<String>> {
    resp.subtasks[i]
        .samples
        .iter()
        .map(|s| {
            s.stack
                .iter()
                .map(|&f| resp.strings[resp.frames[f as usize].name as usize].clone())
                .collect()
        })
        .collect()
}

/// Whether `chain` appears in `stack` in order (other frames may sit between its links).
pub fn contains_chain(stack: &[String], chain: &[&str]) -> bool {
    let mut want = chain.iter().peekable();
    for frame in stack {
        if want.peek().is_some_and(|w| frame == *w) {
            want.next();
        }
    }
    want.peek().is_none()
}

/// The kernel name (comm) of a process.
pub fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_string()
}

/// A plain `sleep` child (comm "sleep") to serve as a process the agent is not allowed to sample.
pub struct SleepProcess(pub KillOnDrop);

impl SleepProcess {
    pub fn start() -> Self {
        SleepProcess(KillOnDrop(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    }
    pub fn pid(&self) -> u32 {
        self.0.0.id()
    }
}
