//! Flink's metric query protocol, shared by every `.../metrics` path.
//!
//! * Without `get`: the list of available metric ids, `[{"id": "..."}]`.
//! * With `get=a,b`: `[{"id": "a", "value": "1.5"}]` (values are strings, as in Flink; unknown
//!   ids are left out rather than failing the request).
//! * Aggregating paths (`/taskmanagers/metrics`, `/jobs/metrics`) answer
//!   `[{"id", "min", "max", "avg", "sum", "skew"}]`, limited to the modes listed in `agg`.
//!   `skew` is `(max - avg) / avg * 100` (0 when `avg` is 0): how far the busiest source is
//!   above the mean, in percent.

use super::error::ApiError;
use super::params::query_lists;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::{IntoParams, ToSchema};

/// One entry of a metric answer: only `id` when listing what exists, `id` and `value` (a
/// string, as Flink writes it) when asked with `get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MetricValue {
    /// The metric's name (`System.CPU.Usage`, `uptime`).
    pub id: String,
    /// Its value, formatted as Flink does; absent when only listing ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One entry of an aggregating metric answer: `id` plus the modes asked for in `agg` (all five
/// when `agg` is absent); only `id` when listing what exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct AggregatedMetric {
    /// The metric's name.
    pub id: String,
    /// Smallest value across the sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest value across the sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Mean across the sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg: Option<f64>,
    /// Sum across the sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    /// `(max - avg) / avg * 100`, 0 when `avg` is 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew: Option<f64>,
}

/// The query of a single-source metric path (`/jobmanager/metrics`, `/jobs/:jobid/metrics`,
/// `/taskmanagers/:tmid/metrics`, the vertex metric paths). Handlers read the raw pairs through
/// [`MetricQuery::parse`]; this type describes them in `/openapi.json`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricParams {
    /// Comma-separated metric ids to read (repeatable); without it, the ids that exist.
    pub get: Option<String>,
}

/// The query of `/jobs/metrics`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsMetricParams {
    /// Comma-separated metric ids to aggregate (repeatable); without it, the ids that exist.
    pub get: Option<String>,
    /// Comma-separated aggregation modes: `min`, `max`, `avg`, `sum`, `skew` (any case).
    pub agg: Option<String>,
    /// Comma-separated job ids to aggregate over; all jobs without it.
    pub jobs: Option<String>,
}

/// The query of `/taskmanagers/metrics`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskManagersMetricParams {
    /// Comma-separated metric ids to aggregate (repeatable); without it, the ids that exist.
    pub get: Option<String>,
    /// Comma-separated aggregation modes: `min`, `max`, `avg`, `sum`, `skew` (any case).
    pub agg: Option<String>,
    /// Comma-separated task manager ids to aggregate over; all without it.
    pub taskmanagers: Option<String>,
}

/// The query of `/jobs/:jobid/vertices/:vertexid/subtasks/metrics`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubtasksMetricParams {
    /// Comma-separated metric ids to aggregate (repeatable); without it, the ids that exist.
    pub get: Option<String>,
    /// Comma-separated aggregation modes: `min`, `max`, `avg`, `sum`, `skew` (any case).
    pub agg: Option<String>,
    /// Comma-separated subtask indexes (accepted and ignored: there are no subtask metrics).
    pub subtasks: Option<String>,
}

/// The aggregation modes Flink accepts in `agg`.
const AGG_MODES: [&str; 5] = ["min", "max", "avg", "sum", "skew"];

/// A parsed metric query.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricQuery {
    /// The requested ids, or `None` to list what exists.
    pub get: Option<Vec<String>>,
    /// Aggregation modes, in Flink's order; all of them when `agg` is absent.
    pub agg: Vec<&'static str>,
}

impl MetricQuery {
    /// Parses `get` (and, when `aggregating`, `agg`) from the query pairs.
    pub fn parse(pairs: &[(String, String)], aggregating: bool) -> Result<Self, ApiError> {
        let lists = query_lists(pairs);
        let get = lists.get("get").cloned();
        let mut agg = Vec::new();
        match lists.get("agg") {
            Some(modes) if aggregating => {
                for m in modes {
                    let Some(mode) = AGG_MODES.iter().find(|a| a.eq_ignore_ascii_case(m)) else {
                        return Err(ApiError::bad_query_param("agg", m));
                    };
                    if !agg.contains(mode) {
                        agg.push(*mode);
                    }
                }
            }
            _ => agg.extend(AGG_MODES),
        }
        Ok(MetricQuery { get, agg })
    }
}

/// Formats a metric value as Flink does: integers without a fraction.
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

/// Answers a metric query over one source's metrics.
pub fn metric_values(metrics: &BTreeMap<String, f64>, q: &MetricQuery) -> Vec<MetricValue> {
    match &q.get {
        None => metrics
            .keys()
            .map(|id| MetricValue {
                id: id.clone(),
                value: None,
            })
            .collect(),
        Some(ids) => ids
            .iter()
            .filter_map(|id| {
                metrics.get(id).map(|v| MetricValue {
                    id: id.clone(),
                    value: Some(format_value(*v)),
                })
            })
            .collect(),
    }
}

/// Answers an aggregating metric query over several sources' metrics.
pub fn aggregate(sources: &[BTreeMap<String, f64>], q: &MetricQuery) -> Vec<AggregatedMetric> {
    let Some(ids) = &q.get else {
        let all: BTreeSet<&String> = sources.iter().flat_map(|m| m.keys()).collect();
        return all
            .into_iter()
            .map(|id| AggregatedMetric {
                id: id.clone(),
                ..AggregatedMetric::default()
            })
            .collect();
    };
    let mut out = Vec::new();
    for id in ids {
        let values: Vec<f64> = sources.iter().filter_map(|m| m.get(id).copied()).collect();
        if values.is_empty() {
            continue;
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = values.iter().sum();
        let avg = sum / values.len() as f64;
        let skew = if avg == 0.0 {
            0.0
        } else {
            (max - avg) / avg * 100.0
        };
        let mut entry = AggregatedMetric {
            id: id.clone(),
            ..AggregatedMetric::default()
        };
        for mode in &q.agg {
            match *mode {
                "min" => entry.min = Some(min),
                "max" => entry.max = Some(max),
                "avg" => entry.avg = Some(avg),
                "sum" => entry.sum = Some(sum),
                _ => entry.skew = Some(skew),
            }
        }
        out.push(entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn get_and_agg() {
        let a = BTreeMap::from([("x".to_string(), 1.0), ("y".to_string(), 2.5)]);
        let b = BTreeMap::from([("x".to_string(), 3.0)]);
        let q = MetricQuery::parse(&pairs(&[("get", "x,nope"), ("agg", "min,MAX")]), true).unwrap();
        assert_eq!(
            serde_json::to_value(aggregate(&[a.clone(), b], &q)).unwrap(),
            json!([{"id": "x", "min": 1.0, "max": 3.0}])
        );
        let q = MetricQuery::parse(&pairs(&[("get", "y")]), false).unwrap();
        assert_eq!(
            serde_json::to_value(metric_values(&a, &q)).unwrap(),
            json!([{"id": "y", "value": "2.5"}])
        );
        assert!(MetricQuery::parse(&pairs(&[("agg", "median")]), true).is_err());
    }
}
