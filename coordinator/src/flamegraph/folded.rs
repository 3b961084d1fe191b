//! The folded view: collapsed stacks as text, one `a;b;c COUNT` line per distinct stack, root
//! first, sorted. What inferno, flamegraph.pl and speedscope read.
//!
//! When there is nothing to show (no samples of that type, run not finished, vertex terminated,
//! feature off), the body is a `# ...` comment line saying why: flamegraph tools skip such lines,
//! so the text is still valid input, and a human running `curl` learns what happened. Missing
//! subtasks are reported the same way, above the stacks.

use super::GraphAnswer;
use flamegrid_model::GraphType;

/// The folded text of the answer for `ty`.
pub fn render(answer: &GraphAnswer, ty: GraphType) -> String {
    match answer {
        GraphAnswer::Ready(s) => {
            let mut out = String::new();
            if !s.missing.is_empty() {
                let list: Vec<String> = s.missing.iter().map(u32::to_string).collect();
                out.push_str(&format!("# missing subtasks: {}\n", list.join(", ")));
            }
            let body = s.folded(ty);
            if body.is_empty() {
                out.push_str(&format!("# no {ty} samples in this run\n"));
            }
            out.push_str(&body);
            out
        }
        other => format!("# {}\n", other.explain()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use flamegrid_model::folded::parse_line;
    use std::sync::Arc;

    #[test]
    fn lines_parse_and_comments_explain() {
        let a = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(3))], &[2])));
        let text = render(&a, GraphType::Full);
        assert!(text.starts_with("# missing subtasks: 2\n"));
        let stacks: Vec<_> = text.lines().filter_map(parse_line).collect();
        assert_eq!(
            stacks,
            vec![(vec!["main", "sleep"], 3), (vec!["main", "spin"], 3)]
        );
        assert!(render(&GraphAnswer::Waiting, GraphType::Full).starts_with("# "));
    }
}
