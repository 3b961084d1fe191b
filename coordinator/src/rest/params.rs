//! Parsing of path and query parameters, with Flink's 400 messages.
//!
//! Handlers take path parameters as raw strings and parse them here, rather than through typed
//! extractors, so that a malformed id gets Flink's exact wording instead of the framework's.

use super::error::ApiError;
use crate::registry::ids::parse_id;
use serde::Deserialize;
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

/// The path parameter of `/jobs/:jobid/...`, as `/openapi.json` describes it. Handlers take
/// the raw string and parse it with [`job_id`].
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// Job id: 32 hex digits (any case). Anything else is a 400; an unknown id a 404.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub jobid: String,
}

/// The path parameters of `/jobs/:jobid/vertices/:vertexid/...`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VertexPath {
    /// Job id: 32 hex digits (any case). Anything else is a 400; an unknown id a 404.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub jobid: String,
    /// Vertex id: 32 hex digits (any case), as listed by `GET /jobs/:jobid`.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub vertexid: String,
}

/// The path parameters of `/jobs/:jobid/vertices/:vertexid/subtasks/:subtaskindex/...`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubtaskPath {
    /// Job id: 32 hex digits (any case).
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub jobid: String,
    /// Vertex id: 32 hex digits (any case).
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub vertexid: String,
    /// Subtask index: a non-negative integer (400 otherwise), below the parallelism (404
    /// otherwise).
    #[param(pattern = "^[0-9]{1,9}$")]
    pub subtaskindex: String,
}

/// The path parameter of `/taskmanagers/:tmid/...`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskManagerPath {
    /// Task manager (agent) id, as listed by `GET /taskmanagers`; may contain `:`.
    pub tmid: String,
}

/// A job id from the path: 32 hex digits, returned in lower case.
pub fn job_id(raw: &str) -> Result<String, ApiError> {
    parse_id(raw).ok_or_else(|| ApiError::bad_path_param("jobid", raw))
}

/// A vertex id from the path: 32 hex digits, returned in lower case.
pub fn vertex_id(raw: &str) -> Result<String, ApiError> {
    parse_id(raw).ok_or_else(|| ApiError::bad_path_param("vertexid", raw))
}

/// A subtask index from the path, as Flink's `SubtaskIndexPathParameter` reads it: Java's
/// `Integer.parseInt` (an optional `+` or `-` sign, ASCII digits, within `i32`), then not
/// negative. So `+3` and `-0` are accepted, `2147483648` and `-1` are not.
pub fn subtask_index(raw: &str) -> Result<usize, ApiError> {
    flink_int(raw)
        .filter(|i| *i >= 0)
        .map(|i| i as usize)
        .ok_or_else(|| ApiError::bad_path_param("subtaskindex", raw))
}

/// Java's `Integer.parseInt` for ASCII input: an optional sign, then one or more digits, within
/// `i32`. (Rust's `i32::from_str` accepts exactly that.)
pub fn flink_int(raw: &str) -> Option<i32> {
    raw.parse::<i32>().ok()
}

/// Splits one query value the way Flink's `MessageQueryParameter.resolveFromString` does, with
/// Java's `String.split(",")`: every segment is kept as is (no trimming), empty ones included,
/// except that trailing empty segments are dropped, and an empty value is one empty segment.
/// (`"a,,b"` → `[a, "", b]`, `"a,"` → `[a]`, `","` → `[]`, `""` → `[""]`.)
pub fn flink_split(value: &str) -> Vec<String> {
    if value.is_empty() {
        return vec![String::new()];
    }
    let mut parts: Vec<String> = value.split(',').map(String::from).collect();
    while parts.last().is_some_and(String::is_empty) {
        parts.pop();
    }
    parts
}

/// Query parameters read Flink's way: a key's repeated values are joined with `,` and the result
/// is split with [`flink_split`] (`?get=a,b&get=c` → `get: [a, b, c]`). Segments are not trimmed,
/// so `?type= on_cpu` is the value `" on_cpu"`, which Flink refuses too.
pub fn query_lists(pairs: &[(String, String)]) -> HashMap<String, Vec<String>> {
    let mut joined: HashMap<String, String> = HashMap::new();
    for (k, v) in pairs {
        match joined.get_mut(k) {
            Some(all) => {
                all.push(',');
                all.push_str(v);
            }
            None => {
                joined.insert(k.clone(), v.clone());
            }
        }
    }
    joined
        .into_iter()
        .map(|(k, v)| (k, flink_split(&v)))
        .collect()
}

/// The query of the three flame graph paths (parsed by `GraphQuery::parse`).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlameGraphParams {
    /// `FULL` (default), `ON_CPU` or `OFF_CPU`, in any letter case; the first of a comma list.
    /// Anything else is a 400.
    #[serde(rename = "type")]
    #[param(rename = "type", inline)]
    pub graph_type: Option<FlameGraphTypeParam>,
    /// One subtask: a non-negative integer (400 otherwise) below the parallelism (404
    /// otherwise); all subtasks without it.
    #[param(pattern = "^[0-9]{1,9}$")]
    pub subtaskindex: Option<String>,
    /// A kept run, by its `endTimestamp` (see `.../flamegraph/history`); the latest without it.
    /// Not an integer: 400; no such kept run: 404.
    #[param(pattern = "^[0-9]{1,15}$")]
    pub at: Option<String>,
    /// `true`: start a new sampling run now even if the cached graph is fresh (unless one is in
    /// flight); the answer is still immediate, with what is cached. `false` (default): the
    /// refresh interval decides. Any other value is a 400.
    pub refresh: Option<bool>,
}

/// The values of the flame graph `type` parameter (any letter case is accepted).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlameGraphTypeParam {
    /// Every sample.
    Full,
    /// Samples of running threads.
    OnCpu,
    /// Samples of waiting threads.
    OffCpu,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_java() {
        assert_eq!(flink_split("a,,b"), ["a", "", "b"]);
        assert_eq!(flink_split("a,"), ["a"]);
        assert!(flink_split(",").is_empty());
        assert_eq!(flink_split(""), [""]);
        assert_eq!(flink_split(" a"), [" a"]);
    }

    #[test]
    fn subtask_index_follows_integer_parse_int() {
        assert_eq!(subtask_index("+3").unwrap(), 3);
        assert_eq!(subtask_index("-0").unwrap(), 0);
        assert_eq!(subtask_index("007").unwrap(), 7);
        for bad in ["-1", "2147483648", "", " 1", "1.0", "x"] {
            assert!(subtask_index(bad).is_err(), "{bad:?}");
        }
    }
}
