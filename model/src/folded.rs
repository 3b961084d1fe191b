//! Collapsed ("folded") stacks: one `frame;frame;...;frame COUNT` line per distinct stack, root
//! first, leaf last. This is the input format of inferno and Brendan Gregg's flamegraph.pl, and
//! what `flamegrid-agent sample --format folded` and the `.folded` endpoint print.
//!
//! Lines are sorted so the output is stable and diffable. A `;` inside a frame name (possible in
//! C++ templates with lambdas, rare) would split the frame, so it is replaced by `:`; newlines are
//! replaced by spaces.

use crate::stack_trace::{GraphType, SampleSet, TRUNCATED_FRAME};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Counts of distinct stacks (as frame-name paths, root first) over the samples `ty` accepts.
/// Samples with an empty stack are left out: a folded line needs at least one frame.
pub fn stack_counts<'a>(
    sets: impl IntoIterator<Item = &'a SampleSet>,
    ty: GraphType,
) -> BTreeMap<Vec<String>, u64> {
    let mut counts: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for set in sets {
        for s in set.samples.iter().filter(|s| ty.accepts(s.state)) {
            let mut path: Vec<String> = Vec::with_capacity(s.stack.len() + 1);
            if s.truncated {
                path.push(TRUNCATED_FRAME.to_string());
            }
            path.extend(set.stack_frames(s).map(|f| sanitize(&f.name)));
            if path.is_empty() {
                continue;
            }
            *counts.entry(path).or_insert(0) += 1;
        }
    }
    counts
}

/// The folded text for `sets` under `ty`: one line per distinct stack, newline-terminated.
pub fn to_folded<'a>(sets: impl IntoIterator<Item = &'a SampleSet>, ty: GraphType) -> String {
    let mut out = String::new();
    for (path, count) in stack_counts(sets, ty) {
        let _ = writeln!(out, "{} {}", path.join(";"), count);
    }
    out
}

/// Appends one folded line (`a;b;c COUNT\n`) for `frames`, outermost first, sanitising each
/// name. Used by views that fold pre-aggregated stacks without going through a [`SampleSet`].
pub fn push_line<'a>(out: &mut String, frames: impl IntoIterator<Item = &'a str>, count: u64) {
    for (i, f) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        if f.contains([';', '\n', '\r']) {
            out.push_str(&sanitize(f));
        } else {
            out.push_str(f);
        }
    }
    let _ = writeln!(out, " {count}");
}

/// Parses one folded line into its frames (outermost first) and count. `None` for a line that is
/// not a stack: blank, a `#` comment (flamegrid's endpoints explain an empty answer that way,
/// and inferno skips such lines), or malformed. The inverse of [`push_line`].
pub fn parse_line(line: &str) -> Option<(Vec<&str>, u64)> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() || line.starts_with('#') {
        return None;
    }
    let (stack, count) = line.rsplit_once(' ')?;
    let count = count.parse().ok()?;
    if stack.is_empty() {
        return None;
    }
    Some((stack.split(';').collect(), count))
}

/// Makes a frame name safe for one field of a folded line.
pub fn sanitize(name: &str) -> String {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ":").replace(['\n', '\r'], " ")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack_trace::{Frame, SampleSetBuilder, SampledThread, ThreadState};

    #[test]
    fn folds_and_filters() {
        let t = SampledThread {
            pid: 1,
            tid: 1,
            name: "t".into(),
        };
        let mut b = SampleSetBuilder::new();
        let f = |names: &[&str]| names.iter().map(|n| Frame::named(*n)).collect::<Vec<_>>();
        b.push(&t, 0, ThreadState::Runnable, f(&["main", "spin"]), false);
        b.push(&t, 0, ThreadState::Runnable, f(&["main", "spin"]), false);
        b.push(&t, 0, ThreadState::Waiting, f(&["main", "a;b"]), false);
        b.push(&t, 0, ThreadState::Runnable, f(&[]), false);
        let set = b.finish();
        assert_eq!(
            to_folded([&set], GraphType::Full),
            "main;a:b 1\nmain;spin 2\n"
        );
        assert_eq!(to_folded([&set], GraphType::OnCpu), "main;spin 2\n");
    }

    #[test]
    fn push_and_parse_round_trip() {
        let mut out = String::new();
        push_line(
            &mut out,
            ["main", "a;b", "demo::Worker<unsigned long>::recurse"],
            7,
        );
        assert_eq!(out, "main;a:b;demo::Worker<unsigned long>::recurse 7\n");
        assert_eq!(
            parse_line(&out),
            Some((
                vec!["main", "a:b", "demo::Worker<unsigned long>::recurse"],
                7
            ))
        );
        assert_eq!(parse_line("# no samples"), None);
        assert_eq!(parse_line("main;x notanumber"), None);
    }
}
