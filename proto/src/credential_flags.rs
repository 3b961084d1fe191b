//! The token and TLS flags both binaries take (`--token-file`, `--tls-cert`, `--tls-key`,
//! `--tls-ca`; DESIGN.md "Flags that the issues add": same names on both binaries), defined once
//! and flattened into each command line, so their names, environment variables, help and rules
//! cannot drift apart between the agent and the coordinator.
//!
//! The rules, the same on both sides: `--tls-cert` and `--tls-key` go together; `--tls-ca` adds
//! to them (mutual TLS) and needs them. A listener that other hosts can reach counts as guarded
//! with the token or with mutual TLS ([`CredentialFlags::guards_listener`], for the
//! [`crate::exposure`] rule).
//!
//! The flags live here, and so does the one reader of a shared-secret file
//! ([`read_token_file`]), so that a token the agent accepts is a token the coordinator accepts.
//! Each binary reads the files once at start (the coordinator into one credentials value, the
//! agent into its server and client settings).

use clap::Args;
use std::path::{Path, PathBuf};

/// Tokens shorter than this are accepted with a warning: they can be guessed.
pub const SHORT_TOKEN: usize = 16;

/// Why a shared-secret file cannot be used; each message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        /// Which file ("token file", "REST token file").
        what: String,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace: an empty token would let anyone in.
    #[error("{what} {path} is empty: write a long random token into it")]
    Empty {
        /// Which file.
        what: String,
        /// Its path.
        path: String,
    },
    /// The token cannot travel in an `authorization` header.
    #[error(
        "{what} {path}: the token must be printable ASCII without spaces (it travels in an \
         authorization header)"
    )]
    NotPrintable {
        /// Which file.
        what: String,
        /// Its path.
        path: String,
    },
}

/// Reads a shared-secret file (`--token-file`, `--rest-token-file`): its text without
/// surrounding whitespace. Unreadable and empty files are errors, because an empty token would
/// let anyone in, and so is a token that cannot be sent as a header value (it could never
/// match). A token shorter than [`SHORT_TOKEN`] is accepted with a warning. `what` names the
/// file in the messages ("token file", "REST token file"). The token itself is never logged.
pub fn read_token_file(path: &Path, what: &str) -> Result<String, TokenFileError> {
    let named = || (what.to_string(), path.display().to_string());
    let raw = std::fs::read(path).map_err(|source| {
        let (what, path) = named();
        TokenFileError::Unreadable { what, path, source }
    })?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        let (what, path) = named();
        return Err(TokenFileError::Empty { what, path });
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        let (what, path) = named();
        return Err(TokenFileError::NotPrintable { what, path });
    }
    if token.len() < SHORT_TOKEN {
        tracing::warn!(
            file = %path.display(),
            "the {what} holds a token shorter than {SHORT_TOKEN} characters; use a long random one"
        );
    }
    // Printable ASCII, so one byte per char.
    Ok(token.iter().map(|&b| char::from(b)).collect())
}

/// The flags that would guard a gRPC listener, as the [`crate::exposure`] message names them.
pub const GRPC_CREDENTIAL_FLAGS: &str =
    "--token-file (or mutual TLS: --tls-cert, --tls-key and --tls-ca)";

/// `--token-file` and `--tls-*`, flattened into the agent's `run` and the coordinator's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialFlags {
    /// File holding the shared token the agents and the coordinator present to each other over
    /// gRPC (the same file on both sides; surrounding whitespace ignored): each side sends it on
    /// its calls and requires it on the calls it serves. An unreadable or empty file stops the
    /// start.
    #[arg(long, env = "FLAMEGRID_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM certificate chain of this process: served on its gRPC port (TLS) and presented as
    /// its client certificate to the https peers it calls. Needs --tls-key.
    #[arg(
        long,
        env = "FLAMEGRID_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching --tls-cert. Needs --tls-cert.
    #[arg(
        long,
        env = "FLAMEGRID_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA that peers' certificates must chain to: callers of this process's gRPC port must
    /// present a certificate it signed (mutual TLS), and the https peers it calls are verified
    /// against it. Needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "FLAMEGRID_TLS_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_ca: Option<PathBuf>,
}

impl CredentialFlags {
    /// Whether the gRPC port serves TLS (`--tls-cert` and `--tls-key`).
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Whether the gRPC port requires client certificates (TLS with `--tls-ca`).
    pub fn mutual_tls(&self) -> bool {
        self.tls() && self.tls_ca.is_some()
    }

    /// Whether a gRPC listener other hosts can reach is guarded: a token or mutual TLS.
    pub fn guards_listener(&self) -> bool {
        self.token_file.is_some() || self.mutual_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        credentials: CredentialFlags,
    }

    fn parse(args: &[&str]) -> Result<CredentialFlags, String> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|c| c.credentials)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_files_go_together_and_the_ca_needs_them() {
        for refused in [
            &["--tls-cert", "c"][..],
            &["--tls-key", "k"],
            &["--tls-ca", "ca"],
            &["--tls-key", "k", "--tls-ca", "ca"],
        ] {
            assert!(parse(refused).is_err(), "{refused:?} was accepted");
        }
        let tls = parse(&["--tls-cert", "c", "--tls-key", "k"]).unwrap();
        assert!(tls.tls() && !tls.mutual_tls() && !tls.guards_listener());
        let mutual = parse(&["--tls-cert", "c", "--tls-key", "k", "--tls-ca", "ca"]).unwrap();
        assert!(mutual.mutual_tls() && mutual.guards_listener());
        let token = parse(&["--token-file", "t"]).unwrap();
        assert!(token.guards_listener() && !token.tls());
        assert!(!parse(&[]).unwrap().guards_listener());
    }

    #[test]
    fn token_files_are_trimmed_and_refused_when_unusable() {
        let dir = std::env::temp_dir().join(format!("flamegrid-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let good = file("good", b"  0123456789abcdef-token\n");
        assert_eq!(
            read_token_file(&good, "token file").unwrap(),
            "0123456789abcdef-token"
        );
        let cases = [
            (dir.join("missing"), "cannot read token file"),
            (file("empty", b" \n\t"), "is empty"),
            (file("space", b"two words"), "printable ASCII"),
            (file("binary", b"tok\xffen"), "printable ASCII"),
        ];
        for (path, says) in cases {
            let message = read_token_file(&path, "token file")
                .unwrap_err()
                .to_string();
            assert!(message.contains(says), "{}: {message}", path.display());
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
