//! TLS for the registry's gRPC port (`--tls-cert`, `--tls-key`, and `--tls-ca` for mutual TLS),
//! with every refused handshake logged together with the peer that tried.
//!
//! Why not tonic's own `Server::tls_config`? It performs the handshake inside its accept loop and
//! reports a failed one only at `debug` level, without the peer's address: an agent holding a
//! certificate from the wrong CA would be turned away silently, and the operator would see
//! nothing but an agent that never registers. Here the accept loop is ours:
//!
//! ```text
//!  TcpListener ──accept──▶ one task per connection: rustls handshake (bounded in time)
//!                            ├─ ok   ──▶ channel ──▶ tonic serve_with_incoming (HTTP/2, gRPC)
//!                            └─ fail ──▶ warn!(peer, error, "registry TLS handshake refused")
//! ```
//!
//! tonic already knows how to serve a `tokio_rustls` server stream (it implements `Connected` for
//! it), so `Request::remote_addr` and the peer certificates still work behind this accept loop.
//! A slow or silent client costs one task for at most [`HANDSHAKE_TIMEOUT`]; at most
//! [`MAX_HANDSHAKES`] handshakes run at once (beyond that, new connections wait in the kernel's
//! accept backlog), and the channel to tonic is bounded: a flood of connections waits instead of
//! piling up tasks and memory.

use crate::CoordinatorError;
use crate::credentials::{PemFile, TlsIdentity};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// Longest a client may take to complete its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most TLS handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 256;

/// Established connections waiting to be picked up by the gRPC server.
const READY_QUEUE: usize = 64;

/// The registry's TLS acceptor from the PEM files read at start ([`crate::credentials`]): the
/// server's certificate chain and key, and, when `ca` is given, the CA every client certificate
/// must chain to (mutual TLS: a client without such a certificate is refused during the
/// handshake).
pub fn acceptor(
    identity: &TlsIdentity,
    ca: Option<&PemFile>,
) -> Result<TlsAcceptor, CoordinatorError> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        CoordinatorError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let (cert, key) = (&identity.cert.path, &identity.key.path);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&identity.cert.pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("bad certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("no certificate in", cert, &"no PEM CERTIFICATE block"));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&identity.key.pem)
        .map_err(|e| bad("bad private key", key, &e))?;
    // The same crypto provider as tonic's `tls-ring`, named explicitly so that no process-wide
    // default has to be installed first.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&ca.pem) {
                let c = c.map_err(|e| bad("bad CA certificate", &ca.path, &e))?;
                roots
                    .add(c)
                    .map_err(|e| bad("unusable CA certificate", &ca.path, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("unusable CA", &ca.path, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| CoordinatorError::Tls(format!("certificate and key do not fit: {e}")))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections on `listener`, performs the TLS handshake of each on its own task,
/// and yields the established streams, for `Server::serve_with_incoming*`. Refused handshakes are
/// logged with the peer's address. The accept loop ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (ready, stream) = mpsc::channel(READY_QUEUE);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // Wait for a handshake slot before accepting more.
            let slot = tokio::select! {
                slot = Arc::clone(&handshakes).acquire_owned() => slot,
                () = ready.closed() => return,
            };
            let Ok(slot) = slot else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: say so, breathe, go on.
                    tracing::warn!(error = %e, "registry: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let handshaken = handshake(&acceptor, tcp, peer).await;
                drop(slot);
                if let Some(tls) = handshaken {
                    // An error only means the server is shutting down.
                    let _ = ready.send(Ok(tls)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}

/// One handshake, bounded by [`HANDSHAKE_TIMEOUT`]; a refusal is logged with `peer`.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "registry TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "registry TLS handshake refused: too slow");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files as the coordinator reads them at start, then the acceptor built from them.
    fn acceptor_from_files(cert: &Path, key: &Path) -> String {
        use clap::Parser;
        let config = crate::config::CoordinatorConfig::parse_from([
            "x".as_ref(),
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ]);
        let built = crate::credentials::Credentials::load(&config).and_then(|c| {
            let identity = c.tls_identity.expect("both files named");
            acceptor(&identity, c.tls_ca.as_ref())
        });
        built.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn unreadable_or_wrong_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = acceptor_from_files(&missing, &missing);
        assert!(
            err.contains("cannot read certificate") && err.contains("missing.pem"),
            "{err}"
        );

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = acceptor_from_files(&not_pem, &not_pem);
        assert!(
            err.contains("no certificate in") && err.contains("not.pem"),
            "{err}"
        );
    }
}
