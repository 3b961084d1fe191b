//! Parsing of path and query parameters, with Flink's 400 messages.
//!
//! Handlers take path parameters as raw strings and parse them here, rather than through typed
//! extractors, so that a malformed id gets Flink's exact wording instead of the framework's.

use super::error::ApiError;
use crate::registry::ids::parse_id;
use std::collections::HashMap;

/// A job id from the path: 32 hex digits, returned in lower case.
pub fn job_id(raw: &str) -> Result<String, ApiError> {
    parse_id(raw).ok_or_else(|| ApiError::bad_path_param("jobid", raw))
}

/// A vertex id from the path: 32 hex digits, returned in lower case.
pub fn vertex_id(raw: &str) -> Result<String, ApiError> {
    parse_id(raw).ok_or_else(|| ApiError::bad_path_param("vertexid", raw))
}

/// A subtask index from the path: a non-negative integer.
pub fn subtask_index(raw: &str) -> Result<usize, ApiError> {
    raw.parse::<u32>()
        .map(|i| i as usize)
        .map_err(|_| ApiError::bad_path_param("subtaskindex", raw))
}

/// Query parameters split Flink's way: each key's values, with comma lists flattened
/// (`?get=a,b&get=c` → `get: [a, b, c]`).
pub fn query_lists(pairs: &[(String, String)]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        let entry = out.entry(k.clone()).or_default();
        entry.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    out
}
