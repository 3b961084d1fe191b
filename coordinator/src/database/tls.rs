//! TLS to the shared database: the `sslmode`, `sslrootcert`, `sslcert` and `sslkey` settings of
//! `--database-url`, read the way libpq reads them, so that a URL written for `psql` against a
//! managed PostgreSQL (RDS, Cloud SQL, Azure) works here unchanged.
//!
//! | `sslmode`            | TLS                            | server certificate checked                 |
//! |----------------------|--------------------------------|--------------------------------------------|
//! | `disable`            | never                          | -                                          |
//! | `prefer` (default)   | if the server offers it        | chain against `sslrootcert` if given       |
//! | `require`            | always (refused without)       | chain against `sslrootcert` if given       |
//! | `verify-ca`          | always                         | chain against `sslrootcert`, else the system's roots |
//! | `verify-full`        | always                         | chain as `verify-ca`, and the host name    |
//!
//! Without `sslrootcert`, `prefer` and `require` encrypt without verifying who answers (libpq
//! does the same): that protects against listening, not against a server in the middle. The
//! system's roots (`sslrootcert=system`, as libpq 16 spells it, or `verify-ca`/`verify-full`
//! without `sslrootcert`) are the operating system's store (`/etc/ssl/certs`, or the files named
//! by `SSL_CERT_FILE`/`SSL_CERT_DIR`), which the container image ships (`ca-certificates`) and an
//! operator can extend; a managed database's own CA (RDS's `global-bundle.pem`, Cloud SQL's
//! `server-ca.pem`) is usually not in it, so give that file as `sslrootcert`. Like libpq,
//! `sslrootcert=system` is only accepted with `verify-full` (a public CA signs certificates for
//! anyone's names, so only the name check makes it mean something). Unlike libpq, nothing is
//! read from `~/.postgresql/`: every file is named in the URL.
//!
//! `sslcert` and `sslkey` (PEM) present a client certificate when the server asks for one
//! (`clientcert=verify-ca|verify-full` in `pg_hba.conf`); `sslsni=0` leaves the server name out
//! of the handshake (it is sent by default, as libpq does). Settings this build cannot honour
//! (`sslmode=allow`, `sslpassword`, `sslcrl`, `sslcrldir`) are refused with what to do rather
//! than ignored: a security setting is never dropped silently.
//!
//! The driver ([`tokio_postgres`]) itself knows only `disable`, `prefer` and `require` and
//! refuses keys it does not know, so [`split`] takes these settings out of the URL (both the
//! `postgres://…?k=v&…` and the `k=v …` forms, with their percent-encoding and quoting) and
//! hands the driver the rest, `verify-*` as `require`. The handshake is
//! [`tokio_postgres_rustls`] over the tree's rustls (ring), which also offers the server
//! `tls-server-end-point` channel binding (SCRAM-SHA-256-PLUS; `channel_binding=require` in the
//! URL insists on it). Its failures are explained by [`MakeTls`]: an unknown issuer or a name
//! the certificate does not hold says which roots or which host, and what to do. Unlike libpq,
//! `prefer` does not fall back to plain text when a handshake fails (only when the server
//! offers no TLS): a certificate refused under `prefer` with `sslrootcert` stays refused.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// libpq's `sslmode`, as far as this build honours it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS if the server offers it, else plain text (libpq's and the driver's default).
    #[default]
    Prefer,
    /// TLS or nothing.
    Require,
    /// TLS, and the server's certificate chains to a trusted root.
    VerifyCa,
    /// As [`SslMode::VerifyCa`], and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The value as written in a URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What the driver, which knows no `verify-*`, is told: TLS or not is its business, the
    /// checks are the connector's.
    fn for_driver(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Where the roots that vouch for the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Roots {
    /// No `sslrootcert`: the system's store under `verify-*`, no verification otherwise.
    #[default]
    Unset,
    /// `sslrootcert=/path`: the CA certificates (PEM, one or more) in that file.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's store.
    System,
}

/// The TLS settings of one `--database-url`, taken out of it by [`split`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub roots: Roots,
    /// `sslcert`: the client certificate chain (PEM) shown when the server asks for one.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// `sslsni=0`: no server name in the handshake (libpq's default, and ours, is to send it).
    pub no_sni: bool,
}

/// What one setting of the URL became.
enum Taken {
    /// Ours: removed from what the driver sees.
    Ours,
    /// Ours, and the driver is told this value instead.
    Driver(&'static str),
    /// The driver's: passed on as it was written.
    NotOurs,
}

impl TlsSettings {
    /// Takes `key=value` if it is a TLS setting; refuses what this build cannot honour.
    fn take(&mut self, key: &str, value: &str) -> Result<Taken, String> {
        match key {
            "sslmode" => {
                self.mode = match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    "allow" => {
                        return Err("sslmode=allow (plain text unless the server insists on \
                                    TLS) is not supported: use sslmode=prefer (TLS when the \
                                    server offers it) or sslmode=disable"
                            .into());
                    }
                    other => {
                        return Err(format!(
                            "sslmode={other:?} is not one of disable, prefer, require, \
                             verify-ca, verify-full"
                        ));
                    }
                };
                Ok(Taken::Driver(self.mode.for_driver()))
            }
            "sslrootcert" => {
                self.roots = match value {
                    "" => Roots::Unset,
                    "system" => Roots::System,
                    path => Roots::File(PathBuf::from(path)),
                };
                Ok(Taken::Ours)
            }
            "sslcert" => {
                self.client_cert = (!value.is_empty()).then(|| PathBuf::from(value));
                Ok(Taken::Ours)
            }
            "sslkey" => {
                self.client_key = (!value.is_empty()).then(|| PathBuf::from(value));
                Ok(Taken::Ours)
            }
            "sslsni" => {
                self.no_sni = match value {
                    "1" => false,
                    "0" => true,
                    other => return Err(format!("sslsni={other:?} is neither 0 nor 1")),
                };
                Ok(Taken::Ours)
            }
            "sslpassword" => Err(
                "sslpassword (a passphrase-protected sslkey) is not supported: \
                                  give sslkey an unencrypted key (openssl pkey -in key.pem -out \
                                  plain.pem) readable by the coordinator's user only"
                    .into(),
            ),
            "sslcrl" | "sslcrldir" => Err(format!(
                "{key} (certificate revocation lists) is not supported: remove it, and have the \
                 server's CA stop issuing to a revoked server instead (or rotate sslrootcert)"
            )),
            _ => Ok(Taken::NotOurs),
        }
    }

    /// Refuses combinations that cannot mean what they say.
    fn check(&self) -> Result<(), String> {
        if self.roots == Roots::System && self.mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (it has sslmode={}): public CAs \
                 sign certificates for anyone's names, so only the name check makes them vouch \
                 for your server",
                self.mode.name()
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err("sslcert is given without sslkey: give both".into()),
            (None, Some(_)) => Err("sslkey is given without sslcert: give both".into()),
            _ => Ok(()),
        }
    }

    /// The roots in words, for messages.
    fn roots_described(&self) -> String {
        match &self.roots {
            Roots::File(path) => format!("sslrootcert {}", path.display()),
            Roots::System | Roots::Unset => "the system's trusted roots (no sslrootcert)".into(),
        }
    }
}

/// Splits `url` (either form) into what the driver parses and the TLS settings it does not
/// know. The driver's part keeps every other setting exactly as written; `verify-*` becomes
/// `require`. Messages never quote the URL (it may hold a password).
pub fn split(url: &str) -> Result<(String, TlsSettings), String> {
    let mut settings = TlsSettings::default();
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| url.strip_prefix(prefix).map(|rest| (prefix, rest)));
    let driver = match rest {
        Some((prefix, rest)) => split_url(prefix, rest, &mut settings)?,
        None => split_key_values(url, &mut settings)?,
    };
    settings.check()?;
    Ok((driver, settings))
}

/// The `postgres://` form: the query is whatever follows the first `?` after the credentials
/// (the driver reads the credentials up to the first `@`, so a `?` in a raw password is not the
/// query's start). Keys and values are percent-decoded as the driver decodes them.
fn split_url(prefix: &str, rest: &str, settings: &mut TlsSettings) -> Result<String, String> {
    let after_credentials = rest.find('@').map_or(0, |at| at + 1);
    let Some(q) = rest[after_credentials..].find('?') else {
        return Ok(format!("{prefix}{rest}"));
    };
    let (head, query) = rest.split_at(after_credentials + q);
    let query = &query[1..];
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| "a URL parameter is not UTF-8 once percent-decoded".to_string())
    };
    let mut kept: Vec<String> = Vec::new();
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            kept.push(pair.to_string()); // the driver says what is wrong with it
            continue;
        };
        match settings.take(&decode(key)?, &decode(value)?)? {
            Taken::Ours => {}
            Taken::Driver(value) => kept.push(format!("{key}={value}")),
            Taken::NotOurs => kept.push(pair.to_string()),
        }
    }
    Ok(if kept.is_empty() {
        format!("{prefix}{head}")
    } else {
        format!("{prefix}{head}?{}", kept.join("&"))
    })
}

/// The `key=value …` form, tokenised as the driver (and libpq) read it (see [`pairs`]); the
/// driver's settings are written back as they were.
fn split_key_values(text: &str, settings: &mut TlsSettings) -> Result<String, String> {
    let mut kept: Vec<String> = Vec::new();
    for pair in pairs(text) {
        let Some(raw) = &pair.raw_value else {
            kept.push(pair.key);
            continue;
        };
        match settings.take(&pair.key, &pair.value)? {
            Taken::Ours => {}
            Taken::Driver(value) => kept.push(format!("{}={value}", pair.key)),
            Taken::NotOurs => kept.push(format!("{}={raw}", pair.key)),
        }
    }
    Ok(kept.join(" "))
}

/// One `key = value` of the key=value form.
pub(super) struct Pair {
    /// The key as written.
    pub key: String,
    /// The value as written (quotes and escapes kept); `None` for a word without `=`.
    pub raw_value: Option<String>,
    /// The value as meant (quotes and escapes undone).
    pub value: String,
}

/// The pairs of the key=value form as libpq and the driver read them: spaces around `=`
/// allowed; a value either bare (a `\` takes the next character, a space included) or in
/// single quotes (`\'` and `\\` inside). A word without `=` is kept as a pair without a value
/// (the driver refuses it).
pub(super) fn pairs(text: &str) -> Vec<Pair> {
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_spaces(&mut chars);
        if chars.next_if_eq(&'=').is_none() {
            pairs.push(Pair {
                key,
                raw_value: None,
                value: String::new(),
            });
            continue;
        }
        skip_spaces(&mut chars);
        let (mut raw, mut value) = (String::new(), String::new());
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            while let Some(c) = chars.next() {
                raw.push(c);
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        raw.push(next);
                        value.push(next);
                    }
                } else if c == '\'' {
                    break;
                } else {
                    value.push(c);
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        raw.push(next);
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push(Pair {
            key,
            raw_value: Some(raw),
            value,
        });
    }
    pairs
}

/// The connector for `settings`: `None` for `sslmode=disable`. Reads the certificate files now
/// (at start), so that a missing or broken one is named before anything connects.
pub fn connector(settings: &TlsSettings) -> Result<Option<MakeTls>, String> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match (&settings.roots, settings.mode) {
        (Roots::File(path), _) => Some(file_roots(path)?),
        (Roots::System, _) | (Roots::Unset, SslMode::VerifyCa | SslMode::VerifyFull) => {
            Some(system_roots()?)
        }
        (Roots::Unset, _) => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(Unverified(provider.clone())),
        Some(roots) => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("{}: unusable: {e}", settings.roots_described()))?;
            if settings.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates("sslcert", cert)?;
            let pem = read_file("sslkey", key)?;
            let private_key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                format!(
                    "sslkey {}: no PEM private key in it ({e}): give the client certificate's \
                     unencrypted key in PEM",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| {
                    format!(
                        "sslcert {} and sslkey {} do not fit together: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = !settings.no_sni;
    Ok(Some(MakeTls {
        inner: MakeRustlsConnect::new(config),
        settings: Arc::new(settings.clone()),
    }))
}

/// The bytes of `path`, or a message naming it (as `setting`).
fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{setting} {}: cannot read it: {e} (is the path right, and readable by the \
             coordinator's user?)",
            path.display()
        )
    })
}

/// The PEM certificates in `path`: at least one, or a message naming the file.
fn read_certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(setting, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting} {}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} {}: no certificate in it (expected PEM, \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}

/// The CA certificates of `sslrootcert`.
fn file_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates("sslrootcert", path)? {
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: unusable CA: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The operating system's trusted roots; at least one, or a message saying what to do.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no trusted root certificates in the system's store ({}): give \
             sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate), or \
             install the system's CA certificates (ca-certificates)",
            if why.is_empty() {
                "empty".to_string()
            } else {
                why.join("; ")
            }
        ));
    }
    Ok(roots)
}

/// `prefer`/`require` without `sslrootcert`: encrypts, but any certificate is taken (libpq's
/// behaviour). The handshake's signatures are still checked, so the session is keyed to the
/// certificate the server showed.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `prefer`/`require` with `sslrootcert`): the chain must lead to a trusted
/// root, whatever names the certificate holds. webpki checks the name only after the chain, so
/// a name mismatch means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connector handed to the pool: [`tokio_postgres_rustls`]'s, whose handshake failures it
/// turns into a [`TlsFailure`] that says why and what to do.
#[derive(Clone)]
pub struct MakeTls {
    inner: MakeRustlsConnect,
    settings: Arc<TlsSettings>,
}

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = Connect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Self::Error> {
        let inner = match MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, host) {
            Ok(inner) => inner,
            Err(never) => match never {},
        };
        Ok(Connect {
            inner,
            host: host.to_string(),
            settings: self.settings.clone(),
        })
    }
}

/// One handshake to `host` (see [`MakeTls`]).
pub struct Connect {
    inner: <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect,
    host: String,
    settings: Arc<TlsSettings>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, TlsFailure>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let Connect {
            inner,
            host,
            settings,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake.await.map_err(|e| TlsFailure {
                permanent: e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
                message: explain(&e, &host, &settings),
            })
        })
    }
}

/// A TLS handshake with the server failed; the message says why and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsFailure {
    message: String,
    /// rustls refused (a certificate that does not verify, no protocol or cipher in common):
    /// retrying does not help, so the database code refuses at once. Otherwise the connection
    /// broke during the handshake (a server still starting), which is worth another attempt.
    permanent: bool,
}

impl TlsFailure {
    /// Whether retrying cannot help (see the field).
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

/// Why the handshake with `host` failed, in words a user can act on.
fn explain(e: &std::io::Error, host: &str, settings: &TlsSettings) -> String {
    let roots = settings.roots_described();
    let mode = settings.mode.name();
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(cert)) = rustls_error else {
        return format!("TLS handshake with {host} failed: {e}");
    };
    let fix = match cert {
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not signed by a CA in {roots}: set sslrootcert to the \
             CA certificate that signed it (for a managed database, the provider's CA bundle), \
             or use sslmode=require to encrypt without verifying the server"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate does not name the host asked for, {host:?}: connect \
                 by a name the certificate holds (the host of --database-url), or use \
                 sslmode=verify-ca to check the CA only"
            )
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => "renew the server's certificate, or \
             check this machine's clock"
            .to_string(),
        _ => format!("check the server's certificate against {roots}"),
    };
    let why = match cert {
        CertificateError::UnknownIssuer => "unknown issuer".to_string(),
        other => other.to_string(),
    };
    format!("the server's certificate at {host} was refused under sslmode={mode}: {why}; {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_ok(url: &str) -> (String, TlsSettings) {
        match split(url) {
            Ok(split) => split,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn the_url_form_loses_only_what_the_driver_does_not_know() {
        let (driver, tls) = split_ok(
            "postgres://u:p%3Fw@db.example:5432/x?application_name=a&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=5",
        );
        assert_eq!(
            driver,
            "postgres://u:p%3Fw@db.example:5432/x?application_name=a&sslmode=require\
             &connect_timeout=5"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.roots, Roots::File("/etc/ca dir/ca.pem".into()));
        // Nothing left: no dangling `?`. A raw `?` in the password is not the query's start.
        let (driver, tls) =
            split_ok("postgresql://u:a?b@db/x?sslrootcert=/ca.pem&sslmode=verify-ca");
        assert_eq!(driver, "postgresql://u:a?b@db/x?sslmode=require");
        let (driver, _) = split_ok("postgresql://u:a?b@db/x?sslrootcert=/ca.pem");
        assert_eq!(driver, "postgresql://u:a?b@db/x");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        let (driver, tls) = split_ok("postgres://db/x");
        assert_eq!(
            (driver.as_str(), tls),
            ("postgres://db/x", TlsSettings::default())
        );
        let (driver, tls) = split_ok("postgres://db/x?sslmode=disable&user=fg");
        assert_eq!(driver, "postgres://db/x?sslmode=disable&user=fg");
        assert_eq!(tls.mode, SslMode::Disable);
        // The later setting wins, as in libpq.
        let (_, tls) = split_ok("postgres://db/x?sslmode=disable&sslmode=require");
        assert_eq!(tls.mode, SslMode::Require);
        let (driver, tls) =
            split_ok("postgres://db/x?sslmode=require&sslcert=/c.pem&sslkey=/k.pem&sslsni=0");
        assert_eq!(driver, "postgres://db/x?sslmode=require");
        assert_eq!(tls.client_cert, Some("/c.pem".into()));
        assert_eq!(tls.client_key, Some("/k.pem".into()));
        assert!(tls.no_sni);
    }

    #[test]
    fn the_key_value_form_keeps_quoting() {
        let (driver, tls) = split_ok(
            "host=db password='it\\'s s3cret' sslmode = verify-full \
             sslrootcert='/etc/my ca/ca\\'s.pem' dbname=x",
        );
        assert_eq!(
            driver,
            "host=db password='it\\'s s3cret' sslmode=require dbname=x"
        );
        assert_eq!(tls.roots, Roots::File("/etc/my ca/ca's.pem".into()));
        // The driver reads what it is given back as the original meant.
        let config: Result<tokio_postgres::Config, _> = driver.parse();
        let password = config.as_ref().ok().and_then(|c| c.get_password());
        assert_eq!(password, Some(&b"it's s3cret"[..]));
        // A bare value with an escaped space.
        let (driver, tls) = split_ok("host=db sslrootcert=/a\\ b.pem sslmode=verify-ca");
        assert_eq!(driver, "host=db sslmode=require");
        assert_eq!(tls.roots, Roots::File("/a b.pem".into()));
        let (driver, tls) = split_ok("host=db user=fg");
        assert_eq!(
            (driver.as_str(), tls),
            ("host=db user=fg", TlsSettings::default())
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_what_to_do() {
        for (url, says) in [
            ("postgres://db/x?sslmode=allow", "use sslmode=prefer"),
            ("host=db sslmode=verify_full", "not one of"),
            ("postgres://db/x?sslpassword=pw", "unencrypted key"),
            ("postgres://db/x?sslcrl=/crl.pem", "revocation lists"),
            ("host=db sslcrldir=/crl", "revocation lists"),
            (
                "postgres://db/x?sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            ("host=db sslmode=require sslcert=/c.pem", "without sslkey"),
            ("host=db sslmode=require sslkey=/k.pem", "without sslcert"),
            ("host=db sslsni=yes", "neither 0 nor 1"),
        ] {
            let err = split(url).err().unwrap_or_default();
            assert!(err.contains(says), "{url}: {err}");
        }
        assert!(split("postgres://db/x?sslrootcert=system&sslmode=verify-full").is_ok());
    }

    #[test]
    fn certificate_files_are_named_when_they_cannot_be_used() {
        let dir = flamegrid_testkit::temp_dir("pg-tls-files");
        let garbage = dir.path().join("garbage.pem");
        let empty = dir.path().join("empty.pem");
        let _ = std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n");
        let _ = std::fs::write(&empty, "just words\n");
        let missing = dir.path().join("missing-ca.pem");
        for (root, says) in [
            (&missing, "cannot read it"),
            (&garbage, "not PEM"),
            (&empty, "no certificate in it"),
        ] {
            for mode in [SslMode::Require, SslMode::VerifyFull] {
                let settings = TlsSettings {
                    mode,
                    roots: Roots::File(root.clone()),
                    ..TlsSettings::default()
                };
                let err = connector(&settings).err().unwrap_or_default();
                assert!(err.contains(&root.display().to_string()), "{err}");
                assert!(err.contains(says), "{err}");
                assert!(err.starts_with("sslrootcert "), "{err}");
            }
        }
        let settings = TlsSettings {
            mode: SslMode::Require,
            client_cert: Some(missing.clone()),
            client_key: Some(garbage.clone()),
            ..TlsSettings::default()
        };
        let err = connector(&settings).err().unwrap_or_default();
        assert!(
            err.starts_with("sslcert ") && err.contains("missing-ca.pem"),
            "{err}"
        );
        // No TLS asked for: nothing is read.
        let settings = TlsSettings {
            mode: SslMode::Disable,
            roots: Roots::File(missing),
            ..TlsSettings::default()
        };
        assert!(matches!(connector(&settings), Ok(None)));
    }
}
