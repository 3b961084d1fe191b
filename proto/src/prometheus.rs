//! Prometheus' text exposition format (version 0.0.4), written by hand: the few metrics the
//! agent and the coordinator serve at `/metrics` do not need a metrics framework, and both
//! binaries write them through this one writer so the two endpoints follow the same rules.
//!
//! * every metric family gets its `# HELP` and `# TYPE` lines once, before its samples;
//! * names are `flamegrid_<binary>_...`, counters end in `_total`, durations are in seconds;
//! * label values are escaped (`\\`, `"`, newline) as the format asks; numbers are written so
//!   Prometheus reads them back (`NaN`, `+Inf`, `-Inf` for non-finite values);
//! * a [`Histogram`] is lock-free (atomic counters per bucket), so recording a run's duration
//!   never waits for a scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets (upper bounds, seconds) for durations of sampling runs: from a single sample to
/// Flink's default 100 × 50 ms window and beyond.
pub const RUN_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, a sum and a count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes one exposition: call [`TextWriter::family`] once per metric, then its samples.
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

/// A number as the text format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl TextWriter {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts metric family `name`: its `# HELP` (one line; newlines and backslashes escaped)
    /// and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        self
    }

    /// One sample of `name` with `labels`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A histogram family: cumulative `_bucket`s (`le` up to `+Inf`), `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        let snapshot = h.snapshot();
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (bound, n) in h.bounds.iter().zip(&snapshot.counts) {
            cumulative += n;
            self.sample(&bucket, &[("le", &number(*bound))], cumulative as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count as f64);
        self.sample(&format!("{name}_sum"), &[], snapshot.sum_seconds);
        self.sample(&format!("{name}_count"), &[], snapshot.count as f64)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A histogram of durations with fixed bucket bounds, recorded without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative): `counts[i]` holds those `<= bounds[i]` and
    /// above the previous bound.
    counts: Vec<AtomicU64>,
    /// Observations above the last bound.
    overflow: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A consistent-enough reading of a [`Histogram`] (each field read once).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative.
    pub counts: Vec<u64>,
    /// All observations.
    pub count: u64,
    /// Their sum, seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            overflow: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|&b| secs <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count = counts.iter().sum::<u64>() + self.overflow.load(Ordering::Relaxed);
        HistogramSnapshot {
            counts,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(RUN_DURATION_BUCKETS)
    }
}

/// Checks one exposition line by the text format's grammar: a comment (`# HELP name text`,
/// `# TYPE name counter|gauge|histogram|summary|untyped`, or any other `#` line), or a sample
/// `name{label="value",...} number`. Returns the sample's name, labels and value, `None` for a
/// comment; an error names what is wrong. For tests and tools that read `/metrics`.
#[allow(clippy::type_complexity)]
pub fn parse_line(line: &str) -> Result<Option<(String, Vec<(String, String)>, f64)>, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if let Some(comment) = line.strip_prefix('#') {
        let words: Vec<&str> = comment.split_whitespace().collect();
        match words.as_slice() {
            ["HELP", name, ..] if valid_name(name) => {}
            ["TYPE", name, kind]
                if valid_name(name)
                    && ["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) => {}
            ["HELP" | "TYPE", ..] => return Err(format!("bad {line:?}")),
            _ => {}
        }
        return Ok(None);
    }
    let (head, value) = line
        .rsplit_once(' ')
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("bad value in {line:?}"))?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head, Vec::new()),
        Some((name, rest)) => {
            let inner = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("unclosed labels in {line:?}"))?;
            let mut labels = Vec::new();
            let mut rest = inner;
            while !rest.is_empty() {
                let (key, after) = rest
                    .split_once("=\"")
                    .ok_or_else(|| format!("bad label in {line:?}"))?;
                if !valid_name(key) {
                    return Err(format!("bad label name {key:?} in {line:?}"));
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => return Err(format!("bad escape in {line:?}")),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated label in {line:?}")),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            (name, labels)
        }
    };
    if !valid_name(name) {
        return Err(format!("bad metric name in {line:?}"));
    }
    Ok(Some((name.to_owned(), labels, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposition_parses_back() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut w = TextWriter::new();
        w.single("x_total", Kind::Counter, "Things.\nMore", 3.0);
        w.family("y", Kind::Gauge, "Labelled.")
            .sample("y", &[("who", "a\"b\\c\nd")], f64::NAN);
        w.histogram("d_seconds", "Durations.", &h);
        let text = w.finish();
        let samples: Vec<_> = text
            .lines()
            .filter_map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(samples[0], ("x_total".into(), vec![], 3.0));
        assert_eq!(samples[1].1, vec![("who".into(), "a\"b\\c\nd".into())]);
        assert!(samples[1].2.is_nan());
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 == "d_seconds_bucket")
            .map(|s| s.2)
            .collect();
        assert_eq!(buckets, vec![1.0, 2.0, 3.0]);
        let count = samples.iter().find(|s| s.0 == "d_seconds_count").unwrap();
        assert_eq!(count.2, 3.0);
        let sum = samples.iter().find(|s| s.0 == "d_seconds_sum").unwrap();
        assert!((sum.2 - 5.55).abs() < 1e-9, "{}", sum.2);
        assert!(text.contains("# HELP x_total Things.\\nMore\n# TYPE x_total counter\n"));
    }

    #[test]
    fn bad_lines_are_refused() {
        for bad in [
            "x",
            "x 1 2 3",
            "1x 1",
            "x{a=\"b} 1",
            "x{a=b} 1",
            "x abc",
            "# TYPE x colour",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}
