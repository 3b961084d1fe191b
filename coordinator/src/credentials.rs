//! The coordinator's credentials, read once at start into one value ([`Credentials`]) that is
//! passed to every part that needs it: the registry's token check and TLS acceptor, the REST
//! write guard, and the calls to agents.
//!
//! Why once: each part used to read the files it needed itself, so the shared token was read
//! twice (registry and agent calls) and the TLS files twice (server and client side). Two reads
//! can see two different files (one replaced between them: a registry accepting one token while
//! the coordinator sends another) and a file that can be read only once (a pipe from a secret
//! manager) fails the second. Reading happens here, before anything listens; an unreadable or
//! empty file stops the start with a message naming the flag's file.
//!
//! The values are secrets: [`Credentials`]'s `Debug` names which are present, never their text.

use crate::CoordinatorError;
use crate::config::CoordinatorConfig;
use crate::fanout::AgentAuth;
use flamegrid_proto::credential_flags::read_token_file;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file as read at start, with its path for messages.
#[derive(Clone)]
pub struct PemFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub pem: Vec<u8>,
}

impl PemFile {
    /// Reads `path`; `what` names it in the message ("certificate", "private key", "CA").
    fn read(path: &Path, what: &str) -> Result<PemFile, CoordinatorError> {
        let pem = std::fs::read(path).map_err(|e| {
            CoordinatorError::Tls(format!("cannot read {what} {}: {e}", path.display()))
        })?;
        Ok(PemFile {
            path: path.to_path_buf(),
            pem,
        })
    }
}

/// This coordinator's TLS certificate and key (`--tls-cert`, `--tls-key`): served on the
/// registry port and presented to `https://` agents.
#[derive(Clone)]
pub struct TlsIdentity {
    /// `--tls-cert`.
    pub cert: PemFile,
    /// `--tls-key`.
    pub key: PemFile,
}

/// Every credential the flags name, read once.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `--token-file`: the token agents and the coordinator present to each other over gRPC.
    pub grpc_token: Option<String>,
    /// `--rest-token-file`: the bearer token REST writes must present.
    pub rest_token: Option<String>,
    /// `--tls-cert` and `--tls-key`.
    pub tls_identity: Option<TlsIdentity>,
    /// `--tls-ca`: the CA peers' certificates must chain to (mutual TLS on the registry port,
    /// the agents' certificates on calls to them).
    pub tls_ca: Option<PemFile>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("grpc_token", &self.grpc_token.is_some())
            .field("rest_token", &self.rest_token.is_some())
            .field("tls_identity", &self.tls_identity.is_some())
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

impl Credentials {
    /// Reads every credential file `config` names, each once.
    pub fn load(config: &CoordinatorConfig) -> Result<Credentials, CoordinatorError> {
        let token = |path: &Option<PathBuf>, what: &str| {
            path.as_deref()
                .map(|p| {
                    read_token_file(p, what)
                        .map_err(|e| CoordinatorError::Credentials(e.to_string()))
                })
                .transpose()
        };
        let flags = &config.credentials;
        let tls_identity = match (&flags.tls_cert, &flags.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity {
                cert: PemFile::read(cert, "certificate")?,
                key: PemFile::read(key, "private key")?,
            }),
            _ => None,
        };
        Ok(Credentials {
            grpc_token: token(&flags.token_file, "token file")?,
            rest_token: token(&config.rest_token_file, "REST token file")?,
            tls_identity,
            tls_ca: flags
                .tls_ca
                .as_deref()
                .map(|p| PemFile::read(p, "CA"))
                .transpose()?,
        })
    }

    /// How to authenticate to agents: the shared token as a bearer header, and with any TLS
    /// settings, TLS towards `https://` agents verified against `--tls-ca` (with this
    /// coordinator's certificate as the client's). A token that cannot travel in a header and
    /// TLS material that cannot be used are errors here, at start, naming the file, rather than
    /// on every later run.
    pub fn agent_auth(&self) -> Result<AgentAuth, CoordinatorError> {
        let unusable = |e: &dyn std::fmt::Display| {
            CoordinatorError::Credentials(format!("credentials for calling agents: {e}"))
        };
        let mut auth = AgentAuth::default();
        if let Some(token) = &self.grpc_token {
            auth = auth.with_token(token).map_err(|e| unusable(&e))?;
        }
        if self.tls_ca.is_some() || self.tls_identity.is_some() {
            let tls = self
                .agent_tls()
                .map_err(|e| unusable(&format!("TLS settings for agent connections: {e}")))?;
            auth.tls = Some(Arc::new(tls));
        }
        Ok(auth)
    }

    /// The TLS client configuration for calling agents: their certificates must chain to
    /// `--tls-ca` and name the host (or IP) of their address; `--tls-cert`/`--tls-key`, when
    /// given, are presented for mutual TLS; ALPN `h2`, as gRPC needs.
    fn agent_tls(&self) -> Result<rustls::ClientConfig, String> {
        // The same crypto provider as the registry's acceptor (ring), named explicitly so that
        // no process-wide default has to be installed first.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Agents present certificates of the cluster's own CA (`--tls-ca`); there are no public
        // roots to fall back on: without a CA, no agent's certificate is trusted.
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.tls_ca {
            let certs = pem_certificates(ca, "CA")?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("CA {}: unusable certificate: {e}", ca.path.display()))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match &self.tls_identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let chain = pem_certificates(&identity.cert, "certificate")?;
                let key = PrivateKeyDer::from_pem_slice(&identity.key.pem).map_err(|e| {
                    format!(
                        "private key {}: no usable PEM private key in it: {e}",
                        identity.key.path.display()
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!(
                        "certificate {} and private key {} do not fit together: {e}",
                        identity.cert.path.display(),
                        identity.key.path.display()
                    )
                })?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The certificates of a PEM file: at least one, or a message naming the file (as `what`).
fn pem_certificates(file: &PemFile, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&file.pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: not PEM: {e}", file.path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in it (expected PEM, \"-----BEGIN CERTIFICATE-----\")",
            file.path.display()
        ));
    }
    Ok(certs)
}
