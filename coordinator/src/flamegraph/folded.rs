//! The folded view: collapsed stacks as text, one `a;b;c COUNT` line per distinct stack, root
//! first, sorted. What inferno, flamegraph.pl and speedscope read.
//!
//! Collapsed stacks have no comment syntax: a tool reads any line ending in ` <digits>` as a
//! stack with that count (inferno turned `# missing subtasks: 1, 3` into a frame
//! `# missing subtasks: 1,` of 3 samples, and flamegraph.pl reads `3.` as a count too). A `#`
//! line that does **not** end in a count is another matter: inferno and flamegraph.pl skip it as
//! a line they cannot parse. So every `#` line here is written by [`comment`], which makes sure
//! it never ends in a digit or a dot.
//!
//! * A partial graph starts with one header line naming the absent subtasks and why, e.g.
//!   `# missing subtasks: 1 (agent unreachable); 3 (outside the allow-list)`, then the stacks.
//!   The indexes also travel in the `X-Flamegrid-Missing` response header.
//! * When there is nothing to draw (no samples of that type, run not finished, vertex
//!   terminated, feature off) the body is a single `# ...` line saying why (with the absent
//!   subtasks, if any), for a human running `curl`.

use super::GraphAnswer;
use flamegrid_model::GraphType;

/// The folded text of the answer for `ty`.
pub fn render(answer: &GraphAnswer, ty: GraphType) -> String {
    match answer.graph() {
        Some(s) => {
            let body = s.folded(ty);
            let note = answer.note();
            if body.is_empty() {
                let mut why = format!("no {ty} samples in this run");
                if !note.is_empty() {
                    why.push_str("; ");
                    why.push_str(&note);
                }
                comment(&why)
            } else if note.is_empty() {
                body
            } else {
                comment(&note) + &body
            }
        }
        None => comment(&answer.explain()),
    }
}

/// `# text` as one line that no folded-stack parser can read as a stack: line breaks become
/// spaces, and a text ending in a digit or a dot gets a final ` #`, so the line never ends in
/// ` COUNT` (flamegraph.pl reads `3.` as a count).
pub fn comment(text: &str) -> String {
    let mut line = format!("# {}", text.replace(['\n', '\r'], " "));
    if line.ends_with(|c: char| c.is_ascii_digit() || c == '.') {
        line.push_str(" #");
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use flamegrid_model::folded::parse_line;
    use std::sync::Arc;

    #[test]
    fn a_partial_graph_names_its_absent_subtasks_in_a_header_line() {
        let a = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(3))], &[2, 13])));
        let text = render(&a, GraphType::Full);
        assert_eq!(
            text,
            "# missing subtasks: 2, 13 (agent unreachable)\nmain;sleep 3\nmain;spin 3\n",
        );
        let stacks: Vec<_> = text.lines().filter_map(parse_line).collect();
        assert_eq!(
            stacks,
            vec![(vec!["main", "sleep"], 3), (vec!["main", "spin"], 3)]
        );
    }

    #[test]
    fn comments_explain_and_never_parse_as_stacks() {
        let empty = GraphAnswer::Ready(Arc::new(snapshot(1, &[], &[0, 1])));
        let answers = [
            (GraphAnswer::Waiting, GraphType::Full),
            (GraphAnswer::Terminated(Default::default()), GraphType::Full),
            (GraphAnswer::Disabled, GraphType::Full),
            (empty, GraphType::OnCpu),
        ];
        for (answer, ty) in &answers {
            let text = render(answer, *ty);
            assert!(
                text.starts_with("# ") && text.lines().count() == 1,
                "{text}"
            );
            assert!(
                !text.trim_end().ends_with(|c: char| c.is_ascii_digit()),
                "{text}"
            );
        }
        assert_eq!(comment("subtasks 1, 3"), "# subtasks 1, 3 #\n");
        assert_eq!(comment("a\nb 2"), "# a b 2 #\n");
        assert_eq!(comment("a 2."), "# a 2. #\n");
        // inferno skips such a line instead of drawing it.
        let mut svg = Vec::new();
        let missing = comment("missing: 1, 3");
        let lines = ["main;spin 3", missing.trim_end()];
        inferno::flamegraph::from_lines(
            &mut inferno::flamegraph::Options::default(),
            lines,
            &mut svg,
        )
        .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("spin") && !svg.contains("missing"), "{svg}");
    }
}
