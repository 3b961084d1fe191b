//! The driver's HTTP client: `reqwest` on a tokio runtime that runs on the calling thread.
//!
//! Every figure of the first phase is a request-to-answer time taken around one call of
//! [`Rest::get`], so the client must add as little as possible to it:
//!
//! * **No thread hop.** The runtime is `current_thread` and is driven by the measuring thread
//!   itself inside `block_on`. `reqwest::blocking` would hand each request to a background
//!   thread and wait for it to be woken, and on a shared two-core machine a wake-up can wait
//!   for a CPU.
//! * **Connection reuse.** One client per coordinator keeps its keep-alive connection, so a
//!   measurement includes no TCP connect. Idle connections are dropped after
//!   [`IDLE_CONNECTION`], well before the coordinator's own header timeout (10 s) closes them,
//!   so a request never lands on a connection the server is about to close.
//! * **No proxy.** Proxy variables in the environment are ignored: these are loopback
//!   addresses, and a proxy hop would be measured as flamegrid's time.
//!
//! Writes carry `Content-Type: application/json`, which the coordinator requires of every
//! write since issue 12.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// How long an unused keep-alive connection stays in the pool.
const IDLE_CONNECTION: Duration = Duration::from_secs(5);

/// A status and a body, whatever the status (the callers decide what they expect).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A client of one coordinator's REST API.
pub struct Rest {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    addr: SocketAddr,
}

impl Rest {
    /// A client of the REST API at `addr`; no request takes longer than `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Result<Rest> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP client's runtime")?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .pool_idle_timeout(IDLE_CONNECTION)
            .pool_max_idle_per_host(1)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Rest {
            runtime,
            client,
            addr,
        })
    }

    /// The address of the REST API (for wrk's URLs).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer> {
        self.send(self.client.get(self.url(path)), "GET", path)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Answer> {
        let request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(request, "POST", path)
    }

    /// `GET path` → JSON, failing on any status but 200.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let answer = self.get(path)?;
        if answer.status != 200 {
            bail!(
                "GET {path} → {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        serde_json::from_slice(&answer.body).with_context(|| format!("GET {path}: not JSON"))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `request` and reads the whole body, on this thread.
    fn send(&self, request: reqwest::RequestBuilder, method: &str, path: &str) -> Result<Answer> {
        self.runtime
            .block_on(async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let body = response.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>(Answer { status, body })
            })
            .with_context(|| format!("{method} http://{}{path}", self.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-thread HTTP/1.1 server on loopback that answers `answers` requests in order on
    /// whatever connections come, and reports what it saw: (connections accepted, request
    /// heads and bodies).
    fn serve(
        answers: Vec<&'static str>,
    ) -> (SocketAddr, std::thread::JoinHandle<(usize, Vec<String>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut connections = 0;
            let mut answers = answers.into_iter();
            'accept: while let Ok((stream, _)) = listener.accept() {
                connections += 1;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut head = String::new();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            continue 'accept;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    head.push_str(&String::from_utf8_lossy(&body));
                    seen.push(head);
                    let Some(answer) = answers.next() else {
                        break 'accept;
                    };
                    writer.write_all(answer.as_bytes()).unwrap();
                    if seen.len() == 3 {
                        break 'accept;
                    }
                }
            }
            (connections, seen)
        });
        (addr, server)
    }

    #[test]
    fn requests_share_one_connection_and_chunked_bodies_are_decoded() {
        let (addr, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\": [1]}\n",
            "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
        ]);
        let rest = Rest::new(addr, Duration::from_secs(60)).unwrap();
        assert_eq!(
            rest.get_json("/first").unwrap(),
            serde_json::json!({"a": [1]})
        );
        let posted = rest
            .post_json("/jobs", &serde_json::json!({"n": 1}))
            .unwrap();
        assert_eq!(
            (posted.status, posted.body.as_slice()),
            (202, &b"hello world"[..])
        );
        let missing = rest.get_json("/missing").unwrap_err().to_string();
        assert!(missing.contains("GET /missing → 404: no"), "{missing}");
        drop(rest);
        let (connections, seen) = server.join().unwrap();
        assert_eq!(
            connections, 1,
            "every request should reuse the first connection"
        );
        assert!(
            seen[0].starts_with("GET /first HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        let post = seen[1].to_ascii_lowercase();
        assert!(post.starts_with("post /jobs http/1.1\r\n"), "{post}");
        assert!(
            post.contains("content-type: application/json\r\n"),
            "{post}"
        );
        assert!(post.ends_with("{\"n\":1}"), "{post}");
    }

    #[test]
    fn a_closed_port_is_an_error_naming_the_url() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let rest = Rest::new(addr, Duration::from_secs(60)).unwrap();
        let e = format!("{:#}", rest.get("/config").unwrap_err());
        assert!(e.contains(&format!("GET http://{addr}/config")), "{e}");
    }
}
