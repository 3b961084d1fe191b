//! Property tests of the coordinator's parsers of outside input: the `POST /jobs` body (pure
//! validation, and the registry that stores it in SQLite), and the REST path and query
//! parameters.
//!
//! What must hold, for any input:
//! * nothing panics;
//! * a job body is either accepted, or refused with a non-empty list of problems each naming
//!   the field it is about (`vertices[1].subtasks[0].pid: ...`), and a refused body stores
//!   nothing;
//! * a well-formed body (generated from `rest::jobs::JobRegistration`, the type `/openapi.json`
//!   describes) is accepted, and what is read back — also after reopening the store — is what
//!   was sent;
//! * ids, subtask indexes and query lists are accepted exactly when Flink accepts them (a small
//!   model of Flink's parsing, written independently of the code under test, decides).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use flamegrid_coordinator::registry::job::{JobSpec, ProcessRef};
use flamegrid_coordinator::registry::validate::{MAX_PID, parse_job};
use flamegrid_coordinator::registry::{Registry, RegistryError};
use flamegrid_coordinator::rest::flamegraph::GraphQuery;
use flamegrid_coordinator::rest::jobs::{JobRegistration, SubtaskRegistration, VertexRegistration};
use flamegrid_coordinator::rest::metrics::MetricQuery;
use flamegrid_coordinator::rest::params::{job_id, query_lists, subtask_index, vertex_id};
use flamegrid_model::GraphType;
use flamegrid_proto::v1;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use regex::Regex;
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

const KNOWN_TMS: [&str; 2] = ["tm-1", "10.0.0.5:6122-abc:def"];

fn known(tm: &str) -> bool {
    KNOWN_TMS.contains(&tm)
}

// ---- job bodies ------------------------------------------------------------------------------

/// A well-formed registration: every bound respected, every rule met.
fn registration() -> impl Strategy<Value = JobRegistration> {
    let name = "[A-Za-z0-9][A-Za-z0-9 :<>&'\"_.-]{0,30}|[\\p{L}][\\p{L}\\p{N} ]{0,20}";
    let process = prop_oneof![
        (1u32..=MAX_PID as u32).prop_map(|p| (Some(p), None)),
        "[a-z][a-z0-9_.-]{0,14}".prop_map(|n| (None, Some(n))),
    ];
    let threads = (
        proptest::option::of(btree_set(1u32..=MAX_PID as u32, 1..5)),
        proptest::option::of("[a-z]{1,8}(-[0-9])?(\\.\\*)?|worker-[0-9]+"),
    );
    let subtask = (prop::sample::select(KNOWN_TMS.to_vec()), process, threads).prop_map(
        |(tm, (pid, process_name), (tids, thread_name))| SubtaskRegistration {
            taskmanager: tm.to_string(),
            pid,
            process_name,
            tids: tids.map(|t| t.into_iter().collect()),
            thread_name,
        },
    );
    let vertex = (name, vec(subtask, 1..4), vec(any::<bool>(), 0..5));
    (name, vec(vertex, 1..5)).prop_map(|(name, vertices)| JobRegistration {
        name,
        vertices: vertices
            .into_iter()
            .enumerate()
            .map(|(i, (name, subtasks, edges))| VertexRegistration {
                name,
                parallelism: subtasks.len() as u32,
                // Inputs may only name earlier vertices: pick some of 0..i.
                inputs: (0..i as u32)
                    .filter(|u| edges.get(*u as usize) == Some(&true))
                    .collect(),
                subtasks,
            })
            .collect(),
    })
}

/// What the registry must read back for `reg`.
fn assert_spec_matches(spec: &JobSpec, reg: &JobRegistration) {
    assert_eq!(spec.name, reg.name);
    assert_eq!(spec.vertices.len(), reg.vertices.len());
    for (v, r) in spec.vertices.iter().zip(&reg.vertices) {
        assert_eq!(v.name, r.name);
        assert_eq!(v.parallelism(), r.parallelism as usize);
        let inputs: Vec<usize> = r.inputs.iter().map(|u| *u as usize).collect();
        assert_eq!(v.inputs, inputs);
        for (s, rs) in v.subtasks.iter().zip(&r.subtasks) {
            assert_eq!(s.taskmanager, rs.taskmanager);
            let process = match (&rs.pid, &rs.process_name) {
                (Some(p), None) => ProcessRef::Pid(*p),
                (None, Some(n)) => ProcessRef::ProcessName(n.clone()),
                _ => unreachable!("generated with exactly one"),
            };
            assert_eq!(s.process, process);
            assert_eq!(s.tids, rs.tids.clone().unwrap_or_default());
            assert_eq!(s.thread_name, rs.thread_name);
        }
    }
    assert!(spec.id.len() == 32 && spec.id.bytes().all(|b| b.is_ascii_hexdigit()));
}

/// A JSON leaf: plausible and hostile values alike.
fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1i64..5).prop_map(Value::from),
        (0u64..=MAX_PID + 2).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            " ",
            "tm-1",
            "10.0.0.5:6122-abc:def",
            "tm-2",
            "worker",
            "a/b",
            "(",
            "[",
            "a{2,1}",
            ".*",
            "x\u{0}y",
            "line\nbreak",
            "\u{1F600}",
        ])
        .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        (250usize..300).prop_map(|n| Value::from("n".repeat(n))),
    ]
    .boxed()
}

/// Any JSON value up to a small depth.
fn any_json() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(3, 32, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                vec(("[a-z_]{1,8}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// An object whose keys come from `keys` (plus, sometimes, an unknown one), each value from
/// `value` or anything.
fn object_of(keys: &'static [&'static str], value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    vec(
        (
            prop_oneof![
                8 => prop::sample::select(keys),
                1 => Just("extra"),
            ],
            prop_oneof![3 => value, 1 => any_json()],
        ),
        0..keys.len() + 2,
    )
    .prop_map(|kv| {
        Value::Object(
            kv.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    })
    .boxed()
}

/// A body shaped like a registration, with every field possibly missing, misplaced, out of
/// range or of the wrong type: reaches deep into the validator.
fn body_like() -> impl Strategy<Value = Value> {
    let subtask = object_of(
        &["taskmanager", "pid", "process_name", "tids", "thread_name"],
        prop_oneof![leaf(), vec(leaf(), 0..4).prop_map(Value::Array)].boxed(),
    );
    let vertex = (
        object_of(&["name", "parallelism", "inputs"], leaf()),
        prop_oneof![
            4 => vec(subtask, 0..4).prop_map(Value::Array),
            1 => any_json(),
        ],
        any::<bool>(),
    )
        .prop_map(|(mut v, subtasks, with)| {
            if with && let Some(obj) = v.as_object_mut() {
                obj.insert("subtasks".into(), subtasks);
            }
            v
        });
    (
        object_of(&["name"], leaf()),
        prop_oneof![
            4 => vec(vertex, 0..4).prop_map(Value::Array),
            1 => any_json(),
        ],
        any::<bool>(),
    )
        .prop_map(|(mut top, vertices, with)| {
            if with && let Some(obj) = top.as_object_mut() {
                obj.insert("vertices".into(), vertices);
            }
            top
        })
}

/// Byte-level damage to a valid body: what a truncated or garbled upload looks like.
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    (
        registration(),
        vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    )
        .prop_map(|(reg, edits)| {
            let mut bytes = serde_json::to_vec(&reg).unwrap();
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            bytes
        })
}

/// Every problem of a refused body names its field (or says the body is not JSON at all).
fn assert_problems_name_fields(problems: &[String], input: &[u8]) {
    let field = Regex::new(
        r"^(?:Request did not match expected format JobRegistration: |body: |[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*: )",
    )
    .unwrap();
    assert!(
        !problems.is_empty(),
        "refused without a reason: {}",
        String::from_utf8_lossy(input)
    );
    // An unknown key is named as sent, whatever its characters, under the path of its object.
    let unknown = Regex::new(
        r"(?s)^(?:vertices\[\d+\]\.(?:subtasks\[\d+\]\.)?)?.+: unknown field \(expected one of: ",
    )
    .unwrap();
    for p in problems {
        assert!(
            field.is_match(p) || unknown.is_match(p),
            "problem {p:?} names no field, for {}",
            String::from_utf8_lossy(input)
        );
    }
}

/// The invariants of an accepted spec, whatever the body was.
fn assert_spec_is_valid(spec: &JobSpec) {
    assert!(!spec.name.trim().is_empty() && spec.name.chars().count() <= 256);
    assert!((1..=1024).contains(&spec.vertices.len()));
    for (i, v) in spec.vertices.iter().enumerate() {
        assert!(!v.subtasks.is_empty());
        assert!(v.inputs.iter().all(|u| *u < i));
        for s in &v.subtasks {
            assert!(known(&s.taskmanager));
            match &s.process {
                ProcessRef::Pid(p) => assert!((1..=MAX_PID as u32).contains(p)),
                ProcessRef::ProcessName(n) => {
                    assert!((1..=15).contains(&n.len()) && !n.contains('/'))
                }
            }
            assert!(s.tids.iter().all(|t| (1..=MAX_PID as u32).contains(t)));
        }
    }
}

fn check_any_body(bytes: &[u8]) {
    match parse_job(bytes, &known) {
        Ok(spec) => assert_spec_is_valid(&spec),
        Err(problems) => assert_problems_name_fields(&problems, bytes),
    }
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn any_bytes_are_refused_or_valid(bytes in vec(any::<u8>(), 0..300)) {
        match parse_job(&bytes, &known) {
            Ok(spec) => assert_spec_is_valid(&spec),
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                if serde_json::from_slice::<Value>(&bytes).is_err() {
                    prop_assert_eq!(problems.len(), 1);
                    prop_assert!(problems[0].starts_with("Request did not match expected format"));
                }
            }
        }
    }

    #[test]
    fn any_json_is_refused_or_valid(value in any_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match parse_job(&bytes, &known) {
            Ok(spec) => assert_spec_is_valid(&spec),
            Err(problems) => prop_assert!(!problems.is_empty()),
        }
    }

    #[test]
    fn registration_shaped_bodies_name_every_problem(value in body_like()) {
        check_any_body(&serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn damaged_bodies_name_every_problem(bytes in mutated_body()) {
        check_any_body(&bytes);
    }

    #[test]
    fn well_formed_bodies_are_accepted_as_sent(reg in registration()) {
        let body = serde_json::to_vec(&reg).unwrap();
        let spec = parse_job(&body, &known)
            .unwrap_or_else(|p| panic!("refused {}: {p:?}", String::from_utf8_lossy(&body)));
        assert_spec_matches(&spec, &reg);
        // The documented body type reads the same bytes back.
        prop_assert_eq!(serde_json::from_slice::<JobRegistration>(&body).unwrap(), reg);
    }
}

/// A registry in a temp dir with the known task managers registered.
fn registry(dir: &std::path::Path) -> Registry {
    let registry = Registry::open(dir, Duration::from_secs(3600)).unwrap();
    for tm in KNOWN_TMS {
        registry
            .register_taskmanager(v1::RegisterRequest {
                agent_id: tm.to_string(),
                address: "http://127.0.0.1:6122".into(),
                host: Some(v1::HostInfo {
                    hostname: "h".into(),
                    cpu_cores: 2,
                    ..Default::default()
                }),
                pid: 1,
            })
            .unwrap();
    }
    registry
}

#[test]
fn the_registry_stores_nothing_it_refuses_and_reads_back_what_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let accepted: RefCell<Vec<(String, JobRegistration)>> = RefCell::new(Vec::new());
    {
        let registry = registry(dir.path());

        // Hostile input: refused with field-named problems (never a storage error), and the
        // registry holds exactly as many jobs as before.
        let hostile = prop_oneof![
            vec(any::<u8>(), 0..200),
            body_like().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            mutated_body(),
        ];
        let mut runner = TestRunner::new(Config {
            cases: 256,
            ..Config::default()
        });
        runner
            .run(&hostile, |bytes| {
                let before = registry.jobs().len();
                match registry.register_job(&bytes) {
                    Ok(id) => {
                        let job = registry.job(&id).unwrap();
                        assert_spec_is_valid(&job.spec);
                        prop_assert_eq!(registry.jobs().len(), before + 1);
                    }
                    Err(RegistryError::InvalidJob(problems)) => {
                        prop_assert!(!problems.is_empty());
                        prop_assert_eq!(registry.jobs().len(), before, "a refused body was stored");
                    }
                    Err(other) => panic!("not a 400-style refusal: {other:?}"),
                }
                Ok(())
            })
            .unwrap();

        // Well-formed input: accepted, and read back as sent.
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        runner
            .run(&registration(), |reg| {
                let id = registry
                    .register_job(&serde_json::to_vec(&reg).unwrap())
                    .unwrap();
                assert_spec_matches(&registry.job(&id).unwrap().spec, &reg);
                accepted.borrow_mut().push((id, reg));
                Ok(())
            })
            .unwrap();
    }
    // Durable: a registry reopened on the same directory has every accepted job, as sent.
    let reopened = Registry::open(dir.path(), Duration::from_secs(3600)).unwrap();
    let accepted = accepted.into_inner();
    assert!(accepted.len() >= 64);
    for (id, reg) in &accepted {
        assert_spec_matches(&reopened.job(id).unwrap().spec, reg);
    }
}

// ---- path and query parameters ---------------------------------------------------------------

/// Java's `Integer.parseInt` for ASCII input, written out: an optional sign, at least one
/// digit, and the value within `i32`.
fn java_parse_int(s: &str) -> Option<i32> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: i64 = 0;
    for b in digits.bytes() {
        value = value * 10 + i64::from(b - b'0');
        if value > i64::from(i32::MAX) + 1 {
            return None;
        }
    }
    let value = if negative { -value } else { value };
    i32::try_from(value).ok()
}

/// Java's `String.split(",")`: trailing empty strings removed; `""` splits to `[""]`.
fn java_split(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    for c in s.chars() {
        if c == ',' {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    if s.is_empty() {
        return parts;
    }
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// How Flink's handlers see the query: each key's values joined with `,` (in order), then split.
fn flink_lists(pairs: &[(String, String)]) -> HashMap<String, Vec<String>> {
    let mut joined: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in pairs {
        match joined.iter_mut().find(|(key, _)| key == k) {
            Some((_, values)) => values.push(v.clone()),
            None => joined.push((k.clone(), vec![v.clone()])),
        }
    }
    joined
        .into_iter()
        .map(|(k, values)| (k, java_split(&values.join(","))))
        .collect()
}

fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F]{32}",
        "[0-9a-fA-F]{30,34}",
        "[0-9a-gA-G+-]{32}",
        "\\PC{0,40}",
        ".{0,40}",
    ]
}

fn int_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?[0-9]{0,12}",
        any::<i64>().prop_map(|i| i.to_string()),
        (2147483640i64..2147483660).prop_map(|i| i.to_string()),
        (-3i64..3).prop_map(|i| format!("{i:+}")),
        " ?[0-9]{1,3} ?",
        "\\PC{0,6}",
    ]
}

/// Query values: list syntax, spaces, empties, case and the names Flink knows.
fn value_like() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        prop::sample::select(vec![
            "full",
            "FULL",
            "on_cpu",
            "On_Cpu",
            "OFF_CPU",
            "on-cpu",
            "cpu",
            "min",
            "MAX",
            "avg",
            "sum",
            "Skew",
            "median",
            " min",
            "",
            "0",
            "1",
            "-1",
            "+2",
            "-0",
            "2147483648",
            "uptime",
        ])
        .prop_map(String::from),
        "\\PC{0,6}",
    ];
    vec(word, 0..4).prop_map(|w| w.join(","))
}

fn query_like() -> impl Strategy<Value = Vec<(String, String)>> {
    vec(
        (
            prop::sample::select(vec![
                "type",
                "subtaskindex",
                "get",
                "agg",
                "jobs",
                "mode",
                "other",
            ])
            .prop_map(String::from),
            value_like(),
        ),
        0..5,
    )
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    #[test]
    fn ids_are_exactly_32_hex_digits(raw in id_like()) {
        let flink_ok = raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit());
        for parse in [job_id, vertex_id] {
            match parse(&raw) {
                Ok(id) => {
                    prop_assert!(flink_ok, "accepted {raw:?}");
                    prop_assert_eq!(&id, &raw.to_ascii_lowercase());
                    // Canonical ids parse to themselves.
                    prop_assert_eq!(parse(&id).unwrap(), id);
                }
                Err(e) => {
                    prop_assert!(!flink_ok, "refused {raw:?}");
                    prop_assert_eq!(e.status.as_u16(), 400);
                    prop_assert!(e.errors[0].contains("Cannot resolve path parameter"));
                }
            }
        }
    }

    #[test]
    fn subtask_indexes_follow_integer_parse_int(raw in int_like()) {
        let flink = java_parse_int(&raw).filter(|i| *i >= 0);
        match subtask_index(&raw) {
            Ok(i) => prop_assert_eq!(Some(i as i32), flink, "accepted {:?}", raw),
            Err(e) => {
                prop_assert_eq!(flink, None, "refused {:?}", raw);
                prop_assert_eq!(e.status.as_u16(), 400);
                prop_assert!(e.errors[0].contains("(subtaskindex)"));
            }
        }
    }

    #[test]
    fn query_lists_split_like_flink(pairs in query_like()) {
        prop_assert_eq!(query_lists(&pairs), flink_lists(&pairs));
    }

    #[test]
    fn metric_queries_accept_what_flink_accepts(pairs in query_like(), aggregating in any::<bool>()) {
        let lists = flink_lists(&pairs);
        let modes = ["min", "max", "avg", "sum", "skew"];
        let agg = lists.get("agg").filter(|_| aggregating);
        let flink_ok = agg.is_none_or(|values| {
            values.iter().all(|v| modes.contains(&v.to_ascii_lowercase().as_str()))
        });
        match MetricQuery::parse(&pairs, aggregating) {
            Ok(q) => {
                prop_assert!(flink_ok, "accepted {pairs:?}");
                prop_assert_eq!(q.get, lists.get("get").cloned());
                let mut expected: Vec<&str> = Vec::new();
                match agg {
                    None => expected.extend(modes),
                    Some(values) => {
                        for v in values {
                            let m = modes.iter().find(|m| m.eq_ignore_ascii_case(v)).unwrap();
                            if !expected.contains(m) {
                                expected.push(m);
                            }
                        }
                    }
                }
                prop_assert_eq!(q.agg, expected);
            }
            Err(e) => {
                prop_assert!(!flink_ok, "refused {pairs:?}");
                prop_assert_eq!(e.status.as_u16(), 400);
                prop_assert!(e.errors[0].contains("(agg)"));
            }
        }
    }

    /// `GraphQuery::parse` (rest/flamegraph.rs) against flink-rest.md §2.1: `type` upper-cased
    /// onto FULL | ON_CPU | OFF_CPU, first value of the list, default FULL; `subtaskindex` by
    /// `Integer.parseInt`, not negative.
    #[test]
    fn graph_queries_accept_what_flink_accepts(pairs in query_like()) {
        let lists = flink_lists(&pairs);
        let ty = match lists.get("type").and_then(|v| v.first()) {
            None => Some(GraphType::Full),
            Some(raw) => GraphType::ALL
                .into_iter()
                .find(|t| t.as_str() == raw.to_ascii_uppercase()),
        };
        let subtask = match lists.get("subtaskindex").and_then(|v| v.first()) {
            None => Some(None),
            Some(raw) => java_parse_int(raw).filter(|i| *i >= 0).map(|i| Some(i as u32)),
        };
        match GraphQuery::parse(&pairs) {
            Ok(q) => {
                prop_assert_eq!(Some(q.ty), ty, "type of {:?}", pairs);
                prop_assert_eq!(Some(q.subtask), subtask, "subtaskindex of {:?}", pairs);
            }
            Err(e) => {
                prop_assert!(ty.is_none() || subtask.is_none(), "refused {pairs:?}: {e:?}");
                prop_assert_eq!(e.status.as_u16(), 400);
            }
        }
    }
}

/// Flink reads the flame graph's `subtaskindex` with `Integer.parseInt`: `-0` is 0 and
/// `2147483648` is not an integer (400); `GraphQuery::parse` follows it through
/// `params::flink_int`.
#[test]
fn graph_query_subtask_index_follows_integer_parse_int() {
    for (raw, flink) in [("-0", Some(0)), ("2147483648", None), ("4294967295", None)] {
        let pairs = vec![("subtaskindex".to_string(), raw.to_string())];
        assert_eq!(
            GraphQuery::parse(&pairs).ok().map(|q| q.subtask),
            flink.map(Some),
            "{raw}"
        );
    }
}

#[test]
fn the_models_agree_with_java_on_known_cases() {
    assert_eq!(java_parse_int("+7"), Some(7));
    assert_eq!(java_parse_int("-2147483648"), Some(i32::MIN));
    assert_eq!(java_parse_int("2147483648"), None);
    assert_eq!(java_parse_int("-"), None);
    assert_eq!(java_split("a,,b,,"), ["a", "", "b"]);
    assert_eq!(java_split(""), [""]);
    assert!(java_split(",,").is_empty());
    assert_eq!(
        flink_lists(&[("get".into(), "a".into()), ("get".into(), "".into())])["get"],
        ["a"]
    );
    let _ = json!(null);
}
