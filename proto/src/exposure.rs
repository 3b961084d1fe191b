//! The secure-default rule both binaries apply to every listener they open (DESIGN.md, "Secure
//! defaults"), in the spirit of Redis's protected mode: a loopback listener needs nothing; a
//! listener any other host can reach refuses to start unless it has credentials, and the reason
//! names the flag that is missing. `--insecure` opts out, loudly.
//!
//! It lives in the contract crate because the agent and the coordinator must agree on it exactly:
//! one binary that started open while the other refused would be a door nobody meant to leave.

use std::net::SocketAddr;

/// What one listener is about to be started with.
#[derive(Debug, Clone, Copy)]
pub struct Listener<'a> {
    /// What the listener serves, for the message ("REST API", "registry gRPC", ...).
    pub what: &'a str,
    /// The flag that sets its address (`--rest-addr`), for the message.
    pub addr_flag: &'a str,
    /// The address it will bind.
    pub addr: SocketAddr,
    /// True when callers must present credentials (a token, mutual TLS, or no writes at all).
    pub has_credentials: bool,
    /// The flag(s) that would give it credentials, for the message (`--rest-token-file`).
    pub credential_flags: &'a str,
}

/// The outcome of [`check`] for a listener that may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Loopback, or reachable from other hosts but guarded by credentials.
    Guarded,
    /// Reachable from other hosts without credentials because `--insecure` said so: the caller
    /// logs this warning once at start.
    OpenByChoice(String),
}

/// Decides whether `listener` may start. `Err` carries the one-line reason to print before
/// exiting non-zero; it names the missing flag and the way out.
pub fn check(listener: &Listener<'_>, insecure: bool) -> Result<Exposure, String> {
    if listener.addr.ip().is_loopback() || listener.has_credentials {
        return Ok(Exposure::Guarded);
    }
    let Listener {
        what,
        addr_flag,
        addr,
        credential_flags,
        ..
    } = listener;
    if insecure {
        return Ok(Exposure::OpenByChoice(format!(
            "--insecure: the {what} on {addr} accepts anyone who can reach it, without \
             credentials; set {credential_flags} to protect it"
        )));
    }
    Err(format!(
        "refusing to start: the {what} would listen on {addr} ({addr_flag}), reachable from other \
         hosts, without credentials; set {credential_flags}, bind {addr_flag} to a loopback \
         address, or pass --insecure to accept the risk"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, has_credentials: bool) -> Listener<'static> {
        Listener {
            what: "REST API",
            addr_flag: "--rest-addr",
            addr: addr.parse().expect("test address"),
            has_credentials,
            credential_flags: "--rest-token-file",
        }
    }

    #[test]
    fn loopback_needs_nothing() {
        for addr in ["127.0.0.1:8081", "127.8.9.10:1", "[::1]:8081"] {
            assert_eq!(check(&listener(addr, false), false), Ok(Exposure::Guarded));
        }
    }

    #[test]
    fn open_address_without_credentials_is_refused_naming_the_flag() {
        for addr in ["0.0.0.0:8081", "[::]:8081", "192.0.2.7:8081"] {
            let err = check(&listener(addr, false), false).unwrap_err();
            assert!(err.contains("--rest-token-file"), "{err}");
            assert!(err.contains("--insecure"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn credentials_or_insecure_let_it_start() {
        assert_eq!(
            check(&listener("0.0.0.0:8081", true), false),
            Ok(Exposure::Guarded)
        );
        match check(&listener("0.0.0.0:8081", false), true) {
            Ok(Exposure::OpenByChoice(warning)) => assert!(warning.contains("--insecure")),
            other => panic!("expected a warning, got {other:?}"),
        }
    }
}
