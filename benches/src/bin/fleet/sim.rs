//! The simulated agents: each a real tonic `flamegrid.v1.Sampling` server on its own loopback
//! port, registered with the coordinator's real registry and heartbeating like
//! `flamegrid-agent run` does (`agent/src/registration.rs`), all in this one process.
//!
//! * **Registration**: `Register` with the agent's id, its `http://127.0.0.1:PORT` address, host
//!   facts and this process's pid; the answer's heartbeat interval is used as given (the
//!   coordinator's default is what a real fleet runs at). Agents start spread over one interval,
//!   as a real fleet's would be, so their heartbeats do not arrive in one burst.
//! * **Heartbeats**: every interval, with the liveness of every selector of the previous
//!   answer's `watch` list (all alive: the simulated subtasks never exit) and a few host
//!   metrics; `reregister` registers again at once, and a failed call is retried after the same
//!   backoff as the real agent's (0.5 s doubling to 10 s).
//! * **Sample**: the answer ([`crate::stacks`]) is built in the second half of the requested
//!   window (`(num_samples − 1) × delay`), and sent when the window has passed, as a real agent
//!   sends its last sample. Every call is written down in the shared [`RunLog`]: when the first and
//!   the last request of a run arrived (the coordinator's dispatch spread), when the last answer
//!   left (after which the graph is the coordinator's own time), and how many samples went out.

use crate::stacks::{self, StackShape};
use anyhow::{Context, Result};
use flamegrid_model::clock::now_ms;
use flamegrid_proto::v1::{self, registry_client::RegistryClient, sampling_server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

/// What the agents saw of the sampling runs since the last [`RunLog::take`].
#[derive(Debug, Default, Clone)]
pub struct RunLog {
    /// When the first `Sample` call arrived.
    pub first_received: Option<Instant>,
    /// When the last `Sample` call arrived.
    pub last_received: Option<Instant>,
    /// When the last answer was handed to tonic to send.
    pub last_answered: Option<Instant>,
    /// `Sample` calls received.
    pub calls: u64,
    /// `Sample` calls answered (answers handed to tonic).
    pub answers: u64,
    /// Selectors (subtasks) asked for.
    pub selectors: u64,
    /// Samples sent in answers.
    pub samples: u64,
}

/// The shared log and the shape of the answers.
#[derive(Clone)]
pub struct Shared {
    log: Arc<Mutex<RunLog>>,
    shape: StackShape,
}

impl Shared {
    /// A log and the stacks every agent answers with.
    pub fn new(shape: StackShape) -> Shared {
        Shared {
            log: Arc::default(),
            shape,
        }
    }

    /// What was logged since the last call, and a fresh log.
    pub fn take(&self) -> RunLog {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// `Sample` calls answered since the last [`Shared::take`].
    pub fn answers(&self) -> u64 {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answers
    }

    fn with_log(&self, f: impl FnOnce(&mut RunLog)) {
        f(&mut self.log.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// One simulated agent's sampling service.
struct SimAgent {
    shared: Shared,
}

#[tonic::async_trait]
impl sampling_server::Sampling for SimAgent {
    async fn sample(
        &self,
        request: Request<v1::SampleRequest>,
    ) -> Result<Response<v1::SampleResponse>, Status> {
        let received = Instant::now();
        let req = request.into_inner();
        self.shared.with_log(|log| {
            log.first_received.get_or_insert(received);
            log.last_received = Some(received);
            log.calls += 1;
            log.selectors += req.selectors.len() as u64;
        });
        if req.num_samples == 0 || req.delay_ms == 0 {
            return Err(Status::invalid_argument(
                "num_samples and delay_ms must be positive",
            ));
        }
        let window = Duration::from_millis(
            u64::from(req.delay_ms) * u64::from(req.num_samples.saturating_sub(1)),
        );
        let shape = self.shared.shape;
        let start_ms = now_ms();
        // The answer is built from the middle of the window on, not as the request arrives: a
        // real agent spends the window sampling on its own host (microseconds a sample), while
        // building a thousand answers here at once would take this machine's CPU from the
        // coordinator exactly while it sends the run's requests, which is what the dispatch
        // spread measures (it is late only if building takes more than half the window).
        tokio::time::sleep_until((received + window / 2).into()).await;
        let (resp, samples) =
            tokio::task::spawn_blocking(move || stacks::answer(&req, shape, start_ms))
                .await
                .map_err(|e| Status::internal(format!("building the answer failed: {e}")))?;
        tokio::time::sleep_until((received + window).into()).await;
        let answered = Instant::now();
        self.shared.with_log(|log| {
            log.last_answered = Some(log.last_answered.map_or(answered, |t| t.max(answered)));
            log.samples += samples;
            log.answers += 1;
        });
        Ok(Response::new(resp))
    }

    async fn thread_dump(
        &self,
        _request: Request<v1::ThreadDumpRequest>,
    ) -> Result<Response<v1::SampleResponse>, Status> {
        Err(Status::unimplemented(
            "a simulated agent has no threads to dump",
        ))
    }
}

/// The simulated fleet: its agents' ids in order, and the tasks serving them (aborted on drop).
pub struct Fleet {
    /// Agent `i`'s id, as registered (`fleet-0000`, ...).
    pub ids: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Largest answer a simulated agent sends (the coordinator accepts up to 64 MiB).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Starts `count` agents on loopback, each registering with the registry at `registry_url`
/// (spread over `spread`) and heartbeating until the fleet is dropped.
pub async fn start(
    count: usize,
    registry_url: &str,
    shared: &Shared,
    spread: Duration,
) -> Result<Fleet> {
    let registry = Endpoint::from_shared(registry_url.to_owned())
        .with_context(|| format!("bad registry address {registry_url}"))?;
    let mut fleet = Fleet {
        ids: Vec::with_capacity(count),
        tasks: Vec::with_capacity(2 * count),
    };
    for i in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .with_context(|| format!("agent {i}: cannot bind a loopback port (file limit?)"))?;
        let addr: SocketAddr = listener.local_addr()?;
        let service = sampling_server::SamplingServer::new(SimAgent {
            shared: shared.clone(),
        })
        .max_encoding_message_size(MAX_ANSWER_BYTES)
        .max_decoding_message_size(MAX_ANSWER_BYTES);
        let incoming = TcpListenerStream::new(listener);
        fleet.tasks.push(tokio::spawn(async move {
            if let Err(e) = Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("simulated agent on {addr} stopped: {e}");
            }
        }));
        let id = format!("fleet-{i:04}");
        let delay = spread.mul_f64(i as f64 / count.max(1) as f64);
        let agent = Registration {
            id: id.clone(),
            address: format!("http://{addr}"),
            index: i,
        };
        let channel = registry.clone().connect_lazy();
        fleet.tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            agent.heartbeat_loop(channel).await;
        }));
        fleet.ids.push(id);
    }
    Ok(fleet)
}

/// One agent's registration state.
struct Registration {
    id: String,
    address: String,
    index: usize,
}

/// The real agent's backoff bounds (`flamegrid_agent::registration`).
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Registration {
    fn register_request(&self) -> v1::RegisterRequest {
        v1::RegisterRequest {
            agent_id: self.id.clone(),
            address: self.address.clone(),
            host: Some(v1::HostInfo {
                hostname: format!("fleet-host-{:04}", self.index),
                cpu_cores: 16,
                physical_memory: 64 << 30,
                free_memory: 32 << 30,
                os: "flamegrid-fleet simulated host".to_owned(),
                kernel: "simulated".to_owned(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            pid: std::process::id(),
        }
    }

    async fn heartbeat_loop(self, channel: Channel) {
        let mut client = RegistryClient::new(channel)
            .max_decoding_message_size(flamegrid_proto::MAX_REGISTRY_MESSAGE_BYTES)
            .max_encoding_message_size(flamegrid_proto::MAX_REGISTRY_MESSAGE_BYTES);
        let mut backoff = BACKOFF_START;
        let mut registered: Option<Duration> = None;
        let mut watch: Vec<v1::ThreadSelector> = Vec::new();
        let metrics: HashMap<String, f64> = [
            ("System.CPU.Usage".to_owned(), 12.5),
            ("System.Memory.Free".to_owned(), (32u64 << 30) as f64),
        ]
        .into();
        loop {
            let Some(interval) = registered else {
                match client.register(self.register_request()).await {
                    Ok(resp) => {
                        let ms = resp.get_ref().heartbeat_interval_ms;
                        registered = Some(if ms == 0 {
                            Duration::from_secs(3)
                        } else {
                            Duration::from_millis(ms.clamp(100, 300_000))
                        });
                        backoff = BACKOFF_START;
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                continue;
            };
            let liveness = watch
                .iter()
                .map(|sel| {
                    let pid = match sel.process {
                        Some(v1::thread_selector::Process::Pid(pid)) => pid,
                        _ => 1,
                    };
                    v1::SubtaskLiveness {
                        subtask_key: sel.subtask_key.clone(),
                        alive: true,
                        pid,
                        threads: 1,
                        failure: v1::SubtaskFailure::Unspecified as i32,
                    }
                })
                .collect();
            let beat = v1::HeartbeatRequest {
                agent_id: self.id.clone(),
                liveness,
                metrics: metrics.clone(),
                free_memory: 32 << 30,
            };
            match client.heartbeat(beat).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if resp.reregister {
                        registered = None;
                        continue;
                    }
                    watch = resp.watch;
                    backoff = BACKOFF_START;
                    tokio::time::sleep(interval).await;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
