//! The agent's `/metrics`: what its sampling service has done, in Prometheus' text format
//! ([`flamegrid_proto::prometheus`], the coordinator's writer too), served on its own small
//! HTTP listener when `flamegrid-agent run --metrics-listen ADDR` asks for one (off by default).
//!
//! [`Telemetry`] is counted by [`crate::service::SamplingService`] as runs end (atomics, never a
//! lock) and read at scrape time:
//!
//! | metric | type | what |
//! |---|---|---|
//! | `flamegrid_agent_sampling_runs_total{outcome}` | counter | `Sample` and `ThreadDump` calls by outcome: `ok`, `invalid` (bad request), `refused` (nothing allowed), `busy` (`--max-concurrent-runs` reached), `error` (an internal fault), `unavailable` (shutting down) |
//! | `flamegrid_agent_sampling_run_duration_seconds` | histogram | duration of runs that sampled (`ok`) |
//! | `flamegrid_agent_sampling_runs_in_flight` | gauge | runs in progress now |
//! | `flamegrid_agent_samples_total` | counter | thread samples taken and sent |
//! | `flamegrid_agent_ptrace_stops_total` | counter | threads stopped with ptrace to read a stack: one per sample with the ptrace sampler; with perf events only threads asleep since before the run, once |
//! | `flamegrid_agent_subtask_errors_total` | counter | subtasks of answered runs that could not be sampled (process gone, not allowed, ...) |
//!
//! The listener speaks just enough HTTP/1.1 for a scraper: `GET /metrics` (and `HEAD`), one
//! request per connection; the request head is bounded ([`MAX_HEAD_BYTES`]) and must arrive
//! within [`READ_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are served at once, so a slow or
//! hostile peer holds nothing for long. It takes no credentials, so by the secure defaults
//! (DESIGN.md) an address other hosts can reach needs `--insecure`.

use flamegrid_proto::prometheus::{CONTENT_TYPE, Histogram, Kind, TextWriter};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest request head read (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a peer has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// How a sampling call ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sampled and answered.
    Ok,
    /// A bad request (INVALID_ARGUMENT).
    Invalid,
    /// Nothing in it may be sampled (PERMISSION_DENIED).
    Refused,
    /// `--max-concurrent-runs` reached (RESOURCE_EXHAUSTED).
    Busy,
    /// An internal fault (INTERNAL).
    Error,
    /// The agent is shutting down (UNAVAILABLE).
    Unavailable,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Invalid,
        Outcome::Refused,
        Outcome::Busy,
        Outcome::Error,
        Outcome::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
            Outcome::Busy => "busy",
            Outcome::Error => "error",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// The outcome of a call refused with `code`.
    pub fn of_status(code: tonic::Code) -> Outcome {
        match code {
            tonic::Code::InvalidArgument => Outcome::Invalid,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Outcome::Refused,
            tonic::Code::ResourceExhausted => Outcome::Busy,
            tonic::Code::Unavailable => Outcome::Unavailable,
            _ => Outcome::Error,
        }
    }
}

/// The sampling service's counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    runs: [AtomicU64; 6],
    samples: AtomicU64,
    ptrace_stops: AtomicU64,
    subtask_errors: AtomicU64,
    durations: Histogram,
}

impl Telemetry {
    /// Counts a call that ended with `outcome`.
    pub fn run_ended(&self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|&o| o == outcome) {
            self.runs[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a run that sampled: how long it took, the samples it sent, and the subtasks it
    /// could not sample.
    pub fn sampled(&self, duration: Duration, samples: u64, subtask_errors: u64) {
        self.run_ended(Outcome::Ok);
        self.durations.observe(duration);
        self.samples.fetch_add(samples, Ordering::Relaxed);
        self.subtask_errors
            .fetch_add(subtask_errors, Ordering::Relaxed);
    }

    /// Counts the threads a run stopped with ptrace to read their stacks: one per sample with
    /// the ptrace sampler; with perf events only the threads asleep since before the run, once.
    pub fn ptrace_stopped(&self, stops: u64) {
        self.ptrace_stops.fetch_add(stops, Ordering::Relaxed);
    }

    /// The exposition text, with `in_flight` runs in progress now.
    pub fn render(&self, in_flight: usize) -> String {
        let mut w = TextWriter::new();
        let runs = "flamegrid_agent_sampling_runs_total";
        w.family(
            runs,
            Kind::Counter,
            "Sampling calls (Sample, ThreadDump) served, by outcome.",
        );
        for (o, n) in Outcome::ALL.iter().zip(&self.runs) {
            w.sample(
                runs,
                &[("outcome", o.label())],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        w.histogram(
            "flamegrid_agent_sampling_run_duration_seconds",
            "Duration of sampling runs that sampled, request to answer.",
            &self.durations,
        );
        w.single(
            "flamegrid_agent_sampling_runs_in_flight",
            Kind::Gauge,
            "Sampling runs in progress.",
            in_flight as f64,
        );
        w.single(
            "flamegrid_agent_samples_total",
            Kind::Counter,
            "Thread samples taken and sent.",
            self.samples.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "flamegrid_agent_ptrace_stops_total",
            Kind::Counter,
            "Threads stopped with ptrace to read their registers and stack.",
            self.ptrace_stops.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "flamegrid_agent_subtask_errors_total",
            Kind::Counter,
            "Subtasks of answered runs that could not be sampled.",
            self.subtask_errors.load(Ordering::Relaxed) as f64,
        );
        w.finish()
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `render` makes the body.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, render.as_ref()).await {
                tracing::debug!(error = %e, "metrics listener: connection ended");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= MAX_HEAD_BYTES {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await;
    let complete = matches!(read, Ok(Ok(true)));
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default())
        .into_owned();
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if !complete {
        (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        )
    } else if path != "/metrics" {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_owned(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        )
    } else {
        ("200 OK", CONTENT_TYPE, render())
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamegrid_proto::prometheus::parse_line;

    #[test]
    fn counters_show_in_the_text() {
        let t = Telemetry::default();
        t.sampled(Duration::from_millis(120), 40, 1);
        t.run_ended(Outcome::of_status(tonic::Code::ResourceExhausted));
        let text = t.render(2);
        let samples: Vec<_> = text
            .lines()
            .filter_map(|l| parse_line(l).unwrap())
            .collect();
        let value = |name: &str, label: Option<&str>| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && label.is_none_or(|v| l.iter().any(|(_, x)| x == v)))
                .map(|s| s.2)
        };
        assert_eq!(
            value("flamegrid_agent_sampling_runs_total", Some("ok")),
            Some(1.0)
        );
        assert_eq!(
            value("flamegrid_agent_sampling_runs_total", Some("busy")),
            Some(1.0)
        );
        assert_eq!(value("flamegrid_agent_samples_total", None), Some(40.0));
        assert_eq!(
            value("flamegrid_agent_subtask_errors_total", None),
            Some(1.0)
        );
        assert_eq!(
            value("flamegrid_agent_sampling_runs_in_flight", None),
            Some(2.0)
        );
        assert_eq!(
            value("flamegrid_agent_sampling_run_duration_seconds_count", None),
            Some(1.0)
        );
    }
}
