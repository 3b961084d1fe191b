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
use std::hash::{BuildHasherDefault, Hasher};

/// A node of a flame graph, serialised exactly as Flink's `JsonNode`: `name`, `value`, `children`
/// (always present, `[]` at leaves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlameNode {
    /// Frame name (`"root"` for the root).
    pub name: String,
    /// Inclusive sample count.
    pub value: u64,
    /// Callees, sorted by name.
    #[cfg_attr(feature = "openapi", schema(no_recursion))]
    pub children: Vec<FlameNode>,
}

impl FlameNode {
    /// An empty root: what a filter that matches nothing produces.
    pub fn empty_root() -> FlameNode {
        FlameNode {
            name: "root".to_string(),
            value: 0,
            children: Vec::new(),
        }
    }

    /// Builds the tree of every sample in `sets` that `ty` accepts.
    pub fn build<'a>(sets: impl IntoIterator<Item = &'a SampleSet>, ty: GraphType) -> FlameNode {
        let mut b = TreeBuilder::new();
        for set in sets {
            b.add_set(set, ty);
        }
        b.finish()
    }

    /// Total number of nodes, root included. Walks the tree with an explicit stack: trees come
    /// from samples other hosts sent, and no walk over them may recurse once per frame.
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(&node.children);
        }
        count
    }

    /// Number of nodes on the longest path from this node down, this node included (a root
    /// with no children has depth 1). Iterative, like every walk here.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((node, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            stack.extend(node.children.iter().map(|c| (c, depth + 1)));
        }
        deepest
    }

    /// The child called `name`, if any.
    pub fn child(&self, name: &str) -> Option<&FlameNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Follows a path of names from this node; `None` if any step is missing.
    pub fn find_path(&self, path: &[&str]) -> Option<&FlameNode> {
        path.iter().try_fold(self, |n, name| n.child(name))
    }

    /// True when some node below this one (at any depth) is called `name`. Iterative.
    pub fn contains(&self, name: &str) -> bool {
        let mut stack: Vec<&FlameNode> = self.children.iter().collect();
        while let Some(node) = stack.pop() {
            if node.name == name {
                return true;
            }
            stack.extend(&node.children);
        }
        false
    }

    /// Appends the tree as compact JSON in Flink's `JsonNode` shape (`{"name":..,"value":..,
    /// "children":[..]}`), byte for byte what `serde_json::to_string` writes for it.
    ///
    /// Why not serde: a derived `Serialize` recurses once per level, so the depth of a tree
    /// would decide how much thread stack rendering it takes. This writer keeps its own stack
    /// of open nodes on the heap, so any tree renders on any thread. (The coordinator also caps
    /// depth when samples arrive, see `flamegrid_proto::convert`; this is the second belt.)
    pub fn write_json(&self, out: &mut String) {
        use std::fmt::Write as _;
        fn open_node(node: &FlameNode, out: &mut String) {
            out.push_str("{\"name\":");
            push_json_string(out, &node.name);
            let _ = write!(out, ",\"value\":{},\"children\":[", node.value);
        }
        // Each entry: a node whose opening is written, and how many of its children are done.
        let mut open: Vec<(&FlameNode, usize)> = vec![(self, 0)];
        open_node(self, out);
        while let Some(top) = open.last_mut() {
            let (node, done) = *top;
            match node.children.get(done) {
                Some(child) => {
                    top.1 += 1;
                    if done > 0 {
                        out.push(',');
                    }
                    open_node(child, out);
                    open.push((child, 0));
                }
                None => {
                    out.push_str("]}");
                    open.pop();
                }
            }
        }
    }

    /// [`FlameNode::write_json`] into a new string.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 * self.children.len().max(1));
        self.write_json(&mut out);
        out
    }
}

/// Dropping a tree frees its nodes from an explicit list instead of recursing once per level
/// (the derived drop glue would), so a tree as deep as a hostile sample set is dropped safely on
/// any thread.
impl Drop for FlameNode {
    fn drop(&mut self) {
        if self.children.iter().all(|c| c.children.is_empty()) {
            return; // at most one level below: the glue's own recursion is one frame deep
        }
        let mut pending = std::mem::take(&mut self.children);
        while let Some(mut node) = pending.pop() {
            pending.append(&mut node.children);
            // `node` drops here with no children left.
        }
    }
}

/// Appends `s` as a JSON string literal, escaped exactly as serde_json escapes it (`\"`, `\\`,
/// the short escapes `\b \f \n \r \t`, other control characters as `\u00xx`; everything else
/// verbatim), so [`FlameNode::write_json`] matches serde's output byte for byte.
pub fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut plain_from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain_from..i]);
        plain_from = i + 1;
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

/// Incremental tree builder over interned names; see the module docs.
///
/// Two things keep the hot loop fast (the goal is well over 10 M frames per second on one core):
///
/// * **Prefix reuse.** Consecutive samples usually share most of their stack (the same thread
///   sampled again, or sibling threads running the same code). The builder remembers the node
///   path of the previous stack, and for the common prefix it only adds to the counts, without
///   any hash lookup. Only the frames below the first difference are looked up.
/// * **A cheap hash.** The child lookup is keyed by `(parent node, name id)` packed into a `u64`
///   and hashed with one folded multiplication instead of SipHash: the keys are our own
///   integers, so there is no hash-flooding concern.
#[derive(Debug)]
pub struct TreeBuilder {
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    /// Node arena: (name id, hit count). Node 0 is the root.
    nodes: Vec<(u32, u64)>,
    /// Child lookup: (parent node << 32 | name id) -> child node.
    edges: HashMap<u64, u32, BuildHasherDefault<EdgeHasher>>,
    truncated_id: u32,
    /// Name ids of the previous stack (outermost first), for prefix reuse.
    last_names: Vec<u32>,
    /// The nodes the previous stack walked through, parallel to `last_names`.
    last_nodes: Vec<u32>,
    /// Reused buffer for one sample's name ids.
    scratch: Vec<u32>,
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
            edges: HashMap::default(),
            truncated_id: 0,
            last_names: Vec::new(),
            last_nodes: Vec::new(),
            scratch: Vec::new(),
        };
        let root = b.name_id("root");
        b.nodes.push((root, 0));
        b.truncated_id = b.name_id(TRUNCATED_FRAME);
        b
    }

    /// The builder's id for a frame name, interning it if new. Callers that fold pre-aggregated
    /// stacks (see [`TreeBuilder::add_stack`]) translate their own name tables once with this.
    pub fn name_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.name_ids.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), i);
        i
    }

    /// The id of the [`TRUNCATED_FRAME`] marker, to put first in a cut stack.
    pub fn truncated_id(&self) -> u32 {
        self.truncated_id
    }

    /// Number of samples folded in so far (the root's value).
    pub fn total(&self) -> u64 {
        self.nodes[0].1
    }

    #[inline]
    fn step(&mut self, parent: u32, name: u32, count: u64) -> u32 {
        let next = self.nodes.len() as u32;
        let child = *self
            .edges
            .entry(((parent as u64) << 32) | name as u64)
            .or_insert(next);
        if child == next {
            self.nodes.push((name, 0));
        }
        self.nodes[child as usize].1 += count;
        child
    }

    /// Adds `count` samples of one stack, given as builder name ids (from
    /// [`TreeBuilder::name_id`]), outermost first; a cut stack starts with
    /// [`TreeBuilder::truncated_id`]. An empty stack only counts at the root, as in Flink.
    pub fn add_stack(&mut self, name_ids: &[u32], count: u64) {
        self.nodes[0].1 += count;
        let common = self
            .last_names
            .iter()
            .zip(name_ids)
            .take_while(|(a, b)| a == b)
            .count();
        for &n in &self.last_nodes[..common] {
            self.nodes[n as usize].1 += count;
        }
        self.last_names.truncate(common);
        self.last_nodes.truncate(common);
        let mut node = if common == 0 {
            0
        } else {
            self.last_nodes[common - 1]
        };
        for &name in &name_ids[common..] {
            node = self.step(node, name, count);
            self.last_names.push(name);
            self.last_nodes.push(node);
        }
    }

    /// Adds every sample of `set` that `ty` accepts.
    pub fn add_set(&mut self, set: &SampleSet, ty: GraphType) {
        let frame_names: Vec<u32> = set.frames.iter().map(|f| self.name_id(&f.name)).collect();
        let mut scratch = std::mem::take(&mut self.scratch);
        for s in set.samples.iter().filter(|s| ty.accepts(s.state)) {
            scratch.clear();
            if s.truncated {
                scratch.push(self.truncated_id);
            }
            scratch.extend(
                s.stack
                    .iter()
                    .filter_map(|&f| frame_names.get(f as usize).copied()),
            );
            self.add_stack(&scratch, 1);
        }
        self.scratch = scratch;
    }

    /// The finished tree, children sorted by name.
    ///
    /// Built without recursion, however deep the stacks were (they come from other hosts): the
    /// children of every node are gathered into one flat index (a counting sort by parent),
    /// sorted by name, and the tree is assembled by a post-order walk with an explicit stack.
    /// Finished nodes wait on a value stack, where the children of the node being finished are
    /// always its top entries, in order; so nothing is looked up at random and nothing is moved
    /// more than once.
    pub fn finish(self) -> FlameNode {
        let n = self.nodes.len();
        if n == 0 {
            return FlameNode::empty_root();
        }
        // first[p]..first[p + 1] is the range of node p's children in `kids`.
        let mut first = vec![0usize; n + 1];
        for &key in self.edges.keys() {
            first[(key >> 32) as usize + 1] += 1;
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let mut next = first.clone();
        let mut kids = vec![0u32; self.edges.len()];
        for (&key, &child) in &self.edges {
            let parent = (key >> 32) as usize;
            kids[next[parent]] = child;
            next[parent] += 1;
        }
        drop(next);
        let name_of = |c: u32| self.names[self.nodes[c as usize].0 as usize].as_str();
        for p in 0..n {
            kids[first[p]..first[p + 1]].sort_unstable_by(|&a, &b| name_of(a).cmp(name_of(b)));
        }

        let mut done: Vec<FlameNode> = Vec::new();
        let mut todo: Vec<(u32, bool)> = vec![(0, false)];
        while let Some((node, expanded)) = todo.pop() {
            let range = first[node as usize]..first[node as usize + 1];
            if expanded {
                let children: Vec<FlameNode> = done.drain(done.len() - range.len()..).collect();
                let (name, value) = self.nodes[node as usize];
                done.push(FlameNode {
                    name: self.names[name as usize].clone(),
                    value,
                    children,
                });
            } else {
                todo.push((node, true));
                todo.extend(kids[range].iter().rev().map(|&c| (c, false)));
            }
        }
        done.pop().unwrap_or_else(FlameNode::empty_root)
    }
}

/// Hasher for the builder's packed `(parent, name)` keys: one 128-bit multiply, high and low
/// halves folded together so that every input bit reaches the low bits the table indexes with.
#[derive(Debug, Default, Clone, Copy)]
struct EdgeHasher(u64);

impl Hasher for EdgeHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        let m = (x ^ self.0) as u128 * 0x9E37_79B9_7F4A_7C15u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack_trace::{Frame, SampleSetBuilder, SampledThread, ThreadState};

    fn set() -> SampleSet {
        let t = SampledThread {
            pid: 1,
            tid: 1,
            name: "t".into(),
        };
        let mut b = SampleSetBuilder::new();
        let f = |names: &[&str]| names.iter().map(|n| Frame::named(*n)).collect::<Vec<_>>();
        b.push(
            &t,
            0,
            ThreadState::Runnable,
            f(&["main", "work", "spin"]),
            false,
        );
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
        assert_eq!(
            tree.find_path(&["main", "work", "spin"]).map(|n| n.value),
            Some(1)
        );
        assert_eq!(
            tree.find_path(&["[truncated]", "deep", "leaf"])
                .map(|n| n.value),
            Some(1)
        );
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
        assert_eq!(
            serde_json::to_string(&tree).unwrap(),
            r#"{"name":"root","value":0,"children":[]}"#
        );
    }

    /// The straightforward fold (a map of children per node, no prefix reuse), to check the
    /// optimised builder against.
    fn naive(stacks: &[(Vec<&str>, u64)]) -> FlameNode {
        fn insert(node: &mut FlameNode, path: &[&str], count: u64) {
            node.value += count;
            if let Some((first, rest)) = path.split_first() {
                let pos = match node.children.iter().position(|c| c.name == *first) {
                    Some(p) => p,
                    None => {
                        node.children.push(FlameNode {
                            name: first.to_string(),
                            value: 0,
                            children: vec![],
                        });
                        node.children.len() - 1
                    }
                };
                insert(&mut node.children[pos], rest, count);
            }
        }
        fn sort(node: &mut FlameNode) {
            node.children.sort_by(|a, b| a.name.cmp(&b.name));
            node.children.iter_mut().for_each(sort);
        }
        let mut root = FlameNode::empty_root();
        for (path, count) in stacks {
            insert(&mut root, path, *count);
        }
        sort(&mut root);
        root
    }

    #[test]
    fn prefix_reuse_matches_the_naive_fold() {
        // A deterministic pseudo-random mix of stacks that share, diverge and rejoin prefixes,
        // including an empty stack and one stack that is a prefix of the previous one.
        let alphabet = ["a", "b", "c", "d", "main", "x"];
        let mut seed = 0x1234_5678u64;
        let mut stacks: Vec<(Vec<&str>, u64)> = Vec::new();
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 60) as usize % 7;
            let path = (0..len)
                .map(|i| alphabet[((seed >> (i * 5)) as usize) % alphabet.len()])
                .collect();
            stacks.push((path, 1 + (seed >> 40) % 3));
        }
        stacks.push((vec!["main", "a", "b"], 2));
        stacks.push((vec!["main", "a"], 1));
        stacks.push((vec![], 1));
        let mut b = TreeBuilder::new();
        for (path, count) in &stacks {
            let ids: Vec<u32> = path.iter().map(|n| b.name_id(n)).collect();
            b.add_stack(&ids, *count);
        }
        assert_eq!(b.total(), stacks.iter().map(|s| s.1).sum::<u64>());
        assert_eq!(b.finish(), naive(&stacks));
    }

    /// Runs `f` on a thread with a small stack (256 KiB, an eighth of a tokio worker's), so a
    /// walk that recursed once per frame would overflow it and abort the test.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .name("small-stack".into())
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn a test thread")
            .join()
            .expect("the small-stack thread finished without overflowing")
    }

    #[test]
    fn a_two_million_frame_stack_folds_walks_renders_and_drops_on_a_small_stack() {
        const DEPTH: usize = 2_000_000;
        on_small_stack(|| {
            let mut b = TreeBuilder::new();
            let names: Vec<u32> = (0..DEPTH)
                .map(|i| b.name_id(&format!("f{}", i % 7)))
                .collect();
            b.add_stack(&names, 1);
            b.add_stack(&names[..DEPTH / 2], 2);
            let tree = b.finish();
            assert_eq!(tree.value, 3);
            assert_eq!(tree.depth(), DEPTH + 1, "root plus every frame");
            assert_eq!(tree.node_count(), DEPTH + 1);
            assert!(tree.contains("f6") && !tree.contains("absent"));
            let json = tree.to_json();
            assert!(
                json.starts_with(r#"{"name":"root","value":3,"children":[{"name":"f0","value":3"#)
            );
            assert!(json.ends_with("]}"));
            let copy = tree.children[0].children[0].value;
            assert_eq!(copy, 3);
            drop(tree);
        });
    }

    #[test]
    fn a_deep_sample_set_builds_through_the_model_fold_on_a_small_stack() {
        on_small_stack(|| {
            let t = SampledThread {
                pid: 1,
                tid: 1,
                name: "t".into(),
            };
            let mut b = SampleSetBuilder::new();
            let frames = (0..500_000).map(|i| Frame::named(format!("g{}", i % 3)));
            b.push(&t, 0, ThreadState::Runnable, frames, true);
            let set = b.finish();
            let tree = FlameNode::build([&set], GraphType::OnCpu);
            assert_eq!(tree.depth(), 500_000 + 2, "root, [truncated], frames");
            assert_eq!(tree.children[0].name, TRUNCATED_FRAME);
        });
    }

    #[test]
    fn json_writer_matches_serde_byte_for_byte() {
        let odd = [
            "plain",
            "quote\"and\\slash",
            "ctl\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "unicode é 漢字 🦀 </script>",
            "",
        ];
        let mut b = TreeBuilder::new();
        for (i, a) in odd.iter().enumerate() {
            for c in &odd[i..] {
                let ids = [b.name_id(a), b.name_id(c), b.name_id("leaf")];
                b.add_stack(&ids, 1 + i as u64);
            }
        }
        b.add_stack(&[], 1);
        let tree = b.finish();
        assert_eq!(tree.to_json(), serde_json::to_string(&tree).unwrap());
        let leaf = FlameNode::empty_root();
        assert_eq!(leaf.to_json(), serde_json::to_string(&leaf).unwrap());
        let parsed: FlameNode = serde_json::from_str(&tree.to_json()).unwrap();
        assert_eq!(parsed, tree);
    }
}
