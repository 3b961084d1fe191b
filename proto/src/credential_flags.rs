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
//! Only the flags live here; each binary reads the files once at start, in its own way (the
//! coordinator into one credentials value, the agent into its server and client settings).

use clap::Args;
use std::path::PathBuf;

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
}
