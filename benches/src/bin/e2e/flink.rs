//! Apache Flink's side of the comparison: the figures `benches/flink-reference.sh --results
//! FILE` measured on a real Flink 2.3 cluster in the same invocation of `e2e.sh`, or, when
//! Flink could not run, the reason and the figures quoted in issue 6.
//!
//! The file is read before any measuring starts, so a broken one fails the run at once
//! instead of after minutes of work. Its shape (written by the script's Python):
//! `{"flink_version", "java", "load_average_end", "first_graph_ms": [..],
//!   "wrk": {"flamegraph": [{"rps", "jm_cores", "p50_ms", "p99_ms"}, ..], "overview": [..]},
//!   "memory": [{"jobmanager": {"VmRSS", "VmHWM", "RssAnon", "RssFile"} (MiB), "taskmanager"}]}`.

use crate::goals;
use anyhow::{Context, Result, anyhow, bail};
use flamegrid_benches::procfs::Memory;
use flamegrid_benches::stats::median;
use serde_json::Value;
use std::path::Path;

/// One wrk run against Flink's JobManager.
#[derive(Debug, Clone, Copy)]
pub struct FlinkWrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU the JobManager used per second of the run, in cores.
    pub jm_cores: f64,
}

/// The figures of a real Flink cluster.
#[derive(Debug, Clone)]
pub struct FlinkReference {
    pub version: String,
    pub java: String,
    pub load_end: String,
    /// Time to first graph (default window, 1 subtask, 5 ms poll), one per round.
    pub first_graph_ms: Vec<f64>,
    pub flamegraph: Vec<FlinkWrk>,
    pub overview: Vec<FlinkWrk>,
    /// JobManager and TaskManager memory after the load, KiB (as [`Memory`]).
    pub jobmanager: Memory,
    pub taskmanager: Memory,
}

impl FlinkReference {
    /// Reads and checks the file `flink-reference.sh --results` wrote.
    pub fn load(path: &Path) -> Result<FlinkReference> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the Flink figures {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let num = |x: &Value, what: &str| -> Result<f64> {
            x.as_f64()
                .ok_or_else(|| anyhow!("{}: {what} is not a number", path.display()))
        };
        let wrk = |kind: &str| -> Result<Vec<FlinkWrk>> {
            v["wrk"][kind]
                .as_array()
                .ok_or_else(|| anyhow!("{}: no wrk.{kind}", path.display()))?
                .iter()
                .map(|r| {
                    Ok(FlinkWrk {
                        rps: num(&r["rps"], "rps")?,
                        p50_ms: r["p50_ms"].as_f64().unwrap_or(f64::NAN),
                        p99_ms: r["p99_ms"].as_f64().unwrap_or(f64::NAN),
                        jm_cores: num(&r["jm_cores"], "jm_cores")?,
                    })
                })
                .collect()
        };
        let last = v["memory"]
            .as_array()
            .and_then(|m| m.last())
            .ok_or_else(|| anyhow!("{}: no memory points", path.display()))?;
        let mem = |role: &str| -> Result<Memory> {
            let kib = |field: &str| -> Result<u64> {
                Ok((num(&last[role][field], field)? * 1024.0).round() as u64)
            };
            Ok(Memory {
                rss: kib("VmRSS")?,
                hwm: kib("VmHWM")?,
                anon: kib("RssAnon")?,
                file: kib("RssFile")?,
            })
        };
        let first_graph_ms = v["first_graph_ms"]
            .as_array()
            .ok_or_else(|| anyhow!("{}: no first_graph_ms", path.display()))?
            .iter()
            .map(|x| num(x, "first_graph_ms"))
            .collect::<Result<Vec<_>>>()?;
        let reference = FlinkReference {
            version: v["flink_version"].as_str().unwrap_or("2.3").to_owned(),
            java: v["java"].as_str().unwrap_or("java").to_owned(),
            load_end: v["load_average_end"].as_str().unwrap_or("?").to_owned(),
            first_graph_ms,
            flamegraph: wrk("flamegraph")?,
            overview: wrk("overview")?,
            jobmanager: mem("jobmanager")?,
            taskmanager: mem("taskmanager")?,
        };
        if reference.first_graph_ms.is_empty()
            || reference.flamegraph.is_empty()
            || reference.overview.is_empty()
        {
            bail!("{}: a measurement has no rounds", path.display());
        }
        Ok(reference)
    }

    /// The median rate of the `kind` URL ("flamegraph" or "overview").
    pub fn rps(&self, kind: &str) -> f64 {
        let runs = if kind == "flamegraph" {
            &self.flamegraph
        } else {
            &self.overview
        };
        median(&runs.iter().map(|w| w.rps).collect::<Vec<_>>())
    }
}

/// Flink's side of the comparison: measured in this run, or the issue's figures and why.
pub struct FlinkSide {
    pub measured: Option<FlinkReference>,
    pub note: String,
}

impl FlinkSide {
    /// Reads `--flink-results` if given; otherwise keeps `--flink-note` as the reason.
    pub fn from_options(results: Option<&Path>, note: Option<&str>) -> Result<FlinkSide> {
        Ok(match results {
            Some(path) => FlinkSide {
                measured: Some(FlinkReference::load(path)?),
                note: String::new(),
            },
            None => FlinkSide {
                measured: None,
                note: note
                    .unwrap_or("the driver was run without --flink-results")
                    .to_owned(),
            },
        })
    }

    pub fn flamegraph_rps(&self) -> f64 {
        self.measured
            .as_ref()
            .map_or(goals::FLINK_FLAMEGRAPH_RPS, |f| f.rps("flamegraph"))
    }

    pub fn overview_rps(&self) -> f64 {
        self.measured
            .as_ref()
            .map_or(goals::FLINK_OVERVIEW_RPS, |f| f.rps("overview"))
    }

    /// How the report names the source of the Flink figures.
    pub fn source(&self) -> &'static str {
        if self.measured.is_some() {
            "measured in this run"
        } else {
            "issue 6's figure"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flink_figures_are_read_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        let memory = json!({"VmRSS": 300.0, "VmHWM": 310.5, "RssAnon": 250.0, "RssFile": 50.0});
        let run = |rps: f64| json!({"rps": rps, "jm_cores": 1.0, "p50_ms": 2.0, "p99_ms": 9.0});
        std::fs::write(
            &good,
            json!({
                "flink_version": "2.3.0",
                "java": "openjdk 17",
                "load_average_end": "1.00",
                "first_graph_ms": [5100.0, 5050.0, 5200.0],
                "wrk": {"flamegraph": [run(800.0), run(900.0), run(850.0)],
                        "overview": [run(17000.0)]},
                "memory": [{"label": "after", "jobmanager": memory, "taskmanager": memory}],
            })
            .to_string(),
        )
        .unwrap();
        let f = FlinkReference::load(&good).unwrap();
        assert_eq!(f.rps("flamegraph"), 850.0);
        assert_eq!(f.rps("overview"), 17000.0);
        assert_eq!(median(&f.first_graph_ms), 5100.0);
        assert_eq!(f.jobmanager.hwm, 317_952);
        let side = FlinkSide::from_options(Some(&good), None).unwrap();
        assert_eq!(side.flamegraph_rps(), 850.0);
        assert_eq!(side.source(), "measured in this run");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"first_graph_ms": [], "wrk": {}}"#).unwrap();
        assert!(FlinkReference::load(&bad).is_err());
        assert!(FlinkReference::load(&dir.path().join("missing.json")).is_err());
        assert!(FlinkSide::from_options(Some(&bad), Some("ignored")).is_err());
    }

    #[test]
    fn without_figures_the_issue_s_are_used_and_the_reason_kept() {
        let side = FlinkSide::from_options(None, Some("offline")).unwrap();
        assert_eq!(side.note, "offline");
        assert_eq!(side.flamegraph_rps(), goals::FLINK_FLAMEGRAPH_RPS);
        assert_eq!(side.overview_rps(), goals::FLINK_OVERVIEW_RPS);
        assert_eq!(side.source(), "issue 6's figure");
        let unexplained = FlinkSide::from_options(None, None).unwrap();
        assert_eq!(
            unexplained.note,
            "the driver was run without --flink-results"
        );
    }
}
