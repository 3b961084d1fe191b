//! The differential view: what changed between two kept runs of the same key, drawn by
//! inferno's differential flame graph (Brendan Gregg's `difffolded.pl` + `flamegraph.pl`).
//!
//! How to read it: the picture is the *later* run (frame widths are its samples); the colour of
//! a frame says how its share of *own* samples (those where it was the innermost frame) changed
//! since the *base* run: **red grew, blue shrank**, the deeper the colour the larger the change,
//! near-white means unchanged. So the function where time is spent lights up, not every caller
//! above it (as in `flamegraph.pl`). Hovering a frame shows its samples and the change in
//! percentage points (`+3.20%`).
//!
//! The two runs rarely have the same number of samples (a thread started, an agent was late),
//! so the base is **normalised** to the later run's total before subtracting (inferno's
//! `normalize`): a frame that kept its share of the time stays neutral even if the totals
//! differ. Both runs are folded for the requested type (FULL / ON_CPU / OFF_CPU) first, so the
//! comparison is like for like.
//!
//! A stack that disappeared entirely has no width in the later run and is not drawn (as with
//! `flamegraph.pl`); its absence is the difference. A later run with no samples of the type has
//! nothing to draw and gets the same "no samples" message SVG as the plain view.

use super::FlameGraphError;
use super::profile::Snapshot;
use super::svg::{MIN_WIDTH_PERCENT, SvgLabels, message_svg, utc, when};
use inferno::differential;
use inferno::flamegraph::{self, Options};

/// The differential SVG of `base` → `later` for `labels.ty`; see the module docs.
pub fn render(
    base: &Snapshot,
    later: &Snapshot,
    labels: &SvgLabels<'_>,
) -> Result<Vec<u8>, FlameGraphError> {
    let ty = labels.ty;
    let title = format!(
        "Differential {}, {} → {}",
        labels.title(),
        utc(base.end_ms),
        utc(later.end_ms)
    );
    let (before_samples, after_samples) = (base.sample_count(ty), later.sample_count(ty));
    if after_samples == 0 {
        return Ok(message_svg(
            &title,
            &format!("no {ty} samples in the later run ({})", when(later.end_ms)),
        ));
    }
    let mut merged = Vec::with_capacity(16 * 1024);
    differential::from_readers(
        differential::Options {
            normalize: true,
            strip_hex: false,
        },
        base.folded(ty).as_bytes(),
        later.folded(ty).as_bytes(),
        &mut merged,
    )
    .map_err(|e| FlameGraphError::Render(e.to_string()))?;
    let merged = String::from_utf8_lossy(&merged);

    let mut opts = Options::default();
    opts.title = title;
    opts.subtitle = Some(format!(
        "red grew, blue shrank: run ended {} ({before_samples} samples, normalised) → run ended {} ({after_samples} samples)",
        utc(base.end_ms),
        when(later.end_ms)
    ));
    opts.count_name = "samples".to_string();
    opts.min_width = MIN_WIDTH_PERCENT;
    let mut out = Vec::with_capacity(64 * 1024);
    flamegraph::from_lines(&mut opts, merged.lines(), &mut out)
        .map_err(|e| FlameGraphError::Render(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{snapshot, spin_and_sleep};
    use super::*;
    use flamegrid_model::{Frame, GraphType, SampleSetBuilder, SampledThread, ThreadState};

    fn labels() -> SvgLabels<'static> {
        SvgLabels {
            job_id: "j1",
            job_name: "job",
            vertex_id: "v1",
            vertex_name: "Source: spin",
            subtask: None,
            ty: GraphType::Full,
        }
    }

    /// The fill of the frame whose tooltip starts with `name (`.
    pub(crate) fn fill_of(svg: &str, name: &str) -> Option<(u8, u8, u8)> {
        let at = svg.find(&format!("<title>{name} ("))?;
        let rest = &svg[at..];
        let fill = rest.find("fill=\"rgb(")? + "fill=\"rgb(".len();
        let end = rest[fill..].find(')')?;
        let mut parts = rest[fill..fill + end]
            .split(',')
            .map(|p| p.trim().parse::<u8>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    }

    #[test]
    fn a_new_hot_function_is_red_and_what_lost_share_is_blue() {
        let base = snapshot(1, &[(0, spin_and_sleep(10))], &[]);
        // Later: the same threads plus a new hot stack `main;hot` as big as the others.
        let mut b = SampleSetBuilder::new();
        let t = SampledThread {
            pid: 1,
            tid: 9,
            name: "hot-0".into(),
        };
        for i in 0..10 {
            b.push(
                &t,
                i,
                ThreadState::Runnable,
                ["main", "hot"].map(Frame::named),
                false,
            );
        }
        let later = snapshot(2, &[(0, spin_and_sleep(10)), (1, b.finish())], &[]);
        let svg = String::from_utf8(render(&base, &later, &labels()).unwrap()).unwrap();
        assert!(svg.contains("Differential FULL flame graph"), "{svg}");
        let (r, g, b) = fill_of(&svg, "hot").expect("hot drawn");
        assert!(r == 255 && g < 255 && g == b, "red: {r},{g},{b}");
        let (r, g, b) = fill_of(&svg, "spin").expect("spin drawn");
        assert!(b == 255 && r < 255 && r == g, "blue: {r},{g},{b}");
    }

    #[test]
    fn an_empty_later_run_is_a_message() {
        let base = snapshot(1, &[(0, spin_and_sleep(3))], &[]);
        let later = snapshot(2, &[(0, spin_and_sleep(0))], &[]);
        let svg = String::from_utf8(render(&base, &later, &labels()).unwrap()).unwrap();
        assert!(svg.contains("no FULL samples in the later run"), "{svg}");
    }
}
