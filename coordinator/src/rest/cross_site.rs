//! Who may call the REST API from a web page: the defence against cross-site request forgery and
//! cross-site reads (DESIGN.md, "Secure defaults").
//!
//! A browser attaches an `Origin` header to every request a page makes with a method other than
//! GET or HEAD (and to every cross-origin `fetch`), and it lets a page read a cross-origin answer
//! only when that answer names the page's origin in `Access-Control-Allow-Origin`. Tools that are
//! not browsers (curl, scripts, Flink's REST clients) send no `Origin`. So:
//!
//! * **Writes** (every method other than GET, HEAD and OPTIONS that a path serves) must say
//!   `Content-Type: application/json` (parameters such as `; charset=utf-8` allowed), else
//!   **415**. A plain HTML form can only send `application/x-www-form-urlencoded`,
//!   `multipart/form-data` or `text/plain`, and a page that wants to send JSON across origins must
//!   first ask with a preflight, which this module answers only for listed origins.
//! * A write whose `Origin` is neither this server itself nor listed with `--cors-origin` gets
//!   **403**. "This server itself" means the same scheme, host and port as the request's `Host`
//!   header, and only when that host is an IP address or `localhost`: a name could be a DNS
//!   rebinding (a hostile name made to resolve to this server), so a page served under a name
//!   must be listed. Both refusals happen before the handler runs, so nothing is stored.
//! * **Reads** are answered to everyone, but `Access-Control-Allow-Origin` names only a listed
//!   origin (echoed, with `Vary: Origin`): never `*`, so a page of any other origin cannot read
//!   the answer. Preflight requests (`OPTIONS` with `Access-Control-Request-Method`) are answered
//!   for listed origins only; any other origin gets 403.
//!
//! The write checks run per route (see [`check_write`], installed by the router on the method
//! routes that write), so a method a path does not serve still answers 405 and an unknown path
//! 404, as DESIGN.md says (the routes of Flink's API that flamegrid answers with "not supported"
//! change nothing and are left as they are); the CORS headers and preflights are handled once for the whole router
//! by [`cors`].

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt;
use std::sync::Arc;

/// A web origin, `scheme://host[:port]`, normalised so that equal origins compare equal: scheme
/// and host in lower case, the port always explicit (80 for http, 443 for https).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an origin as a browser sends it in `Origin` (or as `--cors-origin` takes it):
    /// `http` or `https`, a host, an optional port, and nothing else (a trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<Origin, String> {
        let text = text.trim();
        if text.contains('*') {
            return Err(format!(
                "{text:?}: no wildcards; list each origin that may call the API, e.g. \
                 https://dashboard.example.org"
            ));
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!(
                "{text:?} is not an origin: expected scheme://host[:port], e.g. https://example.org"
            )
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("{text:?}: the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?} is not an origin: expected scheme://host[:port] without a path, query or \
                 user name"
            ));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{text:?}: cannot read the host and port"))?;
        Ok(Origin {
            scheme,
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// The origin a request was addressed to: its `Host` header (or the URI's authority, as
    /// HTTP/2 sends it) under `scheme`.
    fn of_host(host: &str, scheme: &str) -> Option<Origin> {
        let (host, port) = split_host_port(host.trim())?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        Some(Origin {
            scheme: scheme.to_string(),
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// True for hosts no DNS answer can stand for: IP addresses and `localhost`.
    fn host_is_literal(&self) -> bool {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok()
            || bare == "localhost"
            || bare.ends_with(".localhost")
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if self.port == default_port {
            write!(f, "{}://{}", self.scheme, self.host)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (lower-case host, port).
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{inside}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
}

/// clap's parser for `--cors-origin`.
pub fn parse_cors_origin(text: &str) -> Result<Origin, String> {
    Origin::parse(text)
}

/// The origins listed with `--cors-origin`, read once at start.
#[derive(Debug, Clone, Default)]
pub struct CrossSitePolicy {
    listed: Vec<Origin>,
}

/// What a request's `Origin` header says about who sent it.
#[derive(Debug, PartialEq, Eq)]
enum Sender {
    /// No `Origin`: not a browser page (curl, scripts, Flink's clients), or a same-origin GET.
    NotABrowserPage,
    /// A page of this server itself.
    SameOrigin,
    /// A page of an origin listed with `--cors-origin`.
    Listed(HeaderValue),
    /// Any other page (or an `Origin` that does not parse, such as `null`).
    Foreign,
}

impl CrossSitePolicy {
    /// The policy for these listed origins.
    pub fn new(listed: Vec<Origin>) -> Self {
        CrossSitePolicy { listed }
    }

    fn sender(&self, headers: &HeaderMap, uri_host: Option<&str>) -> Sender {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let Some(raw) = origins.next() else {
            return Sender::NotABrowserPage;
        };
        if origins.next().is_some() {
            return Sender::Foreign; // two Origin headers: nobody honest sends that
        }
        let Some(origin) = raw.to_str().ok().and_then(|t| Origin::parse(t).ok()) else {
            return Sender::Foreign;
        };
        if self.listed.contains(&origin) {
            return Sender::Listed(raw.clone());
        }
        // Behind a TLS-terminating proxy the page's scheme is https while this server speaks
        // http; the proxy says so in X-Forwarded-Proto.
        let scheme = match headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
        {
            Some(p) if p.trim().eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(uri_host);
        match host.and_then(|h| Origin::of_host(h, scheme)) {
            Some(own) if own == origin && own.host_is_literal() => Sender::SameOrigin,
            _ => Sender::Foreign,
        }
    }

    /// Why a write must be refused, or `None` to let it through.
    fn refuse_write(&self, request: &Request) -> Option<ApiError> {
        if !is_write(request.method()) {
            return None;
        }
        let mut types = request.headers().get_all(header::CONTENT_TYPE).iter();
        let json = match (types.next(), types.next()) {
            (Some(value), None) => value.to_str().is_ok_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
            }),
            _ => false,
        };
        if !json {
            return Some(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Writes take only \"Content-Type: application/json\".",
            ));
        }
        if self.sender(request.headers(), request.uri().host()) == Sender::Foreign {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "Cross-origin write refused: the request's Origin is neither this server nor an \
                 origin listed with --cors-origin.",
            ));
        }
        None
    }
}

/// Every method other than GET, HEAD and OPTIONS changes something (or might).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The methods a listed origin may use across origins, as a preflight answer lists them.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE";
/// The request headers a listed origin may send (everything the API reads).
const ALLOWED_HEADERS: &str = "authorization, content-type, accept";
/// The response headers a listed origin's page may read beyond the CORS-safelisted ones.
const EXPOSED_HEADERS: &str = "x-flamegrid-missing, x-flamegrid-sampling, etag";

/// Router-wide middleware: answers preflights, adds `Access-Control-Allow-Origin` for listed
/// origins and `Vary: Origin` to every answer, and hands the policy to [`check_write`].
pub async fn cors(policy: Arc<CrossSitePolicy>, mut request: Request, next: Next) -> Response {
    let sender = policy.sender(request.headers(), request.uri().host());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        match &sender {
            Sender::Listed(origin) => {
                let mut response = StatusCode::NO_CONTENT.into_response();
                let h = response.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOWED_METHODS),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOWED_HEADERS),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
                response
            }
            _ => ApiError::new(
                StatusCode::FORBIDDEN,
                "Cross-origin requests from this origin are not allowed (see --cors-origin).",
            )
            .into_response(),
        }
    } else {
        request.extensions_mut().insert(policy);
        let mut response = next.run(request).await;
        if let Sender::Listed(origin) = &sender {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
        response
    };
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// Per-route middleware on every method route that writes: refuses (415, 403) before the handler
/// runs, so nothing is stored. Without the policy [`cors`] puts in the request (a router built
/// without it), no origin is listed.
pub async fn check_write(request: Request, next: Next) -> Response {
    let refusal = match request.extensions().get::<Arc<CrossSitePolicy>>() {
        Some(policy) => policy.refuse_write(&request),
        None => CrossSitePolicy::default().refuse_write(&request),
    };
    match refusal {
        Some(error) => {
            tracing::info!(method = %request.method(), path = %request.uri().path(), status = %error.status, "cross-site write refused");
            error.into_response()
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalise_and_refuse_wildcards_and_paths() {
        let o = Origin::parse("HTTPS://Dash.Example.org/").unwrap();
        assert_eq!(o.to_string(), "https://dash.example.org");
        assert_eq!(o, Origin::parse("https://dash.example.org:443").unwrap());
        assert_eq!(
            Origin::parse("http://[::1]:8081").unwrap().to_string(),
            "http://[::1]:8081"
        );
        for bad in [
            "*",
            "https://*.example.org",
            "example.org",
            "ftp://example.org",
            "https://example.org/path",
            "https://user@example.org",
            "https://example.org:99999",
            "null",
            "https://",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
        assert!(Origin::parse("*").unwrap_err().contains("no wildcards"));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn senders() {
        let policy = CrossSitePolicy::new(vec![Origin::parse("https://ok.example").unwrap()]);
        let s = |pairs: &[(&'static str, &str)]| policy.sender(&headers(pairs), None);
        assert_eq!(s(&[("host", "127.0.0.1:8081")]), Sender::NotABrowserPage);
        assert_eq!(
            s(&[
                ("host", "127.0.0.1:8081"),
                ("origin", "http://127.0.0.1:8081")
            ]),
            Sender::SameOrigin
        );
        assert_eq!(
            s(&[("host", "localhost"), ("origin", "http://LOCALHOST:80")]),
            Sender::SameOrigin
        );
        assert_eq!(
            s(&[
                ("host", "127.0.0.1:8081"),
                ("origin", "https://127.0.0.1:8081"),
                ("x-forwarded-proto", "https")
            ]),
            Sender::SameOrigin
        );
        // Another port, scheme or host is another origin.
        for origin in [
            "http://127.0.0.1:8082",
            "https://127.0.0.1:8081",
            "http://evil.example",
            "null",
        ] {
            assert_eq!(
                s(&[("host", "127.0.0.1:8081"), ("origin", origin)]),
                Sender::Foreign,
                "{origin}"
            );
        }
        // A name may be a DNS rebinding: same-origin by name must be listed.
        assert_eq!(
            s(&[
                ("host", "evil.example:8081"),
                ("origin", "http://evil.example:8081")
            ]),
            Sender::Foreign
        );
        assert!(matches!(
            s(&[("host", "x"), ("origin", "https://ok.example")]),
            Sender::Listed(_)
        ));
        assert_eq!(
            s(&[
                ("host", "127.0.0.1:8081"),
                ("origin", "http://127.0.0.1:8081"),
                ("origin", "http://127.0.0.1:8081")
            ]),
            Sender::Foreign
        );
    }
}
