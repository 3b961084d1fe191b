//! The JSON view: Flink's `VertexFlameGraph` (flink-rest.md §3.1), byte for byte.
//!
//! `{"endTimestamp":-1|-2|-3}` for the sentinels (no `data` key), else
//! `{"endTimestamp":MS,"data":NODE}`. flamegrid adds two fields on purpose, present only when
//! some subtask is absent so that a complete answer is exactly what Flink would send (Flink's
//! clients ignore keys they do not know):
//!
//! * `"missing"`: the absent subtask indexes, ascending, e.g. `[1,3]`;
//! * `"missingReasons"`: why, per index (as a string key, JSON objects have no other), in the
//!   fixed words of [`crate::missing::MissingReason`], e.g.
//!   `{"1":"agent unreachable","3":"outside the allow-list"}`.
//!
//! When the last run delivered nothing at all (and nothing is cached), the answer is still `-3`
//! (the next poll samples again, as in Flink) but carries the two fields, so that a client sees
//! why instead of waiting forever: `{"endTimestamp":-3,"missing":[0],"missingReasons":{...}}`.
//! A terminated vertex or subtask (`-1`) carries them too for the subtasks that ended for a
//! reason (FAILED, or FINISHED because the process vanished): "nothing to sample", and why.
//!
//! When a run delivered nothing but an older graph is cached, the older graph is served (as in
//! Flink, until it expires) with the later run's `missing` and `missingReasons`, and a third
//! field saying they are newer than the graph:
//!
//! * `"latestRunEndTimestamp"`: when that later run ended (ms since the epoch, after
//!   `endTimestamp`); present only in this case.

use super::GraphAnswer;
use super::cache::GraphCache;
use axum::body::Bytes;
use flamegrid_model::{FlameNode, GraphType};
use serde::Serialize;
use std::collections::BTreeMap;

/// The wire shape (field order as Jackson writes it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VertexFlameGraph {
    /// Sentinel (-1 terminated, -2 disabled, -3 waiting) or the run's end, ms since the epoch.
    #[serde(rename = "endTimestamp")]
    pub end_timestamp: i64,
    /// The tree; absent for sentinels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<FlameNode>,
    /// Subtasks missing from this graph, ascending; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<u32>,
    /// Why each of `missing` is absent, by index (decimal string); absent when none. Values
    /// are fixed words: agent unreachable, agent timed out, agent busy, agent refused the
    /// coordinator's credentials, agent failed, process not found, no matching thread,
    /// outside the allow-list, refused by the kernel, never confirmed (agent lost), agent lost.
    #[serde(rename = "missingReasons", skip_serializing_if = "BTreeMap::is_empty")]
    pub missing_reasons: BTreeMap<String, String>,
    /// Present when `missing` and `missingReasons` come from a later run than the graph's, in
    /// which no subtask delivered (the graph shown is older): when that run ended, ms since
    /// the epoch.
    #[serde(
        rename = "latestRunEndTimestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub latest_run_end_timestamp: Option<i64>,
}

impl VertexFlameGraph {
    /// The answer for `ty`.
    pub fn new(answer: &GraphAnswer, ty: GraphType) -> VertexFlameGraph {
        let missing = answer.missing();
        VertexFlameGraph {
            end_timestamp: answer.end_timestamp(),
            data: answer.graph().map(|s| s.tree(ty)),
            missing: missing.keys().copied().collect(),
            missing_reasons: reasons_by_index(missing),
            latest_run_end_timestamp: answer.latest_run_end(),
        }
    }
}

/// `"missingReasons"`: each absent subtask's reason keyed by its index as a decimal string (JSON
/// object keys are strings).
fn reasons_by_index(missing: &crate::missing::Missing) -> BTreeMap<String, String> {
    missing
        .iter()
        .map(|(i, r)| (i.to_string(), r.as_str().to_string()))
        .collect()
}

/// The compact JSON text of the answer for `ty`: what `serde_json` writes for
/// [`VertexFlameGraph`], but with the tree written by [`FlameNode::write_json`], which keeps its
/// own stack instead of recursing once per level (the tree's depth comes from other hosts).
pub fn render(answer: &GraphAnswer, ty: GraphType) -> String {
    write(&VertexFlameGraph::new(answer, ty))
}

/// [`render`] of an answer already built (and perhaps pruned, see [`super::prune`]).
pub fn write(graph: &VertexFlameGraph) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(256);
    let _ = write!(out, "{{\"endTimestamp\":{}", graph.end_timestamp);
    if let Some(tree) = &graph.data {
        out.push_str(",\"data\":");
        tree.write_json(&mut out);
    }
    if !graph.missing.is_empty() {
        out.push_str(",\"missing\":[");
        for (i, index) in graph.missing.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{index}");
        }
        out.push(']');
    }
    if !graph.missing_reasons.is_empty() {
        // Serde's text for the map: keys are digits, values fixed words; both need escaping
        // only in theory, and serde does it right.
        out.push_str(",\"missingReasons\":");
        out.push_str(
            &serde_json::to_string(&graph.missing_reasons).unwrap_or_else(|_| "{}".to_string()),
        );
    }
    if let Some(latest) = graph.latest_run_end_timestamp {
        let _ = write!(out, ",\"latestRunEndTimestamp\":{latest}");
    }
    out.push('}');
    out
}

/// A JSON answer as the endpoint has it: the text, or the text gzipped (a big memo, see
/// [`render_cached`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonBody {
    /// The JSON text.
    Plain(Bytes),
    /// The JSON text, gzipped.
    Gzipped(Bytes),
}

/// JSON texts at least this long are memoised gzipped ([`render_cached`]). Below it a graph is
/// a few thousand nodes at most, and every client gets the text as it always did.
pub const GZIP_FROM_BYTES: usize = 256 * 1024;

impl JsonBody {
    /// What to send a client that accepts gzip (`accepts_gzip`) or does not: the body, and
    /// whether it is gzipped (the `Content-Encoding` to say). A gzipped memo is inflated for a
    /// client that does not accept it; an error only if it does not inflate, which a memo this
    /// process made cannot fail to.
    pub fn for_client(self, accepts_gzip: bool) -> Result<(Bytes, bool), String> {
        match self {
            JsonBody::Plain(text) => Ok((text, false)),
            JsonBody::Gzipped(gz) if accepts_gzip => Ok((gz, true)),
            JsonBody::Gzipped(gz) => {
                use std::io::Read as _;
                let mut text = Vec::with_capacity(gz.len().saturating_mul(8));
                flate2::read::GzDecoder::new(gz.as_ref())
                    .read_to_end(&mut text)
                    .map_err(|e| format!("a memoised flame graph does not inflate: {e}"))?;
                Ok((Bytes::from(text), false))
            }
        }
    }
}

/// The first two bytes of a gzip stream (RFC 1952); a JSON text starts with `{`.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What the cache keeps of `text`: the text, or, from [`GZIP_FROM_BYTES`] on, the text gzipped
/// at the fastest level (the text as it is should that fail, which writing to memory cannot).
fn memo_of(text: String) -> Vec<u8> {
    use std::io::Write as _;
    if text.len() < GZIP_FROM_BYTES {
        return text.into_bytes();
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 8),
        flate2::Compression::fast(),
    );
    match gz.write_all(text.as_bytes()).and_then(|()| gz.finish()) {
        Ok(mut zipped) => {
            zipped.shrink_to_fit();
            zipped
        }
        Err(_) => text.into_bytes(),
    }
}

/// [`render`], memoised per kept run and type in `cache` (which counts what it keeps in its
/// memory bound): what the endpoint serves, since a cached graph is polled far more often than
/// it changes. A text of [`GZIP_FROM_BYTES`] or more is kept gzipped: the graph of a vertex of
/// ten thousand subtasks with ten thousand distinct stacks is some 12 MB of JSON and about a
/// tenth of that gzipped, kept for as long as the run is the latest, and sent as it is to
/// every client that accepts gzip (browsers, Flink's dashboard) instead of 12 MB per poll. A
/// text that is not kept (a past run's) is not gzipped only to be inflated again.
pub fn render_cached(cache: &GraphCache, answer: &GraphAnswer, ty: GraphType) -> JsonBody {
    match answer {
        GraphAnswer::Ready(s) => {
            let kept = cache.json(s, ty, |kept| {
                let text = render(answer, ty);
                if kept {
                    memo_of(text)
                } else {
                    text.into_bytes()
                }
            });
            if kept.starts_with(&GZIP_MAGIC) {
                JsonBody::Gzipped(kept)
            } else {
                JsonBody::Plain(kept)
            }
        }
        other => JsonBody::Plain(Bytes::from(render(other, ty))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sentinels_have_no_data_key() {
        assert_eq!(
            render(&GraphAnswer::Waiting, GraphType::Full),
            r#"{"endTimestamp":-3}"#
        );
        assert_eq!(
            render(
                &GraphAnswer::Terminated(Default::default()),
                GraphType::Full
            ),
            r#"{"endTimestamp":-1}"#
        );
        assert_eq!(
            render(&GraphAnswer::Disabled, GraphType::OnCpu),
            r#"{"endTimestamp":-2}"#
        );
    }

    #[test]
    fn graph_is_flink_shaped_and_missing_only_when_partial() {
        let complete = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(2))], &[])));
        assert_eq!(
            render(&complete, GraphType::OnCpu),
            r#"{"endTimestamp":1001,"data":{"name":"root","value":2,"children":[{"name":"main","value":2,"children":[{"name":"spin","value":2,"children":[]}]}]}}"#
        );
        let partial = GraphAnswer::Ready(Arc::new(snapshot(2, &[(0, spin_and_sleep(1))], &[1, 3])));
        let v: serde_json::Value =
            serde_json::from_str(&render(&partial, GraphType::OffCpu)).unwrap();
        assert_eq!(v["missing"], serde_json::json!([1, 3]));
        assert_eq!(
            v["missingReasons"],
            serde_json::json!({"1": "agent unreachable", "3": "agent unreachable"})
        );
        assert_eq!(v["data"]["value"], 1);
        // Terminated with reasons; an outdated graph with a later run's reasons.
        use crate::missing::MissingReason;
        let ended = GraphAnswer::Terminated(
            [
                (0, MissingReason::ProcessNotFound),
                (1, MissingReason::OutsideAllowList),
            ]
            .into(),
        );
        assert_eq!(
            render(&ended, GraphType::Full),
            r#"{"endTimestamp":-1,"missing":[0,1],"missingReasons":{"0":"process not found","1":"outside the allow-list"}}"#
        );
        let outdated = GraphAnswer::Outdated {
            graph: Arc::new(snapshot(1, &[(0, spin_and_sleep(2))], &[])),
            latest: Arc::new(snapshot(5, &[], &[0])),
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(&outdated, GraphType::OnCpu)).unwrap();
        assert_eq!(v["endTimestamp"], 1001, "the cached graph, still served");
        assert_eq!(v["data"]["value"], 2);
        assert_eq!(v["missing"], serde_json::json!([0]));
        assert_eq!(v["latestRunEndTimestamp"], 1005);
        assert!(!render(&partial, GraphType::Full).contains("latestRun"));
        for answer in [&complete, &partial, &ended, &outdated] {
            for ty in GraphType::ALL {
                assert_eq!(
                    render(answer, ty),
                    serde_json::to_string(&VertexFlameGraph::new(answer, ty)).unwrap(),
                    "the hand-written JSON is serde's, byte for byte"
                );
            }
        }
    }

    /// A cache holding `run` as its vertex's latest run, and the answer serving it.
    fn cache_holding(run: super::super::profile::Snapshot) -> (Arc<GraphCache>, GraphAnswer) {
        use super::super::cache::{CacheLimits, GraphKey};
        use std::time::Duration;
        let cache = GraphCache::new(CacheLimits::new(
            Duration::from_secs(60),
            Duration::from_secs(600),
        ));
        let key = GraphKey {
            job_id: "j".repeat(32),
            vertex_id: "v".repeat(32),
            subtask: None,
        };
        cache.lookup(&key).ticket.unwrap().complete(run);
        let answer = GraphAnswer::Ready(cache.peek(&key).unwrap());
        (cache, answer)
    }

    #[test]
    fn cached_render_is_the_same_text_once_per_type() {
        let (cache, answer) = cache_holding(snapshot(3, &[(0, spin_and_sleep(2))], &[]));
        let plain = |body: JsonBody| match body {
            JsonBody::Plain(text) => text,
            JsonBody::Gzipped(_) => panic!("a small graph's memo is gzipped"),
        };
        let render_cached =
            |cache: &GraphCache, answer: &GraphAnswer, ty| plain(render_cached(cache, answer, ty));
        for ty in GraphType::ALL {
            let first = render_cached(&cache, &answer, ty);
            assert_eq!(first, render(&answer, ty).as_bytes());
            let again = render_cached(&cache, &answer, ty);
            assert_eq!(
                first.as_ptr(),
                again.as_ptr(),
                "{ty}: rendered once, then shared"
            );
        }
        assert!(cache.memo_bytes() > 0, "memos are counted");
        assert_ne!(
            render_cached(&cache, &answer, GraphType::OnCpu),
            render_cached(&cache, &answer, GraphType::OffCpu)
        );
        assert_eq!(
            render_cached(&cache, &GraphAnswer::Waiting, GraphType::Full),
            r#"{"endTimestamp":-3}"#.as_bytes()
        );
        // A snapshot the cache does not keep is rendered, not memoised.
        let loose = GraphAnswer::Ready(Arc::new(snapshot(4, &[(0, spin_and_sleep(2))], &[])));
        let before = cache.memo_bytes();
        let a = render_cached(&cache, &loose, GraphType::Full);
        let b = render_cached(&cache, &loose, GraphType::Full);
        assert_eq!(a, b);
        assert_ne!(a.as_ptr(), b.as_ptr());
        assert_eq!(cache.memo_bytes(), before);
    }

    #[test]
    fn a_big_graph_is_memoised_gzipped_and_inflated_for_a_client_without_gzip() {
        use super::super::profile::tests::bulky_set;
        let (cache, answer) = cache_holding(snapshot(
            3,
            &[(0, bulky_set(20_000)), (1, spin_and_sleep(2))],
            &[],
        ));
        let text = render(&answer, GraphType::Full);
        assert!(text.len() >= GZIP_FROM_BYTES, "{} bytes", text.len());
        let body = render_cached(&cache, &answer, GraphType::Full);
        let JsonBody::Gzipped(gz) = body.clone() else {
            panic!("a big graph's memo is not gzipped");
        };
        assert!(
            cache.memo_bytes() < text.len() / 2,
            "the memo keeps {} bytes of a {}-byte text",
            cache.memo_bytes(),
            text.len()
        );
        // Served as it is to a client that accepts gzip: the same memo, every poll.
        let (sent, gzipped) = body.clone().for_client(true).unwrap();
        assert!(gzipped);
        assert_eq!(sent.as_ptr(), gz.as_ptr());
        let again = render_cached(&cache, &answer, GraphType::Full);
        assert_eq!(again, body);
        let mut inflated = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(sent.as_ref()),
            &mut inflated,
        )
        .unwrap();
        assert_eq!(inflated, text);
        // Inflated for one that does not.
        let (sent, gzipped) = body.for_client(false).unwrap();
        assert!(!gzipped);
        assert_eq!(sent, text.as_bytes());
        // A big run the cache does not keep is rendered as the text, not gzipped.
        let loose = GraphAnswer::Ready(Arc::new(snapshot(4, &[(0, bulky_set(20_000))], &[])));
        assert!(matches!(
            render_cached(&cache, &loose, GraphType::Full),
            JsonBody::Plain(text) if text == render(&loose, GraphType::Full).as_bytes()
        ));
        // What does not inflate is an error, not a panic or a wrong body.
        let broken = JsonBody::Gzipped(Bytes::from_static(&[0x1f, 0x8b, 8, 0, 1, 2, 3]));
        assert!(broken.clone().for_client(false).is_err());
        assert!(
            broken.for_client(true).is_ok(),
            "a gzip client gets it as it is"
        );
    }
}
