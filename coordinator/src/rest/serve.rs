//! The REST listener's accept loop, with the bounds that keep clients from exhausting the
//! coordinator (issue 12, finding 6). `axum::serve` has none of them, so the loop is ours, built
//! on hyper's HTTP/1 connection:
//!
//! * **Header-read timeout** (`--rest-header-timeout-s`): a client must send a request's whole
//!   head within the bound, or hyper closes the connection. The timer also runs while a
//!   keep-alive connection waits for its next request, so an idle connection is closed after
//!   the same bound. This is what stops slowloris (headers a byte at a time).
//! * **Request timeout** (`--rest-request-timeout-s`, see [`request_timeout`]): from the head to
//!   the answer, body upload included; a request over it is answered 408. It is never shorter
//!   than a flame graph run's deadline plus a margin, because `.svg` and `.folded` wait for a
//!   run in flight.
//! * **Stalled readers**: a client that stops reading its answer for longer than the request
//!   timeout is disconnected ([`StallGuard`]), so an unread SVG cannot pin a connection.
//! * **Connection limit** (`--rest-max-connections`): a permit per connection, taken *before*
//!   `accept`, so surplus clients wait in the kernel's listen backlog (costing us nothing) and
//!   are served as soon as a connection closes or is cut off by the timeouts.
//!
//! Shutdown is graceful: the loop stops accepting, idle connections close, requests in flight
//! get up to [`SHUTDOWN_GRACE`] to finish, and then whatever is left is dropped.
//!
//! Only HTTP/1.1 is served: browsers speak nothing else over plain HTTP, Flink's clients neither,
//! and HTTP/2's connection preface has no read timeout in hyper.

use super::error::ApiError;
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How long requests in flight may run on after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A request's head must arrive within this; also the idle keep-alive bound.
    pub header_read_timeout: Duration,
    /// A client that reads nothing of its answer for this long is disconnected.
    pub write_stall_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` turns true, within `limits`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut warned_full = false;
    loop {
        let permit = if let Ok(p) = permits.clone().try_acquire_owned() {
            warned_full = false;
            p
        } else {
            if !warned_full {
                tracing::warn!(
                    limit = limits.max_connections,
                    "REST connection limit reached; new clients wait until a connection closes"
                );
                warned_full = true;
            }
            tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // the semaphore is never closed; stop cleanly if it were
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "REST accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(StallGuard::new(stream, limits.write_stall_timeout));
        let connection = builder.serve_connection(io, TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "REST connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "REST requests still running {SHUTDOWN_GRACE:?} after shutdown began; dropped"
        );
    }
    Ok(())
}

/// Middleware: answers 408 when the rest of the stack takes longer than `limit`.
pub async fn request_timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "The request took longer than {} s (--rest-request-timeout-s).",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// A connection whose writes fail with `TimedOut` once the peer has read nothing for the bound.
/// Reads pass through (hyper bounds them with the header-read timeout, the router with the
/// request timeout).
pub struct StallGuard<T> {
    inner: T,
    bound: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, bound: Duration) -> Self {
        StallGuard {
            inner,
            bound,
            stalled_since: None,
        }
    }

    /// After a write-side poll: clears the timer on progress, starts it on `Pending`, and turns
    /// a `Pending` that has lasted the whole bound into an error.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let bound = self.bound;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
