//! The shared token on the coordinator's calls to agents: a tonic interceptor that adds
//! `authorization: Bearer <token>` (`--token-file`) to every request of an agent client, so no
//! call site has to remember it. The agent checks it with the same constant-time comparison the
//! registry uses for agents' calls ([`crate::registry::grpc::TokenCheck`]).

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Adds the bearer header, when there is a token, to every request it intercepts.
#[derive(Clone, Default)]
pub struct BearerToken {
    header: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: say only whether there is one.
        f.debug_struct("BearerToken")
            .field("set", &self.header.is_some())
            .finish()
    }
}

/// The token holds characters that cannot be sent in a gRPC header (a control character, a
/// line break, non-ASCII text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared token contains characters that cannot be sent in a gRPC header")]
pub struct UnsendableToken;

impl BearerToken {
    /// An interceptor that sends `token` (surrounding whitespace ignored).
    pub fn new(token: &str) -> Result<BearerToken, UnsendableToken> {
        let header = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| UnsendableToken)?;
        Ok(BearerToken {
            header: Some(header),
        })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_header_only_with_a_token_and_refuses_unsendable_ones() {
        let mut with = BearerToken::new(" s3cret\n").unwrap();
        let request = with.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let request = BearerToken::default().call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(BearerToken::new("bad\ntoken").is_err());
        assert!(!format!("{with:?}").contains("s3cret"));
    }
}
