//! The SVG view: an interactive flame graph rendered by inferno (Brendan Gregg's flamegraph.pl
//! in Rust), with its built-in search (Ctrl-F / the "Search" button) and click-to-zoom.
//!
//! * The title names the type, the vertex, the subtask and the job; the subtitle says how many
//!   samples of how many threads it shows, when they were taken, and which subtasks are missing
//!   and why (`missing subtasks: 1 (agent unreachable)`, see [`super::missing`]).
//! * Colour says where the time went: ON_CPU uses inferno's warm "hot" palette, OFF_CPU a cool
//!   blue one; in FULL graphs, functions seen only in off-CPU samples are drawn in blue and the
//!   rest in warm colours. Colours are derived from the function name, so a function keeps its
//!   colour between refreshes.
//! * Frames narrower than [`MIN_WIDTH_PERCENT`] of the width are pruned (inferno's `min_width`):
//!   they could not be read anyway, and a graph of 10 000 distinct stacks stays a few hundred KB.
//! * With nothing to draw (no samples of that type, run not finished, vertex terminated, feature
//!   off) the answer is still a valid SVG document, saying why, rather than inferno's error image.

use super::{FlameGraphError, GraphAnswer};
use flamegrid_model::GraphType;
use flamegrid_model::clock::now_ms;
use inferno::flamegraph::color::{BackgroundColor, BasicPalette, Color, PaletteMap};
use inferno::flamegraph::{self, Options, Palette};

/// Frames narrower than this percentage of the image are not drawn.
pub const MIN_WIDTH_PERCENT: f64 = 0.1;

/// What the title and subtitle say about the graph.
#[derive(Debug, Clone)]
pub struct SvgLabels<'a> {
    /// Job id and name.
    pub job_id: &'a str,
    /// The job's name.
    pub job_name: &'a str,
    /// Vertex id.
    pub vertex_id: &'a str,
    /// The vertex's name.
    pub vertex_name: &'a str,
    /// The subtask shown, or `None` for all.
    pub subtask: Option<u32>,
    /// The type shown.
    pub ty: GraphType,
}

impl SvgLabels<'_> {
    /// The graph's title: type, vertex, subtask, job (the differential view builds on it).
    pub fn title(&self) -> String {
        let subtask = match self.subtask {
            Some(i) => format!("subtask {i}"),
            None => "all subtasks".to_string(),
        };
        format!(
            "{} flame graph: {} ({}), {} — job {} ({})",
            self.ty, self.vertex_name, self.vertex_id, subtask, self.job_name, self.job_id
        )
    }
}

/// The SVG document for `answer`.
pub fn render(answer: &GraphAnswer, labels: &SvgLabels<'_>) -> Result<Vec<u8>, FlameGraphError> {
    let Some(snapshot) = answer.graph() else {
        return Ok(message_svg(&labels.title(), &answer.explain()));
    };
    let ty = labels.ty;
    let lines = visible_lines(&snapshot.tree(ty), MIN_WIDTH_PERCENT);
    let note = answer.note();
    if lines.is_empty() {
        let mut text = format!("no {ty} samples in this run ({})", when(snapshot.end_ms));
        if !note.is_empty() {
            text.push_str("; ");
            text.push_str(&note);
        }
        return Ok(message_svg(&labels.title(), &text));
    }
    let mut subtitle = format!(
        "{} samples of {} threads, sampled {}",
        snapshot.sample_count(ty),
        snapshot.thread_count(ty),
        when(snapshot.end_ms)
    );
    if !note.is_empty() {
        subtitle.push_str("; ");
        subtitle.push_str(&note);
    }

    let mut palette_map = PaletteMap::default();
    let mut opts = Options::default();
    opts.title = labels.title();
    opts.subtitle = Some(subtitle);
    opts.count_name = "samples".to_string();
    opts.min_width = MIN_WIDTH_PERCENT;
    opts.hash = true; // colour by name: stable between refreshes
    // inferno wants lines in plain string order (it checks); ours are in frame-path order.
    opts.no_sort = false;
    match ty {
        GraphType::OnCpu => opts.colors = Palette::Basic(BasicPalette::Hot),
        GraphType::OffCpu => {
            opts.colors = Palette::Basic(BasicPalette::Blue);
            opts.bgcolors = Some(BackgroundColor::Blue);
        }
        GraphType::Full => {
            opts.colors = Palette::Basic(BasicPalette::Hot);
            for name in snapshot.off_cpu_only_names() {
                palette_map.insert(flamegrid_model::folded::sanitize(name), cool_color(name));
            }
            opts.palette_map = Some(&mut palette_map);
        }
    }
    let mut out = Vec::with_capacity(64 * 1024);
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)
        .map_err(|e| FlameGraphError::Render(e.to_string()))?;
    Ok(out)
}

/// Folded lines for `tree` holding only the frames inferno would draw: a node narrower than
/// `min_width_percent` of the graph is pruned by inferno anyway, so its samples are handed over as
/// its parent's own samples instead. The picture is identical (every drawn frame keeps its exact
/// width), but inferno parses, sorts and merges a few hundred lines instead of every distinct
/// stack, which keeps a 10 000-stack graph well within its time budget.
pub fn visible_lines(tree: &flamegrid_model::FlameNode, min_width_percent: f64) -> Vec<String> {
    use flamegrid_model::FlameNode;
    // Samples with an empty stack stay at the root, which has no folded line.
    let total: u64 = tree.children.iter().map(|c| c.value).sum();
    if total == 0 {
        return Vec::new();
    }
    // The same arithmetic as inferno's pruning, so both agree on every frame.
    let min_samples = min_width_percent / (100.0 / total as f64);
    let drawn = |n: &&FlameNode| n.value as f64 >= min_samples;
    // A depth-first walk with an explicit stack (the tree's depth comes from other hosts): each
    // entry is a drawn node, its depth in `path`, and whether its children were pushed yet.
    let mut out = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut stack: Vec<(&FlameNode, usize, bool)> = tree
        .children
        .iter()
        .filter(drawn)
        .rev()
        .map(|c| (c, 0, false))
        .collect();
    while let Some((node, depth, expanded)) = stack.pop() {
        if expanded {
            // Children done: its own samples, plus those of the children too narrow to draw.
            let drawn_children: u64 = node.children.iter().filter(drawn).map(|c| c.value).sum();
            let own = node.value.saturating_sub(drawn_children);
            if own > 0 {
                out.push(format!("{} {own}", path.join(";")));
            }
            path.pop();
            continue;
        }
        path.truncate(depth);
        path.push(flamegrid_model::folded::sanitize(&node.name));
        stack.push((node, depth, true));
        stack.extend(
            node.children
                .iter()
                .filter(drawn)
                .rev()
                .map(|c| (c, depth + 1, false)),
        );
    }
    out
}

/// A blue derived from the name's hash (like inferno's "blue" palette, but deterministic).
fn cool_color(name: &str) -> Color {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let v = (h % 1000) as f64 / 1000.0;
    let w = ((h >> 20) % 1000) as f64 / 1000.0;
    Color {
        r: (60.0 + 70.0 * v) as u8,
        g: (110.0 + 80.0 * w) as u8,
        b: (200.0 + 55.0 * v) as u8,
    }
}

/// `2026-11-24 09:58:01 UTC (3 s ago)`.
pub(super) fn when(end_ms: i64) -> String {
    let age_s = (now_ms() - end_ms).max(0) / 1000;
    format!("{} ({age_s} s ago)", utc(end_ms))
}

/// Formats ms since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, no time zone
/// database needed).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A small valid SVG with the title and a one-line message.
pub(super) fn message_svg(title: &str, message: &str) -> Vec<u8> {
    format!(
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"110\" viewBox=\"0 0 1200 110\" ",
            "xmlns=\"http://www.w3.org/2000/svg\">\n",
            "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>\n",
            "<text x=\"600\" y=\"32\" text-anchor=\"middle\" font-family=\"monospace\" font-size=\"17\">{}</text>\n",
            "<text x=\"600\" y=\"70\" text-anchor=\"middle\" font-family=\"monospace\" font-size=\"14\">{}</text>\n",
            "</svg>\n"
        ),
        xml_escape(title),
        xml_escape(message)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use std::sync::Arc;

    fn labels(ty: GraphType) -> SvgLabels<'static> {
        SvgLabels {
            job_id: "j1",
            job_name: "demo <pipeline>",
            vertex_id: "v1",
            vertex_name: "Source: spin",
            subtask: Some(0),
            ty,
        }
    }

    #[test]
    fn renders_frames_title_and_subtitle() {
        let a = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(4))], &[3])));
        let svg = String::from_utf8(render(&a, &labels(GraphType::Full)).unwrap()).unwrap();
        assert!(svg.contains("main") && svg.contains("spin") && svg.contains("sleep"));
        assert!(svg.contains("FULL flame graph: Source: spin (v1), subtask 0"));
        assert!(svg.contains("demo &lt;pipeline&gt;"));
        assert!(svg.contains("8 samples of 2 threads"));
        assert!(svg.contains("missing subtasks: 3 (agent unreachable)"));
        assert!(
            svg.contains("search"),
            "inferno's interactive script is embedded"
        );
    }

    #[test]
    fn path_order_and_string_order_differ_without_breaking_the_render() {
        use flamegrid_model::{Frame, SampleSetBuilder, SampledThread, ThreadState};
        let t = SampledThread {
            pid: 1,
            tid: 1,
            name: "t".into(),
        };
        let mut b = SampleSetBuilder::new();
        for stack in [&["a", "b"][..], &["a", "b", "z"], &["a", "b c", "d"]] {
            b.push(
                &t,
                0,
                ThreadState::Runnable,
                stack.iter().map(|n| Frame::named(*n)),
                false,
            );
        }
        let a = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, b.finish())], &[])));
        let svg = String::from_utf8(render(&a, &labels(GraphType::OnCpu)).unwrap()).unwrap();
        assert!(
            svg.contains("<title>b c (1 samples") && svg.contains("<title>z (1 samples"),
            "{svg}"
        );
    }

    #[test]
    fn visible_lines_keep_drawn_widths_and_drop_narrow_frames() {
        let snap = snapshot(1, &[(0, spin_and_sleep(999))], &[]);
        let mut tree = snap.tree(GraphType::Full);
        // A narrow extra stack under main: 1 sample of 1999, below 0.1 %.
        tree.value += 1;
        tree.children[0].value += 1;
        tree.children[0].children.push(flamegrid_model::FlameNode {
            name: "tiny".into(),
            value: 1,
            children: vec![],
        });
        let lines = visible_lines(&tree, 0.1);
        assert_eq!(lines, ["main;sleep 999", "main;spin 999", "main 1"]);
        assert_eq!(
            visible_lines(&flamegrid_model::FlameNode::empty_root(), 0.1),
            Vec::<String>::new()
        );
    }

    #[test]
    fn empty_graph_is_a_valid_message() {
        let a = GraphAnswer::Ready(Arc::new(snapshot(1, &[(0, spin_and_sleep(0))], &[])));
        let svg = String::from_utf8(render(&a, &labels(GraphType::OnCpu)).unwrap()).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("no ON_CPU samples"));
        let svg = String::from_utf8(
            render(
                &GraphAnswer::Terminated(Default::default()),
                &labels(GraphType::Full),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(svg.contains("terminated"));
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_718_000_123_456), "2024-06-10 06:15:23 UTC");
    }
}
