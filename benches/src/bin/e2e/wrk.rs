//! Running `wrk` and reading its text report.
//!
//! wrk is the load generator of phase 2 (and of Flink's reference, so both sides are loaded
//! alike): `wrk -t2 -c32 -d<duration> --latency URL`. It has no machine-readable output, so
//! its report is read line by line: the rate, the 50 % and 99 % latencies of the
//! `--latency` distribution, the request count and the failures (non-2xx answers and socket
//! errors, which the report prints so a fast but failing URL cannot pass for a fast one).

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

/// What one wrk run reports.
#[derive(Debug, Clone, Default)]
pub struct WrkRun {
    pub rps: f64,
    /// CPU the coordinator used during the run, in cores (CPU seconds per wall second); filled
    /// in by the caller, who watches the coordinator.
    pub coordinator_cores: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// Runs `wrk -t2 -c32 -d<duration> --latency URL` and parses its report.
pub fn run_wrk(url: &str, duration: &str) -> Result<WrkRun> {
    let output = Command::new("wrk")
        .args(["-t2", "-c32", "-d", duration, "--latency", url])
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text)
}

/// Parses a latency like `1.23ms`, `870.00us` or `1.02s` into milliseconds.
fn parse_latency_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Reads wrk's text report (run with `--latency`).
fn parse_wrk(text: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n, ..] => run.rps = n.parse().unwrap_or(0.0),
            ["Latency", "Distribution", ..] => in_distribution = true,
            ["50%", v] if in_distribution => run.p50_ms = parse_latency_ms(v).unwrap_or(f64::NAN),
            ["99%", v] if in_distribution => run.p99_ms = parse_latency_ms(v).unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => run.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                run.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if run.requests == 0 {
        bail!("could not read wrk's report:\n{text}");
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 10s test @ http://127.0.0.1:1/config
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.50us    1.20ms  40.00ms   95.00%
    Req/Sec    25.00k     2.00k   30.00k    70.00%
  Latency Distribution
     50%  520.00us
     75%  700.00us
     90%    1.00ms
     99%    7.54ms
  500000 requests in 10.00s, 100.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  49998.50
Transfer/sec:     10.00MB
";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.requests, 500_000);
        assert!((run.rps - 49_998.5).abs() < 1e-9);
        assert!((run.p50_ms - 0.52).abs() < 1e-9);
        assert!((run.p99_ms - 7.54).abs() < 1e-9);
        assert_eq!(run.non_2xx, 7);
        assert_eq!(run.socket_errors, 3);
    }

    #[test]
    fn an_unreadable_wrk_report_is_an_error() {
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn latencies_convert_to_milliseconds() {
        assert_eq!(parse_latency_ms("870.00us"), Some(0.87));
        assert_eq!(parse_latency_ms("1.50ms"), Some(1.5));
        assert_eq!(parse_latency_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_latency_ms("1.00m"), Some(60_000.0));
        assert_eq!(parse_latency_ms("fast"), None);
    }
}
