//! The dashboard: one HTML page, its stylesheet and its scripts, compiled into the binary.
//!
//! The page is a single-page application in plain HTML, CSS and JavaScript (no framework, no
//! CDN, nothing fetched from anywhere but the coordinator), so it works offline and on a host
//! that cannot reach the internet. It reads the same Flink-shaped REST API that `curl` users and
//! Flink's own dashboard read; it has no private endpoints. Everything it draws, including the
//! flame graph and the job plan, is drawn by its own script from the JSON answers.
//!
//! Two rules keep it deployable anywhere:
//!
//! * **Only relative URLs.** The page asks for `config`, `jobs/overview`, `assets/app.js`, never
//!   `/config`, so the whole coordinator can sit behind a reverse proxy under a path prefix
//!   (`https://example.org/flamegrid/`) without configuration.
//! * **Hash routes.** The page's own locations (`#/jobs/<jid>/vertices/<vid>`) live after the
//!   `#`, which the browser never sends to the server, so the server serves one document and a
//!   deep link survives a reload.
//!
//! On the server side this module is tiny: a table of embedded files ([`ASSETS`]) and a handler
//! that serves them with a content type, an `ETag` (so a reload costs a `304`) and headers that
//! forbid the page from loading anything from elsewhere (`Content-Security-Policy`).

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use std::sync::LazyLock;

use crate::rest::state::AppState;

/// One file of the dashboard, embedded at compile time.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// File name under `/assets/` (the page itself is `index.html`, served at `/`).
    pub name: &'static str,
    /// The `Content-Type` it is served with; browsers refuse module scripts served as anything
    /// but JavaScript, so this matters.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: &'static [u8],
}

/// Every file the dashboard consists of. Adding a file here is all it takes to serve it.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "flame.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/flame.js"),
    },
    Asset {
        name: "plan.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/plan.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// The policy every dashboard response carries: scripts, styles, images and API calls from this
/// origin only; no frames, no plugins. It is what makes "works offline" checkable: a page that
/// tried to load a CDN script would be refused by the browser.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes: `/` and `/index.html` (the page) and `/assets/{name}` (everything
/// else). `lib.rs` mounts them beside the REST API ([`crate::rest::router`]): at the root and
/// under `/v1`, with the same response conventions.
pub fn routes() -> Router<AppState> {
    asset_routes()
}

/// [`routes`] for any router state: the dashboard needs none, and tests can serve it alone.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{name}", get(asset))
}

/// Looks an embedded file up by name.
pub fn find_asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// Entity tags of the embedded files, computed once: a strong tag from the bytes (FNV-1a), so a
/// new build with a changed file gets a new tag and an unchanged file keeps answering `304`.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for &byte in a.body {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            // A hex string in quotes is always a valid header value.
            HeaderValue::from_str(&format!("\"{hash:016x}\""))
                .unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// Answers with the named file, a `304` when the browser already has this version, or Flink's
/// 404 for an unknown file (`File not found.`, the message Flink's static-file handler sends).
fn serve(name: &str, request_headers: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=UTF-8"),
            )],
            r#"{"errors":["File not found."]}"#,
        )
            .into_response();
    };
    let asset = &ASSETS[index];
    let etag = ETAGS[index].clone();
    let common = [
        (header::ETAG, etag.clone()),
        // Revalidate on every load: the ETag makes that a cheap 304, and a new coordinator
        // version is picked up at once instead of after some max-age.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    let not_modified = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag.to_str().unwrap_or_default()
        });
    if not_modified {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_with(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        let response = asset_routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn root_serves_the_page_with_its_policy() {
        runtime().block_on(async {
            let (status, headers, body) = get_with("/", None).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            let html = String::from_utf8(body).unwrap();
            assert!(
                html.contains(r#"src="assets/app.js""#),
                "the page loads its script by a relative URL"
            );
        });
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_revalidates_to_304() {
        runtime().block_on(async {
            for asset in ASSETS {
                let (status, headers, body) =
                    get_with(&format!("/assets/{}", asset.name), None).await;
                assert_eq!(status, StatusCode::OK, "{}", asset.name);
                assert_eq!(headers[header::CONTENT_TYPE], asset.content_type);
                assert_eq!(body, asset.body);
                let tag = headers[header::ETAG].to_str().unwrap().to_string();
                let (status, _, body) =
                    get_with(&format!("/assets/{}", asset.name), Some(&tag)).await;
                assert_eq!(status, StatusCode::NOT_MODIFIED, "{}", asset.name);
                assert!(body.is_empty());
                let (status, _, _) =
                    get_with(&format!("/assets/{}", asset.name), Some("\"other\"")).await;
                assert_eq!(status, StatusCode::OK);
            }
        });
    }

    #[test]
    fn unknown_asset_is_flinks_file_not_found() {
        runtime().block_on(async {
            for path in ["/assets/nope.js", "/assets/..%2Fmod.rs", "/assets/.."] {
                let (status, _, body) = get_with(path, None).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
                assert_eq!(body, br#"{"errors":["File not found."]}"#);
            }
        });
    }

    /// The page must work offline and behind a path prefix: no absolute URL, no scheme, no
    /// protocol-relative URL in anything it loads, and every fetch goes through relative paths.
    #[test]
    fn assets_use_only_relative_urls() {
        for asset in ASSETS {
            let text = String::from_utf8_lossy(asset.body);
            for (number, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") || code.starts_with('*') || code.starts_with("/*") {
                    continue;
                }
                for needle in [
                    "http://",
                    "https://",
                    "src=\"/",
                    "href=\"/",
                    "fetch('/",
                    "fetch(\"/",
                    "url(/",
                    "url(\"/",
                ] {
                    // The SVG namespace URI is an identifier, not something the browser loads.
                    let line_without_ns = line.replace("http://www.w3.org/2000/svg", "");
                    assert!(
                        !line_without_ns.contains(needle),
                        "{}:{}: `{needle}` makes the page depend on an absolute location: {line}",
                        asset.name,
                        number + 1
                    );
                }
            }
        }
    }
}
