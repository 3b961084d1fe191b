//! The one HTTP/2 client through which the coordinator calls every agent.
//!
//! Why not a tonic `Channel` per agent: each `Channel` puts a tower `Buffer` in front of its
//! connection, a worker task fed through a tokio mpsc channel whose first block alone is ~8.8 KB,
//! plus tonic's reconnect state. With a fleet of 1,000 agents that was over 10 MiB of the
//! coordinator's heap (heaptrack), for queues that never hold more than a request or two: the
//! fan-out sends one request per agent per run. Here every agent is reached through one shared
//! client, hyper-util's pooled `Client`:
//!
//! ```text
//!  SamplingClient::with_origin(agent URI) ─▶ bearer interceptor ─▶ Client (shared, HTTP/2 only)
//!      ─▶ pool: one HTTP/2 connection per agent (scheme + host:port), shared by all its calls
//!      ─▶ AgentConnector: TCP (connect timeout, no Nagle), then rustls for https:// agents
//! ```
//!
//! * One connection per agent, opened on first use and reused by every later run; calls made to
//!   an agent while its connection is being opened wait for that one connection.
//! * A connection that closed (agent killed, restarted, host gone) is dropped from the pool and
//!   the next call opens a new one. A connection not used for [`IDLE_TIMEOUT`] is closed and
//!   forgotten, so an address that is never called again (an agent that moved to another port)
//!   costs nothing after that: the pool is its own bound, and the fan-out keeps no per-address
//!   state at all.
//! * Connect failures reach tonic as its [`tonic::ConnectError`], which it maps to UNAVAILABLE
//!   ("agent unreachable"), with the cause (refused, timed out, certificate refused) in the
//!   message; see [`ConnectFailed`].

use crate::error_chain::error_chain;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tower::{Service, ServiceExt};

/// How long a connection to an agent stays open without a call. Runs of a dashboard that is
/// open refresh every few seconds to a minute; five minutes keeps the fleet's connections across
/// such pauses, and closes those of agents that left.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Any error, as the transport's layers pass them on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The shared client of all agents: HTTP/2 only, one pooled connection per agent.
pub type AgentTransport = Client<AgentConnector, tonic::body::Body>;

/// The shared client: connections opened by [`AgentConnector`] (bounded by `connect_timeout`,
/// TLS with `tls` for `https://` agents), kept while used, closed after `idle_timeout` without
/// a call ([`IDLE_TIMEOUT`] in the coordinator).
pub fn client(
    connect_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle_timeout: Duration,
) -> AgentTransport {
    let mut http = HttpConnector::new();
    // https:// is ours to handle (below), not a reason for the TCP connector to refuse.
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    // Requests and answers are single messages; waiting to fill a segment only adds latency.
    http.set_nodelay(true);
    let connector = AgentConnector {
        http,
        tls: tls.map(tokio_rustls::TlsConnector::from),
        timeout: connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        // Without a timer the pool would close idle connections only when their address is
        // called again: an address never called again would keep its connection for good.
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .build(connector)
}

/// Opens a connection to an agent: TCP, then TLS for `https://` URIs (verified against the
/// coordinator's CA, the agent's name or IP checked against its certificate, ALPN `h2`).
#[derive(Clone)]
pub struct AgentConnector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Bounds the whole of it, TCP and TLS handshake.
    timeout: Duration,
}

impl Service<Uri> for AgentConnector {
    type Response = AgentStream;
    type Error = tonic::ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<AgentStream, tonic::ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per connection in `call` (the TCP connector is always ready).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let timeout = connector.timeout;
            let authority = uri
                .authority()
                .map_or_else(|| uri.to_string(), ToString::to_string);
            let connected = match tokio::time::timeout(timeout, connector.connect(uri)).await {
                Ok(connected) => connected,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not connected within {} ms", timeout.as_millis()),
                )
                .into()),
            };
            connected
                .map_err(|cause| tonic::ConnectError(Box::new(ConnectFailed { authority, cause })))
        })
    }
}

impl AgentConnector {
    async fn connect(mut self, uri: Uri) -> Result<AgentStream, BoxError> {
        let https = uri.scheme_str() == Some("https");
        // An IPv6 literal comes bracketed in a URI, not in a certificate.
        let name = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = self.http.ready().await?.call(uri).await?.into_inner();
        if !https {
            return Ok(AgentStream::Plain(TokioIo::new(tcp)));
        }
        // FanOut refuses https:// agents without TLS settings before calling; say so anyway.
        let Some(tls) = self.tls else {
            return Err("https:// agent, but the coordinator has no TLS settings (--tls-*)".into());
        };
        let name = ServerName::try_from(name.clone())
            .map_err(|e| format!("{name:?} cannot be checked against a certificate: {e}"))?;
        let stream = tls.connect(name, tcp).await?;
        Ok(AgentStream::Tls(Box::new(TokioIo::new(stream))))
    }
}

/// Why a connection to an agent could not be opened: `cannot connect to <host:port>: <cause>`,
/// the whole chain of causes in the message (the TCP connector's own says only "tcp connect
/// error"), the cause itself kept as the error's source.
#[derive(Debug)]
pub struct ConnectFailed {
    authority: String,
    cause: BoxError,
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot connect to {}: {}",
            self.authority,
            error_chain(&*self.cause)
        )
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

/// A connection to an agent, in plain text or TLS.
pub enum AgentStream {
    /// `http://` agents.
    Plain(TokioIo<TcpStream>),
    /// `https://` agents (boxed: a TLS session is a few hundred bytes more than a socket).
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        match self {
            AgentStream::Plain(tcp) => tcp.connected(),
            AgentStream::Tls(tls) => {
                let (tcp, session) = tls.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AgentStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AgentStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AgentStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AgentStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AgentStream::Plain(s) => s.is_write_vectored(),
            AgentStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AgentStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
