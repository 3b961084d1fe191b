//! `minWidth`: the flame graph JSON without the frames too narrow to draw (flamegrid's opt-in
//! query parameter of `GET .../flamegraph`; without it the answer is exactly Flink's).
//!
//! A graph of 10,000 distinct 30-frame stacks is a JSON of some 300,000 nodes (over 10 MB), and
//! most of them are narrower than a pixel on any screen: a browser spends seconds parsing and
//! laying out what it cannot show. With `minWidth=W` (a fraction of the root, `0 ≤ W ≤ 1`), the
//! children of every node that are narrower than `W × root` are merged into one remainder child
//! named `[N narrow frames]` (N the number of frames merged at that level, their callees
//! dropped) whose value is their sum, placed after the kept children. So every node keeps its
//! value, the kept children keep their order (Flink's, by name), and a node's self time (its
//! value less its children's) is unchanged: the picture is the same down to `W`, with the
//! narrow remainder drawn as one grey box instead of thousands of invisible ones. The answer
//! holds at most about `2 / W` nodes per stack level.
//!
//! The dashboard asks for `minWidth=0.0005`: frames under a pixel of a 2,000-pixel-wide graph.

use super::GraphAnswer;
use super::json::{self, VertexFlameGraph};
use flamegrid_model::{FlameNode, GraphType};
use serde::Deserialize;
use utoipa::IntoParams;

/// The query parameter's name.
pub const PARAM: &str = "minWidth";

/// The query parameter as `/openapi.json` describes it (the JSON view only).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PruneParams {
    /// flamegrid: merge the frames narrower than this fraction of the root (a number from 0 to
    /// 1, e.g. `0.0005`) into one `[N narrow frames]` remainder per parent, so the answer stays
    /// small; values are unchanged. Without it, Flink's full tree. Anything else is a 400.
    #[serde(rename = "minWidth")]
    #[param(rename = "minWidth", minimum = 0.0, maximum = 1.0)]
    pub min_width: Option<f64>,
}

/// The `minWidth` of a request's query (the first value of a comma list or repeated key, as
/// for Flink's parameters): `Ok(None)` without it, `Err(raw)` when it is not a number from 0 to
/// 1.
pub fn min_width(pairs: &[(String, String)]) -> Result<Option<f64>, String> {
    let Some((_, raw)) = pairs.iter().find(|(k, _)| k == PARAM) else {
        return Ok(None);
    };
    let first = raw.split(',').next().unwrap_or_default();
    match first.trim().parse::<f64>() {
        Ok(w) if (0.0..=1.0).contains(&w) => Ok(Some(w)),
        _ => Err(raw.clone()),
    }
}

/// Merges, under every node, the children narrower than `min_width` of the root into one
/// remainder child (see the module docs). Walks with its own stack: no recursion per level.
pub fn prune(root: &mut FlameNode, min_width: f64) {
    // Kept: value ≥ threshold (at least 1, so a zero width keeps everything).
    let threshold = ((min_width * root.value as f64 - 1e-9).ceil() as u64).max(1);
    let mut pending: Vec<&mut FlameNode> = vec![root];
    while let Some(node) = pending.pop() {
        if node.children.iter().any(|c| c.value < threshold) {
            let children = std::mem::take(&mut node.children);
            let (mut merged, mut merged_value) = (0usize, 0u64);
            let mut kept = Vec::with_capacity(children.len());
            for child in children {
                if child.value >= threshold {
                    kept.push(child);
                } else {
                    merged += 1;
                    merged_value += child.value;
                    // `child` and its callees drop here (FlameNode's drop does not recurse).
                }
            }
            kept.push(FlameNode {
                name: remainder_name(merged),
                value: merged_value,
                children: Vec::new(),
            });
            node.children = kept;
        }
        pending.extend(node.children.iter_mut().filter(|c| !c.children.is_empty()));
    }
}

/// The name of the remainder child that stands for `n` merged frames.
pub fn remainder_name(n: usize) -> String {
    format!("[{n} narrow frame{}]", if n == 1 { "" } else { "s" })
}

/// Flink's JSON for `ty` ([`json::render`]) with the tree pruned at `min_width`.
pub fn render(answer: &GraphAnswer, ty: GraphType, min_width: f64) -> String {
    let mut graph = VertexFlameGraph::new(answer, ty);
    if let Some(tree) = graph.data.as_mut() {
        prune(tree, min_width);
    }
    json::write(&graph)
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use std::sync::Arc;

    fn node(name: &str, value: u64, children: Vec<FlameNode>) -> FlameNode {
        FlameNode {
            name: name.to_string(),
            value,
            children,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn min_width_is_a_fraction_or_a_400() {
        assert_eq!(min_width(&pairs(&[("type", "full")])), Ok(None));
        assert_eq!(min_width(&pairs(&[("minWidth", "0.001")])), Ok(Some(0.001)));
        assert_eq!(min_width(&pairs(&[("minWidth", "0")])), Ok(Some(0.0)));
        assert_eq!(min_width(&pairs(&[("minWidth", "1")])), Ok(Some(1.0)));
        assert_eq!(
            min_width(&pairs(&[("minWidth", "0.5,0.7"), ("minWidth", "0.9")])),
            Ok(Some(0.5))
        );
        for bad in ["", "x", "-0.1", "1.5", "NaN", "inf", "1e400"] {
            assert_eq!(
                min_width(&pairs(&[("minWidth", bad)])),
                Err(bad.to_string()),
                "{bad}"
            );
        }
    }

    #[test]
    fn narrow_children_merge_into_one_remainder_and_values_are_kept() {
        // root 1000: a 600 (with callees 500 and 2 × 3), b 390, c 4, d 5, self 1.
        let mut tree = node(
            "root",
            1000,
            vec![
                node(
                    "a",
                    600,
                    vec![
                        node("a1", 500, vec![node("deep", 500, vec![])]),
                        node("a2", 3, vec![node("gone", 3, vec![])]),
                        node("a3", 3, vec![]),
                    ],
                ),
                node("b", 390, vec![]),
                node("c", 4, vec![node("c1", 4, vec![])]),
                node("d", 5, vec![]),
            ],
        );
        prune(&mut tree, 0.005); // threshold 5 samples
        assert_eq!(
            tree.to_json(),
            r#"{"name":"root","value":1000,"children":[{"name":"a","value":600,"children":[{"name":"a1","value":500,"children":[{"name":"deep","value":500,"children":[]}]},{"name":"[2 narrow frames]","value":6,"children":[]}]},{"name":"b","value":390,"children":[]},{"name":"d","value":5,"children":[]},{"name":"[1 narrow frame]","value":4,"children":[]}]}"#
        );
        // Nothing narrower: nothing changes; a zero width keeps everything.
        let mut wide = node("root", 10, vec![node("x", 10, vec![node("y", 1, vec![])])]);
        let before = wide.to_json();
        prune(&mut wide, 0.0);
        assert_eq!(wide.to_json(), before);
        prune(&mut wide, 0.1);
        assert_eq!(wide.to_json(), before);
    }

    #[test]
    fn ten_thousand_stacks_shrink_and_deep_trees_do_not_recurse() {
        // 10,000 distinct stacks of one sample each, under ten parents: at 1/2000 of the root
        // only the parents and their remainders are left.
        let parents = (0..10)
            .map(|p| {
                let leaves = (0..1000)
                    .map(|i| node(&format!("f{p}_{i}"), 1, vec![node("callee", 1, vec![])]))
                    .collect();
                node(&format!("p{p}"), 1000, leaves)
            })
            .collect();
        let mut tree = node("root", 10_000, parents);
        prune(&mut tree, 0.0005);
        assert_eq!(tree.children.len(), 10);
        for p in &tree.children {
            assert_eq!(p.children.len(), 1);
            assert_eq!(p.children[0].name, "[1000 narrow frames]");
            assert_eq!(p.children[0].value, 1000);
        }
        // A chain 100,000 deep, all wide: walked without recursion.
        let mut deep = node("leaf", 1, vec![]);
        for _ in 0..100_000 {
            deep = node("n", 1, vec![deep]);
        }
        prune(&mut deep, 0.5);
        assert_eq!(deep.children.len(), 1);
    }

    #[test]
    fn rendered_answer_is_flinks_json_with_the_pruned_tree() {
        let graph = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(2))], &[])));
        // Nothing is narrower than the whole: the same text as Flink's.
        assert_eq!(
            render(&graph, GraphType::OnCpu, 0.0),
            json::render(&graph, GraphType::OnCpu)
        );
        assert_eq!(
            render(&GraphAnswer::Waiting, GraphType::Full, 0.5),
            r#"{"endTimestamp":-3}"#
        );
        let full: serde_json::Value =
            serde_json::from_str(&json::render(&graph, GraphType::Full)).unwrap();
        let pruned: serde_json::Value =
            serde_json::from_str(&render(&graph, GraphType::Full, 1.0)).unwrap();
        assert_eq!(pruned["endTimestamp"], full["endTimestamp"]);
        assert_eq!(pruned["data"]["value"], full["data"]["value"]);
    }
}
