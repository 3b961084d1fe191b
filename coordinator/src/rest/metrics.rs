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
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

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
pub fn metric_values(metrics: &BTreeMap<String, f64>, q: &MetricQuery) -> Value {
    match &q.get {
        None => Value::Array(metrics.keys().map(|id| json!({ "id": id })).collect()),
        Some(ids) => Value::Array(
            ids.iter()
                .filter_map(|id| {
                    metrics
                        .get(id)
                        .map(|v| json!({"id": id, "value": format_value(*v)}))
                })
                .collect(),
        ),
    }
}

/// Answers an aggregating metric query over several sources' metrics.
pub fn aggregate(sources: &[BTreeMap<String, f64>], q: &MetricQuery) -> Value {
    let Some(ids) = &q.get else {
        let all: BTreeSet<&String> = sources.iter().flat_map(|m| m.keys()).collect();
        return Value::Array(all.into_iter().map(|id| json!({ "id": id })).collect());
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
        let mut entry = Map::new();
        entry.insert("id".into(), json!(id));
        for mode in &q.agg {
            let v = match *mode {
                "min" => min,
                "max" => max,
                "avg" => avg,
                "sum" => sum,
                _ => skew,
            };
            entry.insert((*mode).into(), json!(v));
        }
        out.push(Value::Object(entry));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            aggregate(&[a.clone(), b], &q),
            json!([{"id": "x", "min": 1.0, "max": 3.0}])
        );
        let q = MetricQuery::parse(&pairs(&[("get", "y")]), false).unwrap();
        assert_eq!(metric_values(&a, &q), json!([{"id": "y", "value": "2.5"}]));
        assert!(MetricQuery::parse(&pairs(&[("agg", "median")]), true).is_err());
    }
}
