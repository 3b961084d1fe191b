//! Validation of a `POST /jobs` body, whole, before anything is stored.
//!
//! The body is walked as a `serde_json::Value` rather than deserialized straight into a struct,
//! so that *every* problem is reported at once, each prefixed with the path of the field it is
//! about (`vertices[1].subtasks[0].pid: ...`). A client that gets a 400 can fix its whole body in
//! one go, and unknown keys (a typo such as `thread-name`) are refused instead of silently
//! selecting every thread.
//!
//! The limits are Flink's: a vertex's parallelism may be up to 32,768 (Flink's largest max
//! parallelism) and a job may have up to 100,000 subtasks. Checking a body costs time linear in
//! its size: duplicate tids are found through a set, and a thread-name regex used by many
//! subtasks is compiled once.

use super::ids::random_id;
use super::job::{JobSpec, ProcessRef, SubtaskSpec, VertexSpec};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// At most this many vertices per job.
pub const MAX_VERTICES: usize = 1024;
/// At most this many subtasks per vertex: Flink's largest max parallelism (2^15).
pub const MAX_SUBTASKS_PER_VERTEX: usize = 32_768;
/// At most this many subtasks per job, all vertices together.
pub const MAX_SUBTASKS_PER_JOB: usize = 100_000;
/// At most this many tids per subtask.
pub const MAX_TIDS: usize = 1024;
/// Longest job or vertex name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest task manager id, in bytes.
pub const MAX_TASKMANAGER_ID: usize = 256;
/// Longest thread-name regex, in bytes.
pub const MAX_REGEX_BYTES: usize = 1024;
/// The kernel keeps 15 bytes of a process name (`comm`), so a longer name can never match.
pub const MAX_PROCESS_NAME_BYTES: usize = 15;
/// Largest pid or tid Linux can hand out (`PID_MAX_LIMIT`).
pub const MAX_PID: u64 = 4_194_304;

/// Checks a `POST /jobs` body and, when it is valid, turns it into a [`JobSpec`] with fresh ids.
/// `is_known_taskmanager` tells whether a task manager id is registered right now.
/// On failure, every problem found, each naming its field.
pub fn parse_job(
    body: &[u8],
    is_known_taskmanager: &dyn Fn(&str) -> bool,
) -> Result<JobSpec, Vec<String>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![format!(
            "Request did not match expected format JobRegistration: {e}."
        )]
    })?;
    let mut problems = Vec::new();
    let mut regexes = RegexCache::default();
    let Some(top) = value.as_object() else {
        return Err(vec![
            "body: expected a JSON object with \"name\" and \"vertices\"".into(),
        ]);
    };
    unknown_keys(top, "", &["name", "vertices"], &mut problems);
    let name = name_field(top, "name", "name", &mut problems);
    let mut vertices = Vec::new();
    match top.get("vertices") {
        None => problems.push("vertices: missing".into()),
        Some(Value::Array(items)) if items.is_empty() => {
            problems.push("vertices: must not be empty".into())
        }
        Some(Value::Array(items)) if items.len() > MAX_VERTICES => problems.push(format!(
            "vertices: at most {MAX_VERTICES} vertices, got {}",
            items.len()
        )),
        Some(Value::Array(items)) => {
            let mut total_subtasks = 0usize;
            for (i, item) in items.iter().enumerate() {
                if let Some(v) = vertex(item, i, is_known_taskmanager, &mut regexes, &mut problems)
                {
                    total_subtasks += v.subtasks.len();
                    vertices.push(v);
                }
            }
            if total_subtasks > MAX_SUBTASKS_PER_JOB {
                problems.push(format!("vertices: at most {MAX_SUBTASKS_PER_JOB} subtasks per job, got {total_subtasks}"));
            }
        }
        Some(_) => problems.push("vertices: expected an array".into()),
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(JobSpec {
        id: random_id(),
        name: name.unwrap_or_default(),
        vertices,
    })
}

/// Thread-name regexes already checked in this body: the error for an invalid one, `None` for
/// a valid one. Jobs of many subtasks repeat a few patterns; each is compiled once.
#[derive(Default)]
struct RegexCache(HashMap<String, Option<String>>);

impl RegexCache {
    /// Why `re` is not a valid thread-name regex, or `None` if it is.
    fn check(&mut self, re: &str) -> Option<String> {
        if let Some(known) = self.0.get(re) {
            return known.clone();
        }
        let problem = match regex::RegexBuilder::new(&format!("^(?:{re})$"))
            .size_limit(1 << 20)
            .build()
        {
            Ok(_) => None,
            Err(e) => Some(
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
        };
        self.0.insert(re.to_string(), problem.clone());
        problem
    }
}

fn vertex(
    value: &Value,
    index: usize,
    is_known_taskmanager: &dyn Fn(&str) -> bool,
    regexes: &mut RegexCache,
    problems: &mut Vec<String>,
) -> Option<VertexSpec> {
    let at = format!("vertices[{index}]");
    let Some(obj) = value.as_object() else {
        problems.push(format!("{at}: expected an object"));
        return None;
    };
    let before = problems.len();
    unknown_keys(
        obj,
        &at,
        &["name", "parallelism", "inputs", "subtasks"],
        problems,
    );
    let name = name_field(obj, "name", &format!("{at}.name"), problems);
    let parallelism = match obj.get("parallelism") {
        None => {
            problems.push(format!("{at}.parallelism: missing"));
            None
        }
        Some(v) => match v.as_u64() {
            Some(p) if (1..=MAX_SUBTASKS_PER_VERTEX as u64).contains(&p) => Some(p as usize),
            _ => {
                problems.push(format!("{at}.parallelism: expected an integer from 1 to {MAX_SUBTASKS_PER_VERTEX}, got {v}"));
                None
            }
        },
    };
    let mut inputs = Vec::new();
    match obj.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (j, item) in items.iter().enumerate() {
                match item.as_u64() {
                    Some(u) if (u as usize) < index => {
                        if inputs.contains(&(u as usize)) {
                            problems.push(format!("{at}.inputs[{j}]: vertex {u} is listed twice"));
                        } else {
                            inputs.push(u as usize);
                        }
                    }
                    _ => problems.push(format!(
                        "{at}.inputs[{j}]: expected the index of an earlier vertex (0 to {}), got {item}",
                        index as i64 - 1
                    )),
                }
            }
        }
        Some(other) => problems.push(format!(
            "{at}.inputs: expected an array of vertex indexes, got {other}"
        )),
    }
    let mut subtasks = Vec::new();
    match obj.get("subtasks") {
        None => problems.push(format!("{at}.subtasks: missing")),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                problems.push(format!("{at}.subtasks: must not be empty"));
            } else if items.len() > MAX_SUBTASKS_PER_VERTEX {
                problems.push(format!(
                    "{at}.subtasks: at most {MAX_SUBTASKS_PER_VERTEX} subtasks per vertex, got {}",
                    items.len()
                ));
            } else {
                for (j, item) in items.iter().enumerate() {
                    if let Some(s) = subtask(
                        item,
                        &format!("{at}.subtasks[{j}]"),
                        is_known_taskmanager,
                        regexes,
                        problems,
                    ) {
                        subtasks.push(s);
                    }
                }
                if let Some(p) = parallelism
                    && p != items.len()
                {
                    problems.push(format!(
                        "{at}.parallelism: is {p} but the vertex lists {} subtasks; they must be equal",
                        items.len()
                    ));
                }
            }
        }
        Some(_) => problems.push(format!("{at}.subtasks: expected an array")),
    }
    if problems.len() > before {
        return None;
    }
    Some(VertexSpec {
        id: random_id(),
        name: name.unwrap_or_default(),
        inputs,
        subtasks,
    })
}

fn subtask(
    value: &Value,
    at: &str,
    is_known_taskmanager: &dyn Fn(&str) -> bool,
    regexes: &mut RegexCache,
    problems: &mut Vec<String>,
) -> Option<SubtaskSpec> {
    let Some(obj) = value.as_object() else {
        problems.push(format!("{at}: expected an object"));
        return None;
    };
    let before = problems.len();
    unknown_keys(
        obj,
        at,
        &["taskmanager", "pid", "process_name", "tids", "thread_name"],
        problems,
    );
    let taskmanager = match obj.get("taskmanager") {
        None => {
            problems.push(format!("{at}.taskmanager: missing"));
            None
        }
        Some(Value::String(s)) if s.is_empty() || s.len() > MAX_TASKMANAGER_ID => {
            problems.push(format!(
                "{at}.taskmanager: expected 1 to {MAX_TASKMANAGER_ID} bytes"
            ));
            None
        }
        Some(Value::String(s)) if !is_known_taskmanager(s) => {
            problems.push(format!(
                "{at}.taskmanager: no task manager {s:?} is registered (see GET /taskmanagers)"
            ));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!(
                "{at}.taskmanager: expected a task manager id string, got {other}"
            ));
            None
        }
    };
    let process = match (obj.get("pid"), obj.get("process_name")) {
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{at}: give exactly one of \"pid\" and \"process_name\", not both"
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{at}: give exactly one of \"pid\" and \"process_name\""
            ));
            None
        }
        (Some(pid), None) => match pid.as_u64() {
            Some(p) if (1..=MAX_PID).contains(&p) => Some(ProcessRef::Pid(p as u32)),
            _ => {
                problems.push(format!(
                    "{at}.pid: expected a process id from 1 to {MAX_PID}, got {pid}"
                ));
                None
            }
        },
        (None, Some(Value::String(name))) => {
            if name.is_empty() || name.len() > MAX_PROCESS_NAME_BYTES {
                problems.push(format!(
                    "{at}.process_name: expected 1 to {MAX_PROCESS_NAME_BYTES} bytes (the kernel keeps only \
                     {MAX_PROCESS_NAME_BYTES} bytes of a process name), got {} bytes",
                    name.len()
                ));
                None
            } else if name.contains('/') || name.chars().any(char::is_control) {
                problems.push(format!(
                    "{at}.process_name: must not contain '/' or control characters"
                ));
                None
            } else {
                Some(ProcessRef::ProcessName(name.clone()))
            }
        }
        (None, Some(other)) => {
            problems.push(format!("{at}.process_name: expected a string, got {other}"));
            None
        }
    };
    let mut tids = Vec::new();
    match obj.get("tids") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.is_empty() => problems.push(format!(
            "{at}.tids: must not be empty (leave it out to select threads otherwise)"
        )),
        Some(Value::Array(items)) if items.len() > MAX_TIDS => problems.push(format!(
            "{at}.tids: at most {MAX_TIDS} thread ids, got {}",
            items.len()
        )),
        Some(Value::Array(items)) => {
            let mut seen = HashSet::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                match item.as_u64() {
                    Some(t) if (1..=MAX_PID).contains(&t) => {
                        if !seen.insert(t as u32) {
                            problems.push(format!("{at}.tids[{k}]: thread id {t} is listed twice"));
                        } else {
                            tids.push(t as u32);
                        }
                    }
                    _ => problems.push(format!(
                        "{at}.tids[{k}]: expected a thread id from 1 to {MAX_PID}, got {item}"
                    )),
                }
            }
        }
        Some(other) => problems.push(format!(
            "{at}.tids: expected an array of thread ids, got {other}"
        )),
    }
    let thread_name = match obj.get("thread_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(re)) if re.is_empty() => {
            problems.push(format!(
                "{at}.thread_name: must not be empty (leave it out to select all threads)"
            ));
            None
        }
        Some(Value::String(re)) if re.len() > MAX_REGEX_BYTES => {
            problems.push(format!(
                "{at}.thread_name: at most {MAX_REGEX_BYTES} bytes, got {}",
                re.len()
            ));
            None
        }
        Some(Value::String(re)) => match regexes.check(re) {
            None => Some(re.clone()),
            Some(problem) => {
                problems.push(format!(
                    "{at}.thread_name: not a valid regular expression: {problem}"
                ));
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "{at}.thread_name: expected a regular expression string, got {other}"
            ));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(SubtaskSpec {
        taskmanager: taskmanager?,
        process: process?,
        tids,
        thread_name,
    })
}

/// A required, non-empty, bounded display name.
fn name_field(
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match obj.get(key) {
        None => {
            problems.push(format!("{at}: missing"));
            None
        }
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if s.trim().is_empty() {
                problems.push(format!("{at}: must not be empty"));
                None
            } else if chars > MAX_NAME_CHARS {
                problems.push(format!(
                    "{at}: at most {MAX_NAME_CHARS} characters, got {chars}"
                ));
                None
            } else if s.chars().any(char::is_control) {
                problems.push(format!("{at}: must not contain control characters"));
                None
            } else {
                Some(s.clone())
            }
        }
        Some(other) => {
            problems.push(format!("{at}: expected a string, got {other}"));
            None
        }
    }
}

fn unknown_keys(obj: &Map<String, Value>, at: &str, known: &[&str], problems: &mut Vec<String>) {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            problems.push(format!(
                "{path}: unknown field (expected one of: {})",
                known.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(tm: &str) -> bool {
        tm == "tm-1"
    }

    fn parse(v: Value) -> Result<JobSpec, Vec<String>> {
        parse_job(v.to_string().as_bytes(), &known)
    }

    #[test]
    fn accepts_the_design_example() {
        let spec = parse(json!({"name": "demo", "vertices": [
            {"name": "Source", "parallelism": 2, "subtasks": [
                {"taskmanager": "tm-1", "pid": 4242, "thread_name": "spinner-0"},
                {"taskmanager": "tm-1", "pid": 4242, "thread_name": "spinner-1"}]},
            {"name": "Sink", "parallelism": 1, "inputs": [0], "subtasks": [
                {"taskmanager": "tm-1", "process_name": "worker", "tids": [4250]}]}]}))
        .unwrap();
        assert_eq!(spec.id.len(), 32);
        assert_eq!(spec.vertices[1].inputs, vec![0]);
        assert_eq!(
            spec.vertices[1].subtasks[0].process,
            ProcessRef::ProcessName("worker".into())
        );
        assert_ne!(spec.vertices[0].id, spec.vertices[1].id);
    }

    #[test]
    fn reports_every_problem_with_its_field() {
        let errs = parse(json!({"name": "", "extra": 1, "vertices": [
            {"name": "a", "parallelism": 2, "inputs": [0], "subtasks": [
                {"taskmanager": "tm-2", "pid": 1, "process_name": "x"},
                {"taskmanager": "tm-1", "pid": 0, "thread_name": "(", "tids": [1, 1]}]}]}))
        .unwrap_err();
        let joined = errs.join("\n");
        for needle in [
            "name: must not be empty",
            "extra: unknown field",
            "vertices[0].inputs[0]: expected the index of an earlier vertex",
            "vertices[0].subtasks[0].taskmanager: no task manager \"tm-2\"",
            "vertices[0].subtasks[0]: give exactly one of",
            "vertices[0].subtasks[1].pid: expected a process id",
            "vertices[0].subtasks[1].thread_name: not a valid regular expression",
            "vertices[0].subtasks[1].tids[1]: thread id 1 is listed twice",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn parallelism_must_equal_subtask_count() {
        let errs = parse(json!({"name": "j", "vertices": [
            {"name": "a", "parallelism": 3, "subtasks": [{"taskmanager": "tm-1", "pid": 5}]}]}))
        .unwrap_err();
        assert!(
            errs[0].starts_with("vertices[0].parallelism: is 3"),
            "{errs:?}"
        );
    }

    #[test]
    fn malformed_json_is_one_problem() {
        let errs = parse_job(b"{", &known).unwrap_err();
        assert_eq!(errs.len(), 1);
    }
}
