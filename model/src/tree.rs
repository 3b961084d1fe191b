//! Flink's flame graph algorithm: fold samples into a tree of inclusive counts.
//!
//! Follows `VertexFlameGraphFactory` (flink-rest.md §3.3): a root named `"root"` counts every
//! sample that passes the state filter; each sample walks from its outermost frame to its
//! innermost, adding one to every node on the way. A node's `value` is therefore the number of
//! samples whose stack passes through it, and `value - sum(children)` is its "self" count.
//!
//! Where flamegrid differs on purpose (DESIGN.md): children are sorted by name so the picture is
//! stable between refreshes, and a stack cut at the depth limit hangs under a `[truncated]` node.
//!
//! The fold works on interned frame ids, not strings: each distinct frame name is hashed once per
//! sample set, and the hot loop only looks up `(parent, name id)` pairs, so building costs grow
//! with the number of frames walked, not with their text.

use crate::stack_trace::{GraphType, SampleSet, TRUNCATED_FRAME};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A node of a flame graph, serialised exactly as Flink's `JsonNode`: `name`, `value`, `children`
/// (always present, `[]` at leaves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlameNode {
    /// Frame name (`"root"` for the root).
    pub name: String,
    /// Inclusive sample count.
    pub value: u64,
    /// Callees, sorted by name.
    pub children: Vec<FlameNode>,
}

impl FlameNode {
    /// An empty root: what a filter that matches nothing produces.
    pub fn empty_root() -> FlameNode {
        FlameNode { name: "root".to_string(), value: 0, children: Vec::new() }
    }

    /// Builds the tree of every sample in `sets` that `ty` accepts.
    pub fn build<'a>(sets: impl IntoIterator<Item = &'a SampleSet>, ty: GraphType) -> FlameNode {
        let mut b = TreeBuilder::new();
        for set in sets {
            b.add_set(set, ty);
        }
        b.finish()
    }

    /// Total number of nodes, root included.
    pub fn node_count(&self) -> usize {
        1 + self.children.iter().map(FlameNode::node_count).sum::<usize>()
    }

    /// The child called `name`, if any.
    pub fn child(&self, name: &str) -> Option<&FlameNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Follows a path of names from this node; `None` if any step is missing.
    pub fn find_path(&self, path: &[&str]) -> Option<&FlameNode> {
        path.iter().try_fold(self, |n, name| n.child(name))
    }

    /// True when some node below this one (at any depth) is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.children.iter().any(|c| c.name == name || c.contains(name))
    }
}

/// Incremental tree builder over interned names; see the module docs.
#[derive(Debug)]
pub struct TreeBuilder {
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    /// Node arena: (name id, hit count). Node 0 is the root.
    nodes: Vec<(u32, u64)>,
    /// Child lookup: (parent node, name id) -> child node.
    edges: HashMap<(u32, u32), u32>,
    truncated_id: u32,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeBuilder {
    /// A builder holding only the root.
    pub fn new() -> Self {
        let mut b = TreeBuilder {
            names: Vec::new(),
            name_ids: HashMap::new(),
            nodes: Vec::new(),
            edges: HashMap::new(),
            truncated_id: 0,
        };
        let root = b.intern("root");
        b.nodes.push((root, 0));
        b.truncated_id = b.intern(TRUNCATED_FRAME);
        b
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.name_ids.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), i);
        i
    }

    fn step(&mut self, parent: u32, name: u32) -> u32 {
        let next = self.nodes.len() as u32;
        let child = *self.edges.entry((parent, name)).or_insert(next);
        if child == next {
            self.nodes.push((name, 0));
        }
        self.nodes[child as usize].1 += 1;
        child
    }

    /// Adds every sample of `set` that `ty` accepts.
    pub fn add_set(&mut self, set: &SampleSet, ty: GraphType) {
        let frame_names: Vec<u32> = set.frames.iter().map(|f| self.intern(&f.name)).collect();
        for s in set.samples.iter().filter(|s| ty.accepts(s.state)) {
            self.nodes[0].1 += 1;
            let mut node = 0;
            if s.truncated {
                node = self.step(node, self.truncated_id);
            }
            for &f in &s.stack {
                if let Some(&name) = frame_names.get(f as usize) {
                    node = self.step(node, name);
                }
            }
        }
    }

    /// The finished tree, children sorted by name.
    pub fn finish(self) -> FlameNode {
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); self.nodes.len()];
        for (&(parent, _), &child) in &self.edges {
            children[parent as usize].push(child);
        }
        fn convert(b: &TreeBuilder, children: &[Vec<u32>], node: u32) -> FlameNode {
            let (name, value) = b.nodes[node as usize];
            let mut kids: Vec<FlameNode> =
                children[node as usize].iter().map(|&c| convert(b, children, c)).collect();
            kids.sort_by(|a, b| a.name.cmp(&b.name));
            FlameNode { name: b.names[name as usize].clone(), value, children: kids }
        }
        convert(&self, &children, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack_trace::{Frame, SampleSetBuilder, SampledThread, ThreadState};

    fn set() -> SampleSet {
        let t = SampledThread { pid: 1, tid: 1, name: "t".into() };
        let mut b = SampleSetBuilder::new();
        let f = |names: &[&str]| names.iter().map(|n| Frame::named(*n)).collect::<Vec<_>>();
        b.push(&t, 0, ThreadState::Runnable, f(&["main", "work", "spin"]), false);
        b.push(&t, 0, ThreadState::Runnable, f(&["main", "work"]), false);
        b.push(&t, 0, ThreadState::Waiting, f(&["main", "sleep"]), false);
        b.push(&t, 0, ThreadState::TimedWaiting, f(&["deep", "leaf"]), true);
        b.push(&t, 0, ThreadState::Terminated, f(&["gone"]), false);
        b.finish()
    }

    #[test]
    fn inclusive_counts_sorted_children() {
        let tree = FlameNode::build([&set()], GraphType::Full);
        assert_eq!(tree.name, "root");
        assert_eq!(tree.value, 4);
        let names: Vec<_> = tree.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["[truncated]", "main"]);
        assert_eq!(tree.find_path(&["main"]).map(|n| n.value), Some(3));
        assert_eq!(tree.find_path(&["main", "work"]).map(|n| n.value), Some(2));
        assert_eq!(tree.find_path(&["main", "work", "spin"]).map(|n| n.value), Some(1));
        assert_eq!(tree.find_path(&["[truncated]", "deep", "leaf"]).map(|n| n.value), Some(1));
        assert!(!tree.contains("gone"));
    }

    #[test]
    fn filters_by_state() {
        let on = FlameNode::build([&set()], GraphType::OnCpu);
        assert_eq!(on.value, 2);
        assert!(!on.contains("sleep"));
        let off = FlameNode::build([&set()], GraphType::OffCpu);
        assert_eq!(off.value, 2);
        assert!(off.contains("sleep") && !off.contains("spin"));
    }

    #[test]
    fn empty_filter_gives_empty_root_in_flink_shape() {
        let tree = FlameNode::build(std::iter::empty(), GraphType::OffCpu);
        assert_eq!(serde_json::to_string(&tree).unwrap(), r#"{"name":"root","value":0,"children":[]}"#);
    }
}
